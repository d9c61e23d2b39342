"""Who owns an IP or an interface on a host: settled by the calculator from the data alone.

Every test feeds the same endpoints in every order (and into a fresh calculator, as a
restart does) and expects the same owner: the endpoint whose key was created first.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

from felix.calc import CalcConfig, Calculator
from felix.dataplane.routes import PRIO_OVERLAY, RouteWriter
from libcalico import keys, models

HOST = "h1"


def path(wl: str, host: str = HOST) -> str:
    return f"/calico/v1/host/{host}/workload/k8s/{wl}/endpoint/eth0"


def ep(wl: str, iface: str, ip: str, rev: int, host: str = HOST, profiles=("p",), mac=None):
    val = {"state": "active", "name": iface, "profile_ids": list(profiles), "ipv4_nets": [f"{ip}/32"]}
    if mac:
        val["mac"] = mac
    return (path(wl, host), val, rev)


def put(c: Calculator, item) -> None:
    p, val, rev = item
    k, v = models.parse_key_value(p, val if isinstance(val, str) else json.dumps(val))
    c.on_update("put", k, v, create_revision=rev)


def delete(c: Calculator, p: str) -> None:
    c.on_update("delete", keys.parse(p))


def fresh(items) -> Calculator:
    c = Calculator(CalcConfig(HOST))
    put(c, ("/calico/v1/policy/profile/p/rules", {"inbound_rules": [{}], "outbound_rules": [{}]}, 1))
    put(c, ("/calico/v1/policy/profile/p/tags", ["web"], 1))
    put(c, ("/calico/v1/policy/profile/t/rules", {"inbound_rules": [{}], "outbound_rules": [{}]}, 1))
    put(c, ("/calico/v1/policy/profile/t/tags", ["thief"], 1))
    for it in items:
        put(c, it)
    return c


def view(c: Calculator):
    """Everything that reaches the kernel or the status keys."""
    d = c.desired()
    return (d.routes, d.neighbours, d.v4.chains, d.v4.ipsets, d.v6.chains,
            {k: r for k, (_ep, r) in d.conflicts.items()}, sorted(d.endpoints))


W1 = ep("w1", "caliA", "10.65.0.5", 100, mac="ee:ee:ee:00:00:01")       # established
IP_THIEF = ep("w2", "caliB", "10.65.0.5", 200, profiles=("t",))        # w1's IP on its own interface
IF_THIEF = ep("w3", "caliA", "10.65.0.9", 300, profiles=("t",))        # w1's interface
LATE = ep("w0", "caliC", "10.65.0.5", 400)                             # sorts first by key, created last
REMOTE = ep("r1", "caliA", "10.65.0.5", 50, host="h2")                 # another host's business
ALL = [W1, IP_THIEF, IF_THIEF, LATE, REMOTE]


def test_first_created_keeps_ip_and_interface_whatever_the_order():
    want = view(fresh(ALL))
    routes, neigh, chains, ipsets, _v6, conflicts, local = want
    assert routes == {"caliA": frozenset({"10.65.0.5/32"})}
    assert neigh == {"caliA": {"10.65.0.5": "ee:ee:ee:00:00:01"}}
    assert local == [path("w1")]
    assert set(conflicts) == {path("w2"), path("w3"), path("w0")}
    assert path("w1") in conflicts[path("w2")] and "10.65.0.5/32" in conflicts[path("w2")]
    assert "interface caliA" in conflicts[path("w3")] and path("w1") in conflicts[path("w3")]
    # w1's chains are its own: its source check and its profile, not the thief's
    assert "! -s 10.65.0.5/32 -j DROP" in chains["felix-from-caliA"]
    assert "-j felix-p-p-o" in chains["felix-from-caliA"]
    assert not any("felix-p-t-" in ln for ln in chains["felix-from-caliA"] + chains["felix-to-caliA"])
    # the IP thief's own interface is dispatched to chains that drop everything
    assert chains["felix-from-caliB"] == ["-j DROP"] == chains["felix-to-caliB"]
    assert chains["felix-from-caliC"] == ["-j DROP"]
    # losers are in no ipset: their tags cannot vouch for the stolen address
    assert ipsets.get("felix-v4-thief", frozenset()) == frozenset()
    for perm in itertools.permutations(ALL):
        assert view(fresh(perm)) == want, [p for p, _, _ in perm]


@pytest.mark.parametrize("gone", [W1, IP_THIEF, IF_THIEF, LATE, REMOTE], ids=lambda it: it[0].split("/")[7])
def test_removing_any_claimant_recomputes_at_once(gone):
    """Live (delete from the full set) == restart (fresh calculator without it), in every order."""
    rest = [it for it in ALL if it is not gone]
    want = view(fresh(rest))
    for perm in itertools.permutations(ALL):
        c = fresh(perm)
        delete(c, gone[0])
        assert view(c) == want
    if gone is W1:
        routes, _n, chains, _s, _v6, conflicts, local = want
        # the earliest remaining claimant of each: w2 gets the IP, w3 the interface (other IP)
        assert routes == {"caliB": frozenset({"10.65.0.5/32"}), "caliA": frozenset({"10.65.0.9/32"})}
        assert local == [path("w2"), path("w3")] and set(conflicts) == {path("w0")}
        assert "-j felix-p-t-o" in chains["felix-from-caliA"]


def test_equal_or_unknown_revisions_break_ties_by_key_and_known_beats_unknown():
    a = ep("a", "caliA", "10.65.0.5", 0)
    b = ep("b", "caliB", "10.65.0.5", 0)
    for perm in itertools.permutations([a, b]):
        assert view(fresh(perm))[0] == {"caliA": frozenset({"10.65.0.5/32"})}
    same_a, same_b = (a[0], a[1], 7), (b[0], b[1], 7)
    assert view(fresh([same_b, same_a]))[0] == {"caliA": frozenset({"10.65.0.5/32"})}
    known_b = (b[0], b[1], 9)
    for perm in itertools.permutations([a, known_b]):
        assert view(fresh(perm))[0] == {"caliB": frozenset({"10.65.0.5/32"})}


def test_rewrite_keeps_ownership_and_recreate_is_a_newcomer():
    c = fresh([W1, IP_THIEF])
    put(c, (W1[0], dict(W1[1], labels={"x": "y"}), W1[2]))          # rewrite: same create revision
    assert c.desired().routes == {"caliA": frozenset({"10.65.0.5/32"})}
    delete(c, W1[0])
    assert c.desired().routes == {"caliB": frozenset({"10.65.0.5/32"})}
    put(c, (W1[0], W1[1], 500))                                      # re-created: it is the newcomer now
    d = c.desired()
    assert d.routes == {"caliB": frozenset({"10.65.0.5/32"})} and path("w1") in d.conflicts


def test_conflict_errors_go_through_the_error_path_once_and_clear():
    c = fresh([W1])
    c.take_errors()
    put(c, IP_THIEF)
    errs = dict(c.take_errors())
    assert set(errs) == {path("w2")} and path("w1") in errs[path("w2")]
    put(c, IP_THIEF)                                                  # same again: not re-reported
    assert c.take_errors() == [] and path("w2") in c.errors
    delete(c, W1[0])
    assert c.take_errors() == [] and path("w2") not in c.errors


def test_remote_conflicts_do_not_touch_local_endpoints_but_keep_ipsets_honest():
    r_old = ep("r1", "caliX", "10.65.7.7", 10, host="h2", profiles=("p",))
    r_new = ep("r2", "caliY", "10.65.7.7", 20, host="h2", profiles=("t",))
    for perm in itertools.permutations([W1, r_old, r_new]):
        c = fresh(perm)
        d = c.desired()
        assert d.routes == {"caliA": frozenset({"10.65.0.5/32"})} and d.conflicts == {}
        assert c.errors == {}
        assert c._tag_members("thief", 4) == frozenset()
        assert c._tag_members("web", 4) == frozenset({"10.65.0.5/32", "10.65.7.7/32"})


def test_route_writer_keeps_every_claimant_and_prefers_the_workload():
    """Model only (the kernel side is tests/integration/test_dataplane_routes.py)."""
    w = RouteWriter()
    w.set_routes("caliA", {"10.65.0.5/32"})
    w.set_routes("caliB", {"10.65.0.5/32"})
    w.set_overlay_routes("vxlan.calico", {"10.65.0.5/32": ("10.65.9.0", True)})
    assert w.desired_routes()["10.65.0.5/32"].ifname == "caliA"       # equal priority: smaller name
    assert list(w.claimants("10.65.0.5/32")) == ["caliA", "caliB", "vxlan.calico"]
    w.set_routes("caliA", set())
    assert w.desired_routes()["10.65.0.5/32"].ifname == "caliB"
    w.remove_interface("caliB")
    r = w.desired_routes()["10.65.0.5/32"]
    assert (r.ifname, r.gateway) == ("vxlan.calico", "10.65.9.0")
    assert w.claimants("10.65.0.5/32")["vxlan.calico"][0] == PRIO_OVERLAY
    w.set_routes("caliC", {"10.65.0.5/32"})                            # a workload arrives: it wins
    assert w.desired_routes()["10.65.0.5/32"].ifname == "caliC"
    w.set_overlay_routes("vxlan.calico", {})
    w.set_routes("caliC", set())
    assert w.desired_routes() == {}


@pytest.mark.parametrize("node_key", ["/calico/v1/host/h2/bird_ip", "/calico/bgp/v1/host/h2/ip_addr_v4",
                                      "/calico/v1/host/h1/config/VXLANTunnelAddr"])
def test_a_node_address_is_never_a_workload_network(node_key):
    node = (node_key, "10.65.0.5", 1)
    for perm in itertools.permutations([W1, IP_THIEF, node]):
        c = fresh(perm)
        d = c.desired()
        assert d.routes == {} and d.endpoints == {}
        assert "node h" in d.conflicts[path("w1")][1] and "10.65.0.5/32" in d.conflicts[path("w1")][1]
        assert path("w1") in c.errors and c._tag_members("web", 4) == frozenset()
    delete(c, node_key)                                                # the node moved away
    d = c.desired()
    assert d.routes == {"caliA": frozenset({"10.65.0.5/32"})} and set(d.conflicts) == {path("w2")}
    assert path("w1") not in c.errors


async def test_endpoint_status_of_a_loser_names_the_conflict():
    from felix.status import EndpointStatusReporter

    class Client:
        def __init__(self):
            self.kv = {}

        async def get_prefix(self, prefix):
            return 0, []

        async def put(self, key, value, **kw):
            self.kv[key] = value

        async def delete(self, key):
            self.kv.pop(key, None)

    c = fresh([W1, IP_THIEF])
    d = c.desired()
    statuses = {(e.orchestrator, e.workload, e.endpoint_id): "up" for e in d.endpoints.values()}
    for e, reason in d.conflicts.values():
        statuses[(e.orchestrator, e.workload, e.endpoint_id)] = ("error", reason)
    client = Client()
    rep = EndpointStatusReporter(client, HOST)
    rep.update(statuses)
    await rep._sync()
    base = f"/calico/felix/v1/host/{HOST}/workload/k8s"
    assert json.loads(client.kv[f"{base}/w1/endpoint/eth0"]) == {"status": "up"}
    doc = json.loads(client.kv[f"{base}/w2/endpoint/eth0"])
    assert doc["status"] == "error" and path("w1") in doc["reason"] and "10.65.0.5/32" in doc["reason"]
    delete(c, W1[0])                                                  # the winner goes: w2 is up now
    d = c.desired()
    rep.update({(e.orchestrator, e.workload, e.endpoint_id): "up" for e in d.endpoints.values()})
    await rep._sync()
    assert client.kv == {f"{base}/w2/endpoint/eth0": json.dumps({"status": "up"})}


def test_many_claimants_of_one_address_any_order_any_deletions():
    """Fifty endpoints fighting over a few addresses and interfaces, fed in shuffled orders with
    some deleted along the way: the result always equals a fresh calculator fed what is left."""
    rnd = random.Random(4)
    items = [ep(f"c{i:02d}", f"cali{rnd.randrange(8)}", f"10.65.1.{rnd.randrange(6)}", rnd.choice([0, 5, 9, i + 10]))
             for i in range(50)]
    want = view(fresh(items))
    assert len(want[0]) >= 1
    for _ in range(5):
        order = items[:]
        rnd.shuffle(order)
        c = fresh(order)
        assert view(c) == want
        gone = set(rnd.sample(range(50), 10))
        for i in sorted(gone, key=lambda _: rnd.random()):
            delete(c, items[i][0])
        assert view(c) == view(fresh([it for i, it in enumerate(items) if i not in gone]))
