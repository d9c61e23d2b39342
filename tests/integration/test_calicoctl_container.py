"""`calicoctl container ...` on a real node namespace: veths, addresses, routes, IPAM and endpoints in etcd.

The node is a namespace with an uplink (a default route, so proxy ARP answers
for 169.254.1.1 once Felix runs) and its own etcd on its loopback; workloads
are further namespaces.  calicoctl runs inside the node namespace, as an
operator runs it on a host.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from calico_testing.etcd import EtcdServer
from calico_testing.netns import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALICOCTL = os.path.join(ROOT, ".venv", "bin", "calicoctl")
NODE_IP = "10.98.0.1"


class Node:
    def __init__(self, ns, etcd):
        self.ns, self.etcd, self.name = ns, etcd, ns.name

    def ctl(self, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        e = {"PATH": os.environ["PATH"], "ETCD_ENDPOINTS": self.etcd.endpoint}
        e.update(env or {})
        return subprocess.run(["ip", "netns", "exec", self.name, "env", "-i",
                               *[f"{k}={v}" for k, v in e.items()], CALICOCTL, *args],
                              capture_output=True, text=True, timeout=120)

    def ok(self, *args, **kw) -> str:
        r = self.ctl(*args, **kw)
        assert r.returncode == 0, f"calicoctl {' '.join(args)}: {r.stderr}"
        return r.stdout

    def cali_links(self) -> list[str]:
        out = json.loads(self.ns.run("ip", "-j", "link", "show").stdout)
        return [link["ifname"] for link in out if link["ifname"].startswith("cali")]

    def endpoints(self, wl: str | None = None) -> dict[str, dict]:
        prefix = f"/calico/v1/host/{self.name}/workload/calicoctl/" + (f"{wl}/" if wl else "")
        return {k: json.loads(self.etcd.get(k)) for k in self.etcd.keys(prefix)}


@pytest.fixture
def node(netns_factory):
    ns = netns_factory("node")
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    ns.run("ip", "link", "set", "uplink0", "up")
    ns.run("ip", "link", "set", "uplink1", "up")
    ns.run("ip", "addr", "add", f"{NODE_IP}/24", "dev", "uplink0")
    ns.run("ip", "route", "add", "default", "via", "10.98.0.254", "dev", "uplink0", "onlink")
    etcd = EtcdServer(netns=ns.name).start()
    # registered as calico-node would: calicoctl finds "which node am I" from this
    etcd.put(f"/calico/bgp/v1/host/{ns.name}/ip_addr_v4", NODE_IP)
    etcd.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16"}')
    yield Node(ns, etcd)
    etcd.close()


def wl_addrs(wl, family: int = 4) -> list[str]:
    out = json.loads(wl.run("ip", "-j", f"-{family}", "addr", "show", "dev", "eth0").stdout)
    return [f"{a['local']}/{a['prefixlen']}" for e in out for a in e["addr_info"] if a.get("scope") == "global"]


def wl_routes(wl, family: int = 4) -> list[dict]:
    return json.loads(wl.run("ip", "-j", f"-{family}", "route", "show").stdout)


def test_add_wires_the_namespace_and_writes_the_endpoint(node, netns_factory):
    wl = netns_factory("wl")
    out = node.ok("container", "add", wl.name, "ipv4")
    eps = node.endpoints(wl.name)
    assert len(eps) == 1
    (key, ep), = eps.items()
    ep_id = key.rsplit("/", 1)[1]
    assert len(ep_id) == 32 and ep_id in out
    assert ep["state"] == "active" and ep["profile_ids"] == [] and ep["ipv6_nets"] == []
    assert ep["name"] == "cali" + ep_id[:11]
    assert ep["ipv4_nets"] == ["10.65.0.1/32"]
    assert ep["mac"] == json.loads(wl.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    assert wl_addrs(wl) == ["10.65.0.1/32"]
    routes = {(r["dst"], r.get("gateway"), r.get("scope")) for r in wl_routes(wl)}
    assert ("169.254.1.1", None, "link") in routes and ("default", "169.254.1.1", None) in routes
    host = json.loads(node.ns.run("ip", "-j", "link", "show", ep["name"]).stdout)[0]
    assert "UP" in host["flags"]
    # the block is this node's
    assert node.etcd.keys(f"/calico/ipam/v2/host/{node.name}/ipv4/block/10.65.0.0-26")

    r = node.ctl("container", "add", wl.name, "ipv4")
    assert r.returncode == 1 and "already has an endpoint" in r.stderr
    assert len(node.cali_links()) == 1

    show = node.ok("container", wl.name, "endpoint", "show")
    assert ep_id in show and "10.65.0.1/32" in show and ep["name"] in show


def test_ipv6_and_auto_route_via_the_host_link_local(node, netns_factory):
    node.etcd.put("/calico/v1/ipam/v6/pool/fd65::-64", '{"cidr": "fd65::/64"}')
    wl = netns_factory("wl")
    node.ok("container", "add", wl.name, "auto")
    (_, ep), = node.endpoints(wl.name).items()
    assert ep["ipv4_nets"] == ["10.65.0.1/32"] and len(ep["ipv6_nets"]) == 1
    v6 = ep["ipv6_nets"][0]
    assert v6.startswith("fd65::") and wl_addrs(wl, 6) == [v6]
    host_ll = [a["local"] for e in json.loads(node.ns.run("ip", "-j", "-6", "addr", "show", "dev", ep["name"]).stdout)
               for a in e["addr_info"] if a["local"].startswith("fe80:")]
    default = [r for r in wl_routes(wl, 6) if r["dst"] == "default"]
    assert default and default[0]["gateway"] == host_ll[0] and default[0]["dev"] == "eth0"
    wl6 = netns_factory("wl")
    node.ok("container", "add", wl6.name, "ipv6")
    (_, ep6), = node.endpoints(wl6.name).items()
    assert ep6["ipv4_nets"] == [] and len(ep6["ipv6_nets"]) == 1 and wl_addrs(wl6) == []


def test_explicit_ip_must_be_free_and_in_a_pool(node, netns_factory):
    a, b, c = netns_factory("wl"), netns_factory("wl"), netns_factory("wl")
    node.ok("container", "add", a.name, "10.65.3.3")
    assert wl_addrs(a) == ["10.65.3.3/32"]
    r = node.ctl("container", "add", b.name, "10.66.0.1")
    assert r.returncode == 1 and "10.66.0.1" in r.stderr and "pool" in r.stderr
    r = node.ctl("container", "add", c.name, "10.65.3.3")
    assert r.returncode == 1 and "10.65.3.3" in r.stderr and "already assigned" in r.stderr
    # the failures left nothing behind
    assert len(node.cali_links()) == 1
    assert list(node.endpoints()) == list(node.endpoints(a.name))
    assert json.loads(b.run("ip", "-j", "link", "show").stdout)[-1]["ifname"] == "lo"


def test_pools_with_ipam_false_give_no_addresses(node, netns_factory):
    """`ipam: false` pools are routed but never handed out: auto asks no IPv6 of an
    ipam-false IPv6 pool, and an explicit address in one is refused."""
    node.etcd.put("/calico/v1/ipam/v6/pool/fd65::-64", '{"cidr": "fd65::/64", "ipam": false}')
    node.etcd.put("/calico/v1/ipam/v4/pool/10.66.0.0-16", '{"cidr": "10.66.0.0/16", "ipam": false}')
    a, b, c = netns_factory("wl"), netns_factory("wl"), netns_factory("wl")
    node.ok("container", "add", a.name, "auto")
    (_, ep), = node.endpoints(a.name).items()
    assert ep["ipv4_nets"] == ["10.65.0.1/32"] and ep["ipv6_nets"] == []
    r = node.ctl("container", "add", b.name, "ipv6")
    assert r.returncode == 1 and "no enabled IPv6 pool" in r.stderr
    r = node.ctl("container", "add", c.name, "10.66.0.1")
    assert r.returncode == 1 and "10.66.0.1 is not in any enabled IPv4 pool" in r.stderr
    assert list(node.endpoints()) == list(node.endpoints(a.name)) and len(node.cali_links()) == 1


def test_remove_undoes_everything_and_frees_the_ips(node, netns_factory):
    w1, w2 = netns_factory("wl"), netns_factory("wl")
    node.ok("container", "add", w1.name, "ipv4")
    node.ok("container", "add", w2.name, "ipv4")
    ips = sorted(wl_addrs(w1) + wl_addrs(w2))
    assert ips == ["10.65.0.1/32", "10.65.0.2/32"]
    node.ok("container", "remove", w1.name)
    node.ok("container", "remove", w2.name)
    assert node.cali_links() == []
    assert node.endpoints() == {}
    assert node.etcd.keys("/calico/ipam/v2/handle/") == []
    assert json.loads(w1.run("ip", "-j", "link", "show").stdout)[-1]["ifname"] == "lo"
    block = json.loads(node.etcd.get("/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26"))
    assert not [a for a in block["allocations"] if a is not None]  # every slot free (list or old dict shape)
    # handed out again
    w3 = netns_factory("wl")
    node.ok("container", "add", w3.name, "ipv4")
    assert wl_addrs(w3) == ["10.65.0.1/32"]
    r = node.ctl("container", "remove", w1.name)
    assert r.returncode == 1 and "no endpoint" in r.stderr


def test_remove_after_the_namespace_is_gone(node, netns_factory):
    wl = netns_factory("wl")
    node.ok("container", "add", wl.name, "ipv4")
    wl.close()
    node.ok("container", "remove", wl.name)
    assert node.cali_links() == [] and node.endpoints() == {}


def test_endpoint_written_by_an_older_release_is_still_found_and_removed(node, netns_factory):
    """Older releases filed container add's endpoints under orchestrator `netns`."""
    wl = netns_factory("wl")
    node.ok("container", "add", wl.name, "ipv4")
    [(key, value)] = node.endpoints(wl.name).items()
    legacy = key.replace("/workload/calicoctl/", "/workload/netns/")
    node.etcd.put(legacy, json.dumps(value))
    node.etcd.delete(key)
    r = node.ctl("container", "add", wl.name, "ipv4")
    assert r.returncode != 0 and "already" in r.stderr, r.stderr
    node.ok("container", "remove", wl.name)
    assert node.etcd.keys(f"/calico/v1/host/{node.name}/workload/") == []
    assert node.cali_links() == [] and node.etcd.keys("/calico/ipam/v2/handle/") == []


