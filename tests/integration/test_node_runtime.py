"""calico-node in network namespaces with a real etcd (issue 7 acceptance 1-4).

Each test builds a fabric namespace (a bridge with etcd on it) and node
namespaces attached to it, runs the real `calico-node` (then supervisord,
Felix, confd and BIRD) with path overrides, and always stops everything and
removes every namespace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from calico_testing.etcd import EtcdServer
from calico_testing.netns import Netns, veth, wait_for
from libcalico import keys

pytestmark = pytest.mark.timeout(240)

FABRIC_V4 = "10.98.0"
FABRIC_V6 = "fd00:98::"
BIN = Path(sys.executable).parent  # the venv's console scripts
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")


class Fabric:
    """A bridge namespace; etcd listens on its bridge address (10.98.0.254) once started."""

    def __init__(self, netns_factory):
        self.factory = netns_factory
        self.ns: Netns = netns_factory("fab")
        self.ns.run("ip", "link", "add", "br0", "type", "bridge")
        self.ns.run("ip", "addr", "add", f"{FABRIC_V4}.254/24", "dev", "br0")
        self.ns.run("ip", "-6", "addr", "add", f"{FABRIC_V6}254/64", "dev", "br0", "nodad")
        self.ns.run("ip", "link", "set", "br0", "up")
        self.etcd = EtcdServer(host=f"{FABRIC_V4}.254", port=2379, netns=self.ns.name)

    @property
    def endpoint(self) -> str:
        return f"http://{FABRIC_V4}.254:2379"

    def node_ns(self, n: int, tag: str = "node") -> Netns:
        """A node namespace on the fabric as 10.98.0.<n> / fd00:98::<n>, default route to the bridge."""
        ns = self.factory(tag)
        veth(ns, "eth0", self.ns, f"vn{n}")
        self.ns.run("ip", "link", "set", f"vn{n}", "master", "br0")
        ns.run("ip", "addr", "add", f"{FABRIC_V4}.{n}/24", "dev", "eth0")
        ns.run("ip", "-6", "addr", "add", f"{FABRIC_V6}{n}/64", "dev", "eth0", "nodad")
        ns.run("ip", "route", "add", "default", "via", f"{FABRIC_V4}.254")
        return ns

    def close(self) -> None:
        self.etcd.close()


class Node:
    """One `calico-node` in a namespace, with its own run/log/conf dirs under `base`."""

    def __init__(self, ns: Netns, base: Path, name: str, env: dict[str, str]):
        self.ns, self.name = ns, name
        self.run_dir, self.log_dir, self.conf_dir = base / "run", base / "log", base / "conf"
        for d in (self.run_dir, self.log_dir, self.conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.output = base / "node.out"
        self.env = dict(os.environ, NODENAME=name, HOSTNAME=name, CALICO_RUN_DIR=str(self.run_dir),
                        CALICO_LOG_DIR=str(self.log_dir), CALICO_CONF_DIR=str(self.conf_dir),
                        NO_DEFAULT_POOLS="true")
        for var in ("ETCD_AUTHORITY", "ETCD_SCHEME", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE",
                    "IP", "IP6", "AS"):
            self.env.pop(var, None)
        self.env.update(env)
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> Node:
        out = open(self.output, "ab")
        self.proc = self.ns.popen([str(BIN / "calico-node"), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """calico-node to completion (startup that must fail, --init-only)."""
        return subprocess.run(["ip", "netns", "exec", self.ns.name, str(BIN / "calico-node"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.run_dir / "supervisord.conf"), *args],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"supervisorctl {' '.join(args)} -> {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def states(self) -> dict[str, tuple[str, int]]:
        """{service: (state, pid)} from `supervisorctl status`."""
        out = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                m = re.search(r"pid (\d+)", line)
                out[parts[0]] = (parts[1], int(m.group(1)) if m else 0)
        return out

    def wait_running(self, services: list[str], timeout: float = 60) -> dict[str, tuple[str, int]]:
        def ok():
            assert self.proc is None or self.proc.poll() is None, f"calico-node exited:\n{self.tail()}"
            st = self.states()
            return st if set(st) == set(services) and all(s == "RUNNING" for s, _ in st.values()) else None
        return wait_for(ok, timeout, 0.5, f"{self.name}: {services} RUNNING")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log(self, service: str) -> str:
        """current plus its rotated files (a small CALICO_LOG_MAX_BYTES may have just emptied current)."""
        d = self.log_dir / service
        return "".join(p.read_text(errors="replace") for p in sorted(d.glob("current*"), reverse=True))

    def stop(self, timeout: float = 40) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def ns_processes(ns: Netns) -> list[str]:
    out = []
    for pid in ns.pids():
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def wait_gone(ns: Netns, timeout: float = 10) -> None:
    wait_for(lambda: not ns.pids(), timeout, 0.2, f"no process left in {ns.name}")


def ts_ok(text: str) -> list[str]:
    """The lines of a log that do not start with a timestamp."""
    return [line for line in text.splitlines() if line.strip() and not TIMESTAMP.match(line)]


@pytest.fixture
def fabric(netns_factory):
    f = Fabric(netns_factory)
    yield f
    f.close()


@pytest.fixture
def nodes(tmp_path):
    made: list[Node] = []

    def make(ns: Netns, name: str, **env: str) -> Node:
        n = Node(ns, tmp_path / name, name, env)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop(20)


def test_full_node_services_logs_rotation_restart_and_sigterm(fabric, nodes):
    """Acceptance 1 (+ SIGTERM order): felix, bird, bird6, confd RUNNING, per-service rotated logs."""
    fabric.etcd.start()
    ns = fabric.node_ns(1)
    node = nodes(ns, "nodea", IP=f"{FABRIC_V4}.1", IP6=f"{FABRIC_V6}1", AS="65001",
                 ETCD_ENDPOINTS=fabric.endpoint, CALICO_LOG_MAX_BYTES="1024", CALICO_LOG_BACKUPS="2",
                 FELIX_LOGSEVERITYSCREEN="debug").start()
    states = node.wait_running(["felix", "bird", "bird6", "confd"])
    assert node.ctl("status").returncode == 0

    # Registered, with the environment's AS; defaults present.
    etcd = fabric.etcd
    assert etcd.get(keys.bgp_host_ip("nodea", 4)) == f"{FABRIC_V4}.1"
    assert etcd.get(keys.bgp_host_ip("nodea", 6)) == f"{FABRIC_V6}1"
    assert etcd.get(keys.host_bird_ip("nodea")) == f"{FABRIC_V4}.1"
    assert etcd.get(keys.bgp_host_as("nodea")) == "65001"
    assert etcd.get(keys.READY) == "true" and etcd.get(keys.bgp_global_as()) == "64511"
    assert ns.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert ns.run("cat", "/proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "1"

    # Every service logs to <log-dir>/<service>/current, every line timestamped.
    for svc in ("felix", "bird", "bird6", "confd"):
        wait_for(lambda svc=svc: node.log(svc).strip(), 30, 0.5, f"{svc} log")
    # Felix at debug level writes its settings at start (one line each; pyroute2's own debug lines stay
    # out, at WARNING) and a line per applied batch: profile writes keep batches coming until the log
    # has rotated to current.1, .2 (however supervisord's reads chunked the start-up lines) and no further.
    writes = iter(range(1000))

    def rotated_twice() -> bool:
        if (node.log_dir / "felix" / "current.2").exists():
            return True
        etcd.put(f"/calico/v1/policy/profile/rot{next(writes)}/rules",
                 '{"inbound_rules": [], "outbound_rules": [{"action": "allow"}]}')
        return False

    wait_for(rotated_twice, 60, 0.5, "felix log rotated twice")
    assert not (node.log_dir / "felix" / "current.3").exists()
    assert (node.log_dir / "felix" / "current.1").stat().st_size <= 1024 + 16384  # one write may overshoot
    for svc in ("felix", "bird", "bird6", "confd"):
        bad = ts_ok(node.log(svc))
        assert not bad, f"{svc} log lines without a timestamp: {bad[:3]}"

    # The services got the node's identity and paths in their environment.
    environ = Path(f"/proc/{states['felix'][1]}/environ").read_bytes().split(b"\0")
    for item in (b"FELIX_FELIXHOSTNAME=nodea", f"FELIX_ETCDENDPOINTS={fabric.endpoint}".encode(),
                 f"CALICO_RUN_DIR={node.run_dir}".encode(), b"NODENAME=nodea", f"IP6={FABRIC_V6}1".encode()):
        assert item in environ, item

    # Health: live and ready (no peers yet, so no BGP session to wait for).
    assert node.run("-live").returncode == 0
    wait_for(lambda: node.run("--ready").returncode == 0, 30, 1, "calico-node -ready")

    # supervisorctl restart felix: a new pid, RUNNING again; tail works.
    r = node.ctl("restart", "felix", check=True)
    assert "felix: started" in r.stdout
    after = node.wait_running(["felix", "bird", "bird6", "confd"])
    assert after["felix"][1] != states["felix"][1]
    assert node.ctl("tail", "confd").stdout.strip()

    # SIGTERM: confd stops first, then bird6, bird, felix; calico-node (now supervisord) exits 0.
    assert node.stop() == 0
    wait_gone(ns)
    text = (node.log_dir / "supervisord.log").read_text()
    order = [m.group(1) for m in re.finditer(r"stopped: (\w+)", text)]
    assert order[-4:] == ["confd", "bird6", "bird", "felix"], order


def test_policy_only_mode_runs_felix_alone_and_programs_policy(fabric, nodes, netns_factory):
    """Acceptance 2: CALICO_NETWORKING=false -> only felix, and Felix still programs policy."""
    fabric.etcd.start()
    ns = fabric.node_ns(1)
    wl = netns_factory("wl")
    veth(ns, "cali0node1", wl, "eth0")
    node = nodes(ns, "nodep", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint,
                 CALICO_NETWORKING="false", FELIX_HEALTHENABLED="true").start()
    node.wait_running(["felix"])
    # Felix's health endpoint (inside the node namespace) decides readiness.
    wait_for(lambda: node.run("-ready").returncode == 0, 60, 1, "calico-node -ready via Felix's endpoint")
    assert "felix" in node.run("-live").stdout
    assert not any("calico-bird" in p or "calico-confd" in p or "/bird" in p for p in ns_processes(ns))
    assert not (node.log_dir / "bird").exists() and not (node.log_dir / "confd").exists()
    etcd = fabric.etcd
    etcd.put(keys.profile_rules("prof1"), json.dumps({"inbound_rules": [{"action": "allow",
                                                                         "src_net": "10.65.9.0/24"}],
                                                      "outbound_rules": [{"action": "allow"}]}))
    etcd.put(keys.workload_endpoint("nodep", "k8s", "wl1", "eth0"), json.dumps({
        "state": "active", "name": "cali0node1", "profile_ids": ["prof1"], "ipv4_nets": ["10.65.0.5/32"],
        "ipv6_nets": []}))

    def programmed() -> bool:
        text = "".join(ns.run(cmd, check=False).stdout for cmd in ("iptables-save", "iptables-legacy-save"))
        return "cali0node1" in text and "10.65.9.0/24" in text
    wait_for(programmed, 30, 0.5, "felix programmed the endpoint's policy in the node namespace")
    assert node.stop() == 0


def test_second_node_with_same_ip_refuses(fabric, nodes):
    """Acceptance 3a: the same IP on two nodes -> the second refuses with one clear line, non-zero."""
    fabric.etcd.start()
    a = nodes(fabric.node_ns(1), "nodea", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint)
    assert a.run("--init-only").returncode == 0
    b = nodes(fabric.node_ns(2), "nodeb", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint)
    r = b.run()
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "already used by node 'nodea'" in errors[0], r.stderr
    assert fabric.etcd.get(keys.bgp_host_ip("nodeb", 4)) is None
    assert not (b.run_dir / "supervisord.conf").exists()


def test_datastore_missing_fails_fast_or_waits(fabric, nodes):
    """Acceptance 3b: no etcd -> clear error and non-zero; WAIT_FOR_DATASTORE=true -> waits, then starts."""
    ns = fabric.node_ns(1)
    node = nodes(ns, "nodew", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint, CALICO_NETWORKING="false")
    r = node.run(timeout=45)  # a node that waited for the datastore would hit this, not return
    assert r.returncode == 1
    assert "Waiting for the datastore" not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot reach the datastore at http://10.98.0.254:2379" in errors[0], r.stderr
    assert "Traceback" not in r.stderr

    node.env["WAIT_FOR_DATASTORE"] = "true"
    node.start()  # SIGTERM while waiting is a clean stop
    wait_for(lambda: "Waiting for the datastore" in node.output.read_text(), 30, 0.5, "a waiting log line")
    assert node.stop(10) == 0

    node.output.write_text("")
    node.start()
    wait_for(lambda: "Waiting for the datastore" in node.output.read_text(), 30, 0.5, "a waiting log line")
    time.sleep(2)
    assert node.proc.poll() is None
    fabric.etcd.start()
    node.wait_running(["felix"], timeout=60)
    assert fabric.etcd.get(keys.bgp_host_ip("nodew", 4)) == f"{FABRIC_V4}.1"
    assert node.stop() == 0


@pytest.mark.parametrize("victim", ["felix", "confd", "bird"])
def test_sigkilled_service_is_restarted_alone(fabric, nodes, victim):
    """Acceptance 4: SIGKILL one service -> supervisord restarts it; the others keep their pids."""
    fabric.etcd.start()
    ns = fabric.node_ns(1)
    node = nodes(ns, "nodek", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint).start()
    before = node.wait_running(["felix", "bird", "confd"])
    time.sleep(3)  # past startsecs, so the kill is an exit of a RUNNING program
    os.kill(before[victim][1], signal.SIGKILL)

    def restarted():
        st = node.states()
        return st.get(victim, ("", 0))[0] == "RUNNING" and st[victim][1] != before[victim][1] and st
    after = wait_for(restarted, 60, 0.5, f"{victim} restarted")
    for svc in ("felix", "bird", "confd"):
        if svc != victim:
            assert after[svc] == before[svc], f"{svc} was disturbed: {before[svc]} -> {after[svc]}"
    time.sleep(4)  # it stays up (no restart loop, e.g. a BIRD orphan holding the socket)
    assert node.states()[victim] == after[victim]
    assert node.stop() == 0


def test_tunnel_addresses_through_real_ipam_and_autodetect(fabric, nodes):
    """IpInIpTunnelAddr / VXLANTunnelAddr follow the pool kinds; IP autodetected from eth0 (not cali*/veth*)."""
    fabric.etcd.start()
    etcd = fabric.etcd
    ns = fabric.node_ns(1)
    ns.run("ip", "addr", "add", "10.77.0.1/32", "dev", "lo")  # listed before eth0, but never the host's IP
    ns.run("ip", "link", "add", "cali0x", "type", "veth", "peer", "name", "veth0x")
    ns.run("ip", "addr", "add", "10.78.0.1/24", "dev", "cali0x")
    etcd.put(keys.pool("10.70.0.0/16"), json.dumps({"cidr": "10.70.0.0/16", "ipip": "tunl0"}))
    etcd.put(keys.pool("10.71.0.0/16"), json.dumps({"cidr": "10.71.0.0/16"}))
    node = nodes(ns, "nodet", IP="autodetect", ETCD_ENDPOINTS=fabric.endpoint)
    r = node.run("--init-only")
    assert r.returncode == 0, r.stderr
    assert etcd.get(keys.bgp_host_ip("nodet", 4)) == f"{FABRIC_V4}.1"
    ipip = etcd.get(keys.host_config("nodet", "IpInIpTunnelAddr"))
    assert ipip and ipip.startswith("10.70.")
    assert etcd.get(keys.host_config("nodet", "VXLANTunnelAddr")) is None
    assert any(k.startswith(keys.ipam_host_dir("nodet")) for k in etcd.keys("/calico/ipam/v2/host/"))

    # Restart: same address kept.
    assert node.run("--init-only").returncode == 0
    assert etcd.get(keys.host_config("nodet", "IpInIpTunnelAddr")) == ipip

    # The pool turns VXLAN: the IPIP address is released, a VXLAN one allocated from the same pool.
    etcd.put(keys.pool("10.70.0.0/16"), json.dumps({"cidr": "10.70.0.0/16", "vxlan": "vxlan.calico"}))
    r = node.run("--init-only")
    assert r.returncode == 0, r.stderr
    assert etcd.get(keys.host_config("nodet", "IpInIpTunnelAddr")) is None
    vx = etcd.get(keys.host_config("nodet", "VXLANTunnelAddr"))
    assert vx and vx.startswith("10.70.")
    assert "Released IpInIpTunnelAddr" in r.stderr

    # Bad settings are one line naming the variable.
    node.env["IP"] = "10.98.0.300"
    r = node.run("--init-only")
    assert r.returncode == 1 and "IP: " in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_disable_file_logging_prefixes_every_service_on_stdout(fabric, nodes):
    """CALICO_DISABLE_FILE_LOGGING=true: no log files; each service's lines on stdout as '<svc> | <ts> ...'."""
    fabric.etcd.start()
    ns = fabric.node_ns(1)
    node = nodes(ns, "noded", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint,
                 CALICO_DISABLE_FILE_LOGGING="true")
    node.start()
    node.wait_running(["felix", "bird", "confd", "log-relay"])

    def prefixed() -> bool:
        lines = node.output.read_text(errors="replace").splitlines()
        return all(any(line.startswith(f"{svc} | ") and TIMESTAMP.match(line[len(svc) + 3:]) for line in lines)
                   for svc in ("felix", "bird", "confd"))
    wait_for(prefixed, 30, 0.5, "prefixed, timestamped lines of felix, bird and confd on stdout")
    assert not any((node.log_dir / svc).exists() for svc in ("felix", "bird", "confd"))
    assert node.stop() == 0


def test_ready_follows_bgp_sessions_between_two_nodes(fabric, nodes):
    """-ready needs every BGP session Established (networking on); -live does not."""
    fabric.etcd.start()
    a = nodes(fabric.node_ns(1), "nodea", IP=f"{FABRIC_V4}.1", ETCD_ENDPOINTS=fabric.endpoint).start()
    b = nodes(fabric.node_ns(2), "nodeb", IP=f"{FABRIC_V4}.2", ETCD_ENDPOINTS=fabric.endpoint).start()
    a.wait_running(["felix", "bird", "confd"])
    b.wait_running(["felix", "bird", "confd"])
    wait_for(lambda: a.run("-ready").returncode == 0 and b.run("-ready").returncode == 0, 60, 1,
             "both nodes ready (mesh session Established)")
    assert b.stop() == 0

    def a_not_ready():
        r = a.run("-ready")
        return r.returncode == 1 and "bird:" in r.stdout and r.stdout
    out = wait_for(a_not_ready, 60, 1, "node a not ready once its peer is gone")
    assert "calico/node is not ready" in out
    assert a.run("-live").returncode == 0
