"""etcd with TLS and client-certificate auth: calicoctl, calico-confd and calico-felix all work through it.

Certificates are made by the test (openssl, calico_testing/etcd.make_tls_certs).
Every program gets them the way an operator gives them: ETCD_CA_CERT_FILE,
ETCD_CERT_FILE, ETCD_KEY_FILE.  Without the client certificate each fails
with one clear line that says what is missing.  And the private key never
shows up anywhere: not in any program's log, output or `calicoctl diags`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile

import pytest

from calico_testing.etcd import EtcdServer, make_tls_certs
from calico_testing.netns import wait_for
from tests.integration.felix_topology import FelixHost
from tests.reliability.probe import ROOT

BIN = os.path.join(ROOT, ".venv", "bin")


def tls_env(etcd: EtcdServer, client: bool = True, cert: str = "client") -> dict[str, str]:
    t = etcd.tls
    env = {"ETCD_ENDPOINTS": etcd.endpoint, "ETCD_CA_CERT_FILE": t["ca"]}
    if client:
        env.update(ETCD_CERT_FILE=t[f"{cert}_cert"], ETCD_KEY_FILE=t[f"{cert}_key"])
    return env


def key_material(certs: dict) -> list[str]:
    """Lines of every private key the test made: none may appear in any output."""
    out = []
    for name in ("key", "client_key", "rogue_key"):
        with open(certs[name]) as f:
            out += [line for line in f.read().splitlines() if line and "-----" not in line]
    return out


def assert_no_secrets(text: str, certs: dict, where: str) -> None:
    assert "PRIVATE KEY" not in text, f"a private key in {where}"
    leaked = [line for line in key_material(certs) if line in text]
    assert not leaked, f"private key material in {where}"


@pytest.fixture
def tls_node(netns_factory, tmp_path):
    """A node namespace with a client-cert-auth etcd on its loopback."""
    ns = netns_factory("tls")
    certs = make_tls_certs(str(tmp_path))
    etcd = EtcdServer(netns=ns.name, tls=certs).start()
    yield ns, etcd, certs
    etcd.close()


def run_in(ns, argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    base = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": "/root"}
    return ns.run("env", "-i", *[f"{k}={v}" for k, v in {**base, **env}.items()], *argv,
                  check=False, timeout=timeout)


def test_tls_calicoctl_pool_add_show_and_clear_errors(tls_node):
    ns, etcd, certs = tls_node
    ctl = os.path.join(BIN, "calicoctl")
    r = run_in(ns, [ctl, "pool", "add", "10.70.0.0/16", "--nat-outgoing"], tls_env(etcd))
    assert r.returncode == 0, r.stderr
    r = run_in(ns, [ctl, "pool", "show"], tls_env(etcd))
    assert r.returncode == 0 and "10.70.0.0/16" in r.stdout, r.stdout + r.stderr
    assert etcd.get("/calico/v1/ipam/v4/pool/10.70.0.0-16") is not None
    outputs = [r.stdout + r.stderr]
    # No client certificate: refused by etcd, and the error says what to set.
    r = run_in(ns, [ctl, "pool", "show"], tls_env(etcd, client=False), timeout=60)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "ETCD_CERT_FILE" in err, err
    outputs.append(r.stdout + r.stderr)
    # A certificate from another CA: refused, one line.
    r = run_in(ns, [ctl, "pool", "add", "10.71.0.0/16"], tls_env(etcd, cert="rogue"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert etcd.get("/calico/v1/ipam/v4/pool/10.71.0.0-16") is None
    outputs.append(r.stdout + r.stderr)
    # A key file that cannot be read: the error names the variable and path, never contents.
    r = run_in(ns, [ctl, "pool", "show"], {**tls_env(etcd), "ETCD_KEY_FILE": certs["ca"] + ".missing"})
    assert r.returncode != 0 and "ETCD_KEY_FILE" in r.stderr, r.stderr
    outputs.append(r.stdout + r.stderr)
    for text in outputs:
        assert_no_secrets(text, certs, "calicoctl output")


def test_tls_confd_renders_from_a_tls_etcd(tls_node, tmp_path):
    ns, etcd, certs = tls_node
    conf, run = tmp_path / "conf", tmp_path / "run"
    conf.mkdir()
    run.mkdir()
    for k, v in {"/calico/bgp/v1/global/as_num": "64512", "/calico/bgp/v1/global/node_mesh": '{"enabled": true}',
                 "/calico/bgp/v1/host/tlsnode/ip_addr_v4": "10.99.0.1",
                 "/calico/bgp/v1/host/peer2/ip_addr_v4": "10.99.0.2", "/calico/v1/Ready": "true"}.items():
        etcd.put(k, v)
    env = {**tls_env(etcd), "NODENAME": "tlsnode", "IP": "10.99.0.1", "CALICO_CONF_DIR": str(conf),
           "CALICO_RUN_DIR": str(run)}
    log_path = tmp_path / "confd.log"
    base = {"PATH": f"{BIN}:{os.environ['PATH']}"}
    with open(log_path, "wb") as log:
        proc = ns.popen(["env", "-i", *[f"{k}={v}" for k, v in {**base, **env}.items()],
                         os.path.join(BIN, "calico-confd")], stdout=log, stderr=subprocess.STDOUT)
    try:
        cfg = conf / "bird.cfg"
        wait_for(lambda: cfg.exists() and "Mesh_10_99_0_2" in cfg.read_text(), 30,
                 what="bird.cfg rendered from the TLS etcd")
        assert "local as 64512" in cfg.read_text()
        etcd.put("/calico/bgp/v1/host/peer3/ip_addr_v4", "10.99.0.3")  # live updates over TLS too
        wait_for(lambda: "Mesh_10_99_0_3" in cfg.read_text(), 30, what="live update over TLS")
    finally:
        proc.terminate()
        proc.wait(10)
    assert_no_secrets(log_path.read_text(errors="replace"), certs, "confd's log")
    # Without a client certificate: no config, and the reason in the log.
    bad_log = tmp_path / "confd-nocert.log"
    env2 = {**tls_env(etcd, client=False), "NODENAME": "tlsnode", "IP": "10.99.0.1",
            "CALICO_CONF_DIR": str(tmp_path / "conf2"), "CALICO_RUN_DIR": str(run)}
    with open(bad_log, "wb") as log:
        proc = ns.popen(["env", "-i", *[f"{k}={v}" for k, v in {**base, **env2}.items()],
                         os.path.join(BIN, "calico-confd")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ETCD_CERT_FILE" in bad_log.read_text(errors="replace"), 30,
                 what="confd naming the missing client certificate")
        assert not (tmp_path / "conf2" / "bird.cfg").exists()
    finally:
        proc.terminate()
        proc.wait(10)
    text = bad_log.read_text(errors="replace")
    assert text.count("ETCD_CERT_FILE") <= 3, f"the outage is logged once, not per retry:\n{text[-2000:]}"


@pytest.mark.slow
def test_tls_felix_programs_an_endpoint_and_diags_hold_no_secrets(netns_factory, tmp_path):
    fh = FelixHost(netns_factory, n_workloads=1, hostname="tlsfelix")
    try:
        (tmp_path / "certs").mkdir()
        certs = make_tls_certs(str(tmp_path / "certs"))
        fh.etcd.close()
        fh.etcd = EtcdServer(netns=fh.host.name, tls=certs).start()
        w = fh.workloads[0]
        fh.put("/calico/v1/Ready", "true")
        fh.put_profile("open", inbound=[{"action": "allow"}], outbound=[{"action": "allow"}])
        fh.put_endpoint(w, ["open"])
        # No client certificate first: one clear complaint, nothing programmed.
        fh.start_felix(ETCD_CA_CERT_FILE=certs["ca"])
        wait_for(lambda: "ETCD_CERT_FILE" in fh.log(), 30, what="felix naming the missing client cert")
        assert w.ip4 not in fh.routes(4)
        fh.kill_felix()
        nocert_log = fh.log()
        # With it: the endpoint is programmed.
        fh.start_felix(ETCD_CA_CERT_FILE=certs["ca"], ETCD_CERT_FILE=certs["client_cert"],
                       ETCD_KEY_FILE=certs["client_key"])
        fh.wait_programmed(w)
        assert any(c.startswith("felix-") for c in fh.felix_chains(4))
        log_dir = tmp_path / "logs"
        (log_dir / "felix").mkdir(parents=True)
        shutil.copy(fh.log_path, log_dir / "felix" / "current")
        assert_no_secrets(fh.log(), certs, "felix's log")
        assert nocert_log.count("ETCD_CERT_FILE") <= 3, "the failure is logged once, not per retry"
        # calicoctl diags on this node, over TLS: the archive has the etcd dump and logs, no key.
        env = {**tls_env(fh.etcd), "CALICO_RUN_DIR": str(tmp_path)}
        r = run_in(fh.host, [os.path.join(BIN, "calicoctl"), "diags", f"--log-dir={log_dir}"], env, timeout=120)
        assert r.returncode == 0, r.stderr
        path = r.stdout.strip().split("Diags saved to ", 1)[1]
        try:
            with tarfile.open(path) as tar:
                files = {m.name: tar.extractfile(m).read().decode(errors="replace")
                         for m in tar.getmembers() if m.isfile()}
        finally:
            shutil.rmtree(os.path.dirname(path))
        dump = next(v for k, v in files.items() if k.endswith("etcd/calico-dump.jsonl"))
        assert "/calico/v1/policy/profile/open/rules" in dump, "the etcd dump was taken over TLS"
        for name, text in files.items():
            assert_no_secrets(text, certs, f"diags {name}")
        json.loads(dump.splitlines()[0])
    finally:
        fh.close()
