"""Felix's own frozen view of endpoints and profiles, built from libcalico models.

The calculator compares these by value to know what changed, so they are
immutable and hold only what Felix programs.  Conversion re-validates every
field that ends up in the kernel (interface names, nets, MACs, ids) and raises
ValueError naming the field; the caller logs it with the key.

The input is what the syncer hands over: the libcalico model of each value
(`libcalico.models.parse_key_value`), never raw JSON: how the JSON is spelled
(a legacy `profile_id`, a missing list) is the model's business alone.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from sys import intern

from pydantic import BaseModel

from felix.desired import Endpoint
from libcalico.models import validate_labels
from libcalico.selectors import SelectorError
from libcalico.validation import (
    V4_HOST_RE,
    validate_cidr,
    validate_ifname,
    validate_mac,
    validate_name,
)

from .rules import (
    MAX_RENDERED_LINES,
    MAX_RULES,
    RuleError,
    line_count,
    render_rule,
    rule_applies,
    rule_to_dict,
)


def model_field(model: object, name: str, default: object = None) -> object:
    """A field of a libcalico model; a JSON field the model does not declare is in `model_extra`."""
    if not isinstance(model, BaseModel):
        raise TypeError(f"expected a libcalico model, got {type(model).__name__}")
    v = getattr(model, name, default)
    if v is default and model.model_extra:
        v = model.model_extra.get(name, default)
    return v


def workload_net(text: str, version: int) -> str:
    """A CIDR a workload may own: Felix routes it to the workload's interface.

    Only single addresses (/32, /128, as upstream Calico requires): a wider
    prefix would pull traffic for other hosts or the internet onto one veth.
    Loopback, multicast, link-local (the gateway lives there) and unspecified
    addresses would hijack or break the host's own routing.  Whether the
    address belongs to a node is a cluster fact, checked by the caller with
    felix.calc.nodes.NodeAddresses.
    """
    cidr = validate_cidr(text, version)
    if version == 4 and V4_HOST_RE.match(cidr):   # the common case, without ipaddress objects
        a, b, _c, _d = (int(x) for x in cidr[:-3].split("."))
        if a == 127 or 224 <= a <= 239 or (a == 169 and b == 254) or cidr == "0.0.0.0/32":
            raise ValueError(f"ipv{version}_nets: {cidr} cannot belong to a workload")
        return cidr
    net = ipaddress.ip_network(cidr)
    if net.prefixlen != net.max_prefixlen:
        raise ValueError(f"ipv{version}_nets: {cidr} is not a single address (/{net.max_prefixlen})")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.network_address.is_unspecified:
        raise ValueError(f"ipv{version}_nets: {cidr} cannot belong to a workload")
    return cidr


def endpoint_from_value(key: object, value: object) -> Endpoint:
    """`key` is a parsed libcalico Key of kind workload_endpoint.

    A value the syncer's parser already turned into an Endpoint (`endpoint_from_json`)
    is taken as it is: checking it again cost a fifth of a 50,000-endpoint cold start."""
    if isinstance(value, Endpoint):
        return value
    state = model_field(value, "state", "active")
    state = getattr(state, "value", state)
    if state not in ("active", "inactive"):
        raise ValueError(f"state {state!r} is not active or inactive")
    iface = validate_ifname(model_field(value, "name"))
    mac = model_field(value, "mac")
    mac = validate_mac(str(mac)) if mac not in (None, "") else None
    pids = model_field(value, "profile_ids") or []     # the model reads a legacy `profile_id` into it
    if isinstance(pids, str) or not isinstance(pids, list | tuple):
        raise ValueError("profile_ids must be a list")
    profile_ids = tuple(dict.fromkeys(intern(validate_name(p, "profile id")) for p in pids))
    nets = {}
    for v in (4, 6):
        raw = model_field(value, f"ipv{v}_nets") or []
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise ValueError(f"ipv{v}_nets must be a list")
        nets[v] = tuple(dict.fromkeys(workload_net(str(n), v) for n in raw))
    labels = model_field(value, "labels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError("labels must be a mapping")
    # Strings that repeat across a cluster's endpoints (hosts, profiles, label keys and values)
    # are interned: one copy each instead of one per endpoint (tens of MB at 50,000 endpoints).
    return Endpoint(
        key=key.path, host=intern(key.host), orchestrator=intern(key.orchestrator), workload=key.workload,
        endpoint_id=intern(key.endpoint), active=state == "active", iface=iface, mac=mac,
        profile_ids=profile_ids, ipv4_nets=nets[4], ipv6_nets=nets[6],
        labels=tuple(sorted((intern(str(k)), intern(str(v))) for k, v in labels.items())))


# Model fields the direct path does not handle: a value carrying any of them (a NAT entry, a
# gateway, the legacy single profile id) or a MAC other than null takes the full model path.
_SLOW_FIELDS = frozenset({"ipv4_gateway", "ipv6_gateway", "ipv4_nat", "profile_id"})
_FAST_MAX_CHARS = 4096


def endpoint_from_json(key: object, raw: str) -> Endpoint | None:
    """The Endpoint of a plain workload endpoint value, straight from its JSON, or None.

    Why: a cluster's remote endpoints are tens of thousands of values of one plain shape,
    and building a pydantic model for each only to convert it again was most of a cold
    start.  Only a value this accepts is taken (with exactly the checks the model and
    `endpoint_from_value` make); anything else - malformed, oversized, unusual fields, any
    check failing - gives None, and the caller parses it the full way, so a bad value gets
    the very same error (naming its key) and hurts only itself.
    """
    if len(raw) > _FAST_MAX_CHARS:
        return None
    try:
        data = json.loads(raw)
        if type(data) is not dict or not _SLOW_FIELDS.isdisjoint(data) or data.get("mac") is not None:
            return None
        _checked_name(key.host, "hostname")     # few distinct hosts and orchestrators: remembered
        _checked_name(key.orchestrator, "orchestrator id")
        validate_name(key.workload, "workload id")
        validate_name(key.endpoint, "endpoint id")
        state = data["state"]
        if state not in ("active", "inactive") or type(state) is not str:
            return None
        iface = validate_ifname(data["name"])
        pids = data.get("profile_ids")
        if pids is None:
            profile_ids = ()
        elif type(pids) is not list:
            return None
        else:
            pkey = tuple(pids)
            profile_ids = _known_pids.get(pkey)
            if profile_ids is None:
                profile_ids = tuple(dict.fromkeys(intern(validate_name(p, "profile id")) for p in pids))
                _remember(_known_pids, pkey, profile_ids)
        nets = {}
        for v in (4, 6):
            raw_nets = data.get(f"ipv{v}_nets")
            if raw_nets is None:
                raw_nets = []
            elif type(raw_nets) is not list:
                return None
            nets[v] = tuple(dict.fromkeys(workload_net(validate_cidr(n, v), v) for n in raw_nets))
        labels = data.get("labels")
        if labels is None:
            label_items = ()
        elif type(labels) is not dict:
            return None
        else:
            lkey = tuple(labels.items())
            label_items = _known_labels.get(lkey)
            if label_items is None:
                if not all(type(a) is str and type(b) is str for a, b in lkey):
                    return None
                validate_labels(labels)
                label_items = tuple(sorted((intern(a), intern(b)) for a, b in lkey))
                _remember(_known_labels, lkey, label_items)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return Endpoint(
        key=key.path, host=intern(key.host), orchestrator=intern(key.orchestrator), workload=key.workload,
        endpoint_id=intern(key.endpoint), active=state == "active", iface=iface, mac=None,
        profile_ids=profile_ids, ipv4_nets=nets[4], ipv6_nets=nets[6], labels=label_items)


# What passed the checks before, by value: a cluster's endpoints repeat a few hosts, profile
# lists and label sets thousands of times.  Bounded: past the limit nothing more is kept.
_CACHE_LIMIT = 65536
_known_names: set[str] = set()
_known_pids: dict[tuple, tuple[str, ...]] = {}
_known_labels: dict[tuple, tuple[tuple[str, str], ...]] = {}


def _remember(cache: dict, k: tuple, v: tuple) -> None:
    if len(cache) < _CACHE_LIMIT:
        cache[k] = v


def _checked_name(value: object, what: str) -> None:
    """validate_name (the same check whatever `what` names), remembered for strings seen before."""
    if type(value) is str and value in _known_names:
        return
    validate_name(value, what)
    if len(_known_names) < _CACHE_LIMIT:
        _known_names.add(value)


@dataclass(frozen=True)
class ProfileRules:
    """A profile's rules as plain dicts (frozen by being tuples of sorted item tuples)."""

    inbound: tuple[dict, ...]
    outbound: tuple[dict, ...]


