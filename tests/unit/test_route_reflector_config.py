"""confd's route reflector rules, on the template context (the golden files show the rendered text).

Who is an `rr client`, which end connects, what a reflector renders for hosts peering with it, and
that nobody peers with its own address, with the mesh on or off.
"""

from __future__ import annotations

import json

from confd.state import BgpStore, Node

RR_A, RR_B, RR_X = "10.99.0.1", "10.99.0.2", "10.99.0.9"


def _kv(mesh: bool = False, extra: dict | None = None) -> dict[str, str]:
    kv = {
        "/calico/bgp/v1/global/as_num": "64511",
        "/calico/bgp/v1/global/node_mesh": json.dumps({"enabled": mesh}),
        "/calico/v1/ipam/v4/pool/10.65.0.0-16": '{"cidr": "10.65.0.0/16"}',
    }
    for name, ip in (("rr-a", RR_A), ("rr-b", RR_B), ("c", "10.99.0.3"), ("d", "10.99.0.4"), ("rr-x", RR_X)):
        kv[f"/calico/bgp/v1/host/{name}/ip_addr_v4"] = ip
    for ip in (RR_A, RR_B):
        kv[f"/calico/bgp/v1/global/peer_v4/{ip}"] = json.dumps({"ip": ip, "as_num": "64511"})
    kv["/calico/bgp/v1/host/rr-a/rr_cluster_id"] = "1.0.0.1"
    kv["/calico/bgp/v1/host/rr-b/rr_cluster_id"] = "1.0.0.1"
    kv["/calico/bgp/v1/host/rr-x/rr_cluster_id"] = "2.0.0.2"
    kv.update(extra or {})
    return kv


def _ctx(name: str, ip: str, **kw) -> dict:
    return BgpStore(Node(name, ip)).load_raw(_kv(**kw)).context()


def _sessions(ctx: dict) -> dict[str, dict]:
    v4 = ctx["v4"]
    return {p["ip"]: p for kind in ("node_peers", "global_peers", "rr_peers", "mesh_peers") for p in v4[kind]}


def test_reflector_serves_every_host_that_peers_with_it():
    ctx = _ctx("rr-a", RR_A)
    s = _sessions(ctx)
    assert ctx["node"]["rr_cluster_id"] == "1.0.0.1"
    assert RR_A not in s                                     # never its own address
    for client in ("10.99.0.3", "10.99.0.4"):               # global peers of everyone: clients of rr-a
        assert s[client]["name"] == f"RR_{client.replace('.', '_')}"
        assert s[client]["rr_client"] and s[client]["rr_cluster_id"] == "1.0.0.1" and s[client]["passive"]
    same = s[RR_B]                                           # same cluster: plain iBGP, not a client
    assert same["name"] == "Global_10_99_0_2" and not same["rr_client"] and same["rr_cluster_id"] == "1.0.0.1"
    other = s[RR_X]                                          # another cluster's reflector: plain iBGP too
    assert other["name"] == "RR_10_99_0_9" and not other["rr_client"]
    # two reflectors listing each other: exactly one connects (the lower address)
    assert same["passive"] and not _sessions(_ctx("rr-b", RR_B))[RR_A]["passive"]


def test_client_peers_only_with_the_reflectors():
    ctx = _ctx("c", "10.99.0.3")
    s = _sessions(ctx)
    assert set(s) == {RR_A, RR_B}
    assert all(not p["rr_client"] and p["rr_cluster_id"] is None and not p["passive"] for p in s.values())
    assert ctx["v4"]["rr_peers"] == [] and ctx["node"]["rr_cluster_id"] is None


def test_node_peer_makes_a_client_of_that_node_only():
    extra = {"/calico/bgp/v1/host/d/peer_v4/10.99.0.9": json.dumps({"ip": RR_X, "as_num": "64511"})}
    s = _sessions(_ctx("rr-x", RR_X, extra=extra))
    assert s["10.99.0.4"]["rr_client"] and s["10.99.0.4"]["rr_cluster_id"] == "2.0.0.2"
    assert "10.99.0.3" not in s                              # c does not list rr-x
    assert not s[RR_A]["rr_client"]                          # rr-a (cluster 1) is a global peer of rr-x


def test_mesh_on_reflector_sessions_replace_mesh_ones_without_duplicates():
    ctx = _ctx("rr-a", RR_A, mesh=True)
    v4 = ctx["v4"]
    ips = [p["ip"] for kind in ("node_peers", "global_peers", "rr_peers", "mesh_peers") for p in v4[kind]]
    assert len(ips) == len(set(ips))                         # one session per neighbour
    assert {p["ip"] for p in v4["rr_peers"]} == {"10.99.0.3", "10.99.0.4", RR_X}
    assert v4["mesh_peers"] == []                            # every other host already has a session
    c = _sessions(_ctx("c", "10.99.0.3", mesh=True))
    assert c[RR_A]["name"].startswith("Global_") and c["10.99.0.4"]["name"].startswith("Mesh_")


def test_bad_cluster_id_is_rejected_and_the_node_stays_plain():
    store = BgpStore(Node("rr-a", RR_A)).load_raw(_kv(extra={"/calico/bgp/v1/host/rr-a/rr_cluster_id": "abc"}))
    assert "/calico/bgp/v1/host/rr-a/rr_cluster_id" in store.rejected
    assert store.context()["node"]["rr_cluster_id"] is None
    assert store.concerns_me("/calico/bgp/v1/host/rr-a/rr_cluster_id")
    other = BgpStore(Node("c", "10.99.0.3")).load_raw(_kv(extra={"/calico/bgp/v1/host/rr-a/rr_cluster_id": "x"}))
    assert not other.concerns_me("/calico/bgp/v1/host/rr-a/rr_cluster_id")  # rr-a's business, not c's
