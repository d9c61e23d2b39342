"""Felix core (issue 4) against the real kernel, real etcd and the real calico-felix process.

Each test builds a host namespace with workloads (tests/integration/felix_topology.py),
writes raw datamodel JSON to etcd and proves the result with real packets and
with what the kernel holds (iptables-save, ipset, ip route/neigh).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from felix.config import EXIT_CONFIG_CHANGED
from tests.integration.felix_topology import FelixHost, always, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALLOW_ALL = [{"action": "allow"}]


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=3)
    yield host
    host.close()


def _ready(fh: FelixHost) -> None:
    fh.put("/calico/v1/Ready", "true")


class Check:
    """One real-packet probe with a readable name: ping, or a TCP connect to a port."""

    def __init__(self, src, dst, v: int, port: int | None = None):
        self.src, self.dst, self.v, self.port = src, dst, v, port

    def __call__(self) -> bool:
        ip = self.dst.ip(self.v)
        return self.src.ping(ip) if self.port is None else self.src.tcp(ip, self.port)

    def __repr__(self) -> str:
        what = "ping" if self.port is None else f"tcp:{self.port}"
        return f"{what} w{self.src.index}->w{self.dst.index} v{self.v}"


def P(src, dst, v):
    return Check(src, dst, v)


def T(src, dst, v, port):
    return Check(src, dst, v, port)


def expect(what: str, allowed=(), blocked=(), timeout: float = 20) -> None:
    """Wait until, in one round, every `allowed` probe passes and every `blocked` probe fails."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = [f"{c!r} blocked" for c in allowed if not c()] + [f"{c!r} passed" for c in blocked if c()]
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {', '.join(wrong)}")
        time.sleep(0.3)


