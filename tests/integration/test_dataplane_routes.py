"""RouteWriter on the real kernel inside test namespaces: proto 80 routes, neighbours, overlay, drift."""

from __future__ import annotations

import asyncio

import pytest

from calico_testing.netns import veth
from felix.dataplane import FELIX_RT_PROTO, DataplaneError
from felix.dataplane.routes import RouteWriter


def routes(ns, family: int = 4, proto: int | None = FELIX_RT_PROTO) -> set[str]:
    args = ["ip", f"-{family}", "route", "show"] + (["proto", str(proto)] if proto is not None else [])
    return {" ".join(ln.split()[:3]) for ln in ns.run(*args).stdout.splitlines() if ln.strip()}


@pytest.fixture
def host(netns_factory):
    """A host namespace with a workload veth (caliA <-> eth0 in a workload namespace) and an uplink."""
    h = netns_factory("host")
    wl = netns_factory("wl")
    veth(h, "caliA", wl, "eth0")
    h.run("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-p")
    h.run("ip", "link", "set", "uplink", "up")
    h.run("ip", "addr", "add", "192.168.50.1/24", "dev", "uplink")
    h.run("ip", "route", "add", "10.200.0.0/24", "via", "192.168.50.2", "proto", "static")  # not ours
    return h


async def test_routes_neighbours_and_drift(host):
    w = RouteWriter(host.name)
    try:
        w.set_routes("caliA", {"10.65.0.5/32", "fd00:65::5/128"})
        w.set_neighbour("caliA", "10.65.0.5", "02:00:00:aa:bb:01")
        assert await w.apply() is True
        assert routes(host) == {"10.65.0.5 dev caliA"}
        assert routes(host, 6) == {"fd00:65::5 dev caliA"}
        assert "10.65.0.5 dev caliA lladdr 02:00:00:aa:bb:01 PERMANENT" in host.run("ip", "neigh").stdout
        assert await w.apply() is False
        # drift: a route deleted by hand comes back on refresh; the static route is untouched throughout
        host.run("ip", "route", "del", "10.65.0.5/32")
        assert routes(host) == set()
        await w.refresh()
        assert routes(host) == {"10.65.0.5 dev caliA"}
        assert "10.200.0.0/24 via 192.168.50.2" in routes(host, proto=None)
        # removal of the endpoint
        w.remove_interface("caliA")
        await w.apply()
        assert routes(host) == set() and routes(host, 6) == set()
        assert "PERMANENT" not in host.run("ip", "neigh").stdout
        assert "10.200.0.0/24 via 192.168.50.2" in routes(host, proto=None)
    finally:
        w.close()


async def test_route_waits_for_missing_interface(host, netns_factory):
    w = RouteWriter(host.name)
    try:
        w.set_routes("caliB", {"10.65.0.9/32"})
        await w.apply()  # no error: deferred
        assert routes(host) == set() and w.stats["deferred"] == 1 and w.dirty
        veth(host, "caliB", netns_factory("wl"), "eth0")
        w.interface_changed("caliB")
        await w.apply()
        assert routes(host) == {"10.65.0.9 dev caliB"} and not w.dirty
        # interface recreated (new ifindex): the kernel dropped the route, we put it back
        host.run("ip", "link", "del", "caliB")
        veth(host, "caliB", netns_factory("wl"), "eth0")
        w.interface_changed("caliB")
        await w.apply()
        assert routes(host) == {"10.65.0.9 dev caliB"}
    finally:
        w.close()


async def test_stale_routes_removed_only_by_cleanup(host):
    host.run("ip", "route", "add", "10.65.0.77/32", "dev", "caliA", "proto", str(FELIX_RT_PROTO))  # previous run
    host.run("ip", "neigh", "add", "10.65.0.77", "lladdr", "02:00:00:00:00:77", "dev", "caliA", "nud", "permanent")
    w = RouteWriter(host.name, managed_prefixes=("cali",))
    try:
        w.set_routes("caliA", {"10.65.0.5/32"})
        await w.apply()
        assert routes(host) == {"10.65.0.5 dev caliA", "10.65.0.77 dev caliA"}  # kept until in sync
        await w.cleanup_stale()
        assert routes(host) == {"10.65.0.5 dev caliA"}
        assert "10.65.0.77" not in host.run("ip", "neigh").stdout
        # once in sync, a proto-80 route that appears by hand is removed by the next refresh
        host.run("ip", "route", "add", "10.65.0.78/32", "dev", "caliA", "proto", str(FELIX_RT_PROTO))
        await w.refresh()
        assert routes(host) == {"10.65.0.5 dev caliA"}
        assert "10.200.0.0/24 via 192.168.50.2" in routes(host, proto=None)
    finally:
        w.close()


