"""Tiered selector policy: which policies apply to an endpoint, in what order, as iptables chains.

The core calculator (calculator.py) owns endpoints and profiles; it hands
every endpoint and profile-label change to `PolicyCalculator`, which keeps the
cluster-wide `LabelIndex` (labels.py), the tiers and their policies, and the
host endpoints (hostendpoints.py).  It contributes three things to the
desired state: the policy lines of each endpoint chain, one chain per policy
and direction, and one ipset per rule selector (`src_selector`/`dst_selector`).

Chain layout (direction `i` = traffic to the endpoint, `o` = from it), inside
the endpoint chain, before the profile jumps:

    for each tier in order that has at least one policy matching the endpoint:
        -j MARK --set-xmark 0x0/NEXT                      clear next-tier
        -m mark --mark 0x0/NEXT -j felix-pi-<policy>      each matching policy, in order
        -m mark --mark ACCEPT/ACCEPT -j RETURN            allowed: done
        ...
        -m mark --mark 0x0/NEXT -j DROP                   tier matched, no verdict: deny
    (profiles, then DROP: the core calculator's lines)

A policy chain `felix-pi-<id>`/`felix-po-<id>` renders its rules in order:
allow = set ACCEPT and RETURN; deny = DROP; log = LOG and go on; next-tier =
set NEXT and RETURN.  Falling off its end returns with neither mark, so the
next matching policy of the same tier runs.

Mark invariants (bits of the packet mark; MARK_ACCEPT and MARK_SRC_OK are
the core's):
- MARK_ACCEPT (0x1000000) is clear on entry to every endpoint chain (the core
  clears it) and set only by an `allow` verdict; a chain that returns with it
  set has accepted the packet, and nothing after that jump looks further;
- MARK_NEXT_TIER (0x4000000) is cleared at the start of every tier and set
  only by a `next-tier` verdict; while it is set no further policy of that
  tier runs and the tier's closing DROP does not apply;
- no policy chain ever ACCEPTs, so the endpoint chain (and after it the core
  chains) stays in charge of the final verdict.

Tiers sort by `order` (a tier whose metadata says "default" goes after every
ordered tier), then by name; policies by `order` (none = last), then name.  A
tier without a metadata key is not in force: its policies are kept but match
nothing until the metadata appears (as Calico's v1 Felix did).

Invalid policies (bad selector, a rule that cannot be rendered) are reported
through the core calculator's error channel by key and treated as absent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from felix import names
from felix.desired import Endpoint, FamilyState
from libcalico.selectors import SelectorError, parse_selector

from .labels import IndexedEndpoint, LabelIndex
from .model import checked_rules, model_field
from .rules import MARK_ACCEPT, MARK_NEXT_TIER, render_chains

log = logging.getLogger(__name__)

KINDS = frozenset({"tier_metadata", "tier_policy", "host_endpoint"})
_SELECTOR_FIELDS = ("src_selector", "dst_selector", "!src_selector", "!dst_selector")
_INF = float("inf")


@lru_cache(maxsize=65536)
def policy_chain(tier: str, policy: str, direction: str) -> str:
    """`felix-pi-<hash>` (inbound) / `felix-po-<hash>` (outbound); the `/` makes the id always hashed."""
    assert direction in ("i", "o")
    return names.policy_chain(tier, policy, direction)


@lru_cache(maxsize=65536)
def selector_ipset_for(text: str, version: int) -> str:
    """The ipset of a rule selector: named by the canonical selector's unique id."""
    return names.selector_ipset(parse_selector(text).unique_id, version)


def _selector_ipset(text: str, version: int) -> str:
    try:
        return selector_ipset_for(text, version)
    except SelectorError as e:
        raise ValueError(str(e)) from None


@dataclass(frozen=True, eq=False)
class PolicyEntry:
    tier: str
    name: str
    order: float
    selector_uid: str
    inbound: tuple[dict, ...]
    outbound: tuple[dict, ...]
    rule_selector_uids: tuple[str, ...]


def policy_from_value(tier: str, name: str, value: object) -> tuple[PolicyEntry, object, list]:
    """Validate a policy value: (entry, parsed selector, rule selectors); ValueError names the field.

    Every rule is dry-run rendered for both families so a policy is whole or absent.
    """
    text = model_field(value, "selector")
    if not isinstance(text, str):
        raise ValueError("selector is required")
    try:
        sel = parse_selector(text)
    except SelectorError as e:
        raise ValueError(f"selector: {e}") from None
    order = model_field(value, "order")
    if order is None:
        order_f = _INF
    elif isinstance(order, bool) or not isinstance(order, int | float):
        raise ValueError(f"order {order!r} is not a number")
    else:
        order_f = float(order)
    out = checked_rules(value, selector_ipset=_selector_ipset)
    rule_sels = {}
    for direction in ("inbound", "outbound"):
        for i, d in enumerate(out[direction]):
            for f in _SELECTOR_FIELDS:
                if d.get(f) is not None:
                    try:
                        s = parse_selector(d[f])
                    except SelectorError as e:
                        raise ValueError(f"{direction}_rules[{i}]: {e}") from None
                    rule_sels[s.unique_id] = s
    entry = PolicyEntry(tier, name, order_f, sel.unique_id, out["inbound"], out["outbound"],
                        tuple(sorted(rule_sels)))
    return entry, sel, list(rule_sels.values())


