"""confd's pydantic-free BGP parser decides exactly as the models do.

libcalico.bgp_values validates the kinds confd reads without pydantic (for
confd's memory and start-up CPU); libcalico.models stays the reference.  For
any key and value of those kinds, both must accept or reject alike, with the
same error text naming the key and the same normalised value.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libcalico import bgp_values, models
from libcalico.values import MAX_VALUE_BYTES
from tests.reliability.profiles import examples

POOL4 = "/calico/v1/ipam/v4/pool/10.65.0.0-16"
POOL6 = "/calico/v1/ipam/v6/pool/fd00::-64"
GPEER = "/calico/bgp/v1/global/peer_v4/10.0.0.9"
HPEER6 = "/calico/bgp/v1/host/h1/peer_v6/fd00::9"
MESH = "/calico/bgp/v1/global/node_mesh"
AFF = "/calico/ipam/v2/host/h1/ipv4/block/10.65.1.0-26"
STATUS = "/calico/bgp/v1/host/h1/status/v4"
PLAIN = ["/calico/bgp/v1/host/h1/ip_addr_v4", "/calico/bgp/v1/host/h1/ip_addr_v6", "/calico/bgp/v1/host/h1/as_num",
         "/calico/bgp/v1/host/h1/loglevel", "/calico/bgp/v1/host/h1/rr_cluster_id", "/calico/bgp/v1/global/as_num",
         "/calico/bgp/v1/global/loglevel", "/calico/v1/Ready"]


def _plain(value: object) -> object:
    """A comparable form of either parser's value: its fields, extra fields and derived properties."""
    if isinstance(value, models.Pool | bgp_values.PoolValue):
        extra = value.model_extra if isinstance(value, models.Pool) else value.extra
        return ("pool", value.cidr, value.ipip, value.vxlan, value.masquerade, value.ipam, value.disabled,
                value.block_size, value.strict_affinity, value.block_prefix, value.version, value.overlay, extra)
    if isinstance(value, models.BgpPeer | bgp_values.PeerValue):
        extra = value.model_extra if isinstance(value, models.BgpPeer) else value.extra
        return ("peer", value.ip, value.as_num, extra)
    if isinstance(value, models.NodeMesh | bgp_values.MeshValue):
        extra = value.model_extra if isinstance(value, models.NodeMesh) else value.extra
        return ("mesh", value.enabled, extra)
    if isinstance(value, models.BlockAffinity | bgp_values.AffinityValue):
        extra = value.model_extra if isinstance(value, models.BlockAffinity) else value.extra
        return ("affinity", value.state, extra)
    return ("plain", type(value).__name__, value)


def outcome(parse, path: str, raw):
    try:
        key, value = parse(path, raw)
        return ("ok", key, _plain(value))
    except (ValueError, TypeError) as e:
        return ("error", type(e).__name__, str(e))


def same(path: str, raw) -> tuple:
    got = outcome(bgp_values.parse_key_value, path, raw)
    assert got == outcome(models.parse_key_value, path, raw), (path, raw)
    return got


CASES = [
    (POOL4, {"cidr": "10.65.0.0/16"}),
    (POOL4, {"cidr": "10.65.7.7/16", "ipip": "tunl0", "masquerade": True, "block_size": 28, "note": [1]}),
    (POOL4, {"cidr": "10.65.0.0/16", "vxlan": "vxlan.calico", "ipam": None, "disabled": None}),
    (POOL4, {"cidr": "10.65.0.0/16", "ipip": "tunl0", "vxlan": "vxlan.calico"}),
    (POOL4, {"cidr": "10.65.0.0/16", "ipip": "tunl1"}), (POOL4, {"cidr": "10.65.0.0/16", "ipip": 0}),
    (POOL4, {"cidr": "10.65.0.0/16", "masquerade": 1}), (POOL4, {"cidr": "10.65.0.0/16", "ipam": "true"}),
    (POOL4, {"cidr": "10.65.0.0/16", "block_size": True}), (POOL4, {"cidr": "10.65.0.0/16", "block_size": 19}),
    (POOL4, {"cidr": "10.65.0.0/16", "block_size": 33}), (POOL4, {"cidr": "10.65.0.0/16", "block_size": 26.0}),
    (POOL4, {"cidr": "10.65.0.0/16", "block_size": "26"}), (POOL4, {"cidr": "10.65.0.0/16", "strict_affinity": 0}),
    (POOL4, {"cidr": "10.65.0.0/16", "strict_affinity": False}), (POOL4, {"cidr": "10.66.0.0/16"}),
    (POOL4, {"cidr": "fd00::/64"}), (POOL4, {"cidr": 5}), (POOL4, {}), (POOL4, {"ipip": "x", "masquerade": 2}),
    # the first error in field order: masquerade before block_size, as models.Pool declares them
    (POOL4, {"cidr": "10.65.0.0/16", "masquerade": 0, "block_size": False}),
    (POOL4, {"cidr": "10.65.0.0/16", "block_size": 10**30}), (POOL4, {"cidr": "10.65.0.0/28", "block_size": None}),
    (POOL6, {"cidr": "fd00::/64"}), (POOL6, {"cidr": "FD00:0::/64", "block_size": 116}),
    (POOL6, {"cidr": "fd00::/64", "block_size": 115}), (POOL6, {"cidr": "fd00::/64", "block_size": 26}),
    (GPEER, {"ip": "10.0.0.9", "as_num": 65000}), (GPEER, {"ip": "10.0.0.9", "as_num": "65000", "x": 1}),
    (GPEER, {"ip": "10.0.0.9", "as_num": "1.10"}), (GPEER, {"ip": "10.0.0.9", "as_num": 0}),
    (GPEER, {"ip": "10.0.0.9", "as_num": 4294967296}), (GPEER, {"ip": "10.0.0.9", "as_num": True}),
    (GPEER, {"ip": "10.0.0.9", "as_num": [1]}), (GPEER, {"ip": "10.0.0.9", "as_num": None}),
    (GPEER, {"ip": "10.0.0.8", "as_num": 1}), (GPEER, {"ip": "0.0.0.0", "as_num": 1}), (GPEER, {"as_num": 1}),
    (GPEER, {"ip": ["10.0.0.9"]}), (HPEER6, {"ip": "FD00::9", "as_num": 65000}),
    (HPEER6, {"ip": "fe80::1", "as_num": 65000}), (HPEER6, {"ip": "10.0.0.9", "as_num": 65000}),
    (MESH, {"enabled": True}), (MESH, {"enabled": False, "x": None}), (MESH, {"enabled": 1}), (MESH, {"enabled": "true"}),
    (MESH, {}), (MESH, {"enabled": None}),
    (AFF, {"state": "confirmed"}), (AFF, {}), (AFF, {"state": "pending"}), (AFF, {"state": "pendingDeletion", "y": {}}),
    (AFF, {"state": None}), (AFF, {"state": "Confirmed"}), (AFF, {"state": 1}),
    (STATUS, {"state": "Established", "any": ["thing"]}),
]


