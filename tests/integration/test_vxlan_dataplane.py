"""VXLAN overlay on the real kernel: two hosts on different subnets, a router that knows nothing of the pool.

  wa (10.65.0.2) -- host A (10.0.1.2) -- router (10.0.1.1 | 10.0.2.1) -- host B (10.0.2.2) -- wb (10.65.0.66)

The overlay state comes from the real calculator fed with real keys/values;
OverlayDataplane programs it (no Felix daemon).  Workloads reaching each other
while the router has no route to 10.65.0.0/16 proves the overlay carries them;
vxlan.calico's counters and the router's UDP/4789 counter prove encapsulation.
"""

from __future__ import annotations

import json
import re

import pytest

from calico_testing.netns import veth
from felix.calc.overlay import OverlayCalculator, OverlayConfig
from felix.dataplane import FELIX_RT_PROTO
from felix.dataplane.overlay import OverlayDataplane
from felix.desired import VXLAN_DEV
from libcalico import keys
from libcalico.models import parse_key_value

POOL = "10.65.0.0/16"


def feed(calcs, path: str, raw: str | None) -> None:
    key, value = parse_key_value(path, raw)
    for c in calcs:
        c.on_update("put" if raw is not None else "delete", key, value)


def rx_tx(ns, dev: str) -> tuple[int, int]:
    out = ns.run("ip", "-s", "link", "show", dev).stdout
    nums = re.findall(r"^\s+(\d+)\s+(\d+)", out, re.M)  # RX bytes packets / TX bytes packets
    return int(nums[0][1]), int(nums[1][1])


@pytest.fixture
def topo(netns_factory):
    r, a, b = netns_factory("vxr"), netns_factory("vxa"), netns_factory("vxb")
    wa, wb = netns_factory("vwa"), netns_factory("vwb")
    veth(r, "ra", a, "eth0")
    veth(r, "rb", b, "eth0")
    r.run("ip", "addr", "add", "10.0.1.1/24", "dev", "ra")
    r.run("ip", "addr", "add", "10.0.2.1/24", "dev", "rb")
    r.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    # count VXLAN packets crossing the router (iptables inside the test's own namespace)
    r.run("iptables-legacy", "-A", "FORWARD", "-p", "udp", "--dport", "4789")
    for host, ip, gw in ((a, "10.0.1.2/24", "10.0.1.1"), (b, "10.0.2.2/24", "10.0.2.1")):
        host.run("ip", "addr", "add", ip, "dev", "eth0")
        host.run("ip", "route", "add", "default", "via", gw)
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    for host, w, wip in ((a, wa, "10.65.0.2"), (b, wb, "10.65.0.66")):
        veth(host, "caliw", w, "eth0")
        host.run("sysctl", "-qw", "net.ipv4.conf.caliw.proxy_arp=1")
        host.run("sysctl", "-qw", "net.ipv4.neigh.caliw.proxy_delay=0")
        host.run("ip", "route", "add", f"{wip}/32", "dev", "caliw")
        w.run("ip", "addr", "add", f"{wip}/32", "dev", "eth0")
        w.run("ip", "route", "add", "169.254.1.1", "dev", "eth0")
        w.run("ip", "route", "add", "default", "via", "169.254.1.1")
    return r, a, b, wa, wb


def host_keys(name: str, bird_ip: str, vtep: str, block: str) -> list[tuple[str, str]]:
    return [(keys.host_bird_ip(name), bird_ip), (keys.host_config(name, "VXLANTunnelAddr"), vtep),
            (keys.block_affinity(name, block), json.dumps({"state": "confirmed"}))]


