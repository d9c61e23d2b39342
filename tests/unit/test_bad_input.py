"""Table-driven bad input: every bad value is rejected naming its key, and a
valid neighbour of the same kind still parses."""

from __future__ import annotations

import json

import pytest

from libcalico import keys
from libcalico.models import InvalidValue, parse_key_value

H = "node1"
WEP = keys.workload_endpoint(H, "k8s", "default.pod", "eth0")
GOOD_WEP = {"state": "active", "name": "cali1234abcd", "mac": "ee:ee:ee:ee:ee:ee",
            "profile_ids": ["prof1"], "ipv4_nets": ["10.65.0.5/32"], "ipv6_nets": [],
            "ipv4_gateway": "169.254.1.1", "labels": {"role": "db"}}
POOL = keys.pool("10.65.0.0/16")
RULES = keys.profile_rules("prof1")
POLICY = keys.tier_policy("t1", "p1")


def wep(**kw: object) -> str:
    return json.dumps({**GOOD_WEP, **kw})


def rules(**rule: object) -> str:
    return json.dumps({"inbound_rules": [rule], "outbound_rules": []})


# (id, key, bad raw value, fragment the reason must contain, valid neighbour value)
CASES = [
    ("malformed-json-wep", WEP, '{"state": "active",', "malformed JSON", wep()),
    ("json-not-object", WEP, "[1, 2]", "JSON object", wep()),
    ("json-string", POOL, '"10.65.0.0/16"', "JSON object", '{"cidr": "10.65.0.0/16"}'),
    ("bad-state", WEP, wep(state="up"), "state", wep(state="inactive")),
    ("name-space", WEP, wep(name="cali 123"), "name", wep(name="cali123")),
    ("name-semicolon", WEP, wep(name="cali;rm"), "name", wep(name="cali-rm")),
    ("name-too-long", WEP, wep(name="cali0123456789ab"), "name", wep(name="cali0123456789a")),
    ("name-newline", WEP, wep(name="cali\nx"), "name", wep(name="calix")),
    ("name-slash", WEP, wep(name="cali/x"), "name", wep(name="cali.x")),
    ("name-colon", WEP, wep(name="cali:1"), "name", wep(name="cali_1")),
    ("name-wrong-type", WEP, wep(name=42), "name", wep()),
    ("bad-v4-cidr", WEP, wep(ipv4_nets=["10.1.2.3/40"]), "ipv4_nets[0]", wep(ipv4_nets=["10.1.2.3/32"])),
    ("v6-in-v4-nets", WEP, wep(ipv4_nets=["fd00::1/128"]), "ipv4_nets[0]", wep(ipv6_nets=["fd00::1/128"])),
    ("nets-not-list", WEP, wep(ipv4_nets="10.0.0.1/32"), "ipv4_nets", wep(ipv4_nets=["10.0.0.1"])),
    ("bad-mac", WEP, wep(mac="ee:ee:ee:ee:ee"), "mac", wep(mac="EE-EE-EE-EE-EE-01")),
    ("bad-gateway", WEP, wep(ipv4_gateway="169.254.1.256"), "ipv4_gateway", wep(ipv4_gateway=None)),
    ("scoped-ipv6", WEP, wep(ipv6_gateway="fe80::1%eth0;x"), "ipv6_gateway", wep(ipv6_gateway="fe80::1")),
    ("profile-quote", WEP, wep(profile_ids=["p'1"]), "profile", wep(profile_ids=["p1", "p.2"])),
    ("profile-brace", WEP, wep(profile_ids=["p{1}"]), "profile", wep(profile_id="p1")),
    ("label-key-space", WEP, wep(labels={"ro le": "db"}), "label", wep(labels={"example.com/role": "db"})),
    ("label-value-type", WEP, wep(labels={"role": 5}), "label", wep(labels={"role": ""})),
    ("nat-bad-ip", WEP, wep(ipv4_nat=[{"int_ip": "10.0.0.1", "ext_ip": "x"}]), "ipv4_nat[0].ext_ip",
     wep(ipv4_nat=[{"int_ip": "10.0.0.1", "ext_ip": "172.31.0.9"}])),
    ("wep-key-unsafe", keys.workload_endpoint(H, "k8s", "pod;reboot", "eth0"), wep(), "workload id",
     wep()),
    ("host-key-unsafe", keys.workload_endpoint("h 1", "k8s", "pod", "eth0"), wep(), "hostname", wep()),
    ("hep-empty", keys.host_endpoint(H, "eth0"), "{}", "name or expected",
     '{"name": "eth0", "expected_ipv4_addrs": ["192.0.2.1"]}'),
    ("pool-bad-cidr", POOL, '{"cidr": "10.65.0.0/33"}', "cidr", '{"cidr": "10.65.0.0/16"}'),
    ("pool-cidr-mismatch", POOL, '{"cidr": "10.66.0.0/16"}', "does not match", '{"cidr": "10.65.0.0/16"}'),
    ("pool-bad-ipip", POOL, '{"cidr": "10.65.0.0/16", "ipip": "eth0"}', "ipip",
     '{"cidr": "10.65.0.0/16", "ipip": "tunl0"}'),
    ("pool-both-overlays", POOL, '{"cidr": "10.65.0.0/16", "ipip": "tunl0", "vxlan": "vxlan.calico"}',
     "not both", '{"cidr": "10.65.0.0/16", "vxlan": "vxlan.calico"}'),
    ("pool-masq-string", POOL, '{"cidr": "10.65.0.0/16", "masquerade": "yes"}', "masquerade",
     '{"cidr": "10.65.0.0/16", "masquerade": true}'),
    ("as-too-big", keys.bgp_global_as(), "4294967296", "out of range", "4294967295"),
    ("as-zero", keys.bgp_global_as(), "0", "out of range", "1"),
    ("as-negative", keys.bgp_host_as(H), "-5", "AS number", "64512"),
    ("as-dotted-big", keys.bgp_host_as(H), "65536.1", "AS number", "65535.65535"),
    ("as-words", keys.bgp_host_as(H), "64512; drop", "AS number", "64512"),
    ("peer-bad-as", keys.bgp_global_peer("10.0.0.1"), '{"ip": "10.0.0.1", "as_num": "abc"}', "as_num",
     '{"ip": "10.0.0.1", "as_num": "64600"}'),
    ("peer-ip-mismatch", keys.bgp_global_peer("10.0.0.1"), '{"ip": "10.0.0.2", "as_num": 1}', "does not match",
     '{"ip": "10.0.0.1", "as_num": 1}'),
    ("peer-as-bool", keys.bgp_host_peer(H, "10.0.0.1"), '{"ip": "10.0.0.1", "as_num": true}', "as_num",
     '{"ip": "10.0.0.1", "as_num": 64512}'),
    ("mesh-string", keys.bgp_node_mesh(), '{"enabled": "true"}', "enabled", '{"enabled": false}'),
    ("loglevel", keys.bgp_global_loglevel(), "verbose", "log level", "debug"),
    ("bird-ip-v6", keys.host_bird_ip(H), "2001:db8::1", "IPv4", "192.0.2.10"),
    ("bird-ip-junk", keys.host_bird_ip(H), "192.0.2.10\nprotocol", "IPv4", "192.0.2.10"),
    ("bgp-ip-v4-wrong", keys.bgp_host_ip(H, 4), "10.0.0.256", "IPv4", "10.0.0.255"),
    ("tunnel-addr", keys.host_config(H, "IpInIpTunnelAddr"), "10.0.0.x", "IPv4", "10.65.0.1"),
    ("vxlan-mac", keys.host_vxlan_mac(H), "zz:ee:ee:ee:ee:ee", "MAC", "66:ee:ee:ee:ee:01"),
    ("config-control", keys.global_config("LogSeverityScreen"), "info\x1b[2J", "control", "info"),
    ("config-empty", keys.global_config("LogSeverityScreen"), "  ", "non-empty", "warning"),
    ("config-param-unsafe", keys.global_config("Log;Sev"), "info", "parameter", "info"),
    ("ready-junk", keys.READY, "yes please", "true or false", "true"),
    ("tags-not-list", keys.profile_tags("prof1"), '"tag1"', "list", '["tag1"]'),
    ("tag-space", keys.profile_tags("prof1"), '["tag 1"]', "tag", '["tag-1", "tag_2"]'),
    ("profile-key-quote", keys.profile_tags('prof"1'), '["t"]', "profile id", '["t"]'),
    ("labels-not-object", keys.profile_labels("prof1"), '["a"]', "labels", '{"a": "b"}'),
    ("tier-order-string", keys.tier_metadata("t1"), '{"order": "first"}', "order", '{"order": "default"}'),
    ("tier-key-space", keys.tier_metadata("t 1"), '{"order": 1}', "tier name", '{"order": 1}'),
    ("policy-selector-syntax", POLICY, '{"selector": "role == ", "order": 1}', "selector error at position",
     '{"selector": "role == \'db\'", "order": 1}'),
    ("policy-selector-unbalanced", POLICY, '{"selector": "(has(a)"}', "expected ')'",
     '{"selector": "(has(a))"}'),
    ("policy-selector-missing", POLICY, '{"order": 1}', "selector", '{"selector": "all()"}'),
    ("policy-order-nan", POLICY, '{"selector": "all()", "order": NaN}', "order", '{"selector": "all()"}'),
    ("policy-name-newline", keys.tier_policy("t1", "p\n1"), '{"selector": "all()"}', "policy name",
     '{"selector": "all()"}'),
    ("rule-action", RULES, rules(action="accept"), "inbound_rules[0].action", rules(action="next-tier")),
    ("rule-protocol", RULES, rules(protocol="tcpx"), "protocol", rules(protocol="udplite")),
    ("rule-protocol-range", RULES, rules(protocol=256), "protocol", rules(protocol=255)),
    ("rule-ports-no-proto", RULES, rules(dst_ports=[80]), "ports", rules(protocol="tcp", dst_ports=[80])),
    ("rule-port-range", RULES, rules(protocol="tcp", src_ports=["10:5"]), "src_ports",
     rules(protocol="tcp", src_ports=["5:10"])),
    ("rule-port-big", RULES, rules(protocol="udp", dst_ports=[65536]), "dst_ports",
     rules(protocol="udp", dst_ports=[65535])),
    ("rule-neg-ports", RULES, rules(protocol="udp", **{"!dst_ports": ["a:b"]}), "!dst_ports",
     rules(protocol="udp", **{"!dst_ports": ["1:2"]})),
    ("rule-bad-net", RULES, rules(src_net="10.0.0.0/8; drop"), "src_net", rules(src_net="10.0.0.0/8")),
    ("rule-neg-bad-net", RULES, rules(**{"!dst_net": "300.0.0.0/8"}), "!dst_net",
     rules(**{"!dst_net": "30.0.0.0/8"})),
    ("rule-net-version", RULES, rules(ip_version=6, src_net="10.0.0.0/8"), "ip_version",
     rules(ip_version=4, src_net="10.0.0.0/8")),
    ("rule-tag", RULES, rules(src_tag="a b"), "src_tag", rules(src_tag="a-b")),
    ("rule-selector", RULES, rules(dst_selector="a === 'b'"), "dst_selector", rules(dst_selector="a == 'b'")),
    ("rule-icmp-code-alone", RULES, rules(protocol="icmp", icmp_code=1), "icmp_code requires",
     rules(protocol="icmp", icmp_type=3, icmp_code=1)),
    ("rule-icmp-type-range", RULES, rules(protocol="icmp", icmp_type=255), "icmp_type",
     rules(protocol="icmp", icmp_type=254)),
    ("rule-log-prefix", RULES, rules(action="log", log_prefix='x" -j ACCEPT'), "log_prefix",
     rules(action="log", log_prefix="calico-drop:")),
    ("rule-log-prefix-long", RULES, rules(action="log", log_prefix="x" * 28), "log_prefix",
     rules(action="log", log_prefix="x" * 27)),
    ("rules-not-list", RULES, '{"inbound_rules": {"action": "allow"}}', "inbound_rules",
     '{"inbound_rules": [{"action": "allow"}]}'),
    ("affinity-state", keys.block_affinity(H, "10.65.0.0/26"), '{"state": "mine"}', "state",
     '{"state": "confirmed"}'),
]