def checked_rules(value: object, selector_ipset=None) -> dict[str, tuple[dict, ...]]:
    """`{"inbound": rules, "outbound": rules}` from a profile or policy value, every rule converted
    and dry-run rendered for both families, so an invalid rule makes the whole value invalid up
    front (named by the caller's key), and so does a value whose chains would exceed
    MAX_RENDERED_LINES in either family.  `selector_ipset` is given for policies only: profiles
    may not use selectors."""
    out = {}
    for direction in ("inbound", "outbound"):
        raw = model_field(value, f"{direction}_rules") or []
        if not isinstance(raw, list | tuple):
            raise ValueError(f"{direction}_rules must be a list")
        if len(raw) > MAX_RULES:
            raise ValueError(f"{direction}_rules: {len(raw)} rules exceed the limit of {MAX_RULES}")
        rules = []
        for i, r in enumerate(raw):
            try:
                rules.append(rule_to_dict(r))
            except RuleError as e:
                raise ValueError(f"{direction}_rules[{i}]: {e}") from None
        out[direction] = tuple(rules)
    lines = {4: 0, 6: 0}
    for direction in ("inbound", "outbound"):
        for i, d in enumerate(out[direction]):
            try:
                n = line_count(render_rule(d, 4, selector_ipset=selector_ipset))
            except (RuleError, SelectorError) as e:
                raise ValueError(f"{direction}_rules[{i}]: {e}") from None
            for v in (4, 6):
                if rule_applies(d, v):
                    lines[v] += n
    for v, n in lines.items():
        if n > MAX_RENDERED_LINES:
            raise ValueError(f"inbound_rules+outbound_rules: {n} iptables lines (IPv{v}) exceed "
                             f"the limit of {MAX_RENDERED_LINES}")
    return out


def profile_rules_from_value(value: object) -> ProfileRules:
    out = checked_rules(value)
    return ProfileRules(out["inbound"], out["outbound"])


def tags_from_value(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError("tags must be a list of names")
    return tuple(dict.fromkeys(validate_name(t, "tag") for t in value))