def test_ip_add_and_remove(node, netns_factory):
    wl = netns_factory("wl")
    node.ok("container", "add", wl.name, "ipv4")
    node.ok("container", wl.name, "ip", "add", "10.65.7.7")
    (_, ep), = node.endpoints(wl.name).items()
    assert ep["ipv4_nets"] == ["10.65.0.1/32", "10.65.7.7/32"]
    assert sorted(wl_addrs(wl)) == ["10.65.0.1/32", "10.65.7.7/32"]
    r = node.ctl("container", wl.name, "ip", "add", "10.65.7.7")
    assert r.returncode == 1 and "already" in r.stderr
    r = node.ctl("container", wl.name, "ip", "add", "192.0.2.1")
    assert r.returncode == 1 and "pool" in r.stderr
    node.ok("container", wl.name, "ip", "remove", "10.65.7.7")
    (_, ep), = node.endpoints(wl.name).items()
    assert ep["ipv4_nets"] == ["10.65.0.1/32"] and wl_addrs(wl) == ["10.65.0.1/32"]
    block = json.loads(node.etcd.get("/calico/ipam/v2/assignment/ipv4/block/10.65.4.0-26") or "{}")
    assert not block.get("allocations")
    r = node.ctl("container", wl.name, "ip", "remove", "10.65.7.7")
    assert r.returncode == 1 and "not assigned" in r.stderr


