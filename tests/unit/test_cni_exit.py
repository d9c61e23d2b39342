"""The executables end with os._exit (no interpreter tear-down): the answer and the log must still be whole.

A runtime reads the JSON answer from stdout and operators read log_file_path;
skipping the interpreter's own flushing must lose neither, whether stdout is
a pipe (runtimes) or the call failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BIN = os.path.join(os.path.dirname(sys.executable))


@pytest.mark.parametrize("exe", ["calico", "calico-ipam"])
def test_error_answer_and_log_file_survive_the_fast_exit(tmp_path, exe):
    log_file = tmp_path / "cni" / "calico.log"
    missing = tmp_path / "no-such-netns"
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "calico", "etcd_endpoints": "http://127.0.0.1:1",
            "log_file_path": str(log_file), "ipam": {"type": "calico-ipam"}}
    env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
           "CNI_NETNS": str(missing), "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    if exe == "calico-ipam":
        del env["CNI_CONTAINERID"]  # refused after the config (and its log file), before any datastore work
    r = subprocess.run([os.path.join(BIN, exe)], input=json.dumps(conf).encode(), env=env,
                       capture_output=True, timeout=60)
    assert r.returncode == 1
    answer = json.loads(r.stdout)
    assert answer["cniVersion"] == "1.0.0"
    want = str(missing) if exe == "calico" else "CNI_CONTAINERID"
    assert want in answer["msg"]
    assert want in log_file.read_text()


def test_version_answer_is_complete_on_a_pipe():
    r = subprocess.run([os.path.join(BIN, "calico")], input=b"{}", env={"CNI_COMMAND": "VERSION"},
                       capture_output=True, timeout=60)
    assert r.returncode == 0
    assert "1.0.0" in json.loads(r.stdout)["supportedVersions"]
