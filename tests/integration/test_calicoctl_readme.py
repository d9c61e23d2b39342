"""The README's "calicoctl resources" examples, run as written against a real etcd.

Every ```yaml block whose first line is `# file: NAME` is written to NAME; every
`calicoctl ...` line of a ```sh block runs in order (`A | B` pipes A's output
into B).  A line whose comment starts with `error:` must fail, with that text in
its one error line; every other line must succeed.  `checksystem` changes the
host, so it runs inside a network namespace of this test's own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from tests.lib.calicoctl_run import ctl, module_etcd_fixture, store_fixture  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEP_KEY = "/calico/v1/host/host1/workload/k8s/ns.pod/endpoint/eth0"


def readme_section() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("\n## calicoctl resources\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def commands(section: str) -> list[tuple[str, str | None]]:
    """(command, expected error text or None) for every calicoctl line of the sh blocks."""
    out = []
    for lang, body in blocks(section):
        if lang != "sh":
            continue
        for line in body.splitlines():
            cmd, _, comment = line.partition("#")
            if not cmd.strip().startswith("calicoctl"):
                continue
            comment = comment.strip()
            want = comment[len("error:"):].strip() if comment.startswith("error:") else None
            out.append((cmd.strip(), want))
    return out


def run_in_netns(ns, argv: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "calicoctl", *argv],
                       capture_output=True, text=True, env=env, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_readme_examples_run(store, tmp_path, monkeypatch, netns_factory):
    section = readme_section()
    files = 0
    for lang, body in blocks(section):
        first, _, rest = body.partition("\n")
        if lang == "yaml" and first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(rest)
            files += 1
    cmds = commands(section)
    assert files and len(cmds) >= 10, "the README section lost its examples"
    monkeypatch.chdir(tmp_path)
    ns = netns_factory("readme")
    wep_written = False
    for cmd, want in cmds:
        if not wep_written and "profile remove" in cmd:
            # The example's point: a profile an endpoint uses is not removed.
            store.put(WEP_KEY, '{"state":"active","name":"cali1","profile_ids":["web"],"ipv4_nets":[]}')
            wep_written = True
        stdin = ""
        rc, out, err = 0, "", ""
        for part in cmd.split("|"):
            argv = shlex.split(part)[1:]
            if argv[0] == "checksystem":
                rc, out, err = run_in_netns(ns, argv)
            else:
                r = ctl(*argv, stdin=stdin)
                rc, out, err = r.rc, r.out, r.err
            stdin = out
            if rc != 0:
                break
        if want is None:
            assert rc == 0, f"README example failed: {cmd}\n{err}"
        else:
            assert rc != 0, f"README example should fail: {cmd}\n{out}"
            assert want.split(" (")[0].split(";")[0] in err, (cmd, want, err)
    assert store.get("/calico/v1/config/LogSeverityScreen") == "debug"
    assert store.get("/calico/v1/policy/tier/security/policy/deny-db") is None
    assert store.get("/calico/v1/policy/profile/web/rules") is not None