async def test_overlay_routes_fdb_and_neighbour_on_vxlan(host):
    host.run("ip", "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789",
             "local", "192.168.50.1", "dev", "uplink")
    host.run("ip", "link", "set", "vxlan.calico", "up")
    host.run("ip", "addr", "add", "10.65.1.0/32", "dev", "vxlan.calico")
    w = RouteWriter(host.name)
    try:
        w.set_neighbour("vxlan.calico", "10.65.2.0", "66:00:00:00:00:02")
        w.set_fdb("vxlan.calico", {"66:00:00:00:00:02": "192.168.50.2"})
        w.set_overlay_routes("vxlan.calico", {"10.65.2.0/26": ("10.65.2.0", True)})
        await w.apply()
        out = host.run("ip", "route", "show", "proto", str(FELIX_RT_PROTO)).stdout
        assert "10.65.2.0/26 via 10.65.2.0 dev vxlan.calico" in out and "onlink" in out
        assert "66:00:00:00:00:02 dst 192.168.50.2" in host.run("bridge", "fdb", "show", "dev", "vxlan.calico").stdout
        w.set_overlay_routes("vxlan.calico", {})
        w.set_fdb("vxlan.calico", {})
        w.set_neighbour("vxlan.calico", "10.65.2.0", None)
        await w.apply()
        assert routes(host) == set()
        assert "192.168.50.2" not in host.run("bridge", "fdb", "show", "dev", "vxlan.calico").stdout
    finally:
        w.close()


async def test_big_batch_errors_do_not_stop_other_routes(host):
    """600 routes (several netlink chunks) plus one the kernel rejects: the rest land, the error is reported."""
    w = RouteWriter(host.name)
    try:
        w.set_routes("caliA", {f"10.66.{i // 200}.{i % 200}/32" for i in range(600)})
        w.set_overlay_routes("uplink", {"10.67.0.0/26": ("172.31.9.9", False)})  # gateway not reachable
        with pytest.raises(DataplaneError, match="10.67.0.0/26"):
            await w.apply()
        assert len(routes(host)) == 600
        assert w.dirty  # the rejected route stays pending
        w.set_overlay_routes("uplink", {"10.67.0.0/26": ("192.168.50.2", False)})
        assert await w.apply() is True
        assert "10.67.0.0/26 via 192.168.50.2" in routes(host)
        assert await w.refresh() is False  # in sync: refresh changes nothing
        w.set_routes("caliA", set())
        await w.apply()
        assert routes(host) == {"10.67.0.0/26 via 192.168.50.2"}
    finally:
        w.close()


