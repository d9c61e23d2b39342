"""Felix's direct endpoint parser gives exactly what the full model path gives.

felix.parse takes plain workload endpoint values straight to Felix's Endpoint;
every value it declines goes the full way.  So for any value, the outcome
(the Endpoint, or the error naming the key) must be the same either way.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from felix.calc.model import endpoint_from_json, endpoint_from_value
from felix.desired import Endpoint
from felix.parse import parse_key_value as felix_parse
from libcalico import keys
from libcalico.models import parse_key_value as full_parse
from tests.reliability.profiles import examples

PATH = "/calico/v1/host/h1/workload/k8s/w1/endpoint/e1"


def outcome(parse, path: str, raw: str):
    try:
        key, value = parse(path, raw)
        return ("ok", endpoint_from_value(key, value))
    except (ValueError, TypeError) as e:
        return ("error", type(e).__name__, str(e))


def base(**over) -> dict:
    d = {"state": "active", "name": "cali1234", "profile_ids": ["p1", "p2", "p1"],
         "ipv4_nets": ["10.0.0.1/32", "10.0.0.2"], "ipv6_nets": ["fd00::1/128"],
         "labels": {"app": "web", "role": "fe"}}
    d.update(over)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()

CASES = [
    base(),
    base(state="inactive"),
    base(state="Active"), base(state=1), base(state=_DROP), base(name=_DROP), base(name="x" * 16),
    base(name="bad name"), base(name=5), base(profile_ids=None), base(profile_ids=_DROP),
    base(profile_ids="p1"), base(profile_ids=["bad id!"]), base(profile_ids=[3]),
    base(ipv4_nets=None), base(ipv4_nets="10.0.0.1/32"), base(ipv4_nets=["10.0.0.0/24"]),
    base(ipv4_nets=["127.0.0.1/32"]), base(ipv4_nets=["169.254.1.1"]), base(ipv4_nets=["fd00::1/128"]),
    base(ipv4_nets=["10.0.0.1/32", "10.0.0.1"]), base(ipv4_nets=[None]), base(ipv6_nets=["fd00::/64"]),
    base(ipv6_nets=["::1"]), base(ipv6_nets=["FD00::0001"]), base(labels=None), base(labels=_DROP),
    base(labels={"bad key!": "x"}), base(labels={"a": 1}), base(labels={"a": "bad value!"}), base(labels=[]),
    base(mac="AA:BB:CC:DD:EE:FF"), base(mac=None), base(mac="nope"), base(profile_id="legacy", profile_ids=_DROP),
    base(ipv4_gateway="10.0.0.254"), base(ipv4_nat=[{"int_ip": "10.0.0.1", "ext_ip": "172.16.0.1"}]),
    base(container_id="abc", network="n1"),
]


@pytest.mark.parametrize("doc", CASES, ids=range(len(CASES)))
def test_same_outcome_as_the_model_path(doc: dict) -> None:
    raw = json.dumps(doc)
    assert outcome(felix_parse, PATH, raw) == outcome(full_parse, PATH, raw)


@pytest.mark.parametrize("raw", ["", "nope", "[1]", "null", json.dumps(base())[:-1], " " * 5000 + json.dumps(base())])
def test_malformed_and_oversized_values_take_the_full_path(raw: str) -> None:
    assert endpoint_from_json(keys.parse(PATH), raw) is None
    assert outcome(felix_parse, PATH, raw) == outcome(full_parse, PATH, raw)


def test_bad_key_segment_is_the_models_error() -> None:
    path = "/calico/v1/host/h1/workload/k8s/w%201/endpoint/e1"
    raw = json.dumps(base())
    got = outcome(felix_parse, path, raw)
    assert got == outcome(full_parse, path, raw)
    assert got[0] == "error" and path in got[2]


def test_plain_values_are_taken_directly() -> None:
    key, value = felix_parse(PATH, json.dumps(base()))
    assert isinstance(value, Endpoint) and value.key == PATH
    assert value.profile_ids == ("p1", "p2") and value.ipv4_nets == ("10.0.0.1/32", "10.0.0.2/32")
    assert value.labels == (("app", "web"), ("role", "fe"))
    _, value = felix_parse(PATH, json.dumps(base(mac=None)))     # a null MAC is no MAC
    assert isinstance(value, Endpoint) and value.mac is None
    # a value with a MAC (local workloads) still goes through the model
    _, value = felix_parse(PATH, json.dumps(base(mac="aa:bb:cc:dd:ee:ff")))
    assert not isinstance(value, Endpoint)


def test_other_kinds_are_untouched() -> None:
    path = "/calico/v1/policy/profile/p1/tags"
    assert felix_parse(path, '["a"]') == full_parse(path, '["a"]')
    assert felix_parse("/calico/v1/nothing/here", "x") == (None, None)
    assert felix_parse(PATH, None) == full_parse(PATH, None)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.sampled_from(
    ["", "active", "inactive", "cali1", "p1", "bad id", "10.0.0.1", "10.0.0.1/32", "10.0.0.0/8", "fd00::1",
     "::1", "127.0.0.1", "a" * 16, "x.y", "..", "224.0.0.1/32"]))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=3), st.dictionaries(st.sampled_from(["a", "b c", "k"]),
                                                                           _scalar, max_size=2))


@examples(200)
@given(st.dictionaries(st.sampled_from(["state", "name", "profile_ids", "ipv4_nets", "ipv6_nets", "labels",
                                        "mac", "extra"]), _value, max_size=8), st.data())
def test_mutated_values_same_outcome(over: dict, data) -> None:
    doc = base()
    doc.update(over)
    drop = data.draw(st.sets(st.sampled_from(sorted(doc)), max_size=2))
    for k in drop:
        doc.pop(k)
    raw = json.dumps(doc)
    assert outcome(felix_parse, PATH, raw) == outcome(full_parse, PATH, raw)
