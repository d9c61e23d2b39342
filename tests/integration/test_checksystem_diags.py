"""`calicoctl checksystem` and `calicoctl diags` on a real node namespace: etcd, BIRD, iptables, ipset."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile

import pytest

from calico_testing.etcd import EtcdServer
from calico_testing.netns import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALICOCTL = os.path.join(ROOT, ".venv", "bin", "calicoctl")


@pytest.fixture
def node(netns_factory):
    """A node namespace with its own etcd on its loopback (nothing reaches the root namespace)."""
    ns = netns_factory("node")
    etcd = EtcdServer(netns=ns.name).start()
    yield ns, etcd
    etcd.close()


def ctl(ns, etcd, *args, env=None, path=None):
    e = {"PATH": path or os.environ["PATH"], "ETCD_ENDPOINTS": etcd.endpoint}
    e.update(env or {})
    return subprocess.run(["ip", "netns", "exec", ns.name, "env", "-i", *[f"{k}={v}" for k, v in e.items()],
                           CALICOCTL, *args], capture_output=True, text=True, timeout=120)


def path_without(tmp_path, missing: str) -> str:
    """A PATH of one directory that has every binary of ours except `missing`."""
    d = tmp_path / "bin"
    d.mkdir()
    for p in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(p):
            continue
        for name in os.listdir(p):
            target = os.path.join(p, name)
            if name != missing and not (d / name).exists() and os.access(target, os.X_OK):
                (d / name).symlink_to(target)
    return str(d)


def test_checksystem_passes_on_a_prepared_machine(node):
    ns, etcd = node
    r = ctl(ns, etcd, "checksystem")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "System meets the requirements" in r.stdout
    for name in ("binary: ipset", "binary: bird6", "kernel: conntrack", "iptables backend", "etcd"):
        line = next(ln for ln in r.stdout.splitlines() if f"| {name} " in ln)
        assert "| OK " in line, line


def test_checksystem_names_ipset_when_it_is_missing(node, tmp_path):
    ns, etcd = node
    r = ctl(ns, etcd, "checksystem", path=path_without(tmp_path, "ipset"))
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == "Missing: binary: ipset"


def test_checksystem_names_an_unreachable_etcd(node):
    ns, etcd = node
    etcd.stop()
    r = ctl(ns, etcd, "checksystem")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == "Missing: etcd"


BIRD_CONF = """\
router id 10.77.0.1;
log stderr all;
protocol device { scan time 10; }
protocol bgp Mesh_10_77_0_2 {
  local as 64511;
  neighbor 10.77.0.2 as 64511;
  import all;
  export none;
}
"""


def test_diags_archive_has_every_section(node, tmp_path):
    ns, etcd = node
    run, logs = tmp_path / "run", tmp_path / "logs"
    run.mkdir()
    (logs / "felix").mkdir(parents=True)
    (logs / "felix" / "current").write_text("felix says hello\n")
    etcd.put("/calico/v1/Ready", "true")
    etcd.put("/calico/v1/config/InterfacePrefix", "cali")
    ns.run("ip", "addr", "add", "10.77.0.1/24", "dev", "lo")
    ns.run("ip", "route", "add", "10.78.0.0/24", "dev", "lo")
    ns.run("ipset", "create", "diags-test-set", "hash:ip")
    ns.run("iptables-restore", "--noflush", input="*filter\n:diags-test-chain - [0:0]\nCOMMIT\n")
    (tmp_path / "bird.conf").write_text(BIRD_CONF)
    bird = ns.popen(["bird", "-f", "-c", str(tmp_path / "bird.conf"), "-s", str(run / "bird.ctl")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "bird.ctl").exists(), timeout=10, what="BIRD's control socket")
        r = ctl(ns, etcd, "diags", f"--log-dir={logs}",
                env={"CALICO_RUN_DIR": str(run), "SECRET_TOKEN": "s3cr3t-value"})
    finally:
        bird.terminate()
        bird.wait(10)
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip().split("Diags saved to ", 1)[1]
    assert path.endswith(".tar.gz") and os.path.isfile(path)
    try:
        with tarfile.open(path) as tar:
            files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    finally:
        shutil.rmtree(os.path.dirname(path))
    assert "10.78.0.0/24 dev lo" in files["network/ip-route.txt"]
    assert "ip -6 route" in files["network/ip6-route.txt"]
    assert "10.77.0.1/24" in files["network/ip-addr.txt"]
    backend = [f for f in ("iptables/iptables-save-nft.txt", "iptables/iptables-save-legacy.txt")
               if "diags-test-chain" in files[f]]
    assert backend, "our chain is in neither backend's dump"
    assert "ip6tables-nft-save -c (exit 0)" in files["iptables/ip6tables-save-nft.txt"]
    assert "Name: diags-test-set" in files["ipset/ipset-list.txt"]
    assert "Mesh_10_77_0_2" in files["bird/bird-protocols.txt"]
    assert "bird6.ctl" in files["bird/bird6-protocols.txt"]  # not running: says so
    assert "supervisord.conf does not exist" in files["supervisor/status.txt"]
    assert files["logs/felix/current"] == "felix says hello\n"
    assert '"key": "/calico/v1/config/InterfacePrefix", "value": "cali"' in files["etcd/calico-dump.jsonl"]
    assert "index.txt" in files
    assert not any("s3cr3t-value" in text for text in files.values())
