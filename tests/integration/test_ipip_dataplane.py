"""IPIP overlay on the real kernel (same two-subnet topology as the VXLAN test).

These machines' kernel has no `ipip`: there the full test skips with that
reason, and the detection test proves Felix notices, reports it once and in
readiness, and keeps VXLAN working.  On a kernel with ipip the roles swap.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from felix.calc.overlay import OverlayCalculator, OverlayConfig
from felix.dataplane import FELIX_RT_PROTO
from felix.dataplane.overlay import OverlayDataplane
from felix.desired import IPIP_DEV, VXLAN_DEV
from libcalico import keys
from tests.integration.test_vxlan_dataplane import POOL, feed, host_keys, rx_tx, topo  # noqa: F401 - fixture

IPIP_POOL = "10.80.0.0/16"


def kernel_has_ipip(ns) -> bool:
    """Probe inside a test namespace: tunl0 exists (module loaded) or an ipip link can be created."""
    if ns.run("ip", "link", "show", "tunl0", check=False).returncode == 0:
        return True
    r = ns.run("ip", "link", "add", "tunl0", "type", "ipip", check=False)
    return r.returncode == 0


def ipip_calc(host: str) -> OverlayCalculator:
    c = OverlayCalculator(OverlayConfig(host, ipip_enabled=True))
    feed((c,), keys.pool(IPIP_POOL), json.dumps({"cidr": IPIP_POOL, "ipip": "tunl0"}))
    for name, bird, tun, block in (("host-a", "10.0.1.2", "10.80.0.1", "10.80.0.0/26"),
                                   ("host-b", "10.0.2.2", "10.80.0.65", "10.80.0.64/26")):
        feed((c,), keys.host_bird_ip(name), bird)
        feed((c,), keys.host_config(name, "IpInIpTunnelAddr"), tun)
        feed((c,), keys.block_affinity(name, block), json.dumps({"state": "confirmed"}))
    return c


async def test_missing_ipip_is_detected_reported_once_and_vxlan_keeps_working(topo, caplog):  # noqa: F811
    _r, a, _b, _wa, _wb = topo
    if kernel_has_ipip(a):
        pytest.skip("this kernel has ipip: the missing-support path cannot be exercised here")
    c = ipip_calc("host-a")
    # a VXLAN pool next to it: the rest of the overlay must be unaffected
    feed((c,), keys.pool(POOL), json.dumps({"cidr": POOL, "vxlan": "vxlan.calico"}))
    for path, raw in host_keys("host-a", "10.0.1.2", "10.65.0.1", "10.65.0.0/26") + \
            host_keys("host-b", "10.0.2.2", "10.65.0.65", "10.65.0.64/26"):
        feed((c,), path, raw)
    feed((c,), keys.host_vxlan_mac("host-b"), "66:00:00:00:00:0b")
    assert c.desired().ipip.routes  # the calculation itself wants IPIP routes
    dp = OverlayDataplane(a.name)
    try:
        with caplog.at_level(logging.ERROR, logger="felix.dataplane.overlay"):
            dp.set_state(c.desired())
            await dp.apply()
            dp.set_state(c.desired())
            await dp.apply()
            dp.set_state(c.desired())
            await dp.apply()
        errors = [rec for rec in caplog.records if "ipip" in rec.getMessage()]
        assert len(errors) == 1, [rec.getMessage() for rec in errors]
        assert dp.ipip_supported is False
        assert any("no ipip support" in r for r in dp.not_ready_reasons())
        assert "10.80." not in a.run("ip", "route").stdout  # nothing half-programmed
        # VXLAN still fully programmed
        assert "via 10.65.0.65" in a.run("ip", "route", "show", "10.65.0.64/26").stdout
        assert "dst 10.0.2.2" in a.run("bridge", "fdb", "show", "dev", VXLAN_DEV).stdout
    finally:
        dp.close()


async def test_ipip_between_two_subnets(topo):  # noqa: F811
    r, a, b, wa, wb = topo
    if not kernel_has_ipip(a):
        pytest.skip("kernel has no ipip support (no tunl0, `ip link add type ipip` fails): "
                    "IPIP dataplane cannot be tested on this machine")
    # re-address the workloads into the IPIP pool
    for host, w, _old, new in ((a, wa, "10.65.0.2", "10.80.0.2"), (b, wb, "10.65.0.66", "10.80.0.66")):
        host.run("ip", "route", "replace", f"{new}/32", "dev", "caliw")
        w.run("ip", "addr", "add", f"{new}/32", "dev", "eth0")
    r.run("iptables-legacy", "-A", "FORWARD", "-p", "4")
    ca, cb = ipip_calc("host-a"), ipip_calc("host-b")
    da, db = OverlayDataplane(a.name), OverlayDataplane(b.name)
    try:
        da.set_state(ca.desired())
        await da.apply()
        db.set_state(cb.desired())
        await db.apply()
        assert da.ipip_supported and not da.not_ready_reasons()
        link = a.run("ip", "-d", "link", "show", IPIP_DEV).stdout
        assert "mtu 1480" in link  # IpInIpMtu unset: the 1500 uplink minus 20
        assert "10.80.0.1/32" in a.run("ip", "-4", "addr", "show", IPIP_DEV).stdout
        route = a.run("ip", "route", "show", "10.80.0.64/26").stdout
        assert "via 10.0.2.2" in route and IPIP_DEV in route and "onlink" in route
        assert f"proto {FELIX_RT_PROTO}" in route
        rx0, tx0 = rx_tx(a, IPIP_DEV)
        wa.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", "10.80.0.2", "10.80.0.66")
        rx1, tx1 = rx_tx(a, IPIP_DEV)
        assert tx1 - tx0 >= 3 and rx1 - rx0 >= 3
        out = r.run("iptables-legacy", "-nvxL", "FORWARD").stdout
        assert int(re.search(r"^\s*(\d+)\s", out.splitlines()[2]).group(1)) >= 6
        # host B leaves: its routes go
        feed((ca,), keys.block_affinity("host-b", "10.80.0.64/26"), None)
        da.set_state(ca.desired())
        await da.apply()
        assert a.run("ip", "route", "show", "10.80.0.64/26").stdout.strip() == ""
    finally:
        da.close()
        db.close()
