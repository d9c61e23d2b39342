"""calicoctl resource documents without a datastore: input forms and bounds, v1 rule <-> stored
rule conversion (a property: every stored rule Felix accepts survives the round trip), and the
Felix names `config felix` maps to being names Felix reads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calicoctl import manifest_io
from calicoctl.cli import ArgError
from calicoctl.config import CLASSIC_NAMES, FELIX_PARAMS, felix_param, felix_value
from calicoctl.manifest import BatchError, plan_documents
from calicoctl.manifest_io import DocumentError, load_documents
from calicoctl.manifest_rules import FieldError, rule_to_doc, rule_to_stored, rules_to_stored
from felix.config import PARAMS
from libcalico.models import Rule, to_json
from tests.reliability.profiles import examples


def test_config_names_are_parameters_felix_reads():
    felix = {p.name for p in PARAMS.values() if p.datastore}
    assert set(FELIX_PARAMS) <= felix
    assert set(CLASSIC_NAMES.values()) <= set(FELIX_PARAMS)
    assert felix_param("loglevel", False) == "LogSeverityScreen"
    assert felix_param("ipinipmtu", False) == "IpInIpMtu"
    with pytest.raises(ArgError, match="--force"):
        felix_param("Nonsense", False)
    assert felix_param("Nonsense", True) == "Nonsense"
    assert felix_value("LogSeverityScreen", "FATAL") == "critical"
    assert felix_value("IpInIpEnabled", "off") == "false"
    assert felix_value("VXLANEnabled", "auto") == "auto"


def test_input_forms():
    doc = {"apiVersion": "v1", "kind": "tier", "metadata": {"name": "t"}}
    assert load_documents(json.dumps(doc)) == [doc]
    assert load_documents(json.dumps([doc, [doc]])) == [doc, doc]
    assert load_documents("---\n" + json.dumps(doc) + "\n---\n---\n" + json.dumps(doc)) == [doc, doc]
    assert load_documents(json.dumps({"kind": "List", "items": [doc]})) == [doc]
    assert load_documents("{apiVersion: v1, kind: tier, metadata: {name: t}}") == [doc]  # YAML flow style
    ports = load_documents("ports: [1:30, 80, 8000:8080, 0x10, 1.5, .inf]\n")[0]["ports"]
    assert ports == ["1:30", 80, "8000:8080", 16, 1.5, float("inf")]  # 1:30 is a range, not base 60
    with pytest.raises(DocumentError, match="anchors"):
        load_documents("a: &x 1\n")
    with pytest.raises(DocumentError, match="line 3: not valid YAML"):
        load_documents("a: 1\nb: [\n")
    with pytest.raises(DocumentError, match="items must be a list"):
        load_documents("kind: List\nitems: 3\n")


def test_bounds(monkeypatch):
    monkeypatch.setattr(manifest_io, "MAX_DOCUMENTS", 3)
    with pytest.raises(DocumentError, match="4 documents exceed"):
        load_documents(json.dumps([{}] * 4))
    monkeypatch.setattr(manifest_io, "MAX_INPUT_BYTES", 10)
    with pytest.raises(DocumentError, match="larger than"):
        load_documents("a: 12345678901\n")


def test_plan_names_document_kind_and_field():
    docs = [{"apiVersion": "v1", "kind": "tier", "metadata": {"name": "t"}, "spec": {"order": 1}},
            {"apiVersion": "v1", "kind": "policy", "metadata": {"name": "p"},
             "spec": {"egress": [{"action": "allow", "destination": {"net": "10.0.0.0/33"}}]}}]
    with pytest.raises(BatchError, match=r"document 2 \(policy p\): spec\.egress\[0\]\.destination\.net: "):
        plan_documents(docs, "apply")
    docs[1]["spec"] = {"ingress": [{"action": "allow", "source": {"colour": "red"}}]}
    with pytest.raises(BatchError, match=r"spec\.ingress\[0\]\.source\.colour: unknown field"):
        plan_documents(docs, "apply")
    docs[1]["spec"] = {"ingress": [{"action": "allow", "icmp": {"code": 1}, "protocol": "icmp"}]}
    with pytest.raises(BatchError, match=r"spec\.ingress\[0\]: icmp_code requires icmp_type"):
        plan_documents(docs, "apply")
    assert len(plan_documents(docs[:1], "apply")) == 1


def test_rule_conversion_examples():
    doc = {"action": "deny", "protocol": "tcp", "notProtocol": None,
           "source": {"notPorts": ["1:1024"], "selector": "has(a)"}, "destination": {"notTag": "x"}}
    stored = rule_to_stored(doc, "r")
    assert stored == {"action": "deny", "protocol": "tcp", "src_selector": "has(a)", "!src_ports": ["1:1024"],
                      "!dst_tag": "x"}
    assert rule_to_stored({"action": "pass"}, "r") == {"action": "next-tier"}
    with pytest.raises(FieldError, match="exceed the limit"):
        rules_to_stored([{}] * 100_000, "spec.ingress")
    with pytest.raises(FieldError) as e:
        rule_to_stored({"action": "maybe"}, "spec.ingress[3]")
    assert e.value.field == "spec.ingress[3].action"


_NETS = st.sampled_from([None, "10.0.0.0/8", "192.168.1.0/24"])
_TAGS = st.sampled_from([None, "web", "db.1"])
_SELS = st.sampled_from([None, "all()", "role == 'db'", "has(a) && b in {'x', 'y'}"])
_PORTS = st.sampled_from([None, [80], [22, "8000:8080"]])


@st.composite
def stored_rules(draw) -> dict:
    rule: dict = {"action": draw(st.sampled_from(["allow", "deny", "log", "next-tier"]))}
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp", 47]))
    if proto is not None:
        rule["protocol"] = proto
    if draw(st.booleans()):
        rule["ip_version"] = 4
    for pre in ("", "!"):
        for side in ("src", "dst"):
            for name, strat in (("net", _NETS), ("tag", _TAGS), ("selector", _SELS)):
                v = draw(strat)
                if v is not None:
                    rule[f"{pre}{side}_{name}"] = v
            if proto in ("tcp", "udp"):
                v = draw(_PORTS)
                if v is not None:
                    rule[f"{pre}{side}_ports"] = v
    if proto == "icmp" and draw(st.booleans()):
        rule["icmp_type"] = draw(st.integers(0, 254))
        if draw(st.booleans()):
            rule["icmp_code"] = draw(st.integers(0, 255))
    return rule


@examples(60)
@given(stored_rules())
def test_every_valid_stored_rule_survives_the_document_round_trip(rule):
    canonical = json.loads(to_json(Rule.model_validate(rule)))
    doc = rule_to_doc(canonical)
    assert rule_to_stored(json.loads(json.dumps(doc)), "r") == canonical