async def test_raw_dumps_match_pyroute2(host):
    """rtnl's own route/neighbour dump parser (used so the first apply needs no pyroute2)
    reads the kernel exactly as pyroute2 does, for v4 and v6, our routes and others'."""
    import socket

    from pyroute2 import AsyncIPRoute

    from felix.dataplane.nsthread import NsThread
    from felix.dataplane.rtnl import RouteSocket

    host.run("ip", "route", "add", "10.65.0.9/32", "dev", "caliA", "proto", "80")
    host.run("ip", "route", "add", "10.201.0.0/16", "via", "192.168.50.2", "proto", "80")
    host.run("ip", "-6", "route", "add", "fd00:65::9/128", "dev", "caliA", "proto", "80")
    host.run("ip", "route", "add", "10.202.0.0/24", "via", "192.168.50.3", "dev", "uplink", "onlink", "table", "1000")
    host.run("ip", "neigh", "replace", "10.65.0.9", "lladdr", "02:00:00:aa:bb:09", "dev", "caliA", "nud", "permanent")
    host.run("ip", "-6", "neigh", "replace", "fd00:65::9", "lladdr", "02:00:00:aa:bb:0a", "dev", "caliA",
             "nud", "permanent")

    def key(r):
        return (r["family"], r["dst"], r["dst_len"], r["proto"], r["scope"], r["table"], r["oif"], r["gateway"])

    def raw_dump():
        s = RouteSocket()
        try:
            return s.dump_routes(), s.dump_neighbours()
        finally:
            s.close()

    async def ref_dump(ipr):
        ref_routes, ref_neigh = [], []
        for fam in (socket.AF_INET, socket.AF_INET6):
            async for r in await ipr.route("dump", family=fam):
                ref_routes.append({"family": fam, "dst": r.get("dst"), "dst_len": r["dst_len"], "proto": r["proto"],
                                   "scope": r["scope"], "table": r.get("table", r["table"]), "oif": r.get("oif"),
                                   "gateway": r.get("gateway")})
        async for n in await ipr.neigh("dump"):
            if n["family"] in (socket.AF_INET, socket.AF_INET6):
                ref_neigh.append((n["ifindex"], n["state"], n.get("dst"), n.get("lladdr")))
        return ref_routes, ref_neigh

    # The kernel adds IPv6 multicast neighbours by itself, at moments of its own: compare
    # a reference dump only with raw dumps taken just before and after it that agree.
    t = NsThread(host.name, "test")
    ipr = AsyncIPRoute(netns=host.name, flags=0)
    try:
        for _ in range(50):
            before = await t.call(raw_dump)
            ref_routes, ref_neigh = await ref_dump(ipr)
            raw_routes, raw_neigh = await t.call(raw_dump)
            if before == (raw_routes, raw_neigh):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the kernel's tables never held still across one reference dump")
    finally:
        ipr.close()
        t.close()
    got = sorted(map(key, (r for r in raw_routes if r["family"] in (socket.AF_INET, socket.AF_INET6))), key=str)
    assert got == sorted(map(key, ref_routes), key=str)
    assert ("10.201.0.0" in {r["dst"] for r in raw_routes} and
            any(r["table"] == 1000 and r["gateway"] == "192.168.50.3" for r in raw_routes))
    got_n = sorted(((n["ifindex"], n["state"], n["dst"], n["lladdr"]) for n in raw_neigh
                    if n["family"] in (socket.AF_INET, socket.AF_INET6)), key=str)
    assert got_n == sorted(ref_neigh, key=str)
    assert any(n["dst"] == "fd00:65::9" and n["lladdr"] == "02:00:00:aa:bb:0a" for n in raw_neigh)


async def test_every_claimant_kept_removing_one_reinstalls_the_other(host, netns_factory):
    """Two interfaces claim one /32: withdrawing the programmed one brings the other's route
    back at once, and refresh() repairs a route the kernel lost or that points elsewhere."""
    veth(host, "caliB", netns_factory("wl"), "eth0")
    w = RouteWriter(host.name)
    try:
        w.set_routes("caliA", {"10.65.0.5/32"})
        w.set_routes("caliB", {"10.65.0.5/32"})
        await w.apply()
        assert routes(host) == {"10.65.0.5 dev caliA"}
        w.set_routes("caliA", set())
        await w.apply()
        assert routes(host) == {"10.65.0.5 dev caliB"}
        host.run("ip", "route", "del", "10.65.0.5/32")                   # the kernel lost it
        await w.refresh()
        assert routes(host) == {"10.65.0.5 dev caliB"}
        host.run("ip", "route", "replace", "10.65.0.5/32", "dev", "caliA", "proto", str(FELIX_RT_PROTO))
        await w.refresh()                                                # it points at the wrong interface
        assert routes(host) == {"10.65.0.5 dev caliB"}
        w.set_routes("caliB", set())
        await w.apply()
        assert routes(host) == set()
    finally:
        w.close()


async def test_local_workload_route_beats_an_overlay_route_for_the_same_cidr(host):
    host.run("ip", "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789",
             "local", "192.168.50.1", "dev", "uplink")
    host.run("ip", "link", "set", "vxlan.calico", "up")
    w = RouteWriter(host.name)
    try:
        w.set_routes("caliA", {"10.65.0.5/32"})
        await w.apply()
        # a remote host's block affinity for exactly the workload's address arrives later
        w.set_overlay_routes("vxlan.calico", {"10.65.0.5/32": ("10.65.3.0", True), "10.65.3.0/26": ("10.65.3.0", True)})
        await w.apply()
        assert routes(host) == {"10.65.0.5 dev caliA", "10.65.3.0/26 via 10.65.3.0"}
        w.set_routes("caliA", set())                                     # workload gone: the overlay route takes over
        await w.apply()
        assert routes(host) == {"10.65.0.5 via 10.65.3.0", "10.65.3.0/26 via 10.65.3.0"}
        w.set_routes("caliA", {"10.65.0.5/32"})                          # and gives way again
        await w.apply()
        assert "10.65.0.5 dev caliA" in routes(host)
        await w.refresh()
        assert routes(host) == {"10.65.0.5 dev caliA", "10.65.3.0/26 via 10.65.3.0"}
    finally:
        w.close()
