"""calicoctl status / node show / node remove / node run|stop against real etcd, BIRD and calico-node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from calico_testing.etcd import EtcdServer
from calico_testing.netns import veth, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALICOCTL = os.path.join(ROOT, ".venv", "bin", "calicoctl")


def ctl(ns, endpoint: str, *args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {"PATH": os.environ["PATH"], "ETCD_ENDPOINTS": endpoint}
    e.update(env or {})
    return subprocess.run(["ip", "netns", "exec", ns.name, "env", "-i", *[f"{k}={v}" for k, v in e.items()],
                           CALICOCTL, *args], capture_output=True, text=True, timeout=timeout)


def bird_conf(me: str, peer: str, me6: str, peer6: str, version: int) -> str:
    if version == 4:
        name, nbr = "Mesh_" + peer.replace(".", "_"), peer
    else:
        name, nbr = "Mesh_" + peer6.replace(":", "_"), peer6
    return (f"router id {me};\nprotocol device {{ scan time 2; }}\n"
            f"protocol bgp {name} {{\n  local as 64511;\n  neighbor {nbr} as 64511;\n"
            "  import all;\n  export none;\n  connect retry time 1;\n}\n"
            "protocol bgp Global_10_254_254_254 {\n  local as 64511;\n  neighbor 10.254.254.254 as 64512;\n"
            "  import none;\n  export none;\n}\n" if version == 4 else
            f"router id {me};\nprotocol device {{ scan time 2; }}\n"
            f"protocol bgp {name} {{\n  local as 64511;\n  neighbor {nbr} as 64511;\n"
            "  import all;\n  export none;\n  connect retry time 1;\n}\n")


@pytest.fixture
def two_birds(netns_factory, tmp_path):
    """Two node namespaces on one link, each with bird and bird6 peering as a mesh."""
    a, b = netns_factory("na"), netns_factory("nb")
    veth(a, "eth0", b, "eth0")
    procs = []
    for ns, me, me6, peer, peer6 in ((a, "10.77.0.1", "fd77::1", "10.77.0.2", "fd77::2"),
                                     (b, "10.77.0.2", "fd77::2", "10.77.0.1", "fd77::1")):
        ns.run("ip", "addr", "add", f"{me}/24", "dev", "eth0")
        ns.run("ip", "addr", "add", f"{me6}/64", "dev", "eth0", "nodad")
        run = tmp_path / ns.name
        run.mkdir()
        for v, prog, sock in ((4, "bird", "bird.ctl"), (6, "bird6", "bird6.ctl")):
            conf = run / f"{prog}.cfg"
            conf.write_text(bird_conf(me, peer, me6, peer6, v))
            procs.append(ns.popen([prog, "-f", "-c", str(conf), "-s", str(run / sock)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    yield a, b, tmp_path / a.name
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)


def test_status_shows_mesh_peers_established(two_birds):
    a, b, run_a = two_birds
    env = {"CALICO_RUN_DIR": str(run_a)}

    def established() -> str | None:
        r = ctl(a, "http://127.0.0.1:1", "status", env=env)
        # BIRD passes through 'feed' (exporting its routes) on the way to 'up': wait for 'up'.
        rows = [ln for ln in r.stdout.splitlines()
                if "node-to-node mesh" in ln and "Established" in ln and "| up " in ln]
        return r.stdout if len(rows) == 2 else None

    out = wait_for(established, timeout=40, interval=1, what="both mesh sessions Established in status")
    v4 = out.split("IPv4 BGP status", 1)[1].split("IPv6 BGP status", 1)[0]
    v6 = out.split("IPv6 BGP status", 1)[1]
    assert "PEER ADDRESS" in v4 and "PEER TYPE" in v4 and "SINCE" in v4 and "INFO" in v4
    row = next(ln for ln in v4.splitlines() if "10.77.0.2" in ln)
    assert "node-to-node mesh" in row and "up" in row and "Established" in row
    glob = next(ln for ln in v4.splitlines() if "10.254.254.254" in ln)
    assert "| global " in glob and "Established" not in glob
    assert "fd77::2" in v6 and "node-to-node mesh" in v6
    # no calico-node program runs in that namespace: said so, and exit 1
    r = ctl(a, "http://127.0.0.1:1", "status", env=env)
    assert r.returncode == 1 and "calico-node is not running" in r.stdout


def test_status_reports_a_missing_bird_socket(netns_factory, tmp_path):
    ns = netns_factory("nst")
    r = ctl(ns, "http://127.0.0.1:1", "status", env={"CALICO_RUN_DIR": str(tmp_path)})
    assert f"{tmp_path}/bird.ctl does not exist" in r.stdout
    assert f"{tmp_path}/bird6.ctl does not exist" in r.stdout


@pytest.fixture
def node_etcd(netns_factory):
    ns = netns_factory("ne")
    etcd = EtcdServer(netns=ns.name).start()
    yield ns, etcd
    etcd.close()


def test_node_show_lists_hosts_with_ips_and_as(node_etcd):
    ns, etcd = node_etcd
    etcd.put("/calico/bgp/v1/global/as_num", "64511")
    etcd.put("/calico/bgp/v1/host/h1/ip_addr_v4", "10.0.0.1")
    etcd.put("/calico/bgp/v1/host/h1/ip_addr_v6", "")
    etcd.put("/calico/bgp/v1/host/h2/ip_addr_v4", "10.0.0.2")
    etcd.put("/calico/bgp/v1/host/h2/ip_addr_v6", "fd00::2")
    etcd.put("/calico/bgp/v1/host/h2/as_num", "65002")
    etcd.put("/calico/bgp/v1/host/h2/peer_v4/10.0.0.77", '{"ip": "10.0.0.77", "as_num": "65077"}')
    etcd.put("/calico/bgp/v1/host/h1/rr_cluster_id", "1.0.0.1")
    r = ctl(ns, etcd.endpoint, "node", "show")
    assert r.returncode == 0, r.stderr
    assert "| BGP Peers v4 " in r.stdout and "| RR Cluster " in r.stdout, r.stdout
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in r.stdout.splitlines() if ln.startswith("| h")]
    assert rows == [["h1", "10.0.0.1", "", "(64511)", "", "", "1.0.0.1"],
                    ["h2", "10.0.0.2", "fd00::2", "65002", "10.0.0.77 as 65077", "", ""]]


def _seed_host(etcd, host: str) -> None:
    etcd.put(f"/calico/v1/host/{host}/bird_ip", "10.0.0.9")
    etcd.put(f"/calico/v1/host/{host}/config/LogSeverityScreen", "info")
    etcd.put(f"/calico/bgp/v1/host/{host}/ip_addr_v4", "10.0.0.9")
    etcd.put(f"/calico/bgp/v1/host/{host}/ip_addr_v6", "")
    etcd.put(f"/calico/felix/v1/host/{host}/last_reported_status", '{"time": "x", "uptime": 1}')
    etcd.put(f"/calico/bgp/v1/host/{host}/status/v4", '{"sessions": []}')  # published by its BIRD shim


def test_node_remove_refuses_with_endpoints_then_removes_everything(node_etcd, netns_factory):
    ns, etcd = node_etcd
    etcd.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16"}')
    etcd.put("/calico/v1/host/other/bird_ip", "10.0.0.8")
    _seed_host(etcd, "gone")
    wl = netns_factory("wl")
    # an endpoint of 'gone' holding an IPAM address, made the real way
    r = ctl(ns, etcd.endpoint, "container", "add", wl.name, "ipv4", "--hostname=gone")
    assert r.returncode == 0, r.stderr
    ip = wl.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()[3].split("/")[0]
    assert etcd.keys("/calico/ipam/v2/host/gone/")

    r = ctl(ns, etcd.endpoint, "node", "remove", "--hostname=gone")
    assert r.returncode == 1 and "--remove-endpoints" in r.stderr and r.stderr.count("\n") == 1
    assert etcd.keys("/calico/v1/host/gone/")

    r = ctl(ns, etcd.endpoint, "node", "remove", "--hostname=gone", "--remove-endpoints")
    assert r.returncode == 0, r.stderr
    for prefix in ("/calico/v1/host/gone/", "/calico/bgp/v1/host/gone/", "/calico/ipam/v2/host/gone/",
                   "/calico/felix/v1/host/gone/"):
        assert etcd.keys(prefix) == [], prefix
    assert etcd.keys("/calico/v1/host/other/")  # nobody else's keys
    assert not [ln for ln in ns.run("ip", "link").stdout.splitlines() if ": cali" in ln]  # veth gone
    # the address is free again: the next workload (on another host) may get it
    wl2 = netns_factory("wl")
    r = ctl(ns, etcd.endpoint, "container", "add", wl2.name, ip, "--hostname=other")
    assert r.returncode == 0, r.stderr

    r = ctl(ns, etcd.endpoint, "node", "remove", "--hostname=gone")
    assert r.returncode == 1 and "not registered" in r.stderr


# ---- real nodes: calico-node started by `calicoctl node run --runtime=none` ----------------------

class Fabric:
    """A bridge namespace with etcd on 10.97.0.254; nodes attach as 10.97.0.N (nothing in the root namespace)."""

    def __init__(self, netns_factory, tmp_path):
        self.factory, self.tmp = netns_factory, tmp_path
        self.ns = netns_factory("fab")
        self.ns.run("ip", "link", "add", "br0", "type", "bridge")
        self.ns.run("ip", "addr", "add", "10.97.0.254/24", "dev", "br0")
        self.ns.run("ip", "link", "set", "br0", "up")
        self.etcd = EtcdServer(host="10.97.0.254", netns=self.ns.name).start()
        self.procs: list[subprocess.Popen] = []

    def node(self, n: int):
        ns = self.factory("nd")
        veth(ns, "eth0", self.ns, f"p{n}")
        self.ns.run("ip", "link", "set", f"p{n}", "master", "br0")
        ns.run("ip", "addr", "add", f"10.97.0.{n}/24", "dev", "eth0")
        ns.run("ip", "route", "add", "default", "via", "10.97.0.254")
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        d = self.tmp / ns.name
        for sub in ("run", "log", "conf"):
            (d / sub).mkdir(parents=True)
        ns.ip = f"10.97.0.{n}"
        ns.env = {"CALICO_RUN_DIR": str(d / "run"), "CALICO_CONF_DIR": str(d / "conf"), "NO_DEFAULT_POOLS": "true"}
        ns.dir = d
        return ns

    def run_node(self, ns) -> subprocess.Popen:
        env = {"PATH": os.environ["PATH"], "ETCD_ENDPOINTS": self.etcd.endpoint, **ns.env}
        log = open(ns.dir / "node.out", "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns.name, "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                              CALICOCTL, "node", "run", "--runtime=none", f"--ip={ns.ip}", f"--name={ns.name}",
                              f"--log-dir={ns.dir / 'log'}"], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def ctl(self, ns, *args, env=None) -> subprocess.CompletedProcess:
        return ctl(ns, self.etcd.endpoint, *args, env={**ns.env, **(env or {})})

    def ok(self, ns, *args) -> str:
        r = self.ctl(ns, *args)
        assert r.returncode == 0, f"calicoctl {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.etcd.close()


@pytest.fixture
def fabric(netns_factory, tmp_path):
    f = Fabric(netns_factory, tmp_path)
    yield f
    f.close()


def _node_up(fabric, ns) -> None:
    def up() -> bool:
        logs = all((ns.dir / "log" / s / "current").is_file() for s in ("felix", "confd", "bird"))
        logs = logs and (ns.dir / "run" / "bird.ctl").exists()
        return logs and fabric.etcd.get(f"/calico/bgp/v1/host/{ns.name}/ip_addr_v4") == ns.ip
    wait_for(up, timeout=60, what=f"calico-node on {ns.name} (see {ns.dir}/node.out)")


def test_node_run_none_stop_and_remove(fabric, netns_factory):
    """Acceptance 5 (runtime none) and stop/remove on one node."""
    fabric.etcd.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16"}')
    a = fabric.node(1)
    proc = fabric.run_node(a)
    _node_up(fabric, a)
    st = fabric.ctl(a, "status")
    assert st.returncode == 0 and "calico-node is running" in st.stdout, st.stdout + st.stderr
    assert "calico-felix" in st.stdout and "IPv4 BGP status" in st.stdout

    # diags of a running node: supervisord's view, BIRD over its socket, the per-service logs
    out = fabric.ok(a, "diags", f"--log-dir={a.dir / 'log'}")
    path = out.strip().split("Diags saved to ", 1)[1]
    try:
        with tarfile.open(path) as tar:
            files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    finally:
        shutil.rmtree(os.path.dirname(path))
    assert any(ln.split()[:1] == ["felix"] and ln.split()[1] in ("STARTING", "RUNNING")
               for ln in files["supervisor/status.txt"].splitlines()), \
        files["supervisor/status.txt"]
    assert "show protocols all" in files["bird/bird-protocols.txt"] and "BIRD" in files["bird/bird-protocols.txt"]
    assert "logs/felix/current" in files and "logs/confd/current" in files
    assert f"/calico/bgp/v1/host/{a.name}/ip_addr_v4" in files["etcd/calico-dump.jsonl"]

    wl = netns_factory("wl")
    fabric.ok(a, "container", "add", wl.name, "ipv4")  # node found from CALICO_RUN_DIR, no NODENAME
    assert fabric.etcd.keys(f"/calico/v1/host/{a.name}/workload/calicoctl/{wl.name}/")
    r = fabric.ctl(a, "node", "stop")
    assert r.returncode == 1 and "workload endpoint" in r.stderr
    assert proc.poll() is None
    r = fabric.ctl(a, "node", "remove")
    assert r.returncode == 1 and "running" in r.stderr

    out = fabric.ok(a, "node", "stop", "--force")
    assert "Stopped calico-node" in out
    proc.wait(10)
    assert not [p for p in status_programs(a)], "node programs left running after node stop"
    assert fabric.ok(a, "node", "stop").strip() == "calico-node is not running here"

    assert fabric.etcd.keys(f"/calico/ipam/v2/host/{a.name}/")
    r = fabric.ctl(a, "node", "remove")
    assert r.returncode == 1 and "--remove-endpoints" in r.stderr
    fabric.ok(a, "node", "remove", "--remove-endpoints")
    assert not [ln for ln in a.run("ip", "link").stdout.splitlines() if ": cali" in ln]
    for prefix in (f"/calico/v1/host/{a.name}/", f"/calico/bgp/v1/host/{a.name}/", f"/calico/ipam/v2/host/{a.name}/"):
        assert fabric.etcd.keys(prefix) == [], prefix


def status_programs(ns) -> list[str]:
    pids = ns.pids()
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"supervisord" in a or b"calico-felix" in a or b"calico-confd" in a for a in argv[:3]):
            out.append(" ".join(a.decode() for a in argv))
    return out


def test_two_nodes_mesh_ping_status_and_remove(fabric, netns_factory):
    """Acceptance 2 and 3: cross-node ping, mesh Established in status, node remove withdraws the node."""
    fabric.etcd.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16"}')
    fabric.etcd.put("/calico/v1/policy/profile/open/rules",
                    '{"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}')
    a, b = fabric.node(1), fabric.node(2)
    fabric.run_node(a)
    pb = fabric.run_node(b)
    _node_up(fabric, a)
    _node_up(fabric, b)
    wa, wb = netns_factory("wa"), netns_factory("wb")
    fabric.ok(a, "container", "add", wa.name, "ipv4")
    fabric.ok(b, "container", "add", wb.name, "ipv4")
    fabric.ok(a, "container", wa.name, "profile", "set", "open")
    fabric.ok(b, "container", wb.name, "profile", "set", "open")
    ipb = json.loads(wb.run("ip", "-j", "-4", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"][0]["local"]
    t0 = time.monotonic()
    wait_for(lambda: wa.run("ping", "-c1", "-W1", ipb, check=False).returncode == 0, timeout=60,
             what=f"cross-node ping to {ipb}")
    print(f"cross-node ping after {time.monotonic() - t0:.1f}s")

    for me, peer in ((a, b), (b, a)):
        def mesh_up(me=me, peer=peer) -> bool:
            out = fabric.ctl(me, "status").stdout
            return any(peer.ip in ln and "node-to-node mesh" in ln and "Established" in ln
                       for ln in out.splitlines())
        wait_for(mesh_up, timeout=30, what=f"{me.name} status: mesh peer {peer.ip} Established")

    block_b = [k.rsplit("/", 1)[1].replace("-", "/") for k in fabric.etcd.keys(f"/calico/ipam/v2/host/{b.name}/ipv4/")]
    assert block_b
    assert any(ln.startswith(block_b[0]) for ln in a.run("ip", "-4", "route").stdout.splitlines())

    fabric.ok(b, "container", "remove", wb.name)
    fabric.ok(b, "node", "stop")
    pb.wait(10)
    fabric.ok(b, "node", "remove")
    for prefix in (f"/calico/v1/host/{b.name}/", f"/calico/bgp/v1/host/{b.name}/", f"/calico/ipam/v2/host/{b.name}/"):
        assert fabric.etcd.keys(prefix) == [], prefix
    # the other node forgets it: no route to its block, and its mesh peer is gone from A's BIRD
    wait_for(lambda: not any(ln.startswith(block_b[0]) for ln in a.run("ip", "-4", "route").stdout.splitlines()),
             timeout=30, what=f"{a.name} to withdraw the route to {block_b[0]}")
    wait_for(lambda: b.ip not in fabric.ctl(a, "status").stdout, timeout=30,
             what=f"{a.name}'s BIRD to drop the mesh peer {b.ip}")
