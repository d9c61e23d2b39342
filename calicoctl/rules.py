"""The classic calicoctl rule grammar, to and from the datamodel's rule JSON.

    allow|deny [(tcp|udp) [from [ports P] [tag T] [cidr C]] [to [ports P] [tag T] [cidr C]]]
    allow|deny (icmp|icmpv6) [type N [code M]] [from [tag T] [cidr C]] [to [tag T] [cidr C]]
    allow|deny [from [tag T] [cidr C]] [to [tag T] [cidr C]]

Ports are a comma list of ports and lo:hi ranges.  Every rule built here is
checked by `libcalico.models.Rule`, the same validator Felix applies, so the
CLI can never write a rule Felix would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from calicoctl.cli import ArgError
from libcalico.models import Rule

ACTIONS = ("allow", "deny")
PORT_PROTOCOLS = ("tcp", "udp")
ICMP_PROTOCOLS = ("icmp", "icmpv6")
_DIRS = {"from": "src", "to": "dst"}


def validation_reason(err: ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    msg = first["msg"].removeprefix("Value error, ")
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return f"{loc}: {msg}" if loc else msg


def validate_rule(data: dict[str, Any]) -> Rule:
    try:
        return Rule.model_validate(data)
    except ValidationError as err:
        raise ArgError(f"invalid rule: {validation_reason(err)}") from None


def _ports(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in text.split(","):
        lo, sep, hi = part.partition(":")
        if not (lo.isdigit() and lo.isascii()) or sep and not (hi.isdigit() and hi.isascii()):
            raise ArgError(f"invalid ports {text!r}: use a comma list of ports and lo:hi ranges")
        out.append(f"{int(lo)}:{int(hi)}" if sep else int(lo))
    return out


def _int(text: str, what: str) -> int:
    if not (text.isdigit() and text.isascii()) or int(text) > 255:
        raise ArgError(f"invalid {what} {text!r}: must be 0-255")
    return int(text)


def parse_rule(tokens: Sequence[str]) -> dict[str, Any]:
    """Rule words -> the rule's JSON dict (validated); ArgError naming the bad word."""
    toks = list(tokens)
    if not toks:
        raise ArgError("invalid rule: empty (start with 'allow' or 'deny')")
    action = toks.pop(0)
    if action not in ACTIONS:
        raise ArgError(f"invalid rule action {action!r}: use 'allow' or 'deny'")
    rule: dict[str, Any] = {"action": action}
    proto = None
    if toks and toks[0] in PORT_PROTOCOLS + ICMP_PROTOCOLS:
        proto = toks.pop(0)
        rule["protocol"] = proto
    if proto in ICMP_PROTOCOLS and toks and toks[0] == "type":
        toks.pop(0)
        if not toks:
            raise ArgError("invalid rule: 'type' needs an ICMP type")
        rule["icmp_type"] = _int(toks.pop(0), "ICMP type")
        if toks and toks[0] == "code":
            toks.pop(0)
            if not toks:
                raise ArgError("invalid rule: 'code' needs an ICMP code")
            rule["icmp_code"] = _int(toks.pop(0), "ICMP code")
    seen_dirs: list[str] = []
    while toks:
        word = toks.pop(0)
        if word not in _DIRS or word in seen_dirs or ("to" in seen_dirs and word == "from"):
            raise ArgError(f"invalid rule: unexpected {word!r}")
        seen_dirs.append(word)
        side = _DIRS[word]
        matched = False
        while toks and toks[0] in ("ports", "tag", "cidr"):
            what = toks.pop(0)
            if not toks:
                raise ArgError(f"invalid rule: '{what}' needs a value")
            val = toks.pop(0)
            field = {"ports": "ports", "tag": "tag", "cidr": "net"}[what]
            if f"{side}_{field}" in rule:
                raise ArgError(f"invalid rule: '{word} {what}' given twice")
            if what == "ports":
                if proto not in PORT_PROTOCOLS:
                    raise ArgError(f"invalid rule: ports need protocol tcp or udp (got {val!r})")
                rule[f"{side}_ports"] = _ports(val)
            else:
                rule[f"{side}_{field}"] = val
            matched = True
        if not matched:
            raise ArgError(f"invalid rule: '{word}' needs ports, tag or cidr")
    return _dump(validate_rule(rule))


def _dump(rule: Rule) -> dict[str, Any]:
    return rule.model_dump(by_alias=True, exclude_none=True)


def normalize(rule: dict[str, Any]) -> dict[str, Any]:
    """The canonical dict of a stored rule, for comparing a typed rule with stored ones."""
    return _dump(Rule.model_validate(rule))


def _ports_text(ports: list) -> str:
    return ",".join(str(p) for p in ports)


def rule_text(rule: dict[str, Any]) -> str:
    """A stored rule in the classic grammar (fields the grammar lacks are appended as key=value)."""
    r = dict(rule)
    words = [str(r.pop("action", "allow") or "allow")]
    if r.get("protocol") is not None:
        words.append(str(r.pop("protocol")))
    else:
        r.pop("protocol", None)
    if r.get("icmp_type") is not None:
        words += ["type", str(r.pop("icmp_type"))]
        if r.get("icmp_code") is not None:
            words += ["code", str(r.pop("icmp_code"))]
    for word, side in _DIRS.items():
        part = []
        for name, field in (("ports", "ports"), ("tag", "tag"), ("cidr", "net"), ("selector", "selector")):
            for neg in ("", "!"):
                val = r.pop(f"{neg}{side}_{field}", None)
                if val is None:
                    continue
                shown = _ports_text(val) if field == "ports" else str(val)
                part += [f"{neg}{name}", shown]
        if part:
            words += [word, *part]
    extra = [f"{k}={v}" for k, v in r.items() if v is not None]
    return " ".join(words + extra)
