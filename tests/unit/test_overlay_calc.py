"""OverlayCalculator: real keys and values (libcalico parsers), pure calculation of VXLAN/IPIP state."""

from __future__ import annotations

import json

from felix.calc.overlay import OverlayCalculator, OverlayConfig
from libcalico import keys
from libcalico.models import Pool, parse_key_value

ME = "node-a"


def put(calc: OverlayCalculator, path: str, raw: str) -> bool:
    key, value = parse_key_value(path, raw)
    assert key is not None, path
    return calc.on_update("put", key, value)


def delete(calc: OverlayCalculator, path: str) -> bool:
    key, _ = parse_key_value(path, None)
    return calc.on_update("delete", key, None)


def host(calc: OverlayCalculator, name: str, bird_ip: str, vtep: str | None, mac: str | None,
         blocks: list[str], ipip_addr: str | None = None) -> None:
    put(calc, keys.host_bird_ip(name), bird_ip)
    if vtep:
        put(calc, keys.host_config(name, "VXLANTunnelAddr"), vtep)
    if ipip_addr:
        put(calc, keys.host_config(name, "IpInIpTunnelAddr"), ipip_addr)
    if mac:
        put(calc, keys.host_vxlan_mac(name), mac)
    for b in blocks:
        put(calc, keys.block_affinity(name, b), json.dumps({"state": "confirmed"}))


def vxlan_pool(calc: OverlayCalculator, cidr: str = "10.65.0.0/16") -> None:
    put(calc, keys.pool(cidr), json.dumps({"cidr": cidr, "vxlan": "vxlan.calico"}))


def test_vxlan_auto_enabled_by_pool_and_per_host_objects():
    calc = OverlayCalculator(OverlayConfig(ME))
    host(calc, ME, "10.0.1.2", "10.65.0.1", "66:00:00:00:00:0a", ["10.65.0.0/26"])
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", ["10.65.0.64/26", "10.65.1.0/26"])
    assert not calc.desired().vxlan.enabled  # no VXLAN pool yet
    vxlan_pool(calc)
    vx = calc.desired().vxlan
    assert vx.enabled and vx.ready
    assert vx.local_ip == "10.0.1.2" and vx.tunnel_addr == "10.65.0.1"
    assert dict(vx.neighbours) == {"10.65.0.65": "66:00:00:00:00:0b"}
    assert dict(vx.fdb) == {"66:00:00:00:00:0b": "10.0.2.2"}
    # our own block never gets an overlay route
    assert dict(vx.routes) == {"10.65.0.64/26": "10.65.0.65", "10.65.1.0/26": "10.65.0.65"}
    assert not calc.desired().ipip.enabled


def test_blocks_outside_vxlan_pools_are_not_routed_and_pool_removal_disables():
    calc = OverlayCalculator(OverlayConfig(ME))
    vxlan_pool(calc, "10.65.0.0/24")
    put(calc, keys.pool("10.70.0.0/16"), json.dumps({"cidr": "10.70.0.0/16"}))  # plain BGP pool
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", ["10.65.0.64/26", "10.70.0.0/26"])
    assert dict(calc.desired().vxlan.routes) == {"10.65.0.64/26": "10.65.0.65"}
    assert delete(calc, keys.pool("10.65.0.0/24"))
    assert not calc.desired().vxlan.enabled


def test_host_leaving_removes_everything_and_incomplete_vtep_is_skipped():
    calc = OverlayCalculator(OverlayConfig(ME, vxlan_enabled=True))
    vxlan_pool(calc)
    host(calc, ME, "10.0.1.2", "10.65.0.1", None, [])
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", ["10.65.0.64/26"])
    host(calc, "node-c", "10.0.3.2", "10.65.0.129", None, ["10.65.0.128/26"])  # no MAC yet
    vx = calc.desired().vxlan
    assert set(vx.neighbours) == {"10.65.0.65"}
    assert set(vx.routes) == {"10.65.0.64/26"}
    # node-c's Felix publishes its MAC: it appears
    assert put(calc, keys.host_vxlan_mac("node-c"), "66:00:00:00:00:0c")
    assert set(calc.desired().vxlan.routes) == {"10.65.0.64/26", "10.65.0.128/26"}
    # node-b goes away key by key
    delete(calc, keys.block_affinity("node-b", "10.65.0.64/26"))
    assert "10.65.0.64/26" not in calc.desired().vxlan.routes
    delete(calc, keys.host_vxlan_mac("node-b"))
    vx = calc.desired().vxlan
    assert set(vx.neighbours) == {"10.65.0.129"} and set(vx.fdb) == {"66:00:00:00:00:0c"}


def test_unchanged_update_reports_no_change_and_desired_is_cached():
    calc = OverlayCalculator(OverlayConfig(ME))
    vxlan_pool(calc)
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", ["10.65.0.64/26"])
    first = calc.desired()
    assert not put(calc, keys.host_bird_ip("node-b"), "10.0.2.2")
    assert calc.desired() is first
    # unrelated keys are ignored cheaply
    key, value = parse_key_value(keys.profile_tags("p"), '["a"]')
    assert not calc.on_update("put", key, value)
    assert not put(calc, keys.host_config("node-b", "LogSeverityScreen"), "debug")