@pytest.mark.parametrize("path,doc", CASES, ids=range(len(CASES)))
def test_same_outcome_as_the_models(path: str, doc: dict) -> None:
    same(path, json.dumps(doc))


@pytest.mark.parametrize("path", [POOL4, GPEER, MESH, AFF, STATUS] + PLAIN)
@pytest.mark.parametrize("raw", ["", "nope", "[1]", "null", "1", '"x"', "{", "[" * 2000, b"\xff\xfe", b"{}",
                                 "true", " false ", "64512", "1.10", "info", "debug", "10.0.0.1", "fd00::1", " ",
                                 "0.0.0.0", "1.0.0.1", "4294967296", "TRUE", "{\"enabled\": true}", None, 5])
def test_malformed_and_plain_values(path: str, raw) -> None:
    same(path, raw)


def test_oversized_status_and_bad_keys() -> None:
    limit = MAX_VALUE_BYTES["bgp_host_status"]
    for raw in ('{"a": "' + "x" * limit + '"}', '{"a": "' + "\u00e9" * (limit // 2) + '"}',
                '{"a": "' + "\u00e9" * (limit // 3) + '"}'):
        same(STATUS, raw)
    for path in ("/calico/bgp/v1/host/h%201/as_num", "/calico/bgp/v1/host/h 1/peer_v4/10.0.0.9",
                 "/calico/bgp/v1/global/peer_v4/10.0.0.999", "/calico/ipam/v2/host/-bad-/ipv4/block/10.65.1.0-26",
                 "/calico/bgp/v1/host/" + "h" * 300 + "/as_num", "/calico/v1/ipam/v4/pool/nope"):
        for raw in ("64512", '{"ip": "10.0.0.9", "as_num": 1}', '{"state": "confirmed"}', None):
            same(path, raw)
    assert same("/calico/bgp/v1/host/h%201/as_num", "64512")[0] == "error"


def test_unknown_paths_and_other_kinds() -> None:
    assert bgp_values.parse_key_value("/calico/bgp/v1/nothing", "x") == (None, None)
    with pytest.raises(models.InvalidValue, match="no BGP validator for key kind 'profile_tags'"):
        bgp_values.parse_key_value("/calico/v1/policy/profile/p1/tags", '["a"]')


def test_one_invalid_value_class() -> None:
    assert bgp_values.InvalidValue is models.InvalidValue


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**33), st.floats(allow_nan=False), st.sampled_from(
    ["", "tunl0", "vxlan.calico", "confirmed", "pending", "pendingDeletion", "10.65.0.0/16", "10.65.1.0/26",
     "10.0.0.9", "fd00::9", "fd00::/64", "64512", "1.10", "0.0.0.0", "true", "x" * 70]))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=2), st.dictionaries(st.sampled_from(["a", "cidr"]), _scalar,
                                                                           max_size=2))
_FIELDS = ["cidr", "ipip", "vxlan", "masquerade", "ipam", "disabled", "block_size", "strict_affinity", "ip", "as_num",
           "enabled", "state", "other"]
_BASE = {POOL4: {"cidr": "10.65.0.0/16"}, POOL6: {"cidr": "fd00::/64"}, GPEER: {"ip": "10.0.0.9", "as_num": 1},
         HPEER6: {"ip": "fd00::9", "as_num": 1}, MESH: {"enabled": True}, AFF: {}}


@examples(300)
@given(st.sampled_from(sorted(_BASE)), st.dictionaries(st.sampled_from(_FIELDS), _value, max_size=4),
       st.lists(st.sampled_from(_FIELDS), max_size=2))
def test_mutated_values_same_outcome(path: str, over: dict, drop: list) -> None:
    doc = dict(_BASE[path], **over)
    for k in drop:
        doc.pop(k, None)
    same(path, json.dumps(doc))
