"""The calico/node image, built and smoke-tested the way CI does it (issue 7 acceptance 5).

scripts/docker-smoke starts its own dockerd (data-root in a temp dir, no
iptables, no bridge), imports a debootstrapped base under the tag the
Dockerfile names, builds the image from wheels built on this host, runs it
with --network=none plus a veth into a namespace holding etcd, and tears
everything down again.  About 2-3 minutes from nothing; bounded at 10.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(660)]


def test_image_builds_and_runs_all_services():
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run([str(ROOT / "scripts" / "docker-smoke")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "PASS" in out
    for svc in ("felix", "bird", "confd"):
        assert any(line.split()[:2] == [svc, "RUNNING"] for line in out.splitlines()), out[-2000:]