def test_policy_with_real_packets(fh):
    """Acceptance 1: allow/deny, tags, port lists and ranges, negation, protocol/icmp, nets; v4 and v6."""
    a, b, c = fh.workloads
    _ready(fh)
    fh.put_profile("pa", ALLOW_ALL, ALLOW_ALL, tags=["ta"])
    fh.put_profile("pc", ALLOW_ALL, ALLOW_ALL, tags=["tc"])
    fh.put_profile("pb", ALLOW_ALL, ALLOW_ALL, tags=["tb"])
    fh.put_endpoint(a, ["pa"], mac=True)
    fh.put_endpoint(b, ["pb"])
    fh.put_endpoint(c, ["pc"])
    fh.serve(b, 8080, 8081, 9005, 9100)
    fh.serve(a, 8080)
    fh.start_felix()
    fh.wait_programmed(b)
    V = (4, 6)

    expect("allow all, both ways", allowed=[x for v in V for x in (
        P(a, b, v), P(b, a, v), T(a, b, v, 8080), T(b, a, v, 8080), P(c, b, v))])

    fh.put_profile("pb", [{"action": "deny"}], ALLOW_ALL, tags=["tb"])
    expect("deny inbound to b", allowed=[P(b, a, 4), P(b, a, 6)],
           blocked=[x for v in V for x in (P(a, b, v), T(a, b, v, 8080), P(c, b, v))])

    fh.put_profile("pb", [{"action": "allow", "src_tag": "ta"}], ALLOW_ALL, tags=["tb"])
    expect("src_tag ta", allowed=[P(a, b, 4), P(a, b, 6)], blocked=[P(c, b, 4), P(c, b, 6)])

    fh.put_profile("pb", [{"action": "allow", "!src_tag": "ta"}], ALLOW_ALL, tags=["tb"])
    expect("!src_tag ta", allowed=[P(c, b, 4), P(c, b, 6)], blocked=[P(a, b, 4), P(a, b, 6)])

    fh.put("/calico/v1/policy/profile/pc/tags", ["tc", "ta"])   # c's profile now carries ta as well
    expect("tag membership follows profile tags", blocked=[P(c, b, 4), P(c, b, 6)])

    fh.put_profile("pb", [{"action": "allow", "protocol": "tcp", "dst_ports": [8080, "9000:9010"]}], ALLOW_ALL)
    expect("port list and range", allowed=[T(a, b, v, p) for v in V for p in (8080, 9005)],
           blocked=[x for v in V for x in (T(a, b, v, 8081), T(a, b, v, 9100), P(a, b, v))])

    fh.put_profile("pb", [{"action": "allow", "protocol": "tcp", "!dst_ports": [8080]}], ALLOW_ALL)
    expect("!dst_ports", allowed=[T(a, b, v, p) for v in V for p in (8081, 9100)],
           blocked=[T(a, b, v, 8080) for v in V])

    fh.put_profile("pb", [{"action": "allow", "protocol": "icmp", "icmp_type": 8},
                          {"action": "allow", "protocol": "icmpv6", "icmp_type": 128}], ALLOW_ALL)
    expect("icmp echo-request only", allowed=[P(a, b, 4), P(a, b, 6)], blocked=[T(a, b, v, 8080) for v in V])

    fh.put_profile("pb", [{"action": "allow", "protocol": "icmp", "icmp_type": 13},
                          {"action": "allow", "protocol": "icmpv6", "icmp_type": 129}], ALLOW_ALL)
    expect("other icmp types only", blocked=[P(a, b, 4), P(a, b, 6)])

    fh.put_profile("pb", [{"action": "allow", "protocol": "udp"}], ALLOW_ALL)
    expect("protocol udp only", blocked=[P(a, b, 4), P(a, b, 6), T(a, b, 4, 8080)])

    fh.put_profile("pb", [{"action": "allow", "!protocol": "icmp"}, {"action": "allow", "!protocol": "icmpv6"}],
                   ALLOW_ALL)
    expect("!protocol", allowed=[T(a, b, 4, 8080), T(a, b, 6, 8080), P(a, b, 4), P(a, b, 6)])

    fh.put_profile("pb", [{"action": "allow", "src_net": f"{a.ip4}/32"},
                          {"action": "allow", "src_net": f"{a.ip6}/128"}], ALLOW_ALL)
    expect("src_net", allowed=[P(a, b, 4), P(a, b, 6)], blocked=[P(c, b, 4), P(c, b, 6)])

    fh.put_profile("pb", [{"action": "allow", "!src_net": f"{a.ip4}/32", "ip_version": 4}], ALLOW_ALL)
    expect("!src_net, v4 only", allowed=[P(c, b, 4)], blocked=[P(a, b, 4), P(c, b, 6), P(a, b, 6)])

    fh.put_profile("pb", ALLOW_ALL, ALLOW_ALL)
    fh.put_profile("pa", ALLOW_ALL, [{"action": "allow", "dst_net": f"{b.ip4}/32"},
                                     {"action": "allow", "dst_net": f"{b.ip6}/128"}], tags=["ta"])
    expect("dst_net on a's outbound", allowed=[P(a, b, 4), P(a, b, 6)], blocked=[P(a, c, 4), P(a, c, 6)])

    fh.put_profile("pa", ALLOW_ALL, [{"action": "allow", "!dst_net": f"{b.ip4}/32"}], tags=["ta"])
    expect("!dst_net", allowed=[P(a, c, 4)], blocked=[P(a, b, 4)])
    assert fh.felix_alive()


def test_spoofing_and_inactive(fh):
    """From-endpoint anti-spoofing (source IP and MAC) and inactive endpoints."""
    a, b, c = fh.workloads
    _ready(fh)
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"], mac=True)
    fh.put_endpoint(b, ["open"])
    fh.put_endpoint(c, ["open"], state="inactive")
    fh.start_felix()
    fh.wait_programmed(b)
    eventually(lambda: a.ping(b.ip4), 15, "a->b")
    assert not c.ping(b.ip4) and not b.ping(c.ip4), "inactive endpoint: no traffic in or out"
    # a spoofed source address from a is dropped
    a.ns.run("ip", "addr", "add", "10.65.0.99/32", "dev", "eth0")
    r = a.ns.run("ping", "-c1", "-W1", "-I", "10.65.0.99", b.ip4, check=False)
    assert r.returncode != 0, "spoofed source must be dropped"
    # a wrong MAC in the endpoint: a's real MAC no longer matches -> dropped
    fh.put_endpoint(a, ["open"], mac="ee:ee:ee:00:00:01")
    eventually(lambda: not a.ping(b.ip4), 10, "MAC anti-spoofing")
    fh.put_endpoint(c, ["open"])
    eventually(lambda: c.ping(b.ip4), 10, "activated endpoint passes")