@pytest.mark.parametrize("key,bad,reason,good", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_value_rejected_naming_key(key: str, bad: str, reason: str, good: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_key_value(key, bad)
    err = info.value
    assert err.key_path == key
    assert str(err).startswith(f"{key}: ")
    assert reason in err.reason, err.reason
    assert "\n" not in err.reason and len(err.reason) < 300
    # The same kind of key with a valid value is unaffected.
    good_key = key.replace("pod;reboot", "pod").replace("h 1", "h1").replace('prof"1', "prof1") \
        .replace("Log;Sev", "LogSev").replace("t 1", "t1").replace("p\n1", "p1")
    parsed_key, value = parse_key_value(good_key, good)
    assert parsed_key is not None and value is not None


def test_bytes_that_are_not_utf8_are_invalid() -> None:
    with pytest.raises(InvalidValue, match="UTF-8"):
        parse_key_value(keys.bgp_global_as(), b"\xff\xfe")
    assert parse_key_value(keys.bgp_global_as(), b"64512")[1] == 64512


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidValue, match="JSON"):
        parse_key_value(WEP, "[" * 100000 + "]" * 100000)


def test_unknown_key_is_not_an_error() -> None:
    assert parse_key_value("/calico/v1/nonsense/x", "garbage") == (None, None)


def test_deletion_still_validates_the_key() -> None:
    key, value = parse_key_value(keys.profile_rules("prof1"), None)
    assert key is not None and key.kind == "profile_rules" and value is None
    with pytest.raises(InvalidValue, match="profile id"):
        parse_key_value("/calico/v1/policy/profile/a b/rules", None)