def tier_order_from_value(value: object) -> float:
    order = model_field(value, "order")
    if order is None or order == "default":
        return _INF
    if isinstance(order, bool) or not isinstance(order, int | float):
        raise ValueError(f"order {order!r} is not a number or 'default'")
    return float(order)


class PolicyCalculator:
    """Tiers, policies and the label index; see the module docstring for the chain layout."""

    def __init__(self, hostname: str):
        from .hostendpoints import HostEndpoints

        self.hostname = hostname
        self.index = LabelIndex()
        self.tiers: dict[str, float] = {}
        self.policies: dict[tuple[str, str], PolicyEntry] = {}
        self._sel_policies: dict[str, set[tuple[str, str]]] = {}   # policy selector uid -> policies
        self._rank: dict[tuple[str, str], tuple] | None = {}   # None: rebuilt when next read
        self._chain_cache: dict[tuple[str, str, int], tuple[PolicyEntry, dict[str, list[str]]]] = {}
        self._layout_cache: dict[tuple[str, int], tuple[tuple, tuple[list[str], list[str]]]] = {}
        # per endpoint key: its policies in order, valid while neither its selector matches
        # (LabelIndex.take_changed_endpoints) nor any policy or tier changed
        self._match_cache: dict[str, tuple[tuple[str, str], ...]] = {}
        # per version: (policies in use, chains, rule selector uids, tags) of the last contribute()
        self._contrib_cache: dict[int, tuple] = {}
        self.hosts = HostEndpoints(self)

    # ---- input ----------------------------------------------------------------------

    def put(self, kind: str, key: object, value: object) -> None:
        """A tier, policy or host endpoint value; raises ValueError (the caller reports the key)."""
        if kind == "tier_metadata":
            self.tiers[key.tier] = tier_order_from_value(value)
            self._policies_changed()
        elif kind == "tier_policy":
            entry, sel, rule_sels = policy_from_value(key.tier, key.policy, value)
            # new selectors first: one the old version shared keeps its match set (no rescan)
            self.index.add_selector(sel)
            for s in rule_sels:
                self.index.add_selector(s)
            self.remove(kind, key)
            self.policies[(key.tier, key.policy)] = entry
            self._sel_policies.setdefault(entry.selector_uid, set()).add((key.tier, key.policy))
            self._policies_changed()
        elif kind == "host_endpoint":
            self.hosts.put(key, value)

    def remove(self, kind: str, key: object) -> None:
        if kind == "tier_metadata":
            if self.tiers.pop(key.tier, None) is not None:
                self._policies_changed()
        elif kind == "tier_policy":
            pk = (key.tier, key.policy)
            old = self.policies.pop(pk, None)
            if old is None:
                return
            s = self._sel_policies.get(old.selector_uid)
            if s is not None:
                s.discard(pk)
                if not s:
                    del self._sel_policies[old.selector_uid]
            self.index.remove_selector(old.selector_uid)
            for uid in old.rule_selector_uids:
                self.index.remove_selector(uid)
            for v in (4, 6):
                self._chain_cache.pop((key.tier, key.policy, v), None)
            self._policies_changed()
        elif kind == "host_endpoint":
            self.hosts.remove(key)

    def set_endpoint(self, ep: Endpoint) -> None:
        self.index.set_endpoint(ep.key, IndexedEndpoint(ep.labels, ep.profile_ids, ep.ipv4_nets, ep.ipv6_nets))

    def remove_endpoint(self, key: str) -> None:
        self.index.remove_endpoint(key)
        self.forget_endpoint_layout(key)

    def set_profile_labels(self, profile: str, labels: Mapping[str, str] | None) -> None:
        self.index.set_profile_labels(profile, labels)

    def _policies_changed(self) -> None:
        self._rank = None
        self._match_cache = {}
        self._contrib_cache = {}

    def _ranking(self) -> dict[tuple[str, str], tuple]:
        """Every policy in force with its sort key; rebuilt once after a batch of policy or tier
        changes (a snapshot of 1,000 policies would otherwise rank them 1,000 times)."""
        if self._rank is None:
            self._rerank()
        return self._rank

    def _rerank(self) -> None:
        rank = {}
        for pk, e in self.policies.items():
            t = self.tiers.get(pk[0])
            if t is None:
                continue  # tier without metadata: not in force
            rank[pk] = (t, pk[0], e.order, pk[1])
        self._rank = rank

    # ---- output ---------------------------------------------------------------------

    def matching_policies(self, key: str) -> tuple[tuple[str, str], ...]:
        """The policies in force for endpoint `key`, in evaluation order."""
        cache = self._match_cache
        changed = self.index.take_changed_endpoints()
        if changed:
            if len(changed) > len(cache):
                cache = self._match_cache = {k: v for k, v in cache.items() if k not in changed}
            else:
                for k in changed:
                    cache.pop(k, None)
        hit = cache.get(key)
        if hit is not None:
            return hit
        pks = []
        rank = self._ranking()
        for uid in self.index.endpoint_matches(key):
            for pk in self._sel_policies.get(uid, ()):
                if pk in rank:
                    pks.append(pk)
        if len(pks) > 1:
            pks.sort(key=rank.__getitem__)
        out = cache[key] = tuple(pks)
        return out

    def endpoint_lines(self, key: str, version: int) -> tuple[list[str], list[str]]:
        """(inbound lines, outbound lines) to put before the profile jumps of endpoint `key`.

        The same list objects come back while the matching policies are unchanged,
        so the core calculator's per-endpoint memo stays valid.
        """
        sig = self.matching_policies(key)
        hit = self._layout_cache.get((key, version))
        if hit is not None and hit[0] == sig:
            return hit[1]
        out = (tier_layout(sig, "i"), tier_layout(sig, "o"))
        self._layout_cache[(key, version)] = (sig, out)
        return out

    def forget_endpoint_layout(self, key: str) -> None:
        for v in (4, 6):
            self._layout_cache.pop((key, v), None)

    def policy_chains(self, pk: tuple[str, str], version: int) -> dict[str, list[str]]:
        entry = self.policies[pk]
        hit = self._chain_cache.get((pk[0], pk[1], version))
        if hit is not None and hit[0] is entry:
            return hit[1]
        out = {}
        for direction, rules in (("i", entry.inbound), ("o", entry.outbound)):
            out.update(render_chains(policy_chain(pk[0], pk[1], direction), rules, version,
                                     policy=True, selector_ipset=_selector_ipset))
        self._chain_cache[(pk[0], pk[1], version)] = (entry, out)
        return out

    def contribute(self, fs: FamilyState, version: int, local_keys: Iterable[str], iface_prefix: str) -> set[str]:
        """Add to the family state `fs` the chains of every policy in force for the local
        endpoints `local_keys` and this host's host endpoints, and their selector ipsets.

        Returns the tags those policies' rules name: their ipsets are the core
        calculator's to fill (it knows which endpoints carry a tag), and they must
        exist, since a rule naming a missing set fails the whole table's restore.
        """
        used: set[tuple[str, str]] = set()
        for key in local_keys:
            used.update(self.matching_policies(key))
        used.update(self.hosts.used_policies(iface_prefix))
        hit = self._contrib_cache.get(version)
        if hit is not None and hit[0] == used:
            _, chains, uids, tags = hit
        else:
            chains, sel_uids, tags = {}, set(), set()
            for pk in sorted(used):
                chains.update(self.policy_chains(pk, version))
                entry = self.policies[pk]
                sel_uids.update(entry.rule_selector_uids)
                tags |= _entry_tags(entry)
            uids = sorted(sel_uids)
            self._contrib_cache[version] = (used, chains, uids, frozenset(tags))
        fs.chains.update(chains)
        for uid in uids:
            fs.ipsets[names.selector_ipset(uid, version)] = self.index.members(uid, version)
        return set(tags)


def _entry_tags(entry: PolicyEntry) -> set[str]:
    return {r[f] for r in entry.inbound + entry.outbound
            for f in ("src_tag", "dst_tag", "!src_tag", "!dst_tag") if r.get(f)}


def tier_layout(policies: tuple[tuple[str, str], ...], direction: str) -> list[str]:
    """The tier lines for an endpoint whose matching policies are `policies` (in order)."""
    lines: list[str] = []
    tier = None
    for t, p in policies:
        if t != tier:
            if tier is not None:
                lines.append(f"-m mark --mark 0x0/{MARK_NEXT_TIER} -j DROP")
            tier = t
            lines.append(f"-j MARK --set-xmark 0x0/{MARK_NEXT_TIER}")
        lines.append(f"-m mark --mark 0x0/{MARK_NEXT_TIER} -j {policy_chain(t, p, direction)}")
        lines.append(f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN")
    if tier is not None:
        lines.append(f"-m mark --mark 0x0/{MARK_NEXT_TIER} -j DROP")
    return lines