def test_workload_to_host_action(fh):
    """DefaultEndpointToHostAction decides traffic from workloads to the host itself."""
    a = fh.workloads[0]
    _ready(fh)
    fh.host.run("ip", "addr", "add", "10.99.99.1/32", "dev", "uplink0")
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"])
    fh.start_felix()
    fh.wait_programmed(a)
    always(lambda: not a.ping("10.99.99.1"), 1.5, "default DROP of workload->host")
    fh.put("/calico/v1/config/DefaultEndpointToHostAction", "ACCEPT")
    eventually(lambda: a.ping("10.99.99.1"), 10, "ACCEPT lets workload->host through")
    # outbound policy still applies first
    fh.put_profile("open", ALLOW_ALL, [{"action": "deny"}])
    eventually(lambda: not a.ping("10.99.99.1"), 10, "outbound deny applies before the host action")


def test_removal_leaves_nothing(fh):
    """Acceptance 2: no route, neighbour, chain or ipset left; only base chains at the end."""
    a, b, c = fh.workloads
    _ready(fh)
    fh.put_profile("pa", [{"action": "allow", "src_tag": "ta"}], ALLOW_ALL, tags=["ta"])
    fh.put_profile("pb", [{"action": "allow", "src_tag": "tb"}], ALLOW_ALL, tags=["tb"])
    for w, p in ((a, "pa"), (b, "pb"), (c, "pa")):
        fh.put_endpoint(w, [p], mac=True)
    fh.start_felix()
    for w in (a, b, c):
        fh.wait_programmed(w)
    eventually(lambda: "felix-v4-tb" in fh.felix_ipsets(), 10, "tag ipset")
    eventually(lambda: a.mac in fh.neighbours(a.ifname) and f"{b.ip6} dev {b.ifname}" in fh.routes(6), 10,
               "static neighbour and v6 route")
    eventually(lambda: a.ping(c.ip4), 10, "a->c via tag ta")

    fh.delete(fh.ep_key(b))
    eventually(lambda: b.ifname not in fh.routes(4) + fh.routes(6), 10, "b's routes gone")
    eventually(lambda: not fh.neighbours(b.ifname).strip(), 10, "b's neighbour gone")
    for v in (4, 6):
        assert not any(b.ifname in ch for ch in fh.felix_chains(v)), f"b's chains gone v{v}"
        assert "felix-p-pb-i" not in fh.felix_chains(v), "unused profile chain gone"
    assert not {"felix-v4-tb", "felix-v6-tb"} & fh.felix_ipsets(), "unused tag ipsets gone"
    eventually(lambda: a.ping(c.ip4), 10, "the others still work")

    for w in (a, c):
        fh.delete(fh.ep_key(w))
    fh.delete("/calico/v1/policy/profile/", prefix=True)
    base = {"felix-INPUT", "felix-FORWARD", "felix-OUTPUT", "felix-FROM-ENDPOINT", "felix-TO-ENDPOINT"}
    eventually(lambda: fh.felix_chains(4) == base and fh.felix_chains(6) == base, 10, "only base chains")
    eventually(lambda: not fh.felix_ipsets(), 10, "no felix ipsets")
    eventually(lambda: not fh.routes(4).strip() and not fh.routes(6).strip(), 10, "no felix routes")
    for w in (a, b, c):
        eventually(lambda w=w: not fh.neighbours(w.ifname).strip(), 10, f"no neighbour on {w.ifname}")
    assert fh.felix_alive()