def test_profile_set_append_remove(node, netns_factory):
    wl = netns_factory("wl")
    node.ok("container", "add", wl.name, "ipv4")
    r = node.ctl("container", wl.name, "profile", "set", "nope")
    assert r.returncode == 1 and "profile nope does not exist" in r.stderr
    for p in ("p1", "p2"):
        node.etcd.put(f"/calico/v1/policy/profile/{p}/rules", '{"inbound_rules": [], "outbound_rules": []}')

    def profiles() -> list[str]:
        (_, ep), = node.endpoints(wl.name).items()
        return ep["profile_ids"]

    node.ok("container", wl.name, "profile", "set", "p1")
    assert profiles() == ["p1"]
    node.ok("container", wl.name, "profile", "append", "p2")
    assert profiles() == ["p1", "p2"]
    r = node.ctl("container", wl.name, "profile", "append", "p2")
    assert r.returncode == 1 and "already has profile p2" in r.stderr
    node.ok("container", wl.name, "profile", "remove", "p1")
    assert profiles() == ["p2"]
    r = node.ctl("container", wl.name, "profile", "remove", "p1")
    assert r.returncode == 1 and "does not have profile p1" in r.stderr
    node.ok("container", wl.name, "profile", "set")
    assert profiles() == []


def test_hostname_option_and_env_choose_the_node(node, netns_factory):
    a, b = netns_factory("wl"), netns_factory("wl")
    node.ok("container", "add", a.name, "ipv4", "--hostname=elsewhere")
    assert node.etcd.keys(f"/calico/v1/host/elsewhere/workload/calicoctl/{a.name}/endpoint/")
    node.ok("container", "add", b.name, "ipv4", env={"NODENAME": "viaenv"})
    assert node.etcd.keys(f"/calico/v1/host/viaenv/workload/calicoctl/{b.name}/endpoint/")
    r = node.ctl("container", a.name, "endpoint", "show")  # looks on this node: not there
    assert r.returncode == 1 and "no endpoint" in r.stderr
    node.ok("container", "remove", a.name, "--hostname=elsewhere")
    assert node.etcd.keys("/calico/v1/host/elsewhere/") == []


