"""calicoctl status / node show / node remove / node run|stop against real etcd, BIRD and calico-node."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lib.etcd import EtcdServer
from tests.lib.netns import veth, wait_for

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
        rows = [ln for ln in r.stdout.splitlines() if "node-to-node mesh" in ln and "Established" in ln]
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
    r = ctl(ns, etcd.endpoint, "node", "show")
    assert r.returncode == 0, r.stderr
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in r.stdout.splitlines() if ln.startswith("| h")]
    assert rows == [["h1", "10.0.0.1", "", "(64511)"], ["h2", "10.0.0.2", "fd00::2", "65002"]]


def _seed_host(etcd, host: str) -> None:
    etcd.put(f"/calico/v1/host/{host}/bird_ip", "10.0.0.9")
    etcd.put(f"/calico/v1/host/{host}/config/LogSeverityScreen", "info")
    etcd.put(f"/calico/bgp/v1/host/{host}/ip_addr_v4", "10.0.0.9")
    etcd.put(f"/calico/bgp/v1/host/{host}/ip_addr_v6", "")
    etcd.put(f"/calico/felix/v1/host/{host}/last_reported_status", '{"time": "x", "uptime": 1}')


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