async def test_vxlan_between_two_subnets(topo):
    r, a, b, wa, wb = topo
    ca, cb = OverlayCalculator(OverlayConfig("host-a")), OverlayCalculator(OverlayConfig("host-b"))
    feed((ca, cb), keys.pool(POOL), json.dumps({"cidr": POOL, "vxlan": "vxlan.calico"}))
    for path, raw in host_keys("host-a", "10.0.1.2", "10.65.0.1", "10.65.0.0/26") + \
            host_keys("host-b", "10.0.2.2", "10.65.0.65", "10.65.0.64/26"):
        feed((ca, cb), path, raw)
    published: dict[str, str] = {}

    def publisher(host):
        async def cb(mac):  # what the daemon does: write the MAC to etcd; here every calculator sees it
            published[host] = mac
            feed((ca, cb_), keys.host_vxlan_mac(host), mac)
        return cb
    cb_ = cb
    da = OverlayDataplane(a.name, on_vxlan_mac=publisher("host-a"))
    db = OverlayDataplane(b.name, on_vxlan_mac=publisher("host-b"))
    try:
        da.set_state(ca.desired())
        await da.apply()
        db.set_state(cb.desired())
        await db.apply()
        assert set(published) == {"host-a", "host-b"}
        # second round: each side now knows the other's MAC
        da.set_state(ca.desired())
        await da.apply()
        db.set_state(cb.desired())
        await db.apply()

        detail = a.run("ip", "-d", "link", "show", VXLAN_DEV).stdout
        assert "vxlan id 4096" in detail and "local 10.0.1.2" in detail and "dstport 4789" in detail
        assert "nolearning" in detail and "mtu 1450" in detail  # VXLANMTU unset: the 1500 uplink minus 50
        assert "10.65.0.1/32" in a.run("ip", "-4", "addr", "show", VXLAN_DEV).stdout
        assert published["host-b"] in a.run("ip", "neigh", "show", "dev", VXLAN_DEV).stdout
        assert "dst 10.0.2.2" in a.run("bridge", "fdb", "show", "dev", VXLAN_DEV).stdout
        route = a.run("ip", "route", "show", "10.65.0.64/26").stdout
        assert "via 10.65.0.65" in route and VXLAN_DEV in route and "onlink" in route
        assert f"proto {FELIX_RT_PROTO}" in route
        # the router knows nothing of the pool
        assert "10.65." not in r.run("ip", "route").stdout

        rx0, tx0 = rx_tx(a, VXLAN_DEV)
        wa.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "10.65.0.66")
        wb.run("ping", "-c", "2", "-i", "0.2", "-W", "2", "10.65.0.2")
        rx1, tx1 = rx_tx(a, VXLAN_DEV)
        assert tx1 - tx0 >= 5 and rx1 - rx0 >= 5, (rx0, tx0, rx1, tx1)
        udp = r.run("iptables-legacy", "-nvxL", "FORWARD").stdout
        pkts = int(re.search(r"^\s*(\d+)\s+\d+\s.*udp dpt:4789", udp, re.M).group(1))
        assert pkts >= 10, udp

        # host B leaves: its neighbour, fdb entry and routes disappear from A, and traffic stops
        for path, _ in host_keys("host-b", "", "", "10.65.0.64/26"):
            feed((ca,), path, None)
        feed((ca,), keys.host_vxlan_mac("host-b"), None)
        da.set_state(ca.desired())
        await da.apply()
        assert a.run("ip", "route", "show", "10.65.0.64/26").stdout.strip() == ""
        assert published["host-b"] not in a.run("ip", "neigh", "show", "dev", VXLAN_DEV).stdout
        assert "10.0.2.2" not in a.run("bridge", "fdb", "show", "dev", VXLAN_DEV).stdout
        assert wa.run("ping", "-c", "1", "-W", "1", "10.65.0.66", check=False).returncode != 0
    finally:
        da.close()
        db.close()


async def test_restart_cleans_stale_entries_and_disable_removes_device(topo):
    _r, a, _b, _wa, _wb = topo
    c = OverlayCalculator(OverlayConfig("host-a"))
    feed((c,), keys.pool(POOL), json.dumps({"cidr": POOL, "vxlan": "vxlan.calico"}))
    for path, raw in host_keys("host-a", "10.0.1.2", "10.65.0.1", "10.65.0.0/26") + \
            host_keys("host-b", "10.0.2.2", "10.65.0.65", "10.65.0.64/26"):
        feed((c,), path, raw)
    feed((c,), keys.host_vxlan_mac("host-b"), "66:00:00:00:00:0b")
    d1 = OverlayDataplane(a.name)
    d1.set_state(c.desired())
    await d1.apply()
    mac1 = d1.vxlan_mac
    d1.close()
    # "Felix restarts" and host-b vanished while it was down
    c2 = OverlayCalculator(OverlayConfig("host-a"))
    feed((c2,), keys.pool(POOL), json.dumps({"cidr": POOL, "vxlan": "vxlan.calico"}))
    for path, raw in host_keys("host-a", "10.0.1.2", "10.65.0.1", "10.65.0.0/26"):
        feed((c2,), path, raw)
    d2 = OverlayDataplane(a.name)
    try:
        d2.set_state(c2.desired())
        await d2.apply()
        assert d2.vxlan_mac == mac1  # the existing device was kept, not recreated
        assert "66:00:00:00:00:0b" in a.run("bridge", "fdb", "show", "dev", VXLAN_DEV).stdout  # not yet in sync
        assert await d2.cleanup_stale() == 2
        await d2.routes.cleanup_stale()
        assert "66:00:00:00:00:0b" not in a.run("bridge", "fdb", "show", "dev", VXLAN_DEV).stdout
        assert "10.65.0.65" not in a.run("ip", "neigh", "show", "dev", VXLAN_DEV).stdout
        assert a.run("ip", "route", "show", "proto", str(FELIX_RT_PROTO)).stdout.strip() == ""
        # VNI change (not live): the device is recreated with the new VNI
        d2.vni = 4097
        d2.set_state(c2.desired())
        await d2.apply()
        assert "vxlan id 4097" in a.run("ip", "-d", "link", "show", VXLAN_DEV).stdout
        # no VXLAN pool any more: device removed
        feed((c2,), keys.pool(POOL), None)
        d2.set_state(c2.desired())
        await d2.apply()
        assert a.run("ip", "link", "show", VXLAN_DEV, check=False).returncode != 0
    finally:
        d2.close()
