"""Render one policy rule (datamodel JSON) to iptables-restore match arguments.

This is the last gate before the kernel: every value is re-validated here even
though libcalico.models already checked it, because a rule string reaches
`iptables-restore` verbatim.  Anything unexpected raises `RuleError`; the
caller then treats the whole profile as absent (dropping is safe, a partially
rendered rule list could be more permissive than the author meant).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from libcalico.validation import validate_cidr, validate_log_prefix, validate_name

MARK_ACCEPT = "0x1000000"
MARK_SRC_OK = "0x2000000"
MULTIPORT_MAX = 15

_PROTO_NAMES = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp",
                "sctp": "sctp", "udplite": "udplite"}
_PORT_PROTOS = {"tcp", "udp", "sctp", "udplite", "6", "17", "132", "136"}
_ACTIONS = {"allow", "deny", "next-tier", "log", "pass"}
_MATCH_FIELDS = ("protocol", "src_net", "dst_net", "src_tag", "dst_tag", "src_selector",
                 "dst_selector", "src_ports", "dst_ports", "icmp_type", "icmp_code")
_PORT_RANGE_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})\Z")


class RuleError(ValueError):
    """A rule that cannot be rendered safely."""


@dataclass(frozen=True)
class RenderedRule:
    """Match argument strings (one per multiport split; empty list: rule not for this family)."""

    action: str
    matches: tuple[str, ...]
    log_prefix: str | None = None


def rule_to_dict(rule: object) -> dict:
    """A Rule model (pydantic, aliases for `!` keys) or a plain dict -> plain dict with `!` keys."""
    if isinstance(rule, Mapping):
        raw = dict(rule)
    elif hasattr(rule, "model_dump"):
        raw = rule.model_dump(by_alias=True, exclude_none=True)
        extra = getattr(rule, "model_extra", None) or {}
        for k, v in extra.items():
            raw.setdefault(k, v)
    else:
        raise RuleError(f"rule of type {type(rule).__name__} is not a mapping")
    out = {}
    for k, v in raw.items():
        if v is None:
            continue
        if isinstance(k, str) and k.startswith("not_") and k[4:] in _MATCH_FIELDS:
            k = "!" + k[4:]
        out[k] = v
    return out


def _proto(value: object) -> str:
    if isinstance(value, bool):
        raise RuleError(f"protocol {value!r} is invalid")
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        n = int(value)
        if not 1 <= n <= 255:
            raise RuleError(f"protocol number {value!r} out of range 1..255")
        return str(n)
    if isinstance(value, str) and value.lower() in _PROTO_NAMES:
        return value.lower()
    raise RuleError(f"protocol {value!r} is not one of {', '.join(_PROTO_NAMES)} or 1..255")


def _ports(value: object, what: str) -> list[tuple[str, int]]:
    """-> list of (text, weight) where a range weighs 2 in multiport's 15-slot budget."""
    if not isinstance(value, list) or not value:
        raise RuleError(f"{what} must be a non-empty list")
    out = []
    for p in value:
        if isinstance(p, bool):
            raise RuleError(f"{what}: {p!r} is not a port")
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit()):
            n = int(p)
            if not 0 <= n <= 65535:
                raise RuleError(f"{what}: port {p!r} out of range 0..65535")
            out.append((str(n), 1))
            continue
        m = _PORT_RANGE_RE.match(p) if isinstance(p, str) else None
        if not m:
            raise RuleError(f"{what}: {p!r} is neither a port nor a 'lo:hi' range")
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (0 <= lo <= hi <= 65535):
            raise RuleError(f"{what}: range {p!r} invalid (need 0 <= lo <= hi <= 65535)")
        out.append((f"{lo}:{hi}", 2))
    return out


def _chunks(ports: list[tuple[str, int]]) -> list[str]:
    chunks: list[list[str]] = [[]]
    used = 0
    for text, w in ports:
        if used + w > MULTIPORT_MAX:
            chunks.append([])
            used = 0
        chunks[-1].append(text)
        used += w
    return [",".join(c) for c in chunks]


