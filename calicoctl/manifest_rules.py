"""calicoctl 1.x rules (`ingress`/`egress`, `source`/`destination`) to and from the datamodel's rules.

The datamodel keeps the classic flat form (`src_net`, `!dst_ports`, ...) that
Felix reads; documents use the v1 resource form.  Each converted rule is
checked by `libcalico.models.Rule`, Felix's own validator, and a failure is
reported with the document's field path (`spec.ingress[0].source.net`), not the
stored one, because that is what the operator wrote.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from libcalico.models import MAX_RULES, Rule

ACTIONS = {"allow": "allow", "deny": "deny", "log": "log", "next-tier": "next-tier", "pass": "next-tier"}
_ENTITY = {"tag": "tag", "net": "net", "selector": "selector", "ports": "ports",
           "notTag": "!tag", "notNet": "!net", "notSelector": "!selector", "notPorts": "!ports"}
_SIDES = {"source": "src", "destination": "dst"}
_TOP = {"action", "protocol", "notProtocol", "ipVersion", "icmp", "notICMP", "source", "destination", "logPrefix"}


class FieldError(ValueError):
    """A document field that cannot be accepted: `field` is its path in the document."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _stored_to_doc_field() -> dict[str, str]:
    out = {"action": "action", "protocol": "protocol", "not_protocol": "notProtocol",
           "ip_version": "ipVersion", "log_prefix": "logPrefix", "icmp_type": "icmp.type",
           "icmp_code": "icmp.code", "not_icmp_type": "notICMP.type", "not_icmp_code": "notICMP.code"}
    for side, pre in _SIDES.items():
        for doc_name, stored in _ENTITY.items():
            neg = stored.startswith("!")
            out[f"{'not_' if neg else ''}{pre}_{stored.lstrip('!')}"] = f"{side}.{doc_name}"
    return out


DOC_FIELD = _stored_to_doc_field()


def _object(value: Any, where: str, allowed: set[str] | dict) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(where, "must be an object")
    for k in value:
        if k not in allowed:
            raise FieldError(f"{where}.{k}" if where else str(k), "unknown field")
    return value


def rule_to_stored(doc: Any, where: str) -> dict[str, Any]:
    """One v1 rule -> the datamodel's rule dict, validated by Felix's Rule model."""
    doc = _object(doc, where, _TOP)
    out: dict[str, Any] = {}
    action = doc.get("action", "allow")
    if not isinstance(action, str) or action.lower() not in ACTIONS:
        raise FieldError(f"{where}.action", f"{action!r} is not one of {', '.join(ACTIONS)}")
    out["action"] = ACTIONS[action.lower()]
    for doc_name, stored in (("protocol", "protocol"), ("notProtocol", "!protocol"),
                             ("ipVersion", "ip_version"), ("logPrefix", "log_prefix")):
        if doc.get(doc_name) is not None:
            out[stored] = doc[doc_name]
    for doc_name, neg in (("icmp", ""), ("notICMP", "!")):
        icmp = _object(doc.get(doc_name), f"{where}.{doc_name}", {"type", "code"})
        for f in ("type", "code"):
            if icmp.get(f) is not None:
                out[f"{neg}icmp_{f}"] = icmp[f]
    for side, pre in _SIDES.items():
        ent = _object(doc.get(side), f"{where}.{side}", _ENTITY)
        for doc_name, stored in _ENTITY.items():
            if ent.get(doc_name) is not None:
                neg = "!" if stored.startswith("!") else ""
                out[f"{neg}{pre}_{stored.lstrip('!')}"] = ent[doc_name]
    try:
        rule = Rule.model_validate(out)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        msg = first["msg"].removeprefix("Value error, ")
        loc = [str(p) for p in first.get("loc", ())]
        field = where
        if loc:
            name = loc[0].replace("!", "not_")
            field = f"{where}.{DOC_FIELD.get(name, name)}" + "".join(f"[{p}]" for p in loc[1:])
        if msg.startswith("[") and "]: " in msg:  # a list validator named the item: make it part of the path
            index, _, msg = msg.partition(": ")
            field += index
        raise FieldError(field, msg) from None
    return rule.model_dump(by_alias=True, exclude_none=True)


def rule_to_doc(stored: dict[str, Any]) -> dict[str, Any]:
    """The datamodel's rule dict (as `to_json` writes it) -> the v1 rule document."""
    out: dict[str, Any] = {"action": stored.get("action", "allow")}
    for stored_name, doc_name in (("protocol", "protocol"), ("!protocol", "notProtocol"),
                                  ("ip_version", "ipVersion"), ("log_prefix", "logPrefix")):
        if stored.get(stored_name) is not None:
            out[doc_name] = stored[stored_name]
    for neg, doc_name in (("", "icmp"), ("!", "notICMP")):
        icmp = {f: stored[f"{neg}icmp_{f}"] for f in ("type", "code") if stored.get(f"{neg}icmp_{f}") is not None}
        if icmp:
            out[doc_name] = icmp
    for side, pre in _SIDES.items():
        ent = {}
        for doc_name, st in _ENTITY.items():
            neg = "!" if st.startswith("!") else ""
            v = stored.get(f"{neg}{pre}_{st.lstrip('!')}")
            if v is not None:
                ent[doc_name] = v
        if ent:
            out[side] = ent
    return out


def rules_to_stored(doc: Any, where: str) -> list[dict[str, Any]]:
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise FieldError(where, "must be a list of rules")
    if len(doc) > MAX_RULES:  # checked before validating each one: the bound is what keeps that cheap
        raise FieldError(where, f"{len(doc)} rules exceed the limit of {MAX_RULES}")
    return [rule_to_stored(r, f"{where}[{i}]") for i, r in enumerate(doc)]
