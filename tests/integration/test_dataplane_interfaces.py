"""InterfaceMonitor (netlink events) and SysctlWriter (setns thread) inside test namespaces."""

from __future__ import annotations

import asyncio

from calico_testing.netns import veth
from felix.dataplane.interfaces import InterfaceMonitor
from felix.dataplane.sysctl import SysctlWriter


async def wait_event(events: list, want: tuple, start: int = 0, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while want not in [e[:2] for e in events[start:]]:
        assert asyncio.get_running_loop().time() < deadline, f"no {want} in {events}"
        await asyncio.sleep(0.02)


async def test_monitor_sees_existing_new_up_down_and_gone(netns_factory):
    host = netns_factory("host")
    veth(host, "caliOld", netns_factory("wl"), "eth0")  # exists before the monitor starts
    host.run("ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    events: list[tuple[str, str, int]] = []

    async def cb(name, state, index):  # coroutine callbacks are awaited
        events.append((name, state, index))

    mon = InterfaceMonitor(host.name, "cali", cb)
    mon.start()
    try:
        await asyncio.wait_for(mon.synced.wait(), 5)
        assert [e[:2] for e in events] == [("caliOld", "up")]
        host.run("ip", "link", "add", "caliNew", "type", "veth", "peer", "name", "peerNew")
        await wait_event(events, ("caliNew", "down"))
        host.run("ip", "link", "set", "peerNew", "up")
        host.run("ip", "link", "set", "caliNew", "up")
        await wait_event(events, ("caliNew", "up"))
        n = len(events)
        host.run("ip", "link", "set", "caliNew", "down")
        await wait_event(events, ("caliNew", "down"), start=n)
        n = len(events)
        host.run("ip", "link", "del", "caliNew")
        await wait_event(events, ("caliNew", "gone"), start=n)
        assert not any(e[0].startswith(("other", "peer")) for e in events)
        # transitions only: the same state is never reported twice in a row for one name
        per_name: dict[str, list[str]] = {}
        for name, state, _ in events:
            per_name.setdefault(name, []).append(state)
        for states in per_name.values():
            assert all(a != b for a, b in zip(states, states[1:], strict=False))
        assert mon.states == {"caliOld": ("up", mon.states["caliOld"][1])}
    finally:
        await mon.stop()


async def test_sysctls_written_inside_the_namespace(netns_factory):
    host = netns_factory("host")
    veth(host, "caliS", netns_factory("wl"), "eth0")
    w = SysctlWriter(host.name)
    try:
        assert await w.configure_global() == []
        assert await w.configure_interface("caliS") == []
        got = host.run("sysctl", "-n", "net.ipv4.conf.caliS.proxy_arp", "net.ipv4.conf.caliS.rp_filter",
                       "net.ipv4.neigh.caliS.proxy_delay", "net.ipv4.conf.caliS.forwarding",
                       "net.ipv6.conf.caliS.proxy_ndp", "net.ipv6.conf.caliS.forwarding",
                       "net.ipv6.conf.caliS.accept_ra", "net.ipv4.ip_forward").stdout.split()
        assert got == ["1", "1", "0", "1", "1", "1", "0", "1"]
        failed = await w.configure_interface("caliGone")  # vanished interface: reported, not raised
        assert len(failed) == 7 and all("caliGone" in f for f in failed)
    finally:
        w.close()
