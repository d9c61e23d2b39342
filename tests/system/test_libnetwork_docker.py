"""Docker networking through calico-node's libnetwork driver, with a real dockerd on each of two nodes.

One two-node cluster (real calico-node with CALICO_LIBNETWORK_ENABLED, BIRD
mesh, etcd) and one dockerd per node are shared by the module; every test
makes its own networks and containers and removes them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from calico_testing.cluster import Cluster, Node
from calico_testing.docker import DockerDaemon
from calico_testing.netns import wait_for

POOL = "10.68.0.0/16"
HANDLE_PREFIX = "libnetwork."


def _plugin_dir(node: Node) -> str:
    return os.path.join(node.dirs["run"], "plugins")


@pytest.fixture(scope="module")
def dk():
    """(cluster, [dockerd A, dockerd B]) with pool 10.68.0.0/16 and a busybox image on both."""
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd not installed: run scripts/install-deps (docker.io)")
    c = Cluster(n_nodes=2, start=False)
    daemons: list[DockerDaemon] = []
    try:
        c.nodes[0].ctl("pool", "add", POOL)
        for n in c.nodes:
            n.env.update(CALICO_LIBNETWORK_ENABLED="true",
                         CALICO_LIBNETWORK_SOCKET=os.path.join(_plugin_dir(n), "calico.sock"))
            c.start_node(n)
        for n in c.nodes:
            d = DockerDaemon(n.ns.name, _plugin_dir(n), os.path.join(c.tmp, f"docker-{n.name}"))
            daemons.append(d)
            d.start()
            d.import_busybox()
        c.wait_ready(timeout=90)
        for n in c.nodes:
            wait_for(lambda n=n: os.path.exists(os.path.join(_plugin_dir(n), "calico-ipam.sock")),
                     timeout=30, what=f"libnetwork sockets on {n.name}")
        yield c, daemons
    finally:
        for d in daemons:
            d.stop()
        c.close()


def _etcd(c: Cluster, prefix: str) -> dict[str, str]:
    return {k: c.etcd.get(k) for k in c.etcd.keys(prefix)}


def _endpoints(c: Cluster) -> dict[str, dict]:
    return {k: json.loads(v) for k, v in _etcd(c, "/calico/v1/host/").items() if "/workload/libnetwork/" in k}


def _handles(c: Cluster) -> list[str]:
    return [k for k in _etcd(c, "/calico/ipam/v2/handle/") if k.rsplit("/", 1)[1].startswith(HANDLE_PREFIX)]


def _assigned(node: Node, ip: str) -> bool:
    out = node.ctl("ipam", "info", ip, check=False)
    text = (out.stdout + out.stderr).lower()
    return not any(s in text for s in ("not assigned", "not currently assigned", "unassigned"))


def _cali_links(node: Node) -> set[str]:
    out = node.ns.run("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.split(":")[1].strip().startswith(("cali", "tmp"))}


def _network(daemons: list[DockerDaemon], name: str, *extra: str) -> None:
    """A `local` network exists per host: create it on both."""
    for d in daemons:
        d.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico-ipam", *extra, name)


def _rm_network(daemons: list[DockerDaemon], name: str) -> None:
    for d in daemons:
        d.docker("network", "rm", name, check=False)


def _try_run(d: DockerDaemon, name: str, *args: str) -> bool:
    """One `docker run`; a failed one is removed so the name can be tried again."""
    if d.run("--name", name, *args, "bb:latest", "sleep", "600", check=False).returncode == 0:
        return True
    d.docker("rm", "-f", name, check=False)
    return False


def _ipam_check(node: Node) -> None:
    """`calicoctl ipam check` where this calicoctl has it: no leaked or inconsistent allocation."""
    if "check" not in node.ctl("ipam", "--help", check=False).stdout:
        return
    r = node.ctl("ipam", "check", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_containers_on_two_nodes_ping_over_bgp_routes(dk):
    c, (da, db) = dk
    a, b = c.nodes
    _network(dk[1], "calinet")
    try:
        da.run("--name", "ca", "--net", "calinet", "bb:latest", "sleep", "600")
        db.run("--name", "cb", "--net", "calinet", "bb:latest", "sleep", "600")
        ip_a, ip_b = da.ip_of("ca"), db.ip_of("cb")
        assert ip_a.startswith("10.68.") and ip_b.startswith("10.68.")
        wait_for(lambda: da.ping("ca", ip_b) and db.ping("cb", ip_a), timeout=60, what="cross-node ping")
        # B's container is reached through a route BIRD learned from B, not one configured by hand.
        bird = a.ns.run("ip", "route", "show", "proto", "bird").stdout
        assert any(f"via {b.ip}" in line and ipaddress.ip_address(ip_b) in ipaddress.ip_network(line.split()[0])
                   for line in bird.splitlines()), bird
        # The endpoint: v1 layout, orchestrator and workload `libnetwork`, the network's profile.
        eps = _endpoints(c)
        mine = {k: v for k, v in eps.items() if f"{ip_a}/32" in v.get("ipv4_nets", [])}
        assert len(mine) == 1, eps
        key, ep = next(iter(mine.items()))
        assert key.startswith(f"/calico/v1/host/{a.name}/workload/libnetwork/libnetwork/endpoint/")
        assert ep["profile_ids"] == ["calinet"] and ep["name"].startswith("cali") and ep["state"] == "active"
        # Inside: the veth as eth0, gateway 169.254.1.1 through a static link route.
        inside = da.docker("exec", "ca", "ip", "route").stdout
        assert "default via 169.254.1.1 dev eth0" in inside and "169.254.1.1 dev eth0" in inside
        # Docker's calls arrive concurrently: parallel runs get distinct addresses and all work.
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda i: da.run("--name", f"cp{i}", "--net", "calinet", "bb:latest", "sleep", "600"),
                          range(3)))
        ips = {da.ip_of(f"cp{i}") for i in range(3)}
        assert len(ips | {ip_a}) == 4
        for i in range(3):
            wait_for(lambda i=i: da.ping(f"cp{i}", ip_b), timeout=30, what=f"cp{i} pings across nodes")
        # Classic default rules: from the same tag, all outbound.
        rules = json.loads(_etcd(c, "/calico/v1/policy/profile/calinet/rules")[
            "/calico/v1/policy/profile/calinet/rules"])
        assert rules["inbound_rules"] == [{"action": "allow", "src_tag": "calinet"}]
        assert rules["outbound_rules"] == [{"action": "allow"}]
    finally:
        da.docker("rm", "-f", "ca", "cp0", "cp1", "cp2", check=False)
        db.docker("rm", "-f", "cb", check=False)
        _rm_network(dk[1], "calinet")


def test_networks_are_isolated_until_a_profile_rule_allows(dk):
    c, (da, db) = dk
    a = c.nodes[0]
    # Addresses no other test used: Felix keeps conntrack entries of removed endpoints, and a
    # reused address could ride an earlier test's still-established ICMP flow.
    _network(dk[1], "net1", "--subnet", POOL)
    _network(dk[1], "net2", "--subnet", POOL)
    try:
        da.run("--name", "n1", "--net", "net1", "--ip", "10.68.7.1", "bb:latest", "sleep", "600")
        db.run("--name", "n2", "--net", "net2", "--ip", "10.68.7.2", "bb:latest", "sleep", "600")
        db.run("--name", "n1b", "--net", "net1", "--ip", "10.68.7.3", "bb:latest", "sleep", "600")
        ip2, ip1b = db.ip_of("n2"), db.ip_of("n1b")
        wait_for(lambda: da.ping("n1", ip1b), timeout=60, what="same network pings across nodes")
        assert not da.ping("n1", ip2, count=2)
        a.ctl("profile", "net2", "rule", "add", "inbound", "allow", "from", "tag", "net1")
        wait_for(lambda: da.ping("n1", ip2), timeout=30, what="net1 -> net2 after the rule")
        # The rule is inbound to net2 only: net2 still cannot open to net1.
        assert not db.ping("n2", da.ip_of("n1"), count=2)
    finally:
        da.docker("rm", "-f", "n1", check=False)
        db.docker("rm", "-f", "n2", "n1b", check=False)
        _rm_network(dk[1], "net1")
        _rm_network(dk[1], "net2")


def test_rm_releases_address_and_endpoint_and_network_rm_its_profile(dk):
    c, (da, db) = dk
    a = c.nodes[0]
    _network(dk[1], "gone")
    da.run("--name", "g1", "--net", "gone", "bb:latest", "sleep", "600")
    ip = da.ip_of("g1")
    assert _assigned(a, ip)
    assert any(f"{ip}/32" in ep["ipv4_nets"] for ep in _endpoints(c).values())
    da.docker("rm", "-f", "g1")
    assert not _assigned(a, ip)
    assert not any(f"{ip}/32" in ep["ipv4_nets"] for ep in _endpoints(c).values())
    assert not _cali_links(a), _cali_links(a)
    assert _etcd(c, "/calico/v1/policy/profile/gone/")  # B's network `gone` still exists: profile stays
    _rm_network(dk[1], "gone")
    assert not _etcd(c, "/calico/v1/policy/profile/gone/")
    assert not _etcd(c, "/calico/libnetwork/v1/profile/gone")
    assert not [k for k in _etcd(c, "/calico/libnetwork/v1/host/")
                if json.loads(_etcd(c, k)[k]).get("name") == "gone"]
    assert not _handles(c)
    _ipam_check(a)


def test_failed_run_leaves_nothing_behind(dk):
    c, (da, db) = dk
    a = c.nodes[0]
    _network(dk[1], "badlabel", "--label", "org.projectcalico.profiles=no-such-profile")
    try:
        before = (_endpoints(c), _handles(c), _cali_links(a))
        r = da.run("--name", "bl", "--net", "badlabel", "bb:latest", "sleep", "600", check=False)
        assert r.returncode != 0
        assert "profile no-such-profile, which does not exist" in r.stderr, r.stderr
        assert (_endpoints(c), _handles(c), _cali_links(a)) == before
    finally:
        da.docker("rm", "-f", "bl", check=False)
        _rm_network(dk[1], "badlabel")
    # A label naming a profile that exists attaches it after the network's own.
    a.ctl("profile", "add", "extra-prof")
    _network(dk[1], "withlabel", "--label", "org.projectcalico.profiles=extra-prof")
    try:
        da.run("--name", "wl", "--net", "withlabel", "bb:latest", "sleep", "600")
        ip = da.ip_of("wl")
        ep = next(v for v in _endpoints(c).values() if f"{ip}/32" in v["ipv4_nets"])
        assert ep["profile_ids"] == ["withlabel", "extra-prof"]
    finally:
        da.docker("rm", "-f", "wl", check=False)
        _rm_network(dk[1], "withlabel")
        a.ctl("profile", "remove", "extra-prof", check=False)


def test_run_with_ip_gets_it_and_a_taken_ip_is_refused(dk):
    c, (da, db) = dk
    a = c.nodes[0]
    _network(dk[1], "fixed", "--subnet", POOL)
    try:
        da.run("--name", "f1", "--net", "fixed", "--ip", "10.68.5.5", "bb:latest", "sleep", "600")
        assert da.ip_of("f1") == "10.68.5.5"
        before = (_endpoints(c), _handles(c), _cali_links(c.nodes[1]))
        r = db.run("--name", "f2", "--net", "fixed", "--ip", "10.68.5.5", "bb:latest", "sleep", "600", check=False)
        assert r.returncode != 0
        assert "address 10.68.5.5 is already in use" in r.stderr, r.stderr
        assert (_endpoints(c), _handles(c), _cali_links(c.nodes[1])) == before
        # A subnet that is not a Calico pool is refused when the network is made.
        r = da.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico-ipam",
                      "--subnet", "10.200.0.0/16", "nopool", check=False)
        assert r.returncode != 0 and "10.200.0.0/16 is not an enabled Calico IP pool" in r.stderr, r.stderr
    finally:
        da.docker("rm", "-f", "f1", check=False)
        db.docker("rm", "-f", "f2", check=False)
        _rm_network(dk[1], "fixed")
    assert not _assigned(a, "10.68.5.5")


def test_driver_killed_while_containers_run(dk):
    c, (da, db) = dk
    a = c.nodes[0]
    _network(dk[1], "survive")
    try:
        da.run("--name", "s1", "--net", "survive", "bb:latest", "sleep", "600")
        db.run("--name", "s2", "--net", "survive", "bb:latest", "sleep", "600")
        ip2 = db.ip_of("s2")
        wait_for(lambda: da.ping("s1", ip2), timeout=60, what="ping before the kill")
        pid = a.supervisorctl("pid", "libnetwork").stdout.strip()
        assert pid.isdigit(), pid
        a.supervisorctl("signal", "KILL", "libnetwork", check=True)
        assert da.ping("s1", ip2, count=3)  # the dataplane does not depend on the driver
        wait_for(lambda: (p := a.supervisorctl("pid", "libnetwork").stdout.strip()).isdigit() and p != pid
                 and "RUNNING" in a.supervisorctl("status", "libnetwork").stdout,
                 timeout=30, what="supervisord restarting the driver")
        wait_for(lambda: _try_run(da, "s3", "--net", "survive"), timeout=30, what="a new container after the restart")
        wait_for(lambda: da.ping("s3", ip2), timeout=60, what="the new container pings")
        # What was made before the kill is still known: removing it after the restart cleans up fully.
        ip1 = da.ip_of("s1")
        da.docker("rm", "-f", "s1")
        assert not _assigned(a, ip1)
        assert not any(f"{ip1}/32" in ep["ipv4_nets"] for ep in _endpoints(c).values())
        assert "listening on" in a.log("libnetwork")  # its own log under <log dir>/libnetwork
    finally:
        da.docker("rm", "-f", "s1", "s3", check=False)
        db.docker("rm", "-f", "s2", check=False)
        _rm_network(dk[1], "survive")


def test_driver_answers_bad_requests_with_clear_errors(dk):
    c, _ = dk
    a = c.nodes[0]
    sock = os.path.join(_plugin_dir(a), "calico.sock")
    script = (
        "import http.client, json, socket, sys\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])\n"
        "out = []\n"
        "for path, body in json.loads(sys.argv[2]):\n"
        "    c = C('x'); c.request('POST', path, body=body.encode()); r = c.getresponse()\n"
        "    out.append([r.status, json.loads(r.read())]); c.close()\n"
        "print(json.dumps(out))\n")
    da = dk[1][0]
    da.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico-ipam", "owned")
    net_id = da.docker("network", "inspect", "-f", "{{.Id}}", "owned").stdout.strip()
    calls = [
        ["/Plugin.Activate", ""],
        ["/NetworkDriver.CreateEndpoint", "{not json"],
        ["/NetworkDriver.CreateEndpoint", json.dumps({"NetworkID": "a/b", "EndpointID": "x"})],
        ["/NetworkDriver.CreateEndpoint", json.dumps({"NetworkID": "n" * 64, "EndpointID": "e" * 64,
                                                      "Interface": {"Address": "10.68.9.9/32"}})],
        ["/IpamDriver.RequestAddress", json.dumps({"PoolID": "CalicoPoolIPv4", "Address": "10.68.1"})],
        ["/IpamDriver.RequestPool", json.dumps({"Pool": "10.1.0.0/16", "V6": False})],
        ["/NetworkDriver.Nope", "{}"],
        ["/NetworkDriver.CreateEndpoint", json.dumps({"NetworkID": net_id, "EndpointID": "e" * 64,
                                                      "Interface": {"Address": "10.68.200.200/32"}})],
    ]
    try:
        r = subprocess.run(["ip", "netns", "exec", a.ns.name, "python3", "-c", script, sock, json.dumps(calls)],
                           capture_output=True, text=True, timeout=60)
    finally:
        da.docker("network", "rm", "owned", check=False)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res[0] == [200, {"Implements": ["NetworkDriver", "IpamDriver"]}]
    assert "request body is not JSON" in res[1][1]["Err"]
    assert "not a valid NetworkID" in res[2][1]["Err"]
    assert "unknown to the Calico driver" in res[3][1]["Err"]
    assert "--ip '10.68.1' is not an IP address" in res[4][1]["Err"]
    assert "10.1.0.0/16 is not an enabled Calico IP pool" in res[5][1]["Err"]
    assert res[6][0] == 404 and "does not implement" in res[6][1]["Err"]
    # Meaning, not just shape: an address calico-ipam did not hand out is not taken over.
    assert "address 10.68.200.200 was not handed out by calico-ipam" in res[7][1]["Err"]
    assert not _endpoints(c) and not _handles(c)


def test_dockers_default_ipam_address_is_used_as_given(dk):
    c, (da, _) = dk
    a = c.nodes[0]
    da.docker("network", "create", "--driver", "calico", "--subnet", "10.77.0.0/24", "dflt")
    try:
        da.run("--name", "d1", "--net", "dflt", "bb:latest", "sleep", "600")
        da.run("--name", "d2", "--net", "dflt", "--ip", "10.77.0.77", "bb:latest", "sleep", "600")
        ip1 = da.ip_of("d1")
        assert ip1.startswith("10.77.0.") and da.ip_of("d2") == "10.77.0.77"
        ep = next(v for v in _endpoints(c).values() if f"{ip1}/32" in v["ipv4_nets"])
        assert ep["profile_ids"] == ["dflt"]
        assert not _assigned(a, ip1)  # Docker's IPAM, not Calico's, owns it
        assert "default via 169.254.1.1" in da.docker("exec", "d1", "ip", "route").stdout
        wait_for(lambda: da.ping("d2", ip1), timeout=30, what="two default-IPAM containers on one node")
    finally:
        da.docker("rm", "-f", "d1", "d2", check=False)
        da.docker("network", "rm", "dflt", check=False)
    assert not _etcd(c, "/calico/v1/policy/profile/dflt/")