def test_bad_values_are_reported_with_their_key_and_treated_as_absent():
    calc = OverlayCalculator(OverlayConfig(ME))
    vxlan_pool(calc)
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", ["10.65.0.64/26"])
    assert calc.desired().vxlan.routes
    # libcalico already rejects these; the calculator re-validates anyway (defense in depth),
    # so feed raw strings past the parser
    calc.on_update("put", keys.parse(keys.host_config("node-b", "VXLANTunnelAddr")), "10.65.0.65; rm -rf /")
    errs = calc.take_errors()
    assert errs and errs[0][0] == keys.host_config("node-b", "VXLANTunnelAddr")
    assert not calc.desired().vxlan.routes  # node-b's VTEP is now incomplete
    calc.on_update("put", keys.parse(keys.host_vxlan_mac("node-b")), "not-a-mac")
    assert calc.take_errors()[0][0] == keys.host_vxlan_mac("node-b")
    # an invalid update for a key
    key, _ = parse_key_value(keys.host_bird_ip("node-b"), None)
    calc.on_update("invalid", key, "bad ip")
    assert not calc.desired().vxlan.neighbours


def test_structured_values_are_models_only():
    """Pools and affinities arrive as the syncer's models: a plain dict is refused on its key,
    and an unvalidated model is re-validated before its CIDR can become a route."""
    calc = OverlayCalculator(OverlayConfig(ME))
    pool_key = keys.parse(keys.pool("10.65.0.0/16"))
    assert not calc.on_update("put", pool_key, {"cidr": "10.65.0.0/16", "vxlan": "vxlan.calico"})
    aff_key = keys.parse(keys.block_affinity("node-b", "10.65.0.64/26"))
    assert not calc.on_update("put", aff_key, {"state": "confirmed"})
    errors = dict(calc.take_errors())
    assert set(errors) == {pool_key.path, aff_key.path}
    assert all("libcalico model" in r for r in errors.values())
    assert not calc.desired().vxlan.enabled
    calc.on_update("put", pool_key, Pool.model_construct(cidr="10.65.0.0/16 dev eth0", vxlan="vxlan.calico"))
    assert [k for k, _ in calc.take_errors()] == [pool_key.path]
    assert not calc.desired().vxlan.enabled


def test_conflicting_vtep_mac_is_skipped_and_reported():
    calc = OverlayCalculator(OverlayConfig(ME))
    vxlan_pool(calc)
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", ["10.65.0.64/26"])
    host(calc, "node-c", "10.0.3.2", "10.65.0.129", "66:00:00:00:00:0b", ["10.65.0.128/26"])
    vx = calc.desired().vxlan
    assert dict(vx.fdb) == {"66:00:00:00:00:0b": "10.0.2.2"}
    assert "10.65.0.128/26" not in vx.routes
    assert any("node-c" in k for k, _ in calc.take_errors())
    # reported once while it lasts, not on every recompute
    host(calc, "node-d", "10.0.4.2", "10.65.0.193", "66:00:00:00:00:0d", ["10.65.0.192/26"])
    assert "10.65.0.192/26" in calc.desired().vxlan.routes
    assert calc.take_errors() == []


def test_ipip_routes_via_bird_ip_only_in_ipip_pools():
    calc = OverlayCalculator(OverlayConfig(ME, ipip_enabled=True))
    put(calc, keys.pool("10.80.0.0/16"), json.dumps({"cidr": "10.80.0.0/16", "ipip": "tunl0"}))
    vxlan_pool(calc)
    host(calc, ME, "10.0.1.2", None, None, ["10.80.0.0/26"], ipip_addr="10.80.0.1")
    host(calc, "node-b", "10.0.2.2", None, None, ["10.80.0.64/26", "10.65.0.64/26"])
    ip = calc.desired().ipip
    assert ip.enabled and ip.tunnel_addr == "10.80.0.1"
    assert dict(ip.routes) == {"10.80.0.64/26": "10.0.2.2"}
    # IPIP off (default): nothing
    calc.set_config(OverlayConfig(ME))
    assert not calc.desired().ipip.enabled and not calc.desired().ipip.routes


def test_local_config_override_wins_over_host_key():
    calc = OverlayCalculator(OverlayConfig(ME, vxlan_tunnel_addr="10.65.9.9"))
    vxlan_pool(calc)
    host(calc, ME, "10.0.1.2", "10.65.0.1", None, [])
    assert calc.desired().vxlan.tunnel_addr == "10.65.9.9"


def test_pending_affinity_is_not_routed_until_confirmed():
    calc = OverlayCalculator(OverlayConfig(ME))
    vxlan_pool(calc)
    host(calc, "node-b", "10.0.2.2", "10.65.0.65", "66:00:00:00:00:0b", [])
    put(calc, keys.block_affinity("node-b", "10.65.0.64/26"), json.dumps({"state": "pending"}))
    assert not calc.desired().vxlan.routes
    put(calc, keys.block_affinity("node-b", "10.65.0.64/26"), json.dumps({"state": "confirmed"}))
    assert set(calc.desired().vxlan.routes) == {"10.65.0.64/26"}
