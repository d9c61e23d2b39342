"""Valid values of every key kind parse to the right models and write back
to the datamodel's JSON."""

from __future__ import annotations

import json

import pytest

from libcalico import keys, models
from libcalico.models import (
    BgpPeer,
    BlockAffinity,
    HostEndpoint,
    InvalidValue,
    NodeMesh,
    Policy,
    Pool,
    ProfileRules,
    Rule,
    Tier,
    WorkloadEndpoint,
    parse_key_value,
    parse_value,
    to_json,
)

H = "node1"
WEP_KEY = keys.workload_endpoint(H, "k8s", "default.pod-1", "eth0")
WEP = {"state": "active", "name": "cali1234abcd", "mac": "EE:EE:ee:ee:ee:01",
       "profile_ids": ["prof1"], "ipv4_nets": ["10.65.0.5"], "ipv6_nets": ["fd00::5/128"],
       "ipv4_gateway": "169.254.1.1", "ipv6_gateway": None,
       "ipv4_nat": [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}],
       "labels": {"role": "db", "example.com/team": "a"}, "future_field": {"x": 1}}


def test_workload_endpoint_normalizes_and_keeps_unknown_fields() -> None:
    key, ep = parse_key_value(WEP_KEY, json.dumps(WEP))
    assert key is not None and key.kind == "workload_endpoint"
    assert isinstance(ep, WorkloadEndpoint)
    assert ep.state == "active" and ep.name == "cali1234abcd"
    assert ep.mac == "ee:ee:ee:ee:ee:01"
    assert ep.ipv4_nets == ["10.65.0.5/32"]          # a bare IP becomes a /32
    assert ep.ipv6_nets == ["fd00::5/128"]
    assert ep.ipv4_nat[0].int_ip == "10.65.0.5" and ep.ipv4_nat[0].ext_ip == "172.31.0.9"
    assert ep.labels == {"role": "db", "example.com/team": "a"}
    assert ep.model_extra == {"future_field": {"x": 1}}
    out = json.loads(to_json(ep))
    assert out["ipv4_nets"] == ["10.65.0.5/32"] and out["future_field"] == {"x": 1}
    assert parse_value(key, to_json(ep)) == ep


def test_workload_endpoint_legacy_profile_id_and_minimal() -> None:
    _, ep = parse_key_value(WEP_KEY, '{"state": "inactive", "name": "tap0", "profile_id": "p1"}')
    assert isinstance(ep, WorkloadEndpoint)
    assert ep.profile_ids == ["p1"] and ep.mac is None and ep.ipv4_nets == [] and ep.labels == {}
    _, ep2 = parse_key_value(WEP_KEY, '{"state": "active", "name": "tap0", "profile_id": "p1", '
                                      '"profile_ids": ["p2", "p3"]}')
    assert ep2.profile_ids == ["p2", "p3"]


def test_host_endpoint() -> None:
    _, hep = parse_key_value(keys.host_endpoint(H, "eth0"), json.dumps({
        "name": "eth0", "expected_ipv4_addrs": ["192.0.2.1"], "expected_ipv6_addrs": ["2001:DB8::1"],
        "profile_ids": ["edge"], "labels": {"role": "edge"}}))
    assert isinstance(hep, HostEndpoint)
    assert hep.expected_ipv6_addrs == ["2001:db8::1"]
    _, hep2 = parse_key_value(keys.host_endpoint(H, "x"), '{"expected_ipv4_addrs": ["192.0.2.1"]}')
    assert hep2.name is None


