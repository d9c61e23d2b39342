"""Felix's tunnel device MTU on the real kernel: VXLANMTU / IpInIpMtu when set, else the uplink's MTU
minus the encapsulation (50 VXLAN, 20 IPIP) — and packets of exactly that size cross the tunnel
with don't-fragment set, over an uplink smaller than 1500.

Topology and calculator feed are test_vxlan_dataplane's (two hosts on two subnets, a router).
"""

from __future__ import annotations

import json

from felix.calc.overlay import OverlayCalculator, OverlayConfig
from felix.dataplane.overlay import OverlayDataplane
from felix.desired import VXLAN_DEV
from libcalico import keys
from tests.integration.test_vxlan_dataplane import POOL, feed, host_keys, topo  # noqa: F401 - topo is a fixture

UPLINK = 1400


def mtu(ns, dev: str) -> int:
    return json.loads(ns.run("ip", "-j", "link", "show", dev).stdout)[0]["mtu"]


def df_ping(ns, dst: str, size: int) -> bool:
    """One ICMP echo of `size` bytes on the wire (IP header included), don't-fragment set."""
    r = ns.run("ping", "-c1", "-W2", "-M", "do", "-s", str(size - 28), dst, check=False)
    return r.returncode == 0


async def test_vxlan_mtu_derived_from_a_small_uplink_then_configured(topo):  # noqa: F811
    r, a, b, wa, wb = topo
    for ns, dev in ((r, "ra"), (r, "rb"), (a, "eth0"), (b, "eth0")):
        ns.run("ip", "link", "set", dev, "mtu", str(UPLINK))
    ca, cb = OverlayCalculator(OverlayConfig("host-a")), OverlayCalculator(OverlayConfig("host-b"))
    feed((ca, cb), keys.pool(POOL), json.dumps({"cidr": POOL, "vxlan": "vxlan.calico"}))
    for path, raw in host_keys("host-a", "10.0.1.2", "10.65.0.1", "10.65.0.0/26") + \
            host_keys("host-b", "10.0.2.2", "10.65.0.65", "10.65.0.64/26"):
        feed((ca, cb), path, raw)

    async def publish(host: str, mac: str) -> None:
        feed((ca, cb), keys.host_vxlan_mac(host), mac)
    da = OverlayDataplane(a.name, on_vxlan_mac=lambda m: publish("host-a", m))
    db = OverlayDataplane(b.name, on_vxlan_mac=lambda m: publish("host-b", m))
    try:
        for _ in range(2):  # the second round knows the other side's MAC
            da.set_state(ca.desired())
            await da.apply()
            db.set_state(cb.desired())
            await db.apply()
        assert mtu(a, VXLAN_DEV) == mtu(b, VXLAN_DEV) == UPLINK - 50
        for ns in (wa, wb):  # the workloads use what the tunnel carries (what libcalico.mtu gives them)
            ns.run("ip", "link", "set", "eth0", "mtu", str(UPLINK - 50))
        assert df_ping(wa, "10.65.0.66", UPLINK - 50), "a full-size DF packet does not cross the tunnel"
        assert not df_ping(wa, "10.65.0.66", UPLINK - 49), "a packet larger than the tunnel MTU went out"
    finally:
        da.close()
        db.close()
    # configured: VXLANMTU wins over the derivation (and the device follows a change)
    dc = OverlayDataplane(a.name, mtu=1300, on_vxlan_mac=lambda m: publish("host-a", m))
    try:
        dc.set_state(ca.desired())
        await dc.apply()
        assert mtu(a, VXLAN_DEV) == 1300
    finally:
        dc.close()


async def test_ipip_mtu_derived_or_configured(topo):  # noqa: F811
    from tests.integration.test_ipip_dataplane import ipip_calc, kernel_has_ipip
    r, a, b, wa, wb = topo
    if not kernel_has_ipip(a):
        import pytest
        pytest.skip("kernel has no ipip support: tunl0 cannot be created here")
    a.run("ip", "link", "set", "eth0", "mtu", str(UPLINK))
    ca = ipip_calc("host-a")
    da = OverlayDataplane(a.name)
    try:
        da.set_state(ca.desired())
        await da.apply()
        assert mtu(a, "tunl0") == UPLINK - 20
    finally:
        da.close()
    dc = OverlayDataplane(a.name, ipip_mtu=1234)
    try:
        dc.set_state(ca.desired())
        await dc.apply()
        assert mtu(a, "tunl0") == 1234
    finally:
        dc.close()


def test_felix_config_zero_means_derive_and_bad_values_are_refused():
    from felix.config import Config
    base = {"FELIX_CONFIGFILE": "/nonexistent"}
    c = Config.resolve({}, {"VXLANMTU": "0", "IpInIpMtu": "1400"}, environ=base)
    assert (c.VXLANMTU, c.IpInIpMtu) == (None, 1400)
    bad = Config.resolve({}, {"VXLANMTU": "100"}, environ=base)
    assert bad.VXLANMTU is None and any("VXLANMTU" in w for w in bad.warnings)
    env_bad = Config.resolve({}, {}, environ=dict(base, FELIX_VXLANMTU="abc"))
    assert env_bad.VXLANMTU is None and any("VXLANMTU" in w and "abc" in w for w in env_bad.warnings)