def _icmp(value: object, what: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise RuleError(f"{what} {value!r} is not an integer")
    n = int(value)
    if not 0 <= n <= hi:
        raise RuleError(f"{what} {value!r} out of range 0..{hi}")
    return n


def render_rule(rule: Mapping, version: int,
                selector_ipset: Callable[[str, int], str] | None = None) -> RenderedRule:
    """Validate `rule` and render its matches for IP `version`; matches empty = not for this family.

    `selector_ipset(text, version)` names the ipset of a src/dst selector (tiered
    policy); without it a selector is an error.
    """
    from felix.calc import names

    for k in rule:
        if not isinstance(k, str):
            raise RuleError(f"rule key {k!r} is not a string")
    action = rule.get("action", "allow")
    if not isinstance(action, str) or action not in _ACTIONS:
        raise RuleError(f"action {action!r} is not one of allow, deny, next-tier, log")
    log_prefix = None
    if action == "log":
        log_prefix = rule.get("log_prefix", "calico-packet:")
        try:
            log_prefix = validate_log_prefix(log_prefix)
        except ValueError as e:
            raise RuleError(str(e)) from None

    applies = True
    ipv = rule.get("ip_version")
    if ipv is not None:
        if ipv not in (4, 6) or isinstance(ipv, bool):
            raise RuleError(f"ip_version {ipv!r} is not 4 or 6")
        applies = ipv == version

    def get(field: str) -> list[tuple[bool, object]]:
        out = []
        if rule.get(field) is not None:
            out.append((False, rule[field]))
        if rule.get("!" + field) is not None:
            out.append((True, rule["!" + field]))
        return out

    args: list[str] = []
    # -s / -d first (iptables-save's order), then protocol, then modules.
    for field, flag in (("src_net", "-s"), ("dst_net", "-d")):
        for neg, v in get(field):
            try:
                cidr = validate_cidr(v)
            except ValueError as e:
                raise RuleError(f"{field}: {e}") from None
            if ":" in cidr if version == 4 else ":" not in cidr:
                applies = False
            args.append(f"{'! ' if neg else ''}{flag} {cidr}")

    protos = get("protocol")
    if len(protos) > 1:
        raise RuleError("protocol and !protocol together")
    proto = None
    if protos:
        neg, v = protos[0]
        proto = _proto(v)
        if not neg and proto in ("icmp", "1") and version == 6:
            applies = False
        if not neg and proto in ("icmpv6", "58") and version == 4:
            applies = False
        args.append(f"{'! ' if neg else ''}-p {_PROTO_NAMES.get(proto, proto)}")
        if neg:
            proto = None  # a negated protocol allows no protocol-specific match

    for field, direction in (("src_tag", "src"), ("dst_tag", "dst")):
        for neg, v in get(field):
            try:
                tag = validate_name(v, "tag")
            except ValueError as e:
                raise RuleError(f"{field}: {e}") from None
            args.append(f"-m set {'! ' if neg else ''}--match-set {names.tag_ipset(tag, version)} {direction}")
    for field, direction in (("src_selector", "src"), ("dst_selector", "dst")):
        for neg, v in get(field):
            if selector_ipset is None:
                raise RuleError(f"{field} is only supported in tiered policies")
            if not isinstance(v, str):
                raise RuleError(f"{field} {v!r} is not a string")
            try:
                set_name = selector_ipset(v, version)
            except ValueError as e:
                raise RuleError(f"{field}: {e}") from None
            args.append(f"-m set {'! ' if neg else ''}--match-set {set_name} {direction}")

    # ports: positive lists split across rules (OR), negated lists across matches in one rule (AND)
    splits: list[list[str]] = [[]]
    for field, opt in (("src_ports", "--sports"), ("dst_ports", "--dports")):
        for neg, v in get(field):
            if proto not in _PORT_PROTOS:
                raise RuleError(f"{field} needs protocol tcp, udp, sctp or udplite")
            chunks = _chunks(_ports(v, field))
            if neg:
                for s in splits:
                    s.extend(f"-m multiport ! {opt} {c}" for c in chunks)
            else:
                splits = [s + [f"-m multiport {opt} {c}"] for s in splits for c in chunks]

    itype = get("icmp_type")
    icode = get("icmp_code")
    if itype or icode:
        if proto not in ("icmp", "icmpv6", "1", "58"):
            raise RuleError("icmp_type/icmp_code need protocol icmp or icmpv6")
        if icode and not itype:
            raise RuleError("icmp_code needs icmp_type")
        if len(itype) > 1:
            raise RuleError("icmp_type and !icmp_type together")
        neg, t = itype[0]
        t = _icmp(t, "icmp_type", 254)
        spec = str(t)
        if icode:
            cneg, c = icode[0]
            if cneg != neg or len(icode) > 1:
                raise RuleError("icmp_code must be negated together with icmp_type")
            spec = f"{t}/{_icmp(c, 'icmp_code', 255)}"
        if version == 4:
            args.append(f"-m icmp {'! ' if neg else ''}--icmp-type {spec}")
        else:
            args.append(f"-m icmp6 {'! ' if neg else ''}--icmpv6-type {spec}")

    if not applies:
        return RenderedRule(action, (), log_prefix)
    base = " ".join(args)
    matches = tuple(" ".join(x for x in (base, *s) if x) for s in splits)
    return RenderedRule(action, matches, log_prefix)


def rule_lines(rendered: RenderedRule) -> list[str]:
    """The chain lines for one rendered rule inside a profile/policy chain.

    allow: set the accept mark and return (the endpoint chain then returns too);
    deny: drop; log: LOG and continue; next-tier/pass: return without the mark
    (in a profile this moves on to the endpoint's next profile).
    """
    out = []
    for m in rendered.matches:
        pre = f"{m} " if m else ""
        if rendered.action == "allow":
            out.append(f"{pre}-j MARK --set-xmark {MARK_ACCEPT}/{MARK_ACCEPT}")
            out.append(f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN")
        elif rendered.action == "deny":
            out.append(f"{pre}-j DROP")
        elif rendered.action == "log":
            out.append(f'{pre}-j LOG --log-prefix "{rendered.log_prefix}"')
        else:
            out.append(f"{pre}-j RETURN")
    return out