def test_rule_negations_round_trip_in_datamodel_form() -> None:
    raw = {"inbound_rules": [
        {"action": "deny", "protocol": "TCP", "!src_net": "10.0.0.0/8", "src_tag": "web",
         "dst_ports": [80, "1000:2000", "443"], "!dst_ports": [8080],
         "src_selector": "role=='db'", "!dst_selector": "has(x)", "ip_version": 4},
        {"action": "allow", "protocol": "icmp", "icmp_type": 8, "icmp_code": 0, "!protocol": "udp"},
        {"action": "log", "log_prefix": "calico-packet:", "protocol": 47},
        {},
    ], "outbound_rules": [{"action": "next-tier", "dst_net": "fd00::1", "!src_tag": "bad"}]}
    key, pr = parse_key_value(keys.profile_rules("prof1"), json.dumps(raw))
    assert isinstance(pr, ProfileRules)
    r0 = pr.inbound_rules[0]
    assert r0.protocol == "tcp" and r0.not_src_net == "10.0.0.0/8" and r0.src_net is None
    assert r0.dst_ports == [80, "1000:2000", 443] and r0.not_dst_ports == [8080]
    assert r0.src_selector == 'role == "db"'
    assert r0.selector("src_selector").evaluate({"role": "db"})
    assert r0.selector("not_dst_selector").canonical == "has(x)"
    assert r0.selector("dst_selector") is None
    assert pr.inbound_rules[1].not_protocol == "udp" and pr.inbound_rules[1].icmp_code == 0
    assert pr.inbound_rules[2].protocol == 47
    assert pr.inbound_rules[3] == Rule() and pr.inbound_rules[3].action == "allow"
    assert pr.outbound_rules[0].dst_net == "fd00::1/128" and pr.outbound_rules[0].not_src_tag == "bad"

    out = json.loads(to_json(pr))
    assert out["inbound_rules"][0]["!src_net"] == "10.0.0.0/8"
    assert out["inbound_rules"][0]["!dst_ports"] == [8080]
    assert "not_src_net" not in out["inbound_rules"][0] and "src_net" not in out["inbound_rules"][0]
    assert out["outbound_rules"][0] == {"action": "next-tier", "dst_net": "fd00::1/128", "!src_tag": "bad"}
    # Writing back and re-reading gives the same model: `rule show` round-trips.
    assert parse_value(key, to_json(pr)) == pr


def test_rule_accepts_python_names_too() -> None:
    r = Rule.model_validate({"not_src_net": "10.0.0.1", "protocol": "6", "dst_ports": ["22"]})
    assert r.not_src_net == "10.0.0.1/32" and r.protocol == 6 and r.dst_ports == [22]
    assert json.loads(to_json(r)) == {"action": "allow", "protocol": 6, "dst_ports": [22],
                                      "!src_net": "10.0.0.1/32"}


def test_tier_and_policy() -> None:
    _, tier = parse_key_value(keys.tier_metadata("t1"), '{"order": 10}')
    assert isinstance(tier, Tier) and tier.order == 10
    _, dtier = parse_key_value(keys.tier_metadata("t1"), '{"order": "default"}')
    assert dtier.order is None and json.loads(to_json(dtier)) == {"order": "default"}
    _, tier2 = parse_key_value(keys.tier_metadata("t1"), '{"order": 2.5}')
    assert tier2.order == 2.5
    _, pol = parse_key_value(keys.tier_policy("t1", "p1"), json.dumps({
        "selector": "role == 'db'", "order": 10,
        "inbound_rules": [{"action": "allow", "src_selector": "role == 'web'"}], "outbound_rules": []}))
    assert isinstance(pol, Policy)
    assert pol.selector == 'role == "db"' and pol.parsed_selector.evaluate({"role": "db"})
    assert pol.order == 10
    _, pol2 = parse_key_value(keys.tier_policy("t1", "p2"), '{"selector": "all()"}')
    assert pol2.order is None and pol2.inbound_rules == []


def test_pool_json_shape() -> None:
    key, pool = parse_key_value(keys.pool("10.65.0.0/16"),
                                '{"cidr": "10.65.0.0/16", "ipip": "tunl0", "masquerade": true}')
    assert isinstance(pool, Pool) and pool.ipam and not pool.disabled and pool.version == 4
    assert json.loads(to_json(pool)) == {"cidr": "10.65.0.0/16", "ipip": "tunl0", "masquerade": True,
                                         "ipam": True, "disabled": False}
    v6 = Pool(cidr="fd80:24e2:f998:72d6::/64", vxlan="vxlan.calico")
    assert json.loads(to_json(v6)) == {"cidr": "fd80:24e2:f998:72d6::/64", "vxlan": "vxlan.calico",
                                       "masquerade": False, "ipam": True, "disabled": False}
    assert parse_value(keys.parse(keys.pool(v6.cidr)), to_json(v6)) == v6


def test_bgp_values() -> None:
    assert parse_key_value(keys.bgp_global_as(), "64511")[1] == 64511
    assert parse_key_value(keys.bgp_host_as(H), " 1.10\n")[1] == 65546
    assert parse_key_value(keys.bgp_host_as(H), "4294967295")[1] == 4294967295
    _, peer = parse_key_value(keys.bgp_global_peer("2001:db8::1"), '{"ip": "2001:DB8::1", "as_num": "64600"}')
    assert isinstance(peer, BgpPeer) and peer.as_num == 64600 and peer.ip == "2001:db8::1"
    assert json.loads(to_json(peer)) == {"ip": "2001:db8::1", "as_num": 64600}
    _, mesh = parse_key_value(keys.bgp_node_mesh(), '{"enabled": false}')
    assert isinstance(mesh, NodeMesh) and mesh.enabled is False
    assert parse_key_value(keys.bgp_global_loglevel(), "NONE")[1] == "none"
    assert parse_key_value(keys.bgp_host_loglevel(H), "debug")[1] == "debug"
    assert parse_key_value(keys.bgp_host_ip(H, 4), "192.0.2.7")[1] == "192.0.2.7"
    assert parse_key_value(keys.bgp_host_ip(H, 6), "")[1] is None


