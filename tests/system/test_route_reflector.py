"""Route reflectors end to end: 6 real calico-nodes, mesh off, 2 reflectors (one cluster), 4 clients.

Every client reaches every other client's workload through reflected routes whose next hop is the
originating node (never a reflector); clients peer with the reflectors only; each node's sessions
appear in etcd and in `calicoctl status --all`.  Then one reflector's BIRD dies, and later the
other reflector dies whole: the clients lose no ping and no route, and a block created while a
reflector is gone still reaches every client through the surviving one.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from calico_testing.cluster import Cluster, Pinger
from calico_testing.netns import wait_for

pytestmark = pytest.mark.slow

ALLOW_ALL = json.dumps({"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})


def _bird_routes(node) -> str:
    return node.ns.run("ip", "-4", "route", "show", "proto", "bird").stdout


def _reaches_all(c: Cluster, clients, what: str, timeout: float = 40) -> None:
    wls = [(n, wl, ip) for n in clients for (wl, ip) in n.workloads]
    for n, src, _ in wls:
        for m, _, ip in wls:
            if m is not n:
                wait_for(lambda src=src, ip=ip: c.ping(src, ip), timeout=timeout,
                         what=f"{what}: {n.name} -> {m.name} ({ip})")


def _routes_via_origin(clients, reflectors) -> None:
    """Each client's route to another client's block goes straight to that client."""
    for n in clients:
        rt = _bird_routes(n)
        for m in clients:
            if m is n:
                continue
            for _, ip in m.workloads:
                addr = ipaddress.ip_address(ip)
                block = next((ln for ln in rt.splitlines()
                              if "/" in ln.split()[0] and addr in ipaddress.ip_network(ln.split()[0])), None)
                assert block is not None and f"via {m.ip} " in block + " ", \
                    f"{n.name}: the route to {m.name}'s workload {ip} is not via {m.ip}:\n{rt}"
        for r in reflectors:
            assert f"via {r.ip} " not in rt, f"{n.name} routes through reflector {r.name}:\n{rt}"


@pytest.fixture(scope="module")
def rr_cluster():
    c = Cluster(n_nodes=6, start=False)
    try:
        a = c.nodes[0]
        a.ctl("pool", "add", "10.66.0.0/16")
        a.ctl("profile", "add", "open")
        a.ctl("profile", "open", "rule", "update", input=ALLOW_ALL)
        expected = c.use_route_reflectors(c.nodes[:2], cluster_id="1.0.0.1")
        for n in c.nodes:
            c.start_node(n)
        c.wait_ready(timeout=90, sessions=expected)
        for n in c.nodes[2:]:
            c.add_workload(n, "ipv4", profile="open")
        yield c
    finally:
        c.close()


def test_clients_reach_each_other_through_reflected_routes(rr_cluster):
    c = rr_cluster
    reflectors, clients = c.nodes[:2], c.nodes[2:]
    _reaches_all(c, clients, "reflected routes")
    _routes_via_origin(clients, reflectors)
    for n in clients:  # no client-to-client session: only the two reflectors
        assert sorted(n.bgp_sessions()) == sorted(f"Global_{r.ip.replace('.', '_')}" for r in reflectors)
    for r in reflectors:  # a reflector: the other reflector (global peer) + one rr-client session per client
        s = r.bgp_sessions()
        assert sum(1 for name in s if name.startswith("RR_")) == len(clients), s
        assert r.ip.replace(".", "_") not in " ".join(s), f"{r.name} peers with itself: {s}"
    rr1 = reflectors[0]
    cfg = open(f"{rr1.dirs['conf']}/bird.cfg").read()
    assert "rr client;" in cfg and "rr cluster id 1.0.0.1;" in cfg and "next hop self" not in cfg


def test_session_status_in_etcd_and_status_all(rr_cluster):
    c = rr_cluster
    assert c.etcd is not None

    def published() -> bool:
        for n in c.nodes:
            raw = c.etcd.get(f"/calico/bgp/v1/host/{n.name}/status/v4")
            if not raw:
                return False
            doc = json.loads(raw)
            want = len(c.nodes) - 1 if n in c.nodes[:2] else 2
            if sum(1 for s in doc["sessions"] if s["state"] == "Established") != want:
                return False
            if n in c.nodes[:2] and not all(s["imported"] >= 1 for s in doc["sessions"] if s["type"] == "rr client"):
                return False  # each client's block, learned by the reflector
        return True

    wait_for(published, timeout=30, what="every node's sessions Established in etcd")
    client = json.loads(c.etcd.get(f"/calico/bgp/v1/host/{c.nodes[2].name}/status/v4"))
    assert {s["peer"] for s in client["sessions"]} == {c.nodes[0].ip, c.nodes[1].ip}
    rr = json.loads(c.etcd.get(f"/calico/bgp/v1/host/{c.nodes[0].name}/status/v4"))
    assert sum(1 for s in rr["sessions"] if s["type"] == "rr client" and s["rr_client"]) == 4
    assert all(s["exported"] >= 3 for s in rr["sessions"] if s["type"] == "rr client")  # the others' blocks
    out = c.nodes[3].ctl("status", "--all").stdout
    for n in c.nodes:
        assert n.name in out, out
    assert out.count("Established") >= 4 * 2 + 2 * 5, out
    show = c.nodes[3].ctl("node", "show").stdout
    assert "RR Cluster" in show and show.count("1.0.0.1") == 2, show


def test_losing_a_reflector_loses_nothing(rr_cluster):
    c = rr_cluster
    rr1, rr2 = c.nodes[:2]
    clients = c.nodes[2:]
    src = clients[0].workloads[0][0]
    dst_ip = clients[-1].workloads[0][1]
    before = {n.name: _bird_routes(n) for n in clients}

    # 1. rr1's BIRD dies (supervisord restarts it): clients keep their routes (graceful restart, rr2).
    pinger = Pinger(src, dst_ip)
    pinger.start()
    try:
        c.kill_bird(rr1)
        wait_for(lambda: rr1.established() >= len(c.nodes) - 1, timeout=60, what="rr1's BIRD back with every session")
        wait_for(lambda: pinger.received >= 30, timeout=30, what="pings during the BIRD restart")
    finally:
        pinger.stop()
    assert pinger.lost == 0, f"{pinger.lost} pings lost while rr1's BIRD restarted"
    for n in clients:
        assert _bird_routes(n) == before[n.name], f"{n.name}'s routes changed when rr1's BIRD restarted"

    # 2. rr2 dies whole (every process, no Cease): clients keep every route and still learn new ones.
    pinger = Pinger(src, dst_ip)
    pinger.start()
    try:
        c.kill_node(rr2)
        # An explicit address outside every block in use: clients[1] claims a new block, which only
        # rr1 can reflect now.
        _, new_ip = c.add_workload(clients[1], "10.66.250.10", profile="open")
        for n in clients:
            if n is not clients[1]:
                wl = n.workloads[0][0]
                wait_for(lambda wl=wl: c.ping(wl, new_ip), timeout=40,
                         what=f"{n.name} reaches a workload created after rr2 died (via rr1)")
        wait_for(lambda: pinger.received >= 30, timeout=30, what="pings after rr2 died")
    finally:
        pinger.stop()
    assert pinger.lost == 0, f"{pinger.lost} pings lost when reflector rr2 died"
    for n in clients:
        rt = _bird_routes(n)
        for line in before[n.name].splitlines():
            assert line.split()[0] in rt, f"{n.name} lost its route {line!r} when rr2 died:\n{rt}"
    _routes_via_origin(clients, [rr1, rr2])
