"""Hostile input: generated junk and injection strings for every key kind.

The property: `parse_key_value` either returns a valid value whose strings
all match the safe pattern of their field, or raises InvalidValue naming the
key.  No other exception, ever: a crash here would stop Felix or confd on a
single bad etcd value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from libcalico import keys
from libcalico.models import InvalidValue, Rule, parse_key_value
from libcalico.selectors import parse_selector, valid_label_key, valid_label_value
from libcalico.validation import IFNAME_RE, LOG_PREFIX_RE, SAFE_ID_RE
from tests.reliability.profiles import examples

INJECTIONS = [
    "; rm -rf /", "$(reboot)", "`id`", "' OR '1'='1", '" -j ACCEPT', "\n-A INPUT -j ACCEPT\n",
    "a\x00b", "../../etc/passwd", "fe80::1%eth0", "fe80::1%;reboot", "10.0.0.1/8\n", "10.0.0.1 ",
    "{{}}", "\u202eevil", "１０.0.0.1", "١٢٣", "6\x00", "1e999", "NaN", "-0", "+64512", " 64512",
    "4294967296", "65536.1", "0x10", "1_000", "tunl0\n", "vxlan.calico ", "cali1234567890abc",
    "role == 'db' || 1", "has(a));", "a == 'b\"", "protocol bgp {", "}", "include \"/etc/x\";",
    "", " ", "\t", "-", ".", "..", "x" * 300, "é", "\u00a0", "true\n", "TRUE", "on",
]

junk_text = st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=40),
                      st.text(alphabet="0123456789abcdef.:/-%", max_size=30))
scalar = st.one_of(junk_text, st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
                   st.booleans(), st.none())

FIELD_NAMES = sorted({
    "state", "name", "mac", "profile_ids", "profile_id", "ipv4_nets", "ipv6_nets", "ipv4_gateway",
    "ipv6_gateway", "ipv4_nat", "int_ip", "ext_ip", "labels", "expected_ipv4_addrs",
    "expected_ipv6_addrs", "inbound_rules", "outbound_rules", "order", "selector", "cidr", "ipip",
    "vxlan", "masquerade", "ipam", "disabled", "ip", "as_num", "enabled", *Rule.model_fields,
    *(f.alias for f in Rule.model_fields.values() if f.alias),
})

json_value = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), junk_text), children, max_size=6),
    ),
    max_leaves=20,
)


def _raw(value: object) -> str:
    return json.dumps(value, allow_nan=True)


raw_values = st.one_of(junk_text, json_value.map(_raw),
                       st.binary(max_size=30).map(lambda b: b.decode("latin-1")))

segment = st.one_of(st.sampled_from(["h1", "prof.1", "k8s", "eth0", "Pool-A_b"]),
                    junk_text.filter(lambda s: s and "/" not in s and s not in (".", "..")))
ips = st.sampled_from(["10.0.0.1", "2001:db8::1", "192.0.2.255"])
cidrs = st.sampled_from(["10.65.0.0/26", "fd00::/122", "10.65.0.0/16"])

BUILDERS: dict[str, Callable[..., st.SearchStrategy[str]]] = {
    "ready": lambda: st.just(keys.READY),
    "global_config": lambda: st.builds(keys.global_config, segment),
    "host_config": lambda: st.builds(keys.host_config, segment,
                                     st.one_of(segment, st.sampled_from(["IpInIpTunnelAddr",
                                                                         "VXLANTunnelAddr"]))),
    "host_bird_ip": lambda: st.builds(keys.host_bird_ip, segment),
    "host_vxlan_mac": lambda: st.builds(keys.host_vxlan_mac, segment),
    "workload_endpoint": lambda: st.builds(keys.workload_endpoint, segment, segment, segment, segment),
    "host_endpoint": lambda: st.builds(keys.host_endpoint, segment, segment),
    "profile_rules": lambda: st.builds(keys.profile_rules, segment),
    "profile_tags": lambda: st.builds(keys.profile_tags, segment),
    "profile_labels": lambda: st.builds(keys.profile_labels, segment),
    "tier_metadata": lambda: st.builds(keys.tier_metadata, segment),
    "tier_policy": lambda: st.builds(keys.tier_policy, segment, segment),
    "pool": lambda: st.builds(keys.pool, cidrs),
    "bgp_host_ip": lambda: st.builds(keys.bgp_host_ip, segment, st.sampled_from([4, 6])),
    "bgp_host_as": lambda: st.builds(keys.bgp_host_as, segment),
    "bgp_host_loglevel": lambda: st.builds(keys.bgp_host_loglevel, segment),
    "bgp_host_peer": lambda: st.builds(keys.bgp_host_peer, segment, ips),
    "bgp_global_as": lambda: st.just(keys.bgp_global_as()),
    "bgp_node_mesh": lambda: st.just(keys.bgp_node_mesh()),
    "bgp_global_loglevel": lambda: st.just(keys.bgp_global_loglevel()),
    "bgp_global_peer": lambda: st.builds(keys.bgp_global_peer, ips),
    "block_affinity": lambda: st.builds(keys.block_affinity, segment, cidrs),
    "block_allocation": lambda: st.builds(keys.block_allocation, cidrs),
    "ipam_handle": lambda: st.builds(keys.ipam_handle, segment),
    "felix_status": lambda: st.builds(keys.felix_status, segment),
    "felix_last_status": lambda: st.builds(keys.felix_last_status, segment),
    "felix_endpoint_status": lambda: st.builds(keys.felix_endpoint_status, segment, segment, segment, segment),
}
any_key = st.one_of(*(b() for b in BUILDERS.values()))

IP_RE = re.compile(r"[0-9a-f.:]{2,39}(/[0-9]{1,3})?\Z")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
SELECTOR_RE = re.compile(r"[A-Za-z0-9_./\-\" {}(),!&|=]*\Z")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
IP_FIELDS = {"ipv4_nets", "ipv6_nets", "ipv4_gateway", "ipv6_gateway", "int_ip", "ext_ip",
             "expected_ipv4_addrs", "expected_ipv6_addrs", "src_net", "dst_net", "cidr", "ip"}
ID_FIELDS = {"profile_ids", "src_tag", "dst_tag"}
FIXED = {"state": {"active", "inactive", "confirmed", "pending", "pendingDeletion"},
         "action": {"allow", "deny", "next-tier", "log"}, "ipip": {"tunl0"}, "vxlan": {"vxlan.calico"},
         "protocol": {"tcp", "udp", "icmp", "icmpv6", "sctp", "udplite"}}


def _check_str(field: str, s: str) -> None:
    field = field.removeprefix("not_")
    if field in IP_FIELDS:
        assert IP_RE.match(s), (field, s)
    elif field in ID_FIELDS:
        assert SAFE_ID_RE.match(s), (field, s)
    elif field == "name":
        assert IFNAME_RE.match(s), (field, s)
    elif field == "mac":
        assert MAC_RE.match(s), (field, s)
    elif field in ("selector", "src_selector", "dst_selector"):
        assert SELECTOR_RE.match(s), (field, s)
        assert parse_selector(s).canonical == s
    elif field == "log_prefix":
        assert LOG_PREFIX_RE.match(s), (field, s)
    elif field in ("src_ports", "dst_ports"):
        assert re.fullmatch(r"[0-9]{1,5}:[0-9]{1,5}", s), (field, s)
    elif field in FIXED:
        assert s in FIXED[field], (field, s)
    else:
        raise AssertionError(f"unchecked string field {field}={s!r}")


def _check_model(model: BaseModel) -> None:
    for field in type(model).model_fields:
        _check_any(field, getattr(model, field))


def _check_any(field: str, value: object) -> None:
    if isinstance(value, BaseModel):
        _check_model(value)
    elif isinstance(value, str):
        _check_str(field, value)
    elif isinstance(value, list):
        for item in value:
            _check_any(field, item)
    elif isinstance(value, dict):
        assert field == "labels", field
        for k, v in value.items():
            assert valid_label_key(k) and valid_label_value(v), (k, v)
    else:
        assert value is None or isinstance(value, int | float | bool), (field, value)


def _check_result(path: str, raw: str) -> None:
    try:
        key, value = parse_key_value(path, raw)
    except InvalidValue as e:
        assert e.key_path == path
        assert str(e).startswith(path + ": ") and e.reason
        return
    if key is None:
        assert value is None
        return
    for name in ("host", "orchestrator", "workload", "endpoint", "profile", "tier", "policy", "handle"):
        if name in key.fields:
            assert SAFE_ID_RE.match(key.fields[name]), (name, key.fields[name])
    if isinstance(value, BaseModel):
        _check_model(value)
    elif key.kind == "profile_tags":
        assert all(SAFE_ID_RE.match(t) for t in value)
    elif key.kind == "profile_labels":
        _check_any("labels", value)
    elif key.kind in ("global_config", "host_config"):
        assert isinstance(value, str) and value and not CONTROL_RE.search(value)
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key.param)
    elif key.kind in ("host_bird_ip", "bgp_host_ip"):
        assert value is None or IP_RE.match(value)
    elif key.kind == "host_vxlan_mac":
        assert MAC_RE.match(value)
    elif key.kind in ("bgp_host_as", "bgp_global_as"):
        assert isinstance(value, int) and 1 <= value <= 4294967295
    elif key.kind in ("bgp_host_loglevel", "bgp_global_loglevel"):
        assert value in {"debug", "info", "notice", "warning", "warn", "error", "critical", "fatal", "none"}
    elif key.kind == "ready":
        assert value in (True, False)
    else:
        # Opaque records (IPAM allocations, Felix status) never reach the dataplane.
        assert isinstance(value, dict), (key.kind, value)


FUZZ = examples(400)  # 400 under the ci profile, scaled under fuzz (tests/reliability/profiles.py)


@FUZZ
@given(path=any_key, raw=raw_values)
def test_fuzz_every_key_kind_with_junk_values(path: str, raw: str) -> None:
    _check_result(path, raw)


@FUZZ
@given(path=any_key, raw=st.sampled_from(INJECTIONS))
def test_hostile_injection_strings_as_plain_values(path: str, raw: str) -> None:
    _check_result(path, raw)


@FUZZ
@given(path=st.one_of(junk_text, st.builds(lambda a, b: f"/calico/{a}/{b}", junk_text, junk_text)),
       raw=raw_values)
def test_fuzz_junk_paths(path: str, raw: str) -> None:
    _check_result(path, raw)


# Near-valid atoms, so that generated values often pass and the "valid result
# is safe" half of the property is exercised, not only the rejection half.
PLAUSIBLE = ["10.0.0.1", "10.0.0.0/8", "fd00::1", "fd00::/64", "169.254.1.1", "ee:ee:ee:ee:ee:ee",
             "prof1", "tag-a", "cali12ab", "tcp", "udp", "icmp", 80, 443, "1000:2000", 8, 0, 255, 4, 6,
             "role == 'db'", "has(x) && !has(y)", "a in {'x', 'y'}", "calico-drop:", "allow", "deny",
             "active", "inactive", "next-tier", "log", True, False, None]
plausible = st.one_of(st.sampled_from(PLAUSIBLE), st.lists(st.sampled_from(PLAUSIBLE), max_size=3),
                      st.dictionaries(st.sampled_from(["role", "app", "example.com/x"]),
                                      st.sampled_from(["db", "web", "", "a-1"]), max_size=2))
field_junk = st.one_of(plausible, junk_text, st.lists(st.one_of(junk_text, st.integers(-5, 70000)), max_size=3),
                       st.integers(-5, 70000), st.dictionaries(junk_text, junk_text, max_size=3))
mostly_plausible = st.one_of(st.sampled_from(PLAUSIBLE), st.sampled_from(PLAUSIBLE),
                             st.lists(st.sampled_from(PLAUSIBLE), min_size=1, max_size=3), field_junk)
BASE_WEP = {"state": "active", "name": "cali1", "profile_ids": ["p"], "ipv4_nets": ["10.0.0.1/32"]}
WEP_FIELDS = ["state", "name", "mac", "profile_ids", "profile_id", "ipv4_nets", "ipv6_nets",
              "ipv4_gateway", "ipv6_gateway", "ipv4_nat", "labels"]


@FUZZ
@given(field=st.sampled_from(WEP_FIELDS), value=field_junk)
def test_hostile_endpoint_one_field_at_a_time(field: str, value: object) -> None:
    # A mostly valid endpoint with one poisoned field exercises every validator in depth.
    path = keys.workload_endpoint("h1", "k8s", "ns.pod", "eth0")
    _check_result(path, json.dumps({**BASE_WEP, field: value}))


RULE_FIELDS = sorted({*(f.alias or n for n, f in Rule.model_fields.items())})
GOOD_RULE_VALUES: dict[str, list] = {
    "action": ["allow", "deny", "next-tier", "log"], "ip_version": [4, 6], "log_prefix": ["calico-drop:"],
    "protocol": ["tcp", "udp", "icmp", "sctp", 47], "net": ["10.0.0.0/8", "fd00::/64", "192.0.2.1"],
    "tag": ["web", "tag.1"], "selector": ["role == 'db'", "has(x) || a not in {'b'}", ""],
    "ports": [[80], [0, "1000:2000"], ["22"]], "icmp_type": [0, 8, 255], "icmp_code": [0, 3],
}


def _good_values(field: str) -> list:
    base = field.lstrip("!").removeprefix("not_").removeprefix("src_").removeprefix("dst_")
    return GOOD_RULE_VALUES[base]


@st.composite
def hostile_rules(draw: st.DrawFn) -> dict:
    """Rules whose fields are mostly valid for their type, some poisoned."""
    names = draw(st.lists(st.sampled_from(RULE_FIELDS), min_size=1, max_size=5, unique=True))
    rule = {}
    for name in names:
        good = st.sampled_from(_good_values(name))
        rule[name] = draw(st.one_of(good, good, good, field_junk))
    return rule


@FUZZ
@given(rule=hostile_rules(), protocol=st.sampled_from(["tcp", "udp", "icmp", None]))
def test_hostile_rule_fields(rule: dict, protocol: str | None) -> None:
    if protocol and "protocol" not in rule:
        rule = {"protocol": protocol, **rule}
    for path in (keys.profile_rules("p1"), keys.tier_policy("t", "p")):
        _check_result(path, json.dumps({"selector": "all()", "inbound_rules": [rule]}))


@FUZZ
@given(text=st.one_of(junk_text, st.text(alphabet="ab=!&|(){}'\", hasinot", max_size=40)))
def test_fuzz_selectors_in_policies(text: str) -> None:
    _check_result(keys.tier_policy("t", "p"), json.dumps({"selector": text}))