def test_host_and_global_plain_values() -> None:
    assert parse_key_value(keys.READY, "true")[1] is True
    assert parse_key_value(keys.READY, "false")[1] is False
    assert parse_key_value(keys.global_config("InterfacePrefix"), "cali")[1] == "cali"
    assert parse_key_value(keys.host_config(H, "ReportingIntervalSecs"), "0")[1] == "0"
    assert parse_key_value(keys.host_config(H, "VXLANTunnelAddr"), "10.65.3.0")[1] == "10.65.3.0"
    assert parse_key_value(keys.host_bird_ip(H), "192.0.2.1\n")[1] == "192.0.2.1"
    assert parse_key_value(keys.host_vxlan_mac(H), "66:AA:bb:cc:dd:ee")[1] == "66:aa:bb:cc:dd:ee"


def test_profile_tags_labels_and_ipam() -> None:
    assert parse_key_value(keys.profile_tags("p1"), '["a", "b-2"]')[1] == ["a", "b-2"]
    assert parse_key_value(keys.profile_labels("p1"), '{"k": "v"}')[1] == {"k": "v"}
    _, aff = parse_key_value(keys.block_affinity(H, "10.65.0.0/26"), '{"state": "confirmed"}')
    assert isinstance(aff, BlockAffinity) and aff.state == "confirmed"
    alloc = parse_key_value(keys.block_allocation("10.65.0.0/26"), '{"allocations": [null]}')[1]
    assert alloc == {"allocations": [None]}
    status = parse_key_value(keys.felix_status(H), '{"time": "x", "uptime": 1.5, "first_update": true}')[1]
    assert status["uptime"] == 1.5


def test_plain_validators_used_by_the_cli() -> None:
    assert models.validate_asn("65535.65535") == 4294967295
    assert models.validate_asn(64512) == 64512
    assert models.validate_cidr("10.1.2.3/24") == "10.1.2.0/24"
    assert models.validate_cidr("fd00::1", 6) == "fd00::1/128"
    with pytest.raises(ValueError, match="IPv4 CIDR"):
        models.validate_cidr("fd00::/64", 4)
    assert models.validate_ip("2001:0DB8::0001") == "2001:db8::1"
    with pytest.raises(ValueError):
        models.validate_ip("010.0.0.1")   # leading zeros are ambiguous (octal) and refused
    assert models.validate_name("prof-1_a.b") == "prof-1_a.b"
    for bad in ("", ".", "..", "a b", "a;b", "a'b", 'a"b', "a{b}", "a\nb", "é", "x" * 254):
        with pytest.raises(ValueError):
            models.validate_name(bad)
    assert models.validate_ifname("cali0123456789a") == "cali0123456789a"
    for bad in ("", ".", "eth0:1", "a b", "a/b", "x" * 16):
        with pytest.raises(ValueError):
            models.validate_ifname(bad)


def test_invalid_value_str_and_type() -> None:
    err = InvalidValue("/calico/v1/Ready", "bad")
    assert str(err) == "/calico/v1/Ready: bad" and isinstance(err, ValueError)


def test_ten_thousand_endpoints_parse() -> None:
    """Bulk parse keeps every value; its speed is measured by `make bench-felix`, not asserted here."""
    items = []
    for i in range(10000):
        a, b = divmod(i, 250)
        items.append((keys.workload_endpoint(f"h{i % 5}", "k8s", f"ns.pod{i}", "eth0"), json.dumps({
            "state": "active", "name": f"cali{i:011x}", "mac": "ee:ee:ee:ee:ee:ee",
            "profile_ids": ["prof1", "p2"], "ipv4_nets": [f"10.{a}.{b}.1/32"],
            "ipv6_nets": [f"fd00::{i:x}/128"], "ipv4_gateway": "169.254.1.1",
            "labels": {"role": "db", "app": f"a{i % 7}"}})))
    parsed = [parse_key_value(path, raw) for path, raw in items]
    assert len({k for k, _ in parsed}) == 10000
    assert all(v.ipv4_nets and v.profile_ids == ["prof1", "p2"] for _, v in parsed)