def _start_felix(node, tmp_path):
    log = open(tmp_path / "felix.log", "w")
    env = dict(os.environ, FELIX_FELIXHOSTNAME=node.name, FELIX_ETCDENDPOINTS=node.etcd.endpoint,
               ETCD_ENDPOINTS=node.etcd.endpoint)
    return node.ns.popen(["calico-felix"], env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_containers_ping_once_their_profile_allows_it(node, netns_factory, tmp_path):
    """Acceptance 1: container add, profile set, ping; remove cleans up; IPs are handed out again."""
    node.etcd.put("/calico/v1/Ready", "true")
    node.etcd.put("/calico/v1/policy/profile/open/rules",
                  '{"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}')
    felix = _start_felix(node, tmp_path)
    try:
        w1, w2 = netns_factory("wl"), netns_factory("wl")
        node.ok("container", "add", w1.name, "ipv4")
        node.ok("container", "add", w2.name, "ipv4")
        ip1, ip2 = wl_addrs(w1)[0].split("/")[0], wl_addrs(w2)[0].split("/")[0]

        def routed() -> bool:
            out = node.ns.run("ip", "-4", "route", "show").stdout
            return f"{ip1} dev cali" in out and f"{ip2} dev cali" in out

        wait_for(routed, timeout=30, what=f"felix routes to the workloads (felix log: {tmp_path}/felix.log)")
        assert w1.run("ping", "-c1", "-W1", ip2, check=False).returncode != 0, "no profile yet: must not pass"
        node.ok("container", w1.name, "profile", "set", "open")
        node.ok("container", w2.name, "profile", "set", "open")
        wait_for(lambda: w1.run("ping", "-c1", "-W1", ip2, check=False).returncode == 0, timeout=30,
                 what="ping w1 -> w2 once the profile allows it")
        assert w2.run("ping", "-c1", "-W1", ip1, check=False).returncode == 0

        node.ok("container", "remove", w1.name)
        node.ok("container", "remove", w2.name)
        assert node.cali_links() == [] and node.endpoints() == {}
        wait_for(lambda: ip1 not in node.ns.run("ip", "-4", "route", "show").stdout, timeout=15,
                 what="the workload route to go")
        assert node.etcd.keys("/calico/ipam/v2/handle/") == []
        w3 = netns_factory("wl")
        node.ok("container", "add", w3.name, "ipv4")
        assert wl_addrs(w3)[0].split("/")[0] in (ip1, ip2)
    finally:
        felix.terminate()
        try:
            felix.wait(15)
        except subprocess.TimeoutExpired:
            felix.kill()
            felix.wait()


def test_bad_endpoint_in_etcd_is_named_and_still_removable(node, netns_factory):
    wl = netns_factory("wl")
    node.ok("container", "add", wl.name, "ipv4")
    (key, ep), = node.endpoints(wl.name).items()
    node.etcd.put(key, json.dumps(dict(ep, name="-bad name", ipv4_nets=["not-an-ip"])))
    node.etcd.put("/calico/v1/policy/profile/p1/rules", '{"inbound_rules": [], "outbound_rules": []}')
    r = node.ctl("container", wl.name, "profile", "set", "p1")
    assert r.returncode == 1 and key in r.stderr and r.stderr.count("\n") == 1
    assert node.etcd.get(key) is not None
    node.ok("container", "remove", wl.name)
    assert node.endpoints() == {}
    assert node.etcd.keys("/calico/ipam/v2/handle/") == []  # released by handle despite the bad nets
    # the bad name never reached ip(8); the veth went by the name derived from the endpoint id
    assert node.cali_links() == []
    assert json.loads(wl.run("ip", "-j", "link", "show").stdout)[-1]["ifname"] == "lo"


def test_node_name_comes_from_the_calico_program_running_here(node, netns_factory, tmp_path):
    """Right after calico-node starts (not yet registered), its environment names the node."""
    fake = tmp_path / "calico-felix"
    fake.symlink_to("/bin/sleep")
    proc = node.ns.popen([str(fake), "60"], env={"NODENAME": "fromproc", "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: any(b"calico-felix" in open(f"/proc/{p}/cmdline", "rb").read() for p in node.ns.pids()),
                 timeout=5, what="the fake calico program to start")
        wl = netns_factory("wl")
        node.ok("container", "add", wl.name, "ipv4")
        assert node.etcd.keys(f"/calico/v1/host/fromproc/workload/calicoctl/{wl.name}/endpoint/")
    finally:
        proc.kill()
        proc.wait()
