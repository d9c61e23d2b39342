"""Render policy rules (datamodel JSON) to iptables-restore lines.

This is the last gate before the kernel: every value is re-validated here even
though libcalico.models already checked it, because a rule string reaches
`iptables-restore` verbatim.  Anything unexpected raises `RuleError`; the
caller then treats the whole profile as absent (dropping is safe, a partially
rendered rule list could be more permissive than the author meant).  The
bounds (ICMP type, list lengths, rendered lines) are libcalico.models' own, so
a value the model accepts is never dropped here for a bound of its own.

Port lists: multiport takes 15 ports per match, so a long list becomes groups
of at most 15 (a range counts 2).  Rendering stays linear in the input: a rule
whose ports fit one line is one line; any other rule is one jump (`-j`) into a
sub-chain of its own (`names.rule_chain`):

    -s <!src_net> -j RETURN                             a net and its negation (one -s per line)
    -m multiport --sports <not_src group> -j RETURN     each negated group: rule does not match
    -m multiport --dports <not_dst group> -j RETURN
    -m multiport --sports <src group> -g <part 2>        both lists > 1 group: OR of the src
    (part 2)  -m multiport --dports <dst group> <verdict> groups, then OR of the dst groups
    -m multiport --?ports <group> <verdict>              else: OR of the one long list's groups

so N source x M destination groups cost N + M lines, not N x M; and a
negated list of any length costs one line per group instead of one
over-long line (iptables-restore refuses more than ~250 arguments per line,
which would fail the whole table).  A verdict inside a sub-chain only marks
(allow: MARK_ACCEPT, next-tier: MARK_NEXT_TIER), drops, or logs once and
returns; the line after the jump in the rule's own chain turns the mark into
the RETURN the one-line form would have done.  `-g` to part 2 makes its
RETURN (or its end) go straight back to the rule's own chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from felix import names
from libcalico.models import (
    ICMP_CODE_MAX,
    ICMP_TYPE_MAX,
    MAX_PORT_ENTRIES,
    MAX_RENDERED_LINES,
    MAX_RULES,
)
from libcalico.validation import is_digits, validate_cidr, validate_log_prefix, validate_name

__all__ = ["MARK_ACCEPT", "MARK_SRC_OK", "MARK_NEXT_TIER", "MULTIPORT_MAX", "MAX_RULES",
           "MAX_PORT_ENTRIES", "MAX_RENDERED_LINES", "ICMP_TYPE_MAX", "ICMP_CODE_MAX", "RuleError",
           "RenderedRule", "rule_to_dict", "render_rule", "rule_applies", "rule_lines", "line_count", "render_chains"]

MARK_ACCEPT = "0x1000000"
MARK_SRC_OK = "0x2000000"
MARK_NEXT_TIER = "0x4000000"
MULTIPORT_MAX = 15
INLINE_PORT_MATCHES = 4     # multiport matches one line may carry (iptables-restore's argument limit)

_PROTO_NAMES = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp",
                "sctp": "sctp", "udplite": "udplite"}
_PORT_PROTOS = {"tcp", "udp", "sctp", "udplite", "6", "17", "132", "136"}
_ACTIONS = {"allow", "deny", "next-tier", "log", "pass"}
_MATCH_FIELDS = ("protocol", "src_net", "dst_net", "src_tag", "dst_tag", "src_selector",
                 "dst_selector", "src_ports", "dst_ports", "icmp_type", "icmp_code")
_NEGATED = {f: "!" + f for f in _MATCH_FIELDS}
_PORT_RANGE_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})\Z")


class RuleError(ValueError):
    """A rule that cannot be rendered safely."""


@dataclass(frozen=True)
class RenderedRule:
    """One validated rule for one IP family.

    `base` holds the non-port matches (None: the rule is not for this family);
    the port lists are multiport groups, already joined.
    """

    action: str
    base: str | None
    proto: str | None = None
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    not_src: tuple[str, ...] = ()
    not_dst: tuple[str, ...] = ()
    log_prefix: str | None = None
    not_nets: tuple[str, ...] = ()   # "-s CIDR"/"-d CIDR" that the rule must NOT match, where the
    #                                  rule also has the positive flag (iptables takes one -s per line)

    @property
    def inline(self) -> bool:
        """True when the whole rule is one line (no sub-chain)."""
        return (not self.not_nets and len(self.src) <= 1 and len(self.dst) <= 1
                and len(self.src) + len(self.dst) + len(self.not_src) + len(self.not_dst) <= INLINE_PORT_MATCHES)

    @property
    def matches(self) -> tuple[str, ...]:
        """The match of the rule's line in its own chain (for a sub-chain rule: of the jump);
        empty: not for this family."""
        if self.base is None:
            return ()
        if not self.inline:
            return (self.base,)
        parts = [self.base]
        parts += [f"-m multiport --sports {g}" for g in self.src]
        parts += [f"-m multiport --dports {g}" for g in self.dst]
        parts += [f"-m multiport ! --sports {g}" for g in self.not_src]
        parts += [f"-m multiport ! --dports {g}" for g in self.not_dst]
        return (" ".join(p for p in parts if p),)


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
    if isinstance(value, int) or (isinstance(value, str) and is_digits(value)):
        n = int(value)
        if not 1 <= n <= 255:
            raise RuleError(f"protocol number {value!r} out of range 1..255")
        return str(n)
    if isinstance(value, str) and value.lower() in _PROTO_NAMES:
        return value.lower()
    raise RuleError(f"protocol {value!r} is not one of {', '.join(_PROTO_NAMES)} or 1..255")


def _port_groups(value: object, what: str) -> tuple[str, ...]:
    """Multiport groups of `value`: a range weighs 2 in multiport's 15-slot budget."""
    if not isinstance(value, list) or not value:
        raise RuleError(f"{what} must be a non-empty list")
    if len(value) > MAX_PORT_ENTRIES:
        raise RuleError(f"{what}: {len(value)} entries exceed the limit of {MAX_PORT_ENTRIES}")
    groups: list[str] = []
    cur: list[str] = []
    used = 0
    for p in value:
        if type(p) is int and 0 <= p <= 65535:    # the common case, kept cheap: lists run to 10,000
            text, w = str(p), 1
        elif isinstance(p, bool):
            raise RuleError(f"{what}: {p!r} is not a port")
        elif isinstance(p, int) or (isinstance(p, str) and is_digits(p)):
            n = int(p)
            if not 0 <= n <= 65535:
                raise RuleError(f"{what}: port {p!r} out of range 0..65535")
            text, w = str(n), 1
        else:
            m = _PORT_RANGE_RE.match(p) if isinstance(p, str) else None
            if not m:
                raise RuleError(f"{what}: {p!r} is neither a port nor a 'lo:hi' range")
            lo, hi = int(m.group(1)), int(m.group(2))
            if not (0 <= lo <= hi <= 65535):
                raise RuleError(f"{what}: range {p!r} invalid (need 0 <= lo <= hi <= 65535)")
            text, w = f"{lo}:{hi}", 2
        if used + w > MULTIPORT_MAX:
            groups.append(",".join(cur))
            cur, used = [], 0
        cur.append(text)
        used += w
    groups.append(",".join(cur))
    return tuple(groups)