def test_sigkill_restart_keeps_connections_and_cleans_up(fh):
    """Acceptance 3: SIGKILL with an open TCP connection; restart converges; deletions while down applied."""
    a, b, c = fh.workloads
    _ready(fh)
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL, tags=["open"])
    fh.put_profile("gone", ALLOW_ALL, ALLOW_ALL, tags=["gone"])
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"])
    fh.put_endpoint(c, ["gone"], mac=True)
    fh.serve(b, 7000)
    fh.start_felix()
    for w in (a, b, c):
        fh.wait_programmed(w)
    eventually(lambda: a.ping(b.ip4) and a.ping(b.ip6), 15, "a->b")

    client = a.ns.popen([sys.executable, "-u", "-c", (
        "import socket,sys\n"
        f"s=socket.create_connection(('{b.ip4}',7000),timeout=5)\n"
        "for line in sys.stdin:\n"
        "    s.sendall(line.encode()); print(s.recv(100).decode().strip(), flush=True)\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        client.stdin.write("one\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "one"
        chains_before = fh.iptables_save(4)

        assert fh.kill_felix(signal.SIGKILL) == -signal.SIGKILL
        fh.delete(fh.ep_key(c))
        fh.delete("/calico/v1/policy/profile/gone/", prefix=True)
        # dataplane untouched while Felix is down
        assert fh.iptables_save(4).count("-A felix-") == chains_before.count("-A felix-")
        fh.start_felix()
        eventually(lambda: c.ifname not in fh.routes(4), 20, "c's route removed after in-sync")
        eventually(lambda: not any(c.ifname in ch for ch in fh.felix_chains(4)), 10, "c's chains removed")
        eventually(lambda: "felix-v4-gone" not in fh.felix_ipsets(), 10, "stale ipset removed")
        eventually(lambda: not fh.neighbours(c.ifname).strip() or c.mac not in fh.neighbours(c.ifname),
                   10, "c's static neighbour removed")
        client.stdin.write("two\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "two", "connection survived the restart"
        assert a.ping(b.ip4) and a.ping(b.ip6)
        assert "Felix starting" in fh.log() and fh.felix_alive()
    finally:
        client.kill()
        client.wait()


def test_drift_is_repaired(fh):
    """Acceptance 4: a deleted felix chain and a deleted workload route come back; others' rules untouched."""
    a, b, _ = fh.workloads
    _ready(fh)
    fh.put_profile("open", [{"action": "allow", "src_tag": "open"}], ALLOW_ALL, tags=["open"])
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"])
    fh.start_felix(FELIX_IPTABLESREFRESHINTERVAL="2", FELIX_ROUTEREFRESHINTERVAL="2",
                   FELIX_IPSETSREFRESHINTERVAL="2")
    fh.wait_programmed(b)
    eventually(lambda: a.ping(b.ip4), 15, "a->b")
    save = fh.iptables_save(4)
    backend = "legacy" if "-legacy" in save.split("\n", 1)[0] else "nft"
    ipt = f"iptables-{backend}"
    fh.host.run(ipt, "-A", "FORWARD", "-s", "192.0.2.1", "-j", "DROP")     # someone else's rule
    fh.host.run(ipt, "-D", "FORWARD", "1")                                # our hook
    fh.host.run(ipt, "-F", "felix-FORWARD")
    fh.host.run(ipt, "-X", "felix-FORWARD")
    fh.host.run("ip", "route", "del", f"{b.ip4}/32", "dev", b.ifname)
    fh.host.run("ipset", "del", "felix-v4-open", a.ip4)
    assert "felix-FORWARD" not in fh.felix_chains(4)
    # The waits only end a broken run: repair speed follows the 2 s refresh intervals set above.
    eventually(lambda: "felix-FORWARD" in fh.felix_chains(4)
               and "-j felix-FORWARD" in fh.iptables_save(4), 10, "chain and hook restored")
    eventually(lambda: f"{b.ip4} dev {b.ifname}" in fh.routes(4), 10, "route restored")
    eventually(lambda: a.ip4 in fh.host.run("ipset", "list", "felix-v4-open").stdout, 10, "ipset member restored")
    assert fh.felix_alive(), "repaired by the running Felix's refresh, not by a restart"
    assert "-s 192.0.2.1/32 -j DROP" in fh.iptables_save(4), "non-felix rule untouched"
    lines = [ln for ln in fh.iptables_save(4).splitlines() if ln.startswith("-A FORWARD")]
    assert "felix-FORWARD" in lines[0], "our hook is back at the top"
    assert sum("-j felix-FORWARD" in ln for ln in lines) == 1, "the hook restored once, not stacked"
    eventually(lambda: a.ping(b.ip4), 10, "traffic flows")


def test_malformed_data_is_isolated(fh):
    """Acceptance 5: a malformed endpoint/profile beside valid ones; error names the key; Felix runs on."""
    a, b, c = fh.workloads
    _ready(fh)
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put("/calico/v1/policy/profile/broken/rules",
           '{"inbound_rules":[{"action":"allow","protocol":"tcp","dst_ports":["99999"]}]}')
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"])
    bad_ep = f"/calico/v1/host/{fh.hostname}/workload/test/bad/endpoint/x"
    fh.put(bad_ep, '{"state":"active","name":"cali-bad","ipv4_nets":["10.65.0.300/32"]}')
    bad_json = f"/calico/v1/host/{fh.hostname}/workload/test/bad2/endpoint/y"
    fh.put(bad_json, '{"state": "active", "name": ')
    fh.put_endpoint(c, ["broken"])                      # valid endpoint, unusable profile
    fh.start_felix()
    fh.wait_programmed(b)
    eventually(lambda: a.ping(b.ip4) and b.ping(a.ip6), 15, "valid endpoints fully programmed")
    assert not c.ping(b.ip4), "endpoint whose only profile is invalid gets no traffic (outbound)"
    assert not b.ping(c.ip4), "nor inbound"
    log = fh.log()
    for key in (bad_ep, bad_json, "/calico/v1/policy/profile/broken/rules"):
        assert key in log, f"log names {key}"
    assert log.count(bad_ep) == 1, "logged once"
    # a bad update to a working profile is treated as absent: its endpoints lose traffic, Felix lives
    fh.put("/calico/v1/policy/profile/open/rules", '{"inbound_rules": [{"action": "explode"}]}')
    eventually(lambda: not a.ping(b.ip4), 10, "invalid profile treated as absent")
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    eventually(lambda: a.ping(b.ip4), 10, "fixed profile works again")
    assert fh.felix_alive()


def test_config_and_status(fh):
    """Config precedence/logging, status with a lease, endpoint status, restart on a non-live change."""
    a = fh.workloads[0]
    _ready(fh)
    fh.put("/calico/v1/config/ReportingIntervalSecs", "1")
    fh.put("/calico/v1/config/ReportingTTLSecs", "3")
    fh.put(f"/calico/v1/host/{fh.hostname}/config/EndpointReportingEnabled", "true")
    fh.put("/calico/v1/config/LogSeverityScreen", "debug")           # env below wins
    fh.put("/calico/v1/config/NoSuchParam", "1")
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"])
    fh.start_felix(FELIX_LOGSEVERITYSCREEN="info")
    fh.wait_programmed(a)
    status_key = f"/calico/felix/v1/host/{fh.hostname}/status"
    eventually(lambda: fh.etcd.get(status_key), 10, "status written")
    assert '"uptime"' in fh.etcd.get(f"/calico/felix/v1/host/{fh.hostname}/last_reported_status")
    lease = fh.etcd.etcdctl("get", status_key, "-w", "json")
    assert '"lease"' in lease, "status carries a lease"
    ep_status = f"/calico/felix/v1/host/{fh.hostname}/workload/test/w1/endpoint/e1"
    eventually(lambda: (fh.etcd.get(ep_status) or "").find('"up"') >= 0, 10, "endpoint status up")
    log = fh.log()
    assert "LogSeverityScreen = 'info' (from env FELIX_LOGSEVERITYSCREEN)" in log
    assert "EndpointReportingEnabled = True (from host key" in log
    assert "InterfacePrefix = 'cali' (from default)" in log
    assert len([ln for ln in log.splitlines() if "NoSuchParam" in ln]) == 1, "unknown parameter warned once"
    fh.put("/calico/v1/config/RouteRefreshInterval", "often")          # bad value after start
    eventually(lambda: "RouteRefreshInterval from global key" in fh.log(), 10, "bad live value logged")
    fh.put("/calico/v1/config/IptablesRefreshInterval", "30")           # unrelated change: no repeat
    eventually(lambda: "IptablesRefreshInterval changed to 30.0" in fh.log(), 10, "live change logged")
    assert fh.log().count("invalid value for RouteRefreshInterval") == 1
    fh.delete(fh.ep_key(a))
    eventually(lambda: fh.etcd.get(ep_status) is None, 10, "endpoint status removed")
    # a parameter that cannot change live: clean exit with the restart code
    fh.put("/calico/v1/config/InterfacePrefix", "tap")
    eventually(lambda: not fh.felix_alive(), 10, "felix exits on InterfacePrefix change")
    assert fh.proc.returncode == EXIT_CONFIG_CHANGED
    # and status expires with the lease once Felix is gone
    eventually(lambda: fh.etcd.get(status_key) is None, 10, "status lease expired")


def test_waits_for_ready_and_survives_etcd_outage(fh):
    """Nothing happens before Ready; an etcd restart keeps the dataplane and resyncs."""
    a, b, _ = fh.workloads
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"])
    fh.start_felix()
    time.sleep(2)
    assert not fh.routes(4).strip(), "nothing programmed before /calico/v1/Ready"
    _ready(fh)
    fh.wait_programmed(b)
    eventually(lambda: a.ping(b.ip4), 15, "a->b")
    fh.etcd.stop()
    time.sleep(2)
    assert fh.felix_alive() and a.ping(b.ip4), "dataplane kept during the outage"
    fh.etcd.start()
    fh.put_profile("open", [{"action": "deny"}], ALLOW_ALL)
    eventually(lambda: not a.ping(b.ip4), 30, "change after the outage applied")
    assert fh.felix_alive()


def test_dispatch_tree_with_many_endpoints(fh):
    """40 endpoints: the dispatch chains branch by name prefix; traffic flows between leaves, and an
    interface without an endpoint is dropped at dispatch (b never sees its packets)."""
    a, b, c = fh.workloads
    _ready(fh)
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"])
    for i in range(40):                       # endpoints on veths with no workload behind them
        name = f"cali{i:02d}x"
        fh.host.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"peer{i:02d}x")
        fh.put(f"/calico/v1/host/{fh.hostname}/workload/test/d{i}/endpoint/e",
               {"state": "active", "name": name, "profile_ids": ["open"], "ipv4_nets": [f"10.66.0.{i}/32"]})
    fh.start_felix()
    fh.wait_programmed(b)
    eventually(lambda: any(ch.startswith("felix-fd-") for ch in fh.felix_chains(4)), 15, "dispatch tree")
    expect("between leaves of the tree", allowed=[x for v in (4, 6) for x in (P(a, b, v), P(b, a, v))])
    save = fh.iptables_save(4)
    lengths = {}
    for line in save.splitlines():
        if line.startswith("-A felix-fd-") or line.startswith("-A felix-FROM-ENDPOINT"):
            ch = line.split()[1]
            lengths[ch] = lengths.get(ch, 0) + 1
    assert max(lengths.values()) <= 18, lengths
    # c's interface matches the prefix but is no endpoint: dropped before it reaches b
    b.ns.run("iptables", "-I", "INPUT", "-s", c.ip4, "-j", "ACCEPT")
    assert not c.ping(b.ip4)
    counters = b.ns.run("iptables", "-L", "INPUT", "-v", "-n", "-x").stdout
    line = next(ln for ln in counters.splitlines() if c.ip4 in ln)
    assert int(line.split()[0]) == 0, f"packets from an unknown interface reached b: {line}"
    # those 40 interfaces are down: their routes wait (no error, Felix fine) and appear once one is up
    assert "10.66.0.5 dev cali05x" not in fh.routes(4)
    fh.host.run("ip", "link", "set", "cali05x", "up")
    fh.host.run("ip", "link", "set", "peer05x", "up")
    eventually(lambda: "10.66.0.5 dev cali05x" in fh.routes(4), 10, "route once the interface is up")
    eventually(lambda: fh.host.run("sysctl", "-n", "net.ipv4.conf.cali05x.proxy_arp").stdout.strip() == "1",
               10, "sysctls written when the interface came up")
    assert fh.felix_alive() and "ERROR" not in fh.log()