def _icmp(value: object, what: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not is_digits(str(value)):
        raise RuleError(f"{what} {value!r} is not an integer")
    n = int(value)
    if not 0 <= n <= hi:
        raise RuleError(f"{what} {value!r} out of range 0..{hi}")
    return n


def _matches(rule: Mapping, field: str) -> list[tuple[bool, object]]:
    """(negated, value) for `field` and its `!` form, positive first; [] when neither is set."""
    pos, neg = rule.get(field), rule.get(_NEGATED[field])
    if pos is None and neg is None:
        return []
    return [x for x in ((False, pos), (True, neg)) if x[1] is not None]


def _action(rule: Mapping) -> tuple[str, str | None]:
    """(action, log prefix for `log`, else None)."""
    action = rule.get("action", "allow")
    if not isinstance(action, str) or action not in _ACTIONS:
        raise RuleError(f"action {action!r} is not one of allow, deny, next-tier, log")
    if action != "log":
        return action, None
    try:
        return action, validate_log_prefix(rule.get("log_prefix", "calico-packet:"))
    except ValueError as e:
        raise RuleError(str(e)) from None


def _net_args(rule: Mapping) -> tuple[list[str], list[str]]:
    """(`-s`/`-d` matches, nets the rule must not match that need a line of their own)."""
    args: list[str] = []
    not_nets: list[str] = []
    for field, flag in (("src_net", "-s"), ("dst_net", "-d")):
        both = _matches(rule, field)
        for neg, v in both:
            try:
                cidr = validate_cidr(v)
            except ValueError as e:
                raise RuleError(f"{field}: {e}") from None
            if neg and len(both) > 1:   # `-s A ! -s B` is refused by iptables-restore (whole table)
                not_nets.append(f"{flag} {cidr}")
            else:
                args.append(f"{'! ' if neg else ''}{flag} {cidr}")
    return args, not_nets


def _proto_arg(rule: Mapping) -> tuple[str | None, str | None, str | None]:
    """(protocol for port/icmp checks, its iptables name, the `-p` match); a negated protocol
    allows no protocol-specific match, so it leaves the first two None."""
    protos = _matches(rule, "protocol")
    if len(protos) > 1:
        raise RuleError("protocol and !protocol together")
    if not protos:
        return None, None, None
    neg, v = protos[0]
    proto = _proto(v)
    name = _PROTO_NAMES.get(proto, proto)
    arg = f"{'! ' if neg else ''}-p {name}"
    return (None, None, arg) if neg else (proto, name, arg)


def _set_args(rule: Mapping, version: int, selector_ipset: Callable[[str, int], str] | None) -> list[str]:
    """`-m set` matches of the tags and selectors."""
    args = []
    for field, direction in (("src_tag", "src"), ("dst_tag", "dst")):
        for neg, v in _matches(rule, field):
            try:
                tag = validate_name(v, "tag")
            except ValueError as e:
                raise RuleError(f"{field}: {e}") from None
            args.append(f"-m set {'! ' if neg else ''}--match-set {names.tag_ipset(tag, version)} {direction}")
    for field, direction in (("src_selector", "src"), ("dst_selector", "dst")):
        for neg, v in _matches(rule, field):
            if selector_ipset is None:
                raise RuleError(f"{field} is only supported in tiered policies")
            if not isinstance(v, str):
                raise RuleError(f"{field} {v!r} is not a string")
            try:
                set_name = selector_ipset(v, version)
            except ValueError as e:
                raise RuleError(f"{field}: {e}") from None
            args.append(f"-m set {'! ' if neg else ''}--match-set {set_name} {direction}")
    return args


def _port_lists(rule: Mapping, proto: str | None) -> dict[str, tuple[str, ...]]:
    """Multiport groups by field (`src_ports`, `!dst_ports`, ...)."""
    ports: dict[str, tuple[str, ...]] = {}
    for field in ("src_ports", "dst_ports"):
        for neg, v in _matches(rule, field):
            if proto not in _PORT_PROTOS:
                raise RuleError(f"{field} needs protocol tcp, udp, sctp or udplite")
            ports[("!" if neg else "") + field] = _port_groups(v, ("!" if neg else "") + field)
    return ports


def _icmp_args(rule: Mapping, proto: str | None, version: int) -> list[str]:
    """The `-m icmp`/`-m icmp6` match of icmp_type (and icmp_code), if any."""
    itype = _matches(rule, "icmp_type")
    icode = _matches(rule, "icmp_code")
    if not (itype or icode):
        return []
    if proto not in ("icmp", "icmpv6", "1", "58"):
        raise RuleError("icmp_type/icmp_code need protocol icmp or icmpv6")
    if icode and not itype:
        raise RuleError("icmp_code needs icmp_type")
    if len(itype) > 1:
        raise RuleError("icmp_type and !icmp_type together")
    neg, t = itype[0]
    t = _icmp(t, "icmp_type", ICMP_TYPE_MAX)
    spec = str(t)
    if icode:
        cneg, c = icode[0]
        if cneg != neg or len(icode) > 1:
            raise RuleError("icmp_code must be negated together with icmp_type")
        spec = f"{t}/{_icmp(c, 'icmp_code', ICMP_CODE_MAX)}"
    if version == 4:
        return [f"-m icmp {'! ' if neg else ''}--icmp-type {spec}"]
    return [f"-m icmp6 {'! ' if neg else ''}--icmpv6-type {spec}"]


def render_rule(rule: Mapping, version: int,
                selector_ipset: Callable[[str, int], str] | None = None) -> RenderedRule:
    """Validate `rule` and render its matches for IP `version` (`base` None = not for this family).

    `selector_ipset(text, version)` names the ipset of a src/dst selector (tiered
    policy); without it a selector is an error.  Matches come in the order
    iptables-save prints them: -s / -d, protocol, then modules.
    """
    for k in rule:
        if not isinstance(k, str):
            raise RuleError(f"rule key {k!r} is not a string")
    action, log_prefix = _action(rule)
    ipv = rule.get("ip_version")
    if ipv is not None and (ipv not in (4, 6) or isinstance(ipv, bool)):
        raise RuleError(f"ip_version {ipv!r} is not 4 or 6")
    args, not_nets = _net_args(rule)
    proto, proto_name, proto_match = _proto_arg(rule)
    if proto_match:
        args.append(proto_match)
    args += _set_args(rule, version, selector_ipset)
    ports = _port_lists(rule, proto)
    args += _icmp_args(rule, proto, version)
    return RenderedRule(action, " ".join(args) if rule_applies(rule, version) else None, proto_name,
                        ports.get("src_ports", ()), ports.get("dst_ports", ()),
                        ports.get("!src_ports", ()), ports.get("!dst_ports", ()), log_prefix,
                        tuple(not_nets))


def rule_applies(rule: Mapping, version: int) -> bool:
    """Whether a rule that renders (see `render_rule`) has lines in IP `version`'s tables.

    The only family-dependent part of rendering: a rule that renders for one
    family renders for the other, so validation renders once and asks this.
    """
    ipv = rule.get("ip_version")
    if ipv is not None and ipv != version:
        return False
    for f in ("src_net", "dst_net", "!src_net", "!dst_net"):
        net = rule.get(f)
        if net is not None and (":" in net) != (version == 6):
            return False
    proto = rule.get("protocol")
    if proto is not None:
        proto = _proto(proto)
        if proto in ("icmp", "1") and version == 6 or proto in ("icmpv6", "58") and version == 4:
            return False
    return True


def rule_lines(rendered: RenderedRule, policy: bool = False) -> list[str]:
    """The chain lines of a one-line (`inline`) rule inside a profile/policy chain.

    allow: set the accept mark and return (the endpoint chain then returns too);
    deny: drop; log: LOG and continue; next-tier/pass: in a profile, return
    without the mark (this moves on to the endpoint's next profile); in a
    `policy` chain, set MARK_NEXT_TIER and return (the tier skips its other policies).
    """
    if not rendered.inline:
        raise RuleError("rule needs a sub-chain: render it with render_chains")
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
        elif policy:
            out.append(f"{pre}-j MARK --set-xmark {MARK_NEXT_TIER}/{MARK_NEXT_TIER}")
            out.append(f"-m mark --mark {MARK_NEXT_TIER}/{MARK_NEXT_TIER} -j RETURN")
        else:
            out.append(f"{pre}-j RETURN")
    return out


def _verdict(rr: RenderedRule, match: str) -> list[str]:
    """A verdict inside a rule's sub-chain: the caller's next line acts on the mark."""
    m = f"{match} " if match else ""
    if rr.action == "allow":
        return [f"{m}-j MARK --set-xmark {MARK_ACCEPT}/{MARK_ACCEPT}"]
    if rr.action == "deny":
        return [f"{m}-j DROP"]
    if rr.action == "log":    # log once, even when groups overlap
        return [f'{m}-j LOG --log-prefix "{rr.log_prefix}"', f"{m}-j RETURN"]
    return [f"{m}-j MARK --set-xmark {MARK_NEXT_TIER}/{MARK_NEXT_TIER}"]


def _chained(rr: RenderedRule, parent: str, index: int, out: dict[str, list[str]]) -> list[str]:
    """The parent's lines of a rule that needs a sub-chain; adds the sub-chain(s) to `out`."""
    sub = names.rule_chain(parent, index, 1)
    p = f"-p {rr.proto}" if rr.proto else ""     # always set when there are ports
    body = [f"{n} -j RETURN" for n in rr.not_nets]
    body += [f"{p} -m multiport --sports {g} -j RETURN" for g in rr.not_src]
    body += [f"{p} -m multiport --dports {g} -j RETURN" for g in rr.not_dst]
    src = [f"-m multiport --sports {g}" for g in rr.src]
    dst = [f"-m multiport --dports {g}" for g in rr.dst]
    if len(src) > 1 and len(dst) > 1:
        leaf = names.rule_chain(parent, index, 2)
        body += [f"{p} {s} -g {leaf}" for s in src]
        out[leaf] = [line for d in dst for line in _verdict(rr, f"{p} {d}")]
    else:
        fixed = [x[0] for x in (src, dst) if len(x) == 1]
        multi = src if len(src) > 1 else dst if len(dst) > 1 else [""]
        for g in multi:
            body += _verdict(rr, " ".join(x for x in (p, *fixed, g) if x))
    out[sub] = body
    jump = f"{rr.base} -j {sub}" if rr.base else f"-j {sub}"
    if rr.action == "allow":
        return [jump, f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN"]
    if rr.action in ("deny", "log"):
        return [jump]
    # next-tier/pass: in a profile chain the mark may still be set by the last tier
    return [f"-j MARK --set-xmark 0x0/{MARK_NEXT_TIER}", jump,
            f"-m mark --mark {MARK_NEXT_TIER}/{MARK_NEXT_TIER} -j RETURN"]


def line_count(rr: RenderedRule) -> int:
    """Lines `rr` renders to where it applies, sub-chains included (an upper bound over
    profile/policy chains)."""
    if rr.inline:
        return 1 if rr.action in ("deny", "log") else 2
    per = 2 if rr.action == "log" else 1
    negs = len(rr.not_src) + len(rr.not_dst) + len(rr.not_nets)
    if len(rr.src) > 1 and len(rr.dst) > 1:
        body = negs + len(rr.src) + per * len(rr.dst)
    else:
        body = negs + per * max(len(rr.src), len(rr.dst), 1)
    return body + {"allow": 2, "deny": 1, "log": 1}.get(rr.action, 3)


def render_chains(chain: str, rules: Sequence[Mapping], version: int, policy: bool = False,
                  selector_ipset: Callable[[str, int], str] | None = None) -> dict[str, list[str]]:
    """`chain` holding `rules` in order, plus the sub-chains its long-port-list rules need."""
    out: dict[str, list[str]] = {}
    lines: list[str] = []
    for i, r in enumerate(rules):
        rr = render_rule(r, version, selector_ipset=selector_ipset)
        if rr.base is None:
            continue
        if rr.inline:
            lines += rule_lines(rr, policy)
        else:
            lines += _chained(rr, chain, i, out)
    out[chain] = lines
    return out
