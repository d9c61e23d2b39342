"""The pure calculation: datastore model in, desired dataplane state out.

No I/O: the daemon feeds it syncer updates and hands `desired()` to the
writers.  It keeps every endpoint of the cluster (tags make remote endpoints'
IPs part of local ipsets) but renders chains, routes and neighbours only for
endpoints of its own host.  Rendering is memoised per endpoint and per profile
so one changed endpoint costs one endpoint's chains, and unchanged chains come
back as the very same list objects (writers can skip them by identity).

Invalid data for one key is reported once through `errors` (key -> reason)
and that key is treated as absent; everything else proceeds.

Ownership: an IP (exact CIDR) or an interface name belongs to one endpoint per
host.  Conflicts are settled here, from the data alone, so every arrival
order and every restart gives the same answer: candidates are ranked by their
key's etcd create revision (the first to claim keeps it; an established
workload is never displaced by a newcomer, and a delete + re-create is a
newcomer), then by key for equal or unknown (0) revisions, unknown ranking
after every known one.  In rank order an endpoint takes its interface if no
earlier endpoint holds it, else it is in error and programs nothing at all
(the holder's chains stay); holding its interface it takes its IPs if no
earlier endpoint holds any of them, else it is in error with its chains
dropping everything and no route or neighbour.  Endpoints in error hold no
IPs, are in no tag or selector ipset, and their reason names the winner.
Only endpoints sharing a claim are re-ranked when one changes.  An endpoint
with a node's own address (`nodes`) is refused outright and holds nothing:
routing it to a veth would capture that node's traffic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Set
from dataclasses import dataclass

from felix import names
from felix.desired import DesiredState, Endpoint, FamilyState

from .hostendpoints import DEFAULT_FAILSAFE_IN, DEFAULT_FAILSAFE_OUT
from .labels import CountedMembers, count_members
from .model import (
    ProfileRules,
    endpoint_from_value,
    profile_rules_from_value,
    tags_from_value,
)
from .nodes import NodeAddresses
from .policy import KINDS as POLICY_KINDS
from .policy import PolicyCalculator
from .rules import MARK_ACCEPT, MARK_SRC_OK, RuleError, render_chains

log = logging.getLogger(__name__)

_ICMPV6_HOST_TYPES = (130, 131, 132, 133, 135, 136)  # MLD, router/neighbour solicitation/advert


@dataclass(frozen=True)
class CalcConfig:
    hostname: str
    iface_prefix: str = "cali"
    endpoint_to_host_action: str = "DROP"     # DROP | RETURN | ACCEPT
    ipv6: bool = True
    failsafe_inbound: tuple = DEFAULT_FAILSAFE_IN     # ((proto, port), ...): host endpoints
    failsafe_outbound: tuple = DEFAULT_FAILSAFE_OUT


class Calculator:
    def __init__(self, cfg: CalcConfig):
        self.cfg = cfg
        self.endpoints: dict[str, Endpoint] = {}       # every endpoint in the cluster
        self.local: dict[str, Endpoint] = {}            # ours, by key
        self.rules: dict[str, ProfileRules] = {}
        self.tags: dict[str, tuple[str, ...]] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.errors: dict[str, str] = {}                # key -> reason, while invalid
        self._new_errors: list[tuple[str, str]] = []
        self._prof_eps: dict[str, set[str]] = {}        # profile -> endpoint keys (cluster)
        self._ep_cache: dict[tuple[str, int], tuple[tuple, dict[str, list[str]]]] = {}
        self._prof_cache: dict[tuple[str, int], tuple[ProfileRules, dict[str, list[str]]]] = {}
        self._dispatch_cache: dict[tuple, list[str]] = {}
        self._created: dict[str, int] = {}              # endpoint key -> etcd create revision (0 unknown)
        # (host, iface or net) -> endpoint keys; one key alone is kept as the str (a set per claim
        # was ~250 bytes per address at 50,000 endpoints, almost all claimed once)
        self._claimants: dict[tuple[str, str], str | set[str]] = {}
        self._unresolved: set[str] = set()              # endpoint keys whose claims must be re-ranked
        self._state: dict[str, tuple[str, Endpoint, str]] = {}  # key -> ("ok"|"drop"|"none", ep, reason)
        self.conflicts: dict[str, str] = {}             # endpoint key -> reason, while it loses a claim
        self.nodes = NodeAddresses()                    # every node's own addresses
        self._ip_eps: dict[str, str | set[str]] = {}    # address -> endpoint keys (any host), likewise
        self.dropped: dict[str, Endpoint] = {}          # local losers holding their own interface
        self.policy = PolicyCalculator(cfg.hostname)    # tiers, label index, host endpoints
        # tag ipset members, kept up to date by count (an address of two tagged endpoints stays
        # until both go) for the tags desired() asked for: a remote endpoint coming or going
        # costs its own addresses, not a rescan of the tens of thousands carrying the tag
        self._tag_ips: dict[tuple[str, int], CountedMembers] = {}
        self._tags_asked: set[tuple[str, int]] = set()
        self._host_eps: dict[str, int] = {}             # host -> how many endpoints it has (any state)

    def set_config(self, cfg: CalcConfig) -> bool:
        """A live config change; True when the desired state may differ.

        Only the rendering of the base and dispatch chains is cached with
        config in it, so that cache goes.  Endpoints are not re-checked: the
        hostname, interface prefix and IPv6 support are not live (a change
        restarts Felix), so what they decided at each put still holds.
        """
        if cfg == self.cfg:
            return False
        self.cfg = cfg
        self._dispatch_cache = {}
        return True

    # ---- input ----------------------------------------------------------------------

    def take_errors(self) -> list[tuple[str, str]]:
        """(key, reason) pairs that became invalid since the last call: log each once."""
        self._settle()
        out, self._new_errors = self._new_errors, []
        return out

    def _settle(self) -> None:
        """Rank what changed since the last call.  Deferred to the readers (take_errors,
        desired) so a batch of claimants of one address is ranked once, not once per update."""
        if self._unresolved:
            self._resolve()

    def _error(self, key: str, reason: str) -> None:
        if self.errors.get(key) != reason:
            self.errors[key] = reason
            self._new_errors.append((key, reason))

    def on_update(self, kind: str, key: object, value: object = None, create_revision: int = 0) -> None:
        """One syncer update: kind 'put' (value = parsed model), 'delete' or 'invalid'.

        `key` is a libcalico.keys.Key; keys of kinds Felix core does not use are ignored.
        `create_revision` is the key's etcd create revision (Update.create_revision): it ranks
        endpoints claiming the same IP or interface (0 = unknown, see the module docstring).
        """
        k = getattr(key, "kind", None)
        path = getattr(key, "path", "")
        if k in NodeAddresses.KINDS:
            self._node_address_update(kind, key, value)
            return
        if k not in ("workload_endpoint", "profile_rules", "profile_tags", "profile_labels") \
                and k not in POLICY_KINDS:
            return
        if kind == "put":
            try:
                if k == "workload_endpoint":
                    ok = isinstance(create_revision, int) and create_revision > 0
                    self._created[path] = create_revision if ok else 0
                self._put(k, key, value)
                if path not in self.conflicts:
                    self.errors.pop(path, None)
                return
            except (ValueError, TypeError, RuleError) as e:
                self._error(path, str(e))
        elif kind == "invalid":
            self.errors[path] = str(value) if value else "invalid"
        else:
            self.errors.pop(path, None)
        self._remove(k, key)

    def _put(self, k: str, key: object, value: object) -> None:
        if k == "workload_endpoint":
            ep = endpoint_from_value(key, value)
            if ep.host == self.cfg.hostname and not ep.iface.startswith(self.cfg.iface_prefix):
                raise ValueError(f"interface {ep.iface!r} does not start with InterfacePrefix "
                                 f"{self.cfg.iface_prefix!r}")
            self._set_endpoint(ep)
        elif k in POLICY_KINDS:
            self.policy.put(k, key, value)
        elif k == "profile_rules":
            self.rules[key.profile] = profile_rules_from_value(value)
        elif k == "profile_tags":
            tags = tags_from_value(value)
            self._forget_tags(set(self.tags.get(key.profile, ())) ^ set(tags))
            self.tags[key.profile] = tags
        elif k == "profile_labels":
            if not isinstance(value, dict):
                raise ValueError("labels must be a mapping")
            self.labels[key.profile] = {str(a): str(b) for a, b in value.items()}
            self.policy.set_profile_labels(key.profile, self.labels[key.profile])

    def _remove(self, k: str, key: object) -> None:
        if k == "workload_endpoint":
            self._del_endpoint(key.path)
        elif k in POLICY_KINDS:
            self.policy.remove(k, key)
        elif k == "profile_rules":
            self.rules.pop(key.profile, None)
        elif k == "profile_tags":
            self._forget_tags(self.tags.pop(key.profile, ()))
        elif k == "profile_labels":
            self.labels.pop(key.profile, None)
            self.policy.set_profile_labels(key.profile, None)

    def _node_address_update(self, kind: str, key: object, value: object) -> None:
        before = self.nodes.addresses()
        if self.nodes.on_update(kind, key, value):
            for ip in before ^ self.nodes.addresses():
                self._unresolved.update(_keys(self._ip_eps.get(ip)))
        self.nodes.take_errors()    # a bad address is reported by the overlay and NAT calculators

    def _claims(self, ep: Endpoint) -> tuple[tuple[str, str], ...]:
        # an interface name never holds a "/" (IFNAME_RE) and a net always does: (host, iface)
        # and (host, net) cannot collide, and no string is built per claim
        h = ep.host
        if not ep.ipv6_nets and len(ep.ipv4_nets) == 1:
            return ((h, ep.iface), (h, ep.ipv4_nets[0]))
        return ((h, ep.iface),) + tuple((h, n) for n in ep.ipv4_nets + ep.ipv6_nets)

    def _set_endpoint(self, ep: Endpoint) -> None:
        old = self.endpoints.get(ep.key)
        if old is not None:
            self._drop_claims(old)
        else:
            self._host_eps[ep.host] = self._host_eps.get(ep.host, 0) + 1
        self.endpoints[ep.key] = ep
        for c in self._claims(ep):
            _add_key(self._claimants, c, ep.key)
        for n in ep.ipv4_nets + ep.ipv6_nets:
            _add_key(self._ip_eps, n.split("/")[0], ep.key)
        self._unresolved.add(ep.key)

    def _drop_claims(self, ep: Endpoint) -> None:
        """Forget `ep`'s claims; whoever shared one must be re-ranked without it."""
        for c in self._claims(ep):
            self._unresolved.update(_drop_key(self._claimants, c, ep.key))
        for n in ep.ipv4_nets + ep.ipv6_nets:
            _drop_key(self._ip_eps, n.split("/")[0], ep.key)

    def _del_endpoint(self, key: str) -> None:
        old = self.endpoints.pop(key, None)
        self._created.pop(key, None)
        if old is None:
            return
        count_members(self._host_eps, (old.host,), -1)
        self._drop_claims(old)
        self._unresolved.discard(key)
        self._apply_state(key, None, None, "")

    def _resolve(self) -> None:
        """Re-rank every endpoint that shares a claim with one that changed (see module docstring)."""
        todo, self._unresolved = self._unresolved, set()
        comp: set[str] = set()
        seen: set[tuple[str, str]] = set()
        stack = [k for k in todo if k in self.endpoints]
        while stack:
            key = stack.pop()
            if key in comp:
                continue
            comp.add(key)
            for c in self._claims(self.endpoints[key]):
                if c not in seen:
                    seen.add(c)
                    stack.extend(_keys(self._claimants.get(c)))
        held: dict[tuple[str, str], str] = {}
        created = self._created
        # by create revision, then key; unknown (0) revisions after every known one
        ranked = sorted(comp, key=lambda k: (0, c, k) if (c := created.get(k, 0)) else (1, 0, k))
        endpoints, node_owner = self.endpoints, self.nodes.owner
        any_nodes = bool(self.nodes.addresses())
        for key in ranked:
            ep = endpoints[key]
            nets = ep.ipv4_nets + ep.ipv6_nets if ep.ipv6_nets else ep.ipv4_nets
            node = next(((n, h) for n in nets if (h := node_owner(n.split("/")[0]))), None) if any_nodes else None
            if node is not None:
                self._apply_state(key, ep, "none", f"address {node[0]} is node {node[1]}'s own address; "
                                                   "this endpoint is not programmed")
                continue
            ic = (ep.host, ep.iface)
            if ic in held:
                self._apply_state(key, ep, "none", f"interface {ep.iface} belongs to endpoint {held[ic]}; "
                                                   "this endpoint is not programmed")
                continue
            held[ic] = key
            taken = [(n, held[(ep.host, n)]) for n in nets if (ep.host, n) in held]
            if taken:
                n, holder = taken[0]
                self._apply_state(key, ep, "drop", f"address {n} belongs to endpoint {holder}; "
                                                   "this endpoint's traffic is dropped")
                continue
            for n in nets:
                held[(ep.host, n)] = key
            self._apply_state(key, ep, "ok", "")

    def _apply_state(self, key: str, ep: Endpoint | None, state: str | None, reason: str) -> None:
        """Make the endpoint's presence in the local set, the tag index and the policy index
        match its ranking: only winners ("ok") are in any of them."""
        prev = self._state.get(key)
        if prev is not None and prev[1] is ep and prev[0] == state and prev[2] == reason:
            return
        was_ok = prev is not None and prev[0] == "ok"
        if was_ok:
            for p in prev[1].profile_ids:
                s = self._prof_eps.get(p)
                if s and key in s:
                    s.discard(key)
                    self._count_tags(p, prev[1], -1)
                    if not s:
                        del self._prof_eps[p]
        self.local.pop(key, None)
        self.dropped.pop(key, None)
        for v in (4, 6):
            self._ep_cache.pop((key, v), None)
        if state == "ok":
            for p in ep.profile_ids:
                s = self._prof_eps.setdefault(p, set())
                if key not in s:
                    s.add(key)
                    self._count_tags(p, ep, 1)
            self.policy.set_endpoint(ep)
            if ep.host == self.cfg.hostname:
                self.local[key] = ep
        elif was_ok:
            self.policy.remove_endpoint(key)
        if state == "drop" and ep.host == self.cfg.hostname:
            self.dropped[key] = ep
        if state is None:
            self._state.pop(key, None)
        else:
            self._state[key] = (state, ep, reason)
        if reason:
            self.conflicts[key] = reason
            if ep.host == self.cfg.hostname:
                self._error(key, reason)
        elif self.conflicts.pop(key, None) is not None:
            self.errors.pop(key, None)

    # ---- output ---------------------------------------------------------------------

    def endpoint_hosts(self) -> Set[str]:
        """Hosts with at least one workload endpoint (a live view, kept as endpoints come and go)."""
        return self._host_eps.keys()

    def desired(self) -> DesiredState:
        self._settle()
        self._tags_asked = set()
        fams = {v: FamilyState() for v in (4, 6)}
        versions = (4, 6) if self.cfg.ipv6 else (4,)
        used_profiles = {p for ep in self.local.values() for p in ep.profile_ids}
        for v in versions:
            fs = fams[v]
            used_tags: set[str] = set()
            for p in sorted(used_profiles):
                if p in self.rules:
                    fs.chains.update(self._profile_chains(p, v))
                    used_tags |= _rule_tags(self.rules[p])
            valid_profiles = frozenset(p for p in used_profiles if p in self.rules)
            ifaces = []
            for key in sorted(self.local):
                ep = self.local[key]
                fs.chains.update(self._endpoint_chains(ep, v, valid_profiles))
                ifaces.append(ep.iface)
            for key in sorted(self.dropped):
                # lost an address to an earlier endpoint: its interface is its own, so it is
                # dispatched, but to chains that drop everything (no source check to fool)
                iface = self.dropped[key].iface
                fs.chains.update({names.endpoint_chain("to", iface): ["-j DROP"],
                                  names.endpoint_chain("from", iface): ["-j DROP"]})
                ifaces.append(iface)
            ifaces.sort()
            fs.chains.update(self._base_chains(v, tuple(ifaces)))
            fs.hooks = {"INPUT": [f"-j {names.INPUT}"], "FORWARD": [f"-j {names.FORWARD}"],
                        "OUTPUT": [f"-j {names.OUTPUT}"]}
            for tag in sorted(used_tags):
                fs.ipsets[names.tag_ipset(tag, v)] = self._tag_members(tag, v)
            # policy chains and selector ipsets; the tags policy rules name need their ipsets too
            for tag in sorted(self.policy.contribute(fs, v, self.local, self.cfg.iface_prefix)):
                fs.ipsets.setdefault(names.tag_ipset(tag, v), self._tag_members(tag, v))
            self._host_endpoints(fs, v)
        routes: dict[str, frozenset[str]] = {}
        neigh: dict[str, dict[str, str]] = {}
        for ep in self.local.values():
            nets = ep.ipv4_nets + (ep.ipv6_nets if self.cfg.ipv6 else ())
            routes[ep.iface] = frozenset(nets)
            if ep.mac:
                hosts = {n.split("/")[0]: ep.mac for n in nets
                         if n.endswith("/32") or n.endswith("/128")}
                if hosts:
                    neigh[ep.iface] = hosts
        conflicts = {k: (self.dropped.get(k) or self.endpoints[k], r) for k, r in self.conflicts.items()
                     if self.endpoints.get(k) is not None and self.endpoints[k].host == self.cfg.hostname}
        for tk in self._tag_ips.keys() - self._tags_asked:   # no longer used: stop counting
            del self._tag_ips[tk]
        return DesiredState(fams[4], fams[6], routes, neigh, dict(self.local), conflicts)

    def _tag_members(self, tag: str, v: int) -> frozenset[str]:
        """The addresses of every winning endpoint with a profile carrying `tag`.

        The same frozenset comes back until one of them changes (the writers skip it by identity).
        """
        self._settle()
        tk = (tag, v)
        self._tags_asked.add(tk)
        cm = self._tag_ips.get(tk)
        if cm is None:
            cm = self._tag_ips[tk] = CountedMembers()
            for p, tags in self.tags.items():
                if tag in tags:
                    for key in self._prof_eps.get(p, ()):
                        cm.change(self.endpoints[key].nets(v), 1)
        return cm.current()

    def _count_tags(self, profile: str, ep: Endpoint, delta: int) -> None:
        """`ep` joined (+1) or left (-1) `profile`'s endpoints: adjust the counted tag members."""
        if not self._tag_ips:
            return
        for t in self.tags.get(profile, ()):
            for v in (4, 6):
                cm = self._tag_ips.get((t, v))
                if cm is not None:
                    cm.change(ep.nets(v), delta)

    def _forget_tags(self, tags) -> None:
        """A profile's tags changed: the counts of those tags are rebuilt when next asked for."""
        for t in tags:
            for v in (4, 6):
                self._tag_ips.pop((t, v), None)

    def _profile_chains(self, pid: str, v: int) -> dict[str, list[str]]:
        rules = self.rules[pid]
        hit = self._prof_cache.get((pid, v))
        if hit is not None and hit[0] is rules:
            return hit[1]
        out = {}
        for direction, rlist in (("i", rules.inbound), ("o", rules.outbound)):
            out.update(render_chains(names.profile_chain(pid, direction), rlist, v))
        self._prof_cache[(pid, v)] = (rules, out)
        return out

    def _host_endpoints(self, fs: FamilyState, v: int) -> None:
        """This host's host endpoints: each interface's chains after the profiles they jump to
        (a host endpoint's profile may be used by no workload), and their lines after the
        core's own in felix-INPUT/OUTPUT/FORWARD."""
        out = self.policy.hosts.render(v, self.cfg.iface_prefix, self.cfg.failsafe_inbound,
                                       self.cfg.failsafe_outbound, self.rules)
        if out is None:
            return
        for profiles, chains in out.interfaces:
            for p in profiles:
                self._add_profile(fs, p, v)
            fs.chains.update(chains)
        for chain, extra in out.lines.items():
            fs.chains[chain] = list(fs.chains.get(chain, [])) + extra

    def _add_profile(self, fs: FamilyState, pid: str, v: int) -> None:
        """A profile's chains and the ipsets of the tags its rules name, where still missing."""
        fs.chains.update(self._profile_chains(pid, v))
        rules = self.rules[pid]
        for r in rules.inbound + rules.outbound:
            for f in ("src_tag", "dst_tag", "!src_tag", "!dst_tag"):
                tag = r.get(f)
                if tag:
                    name = names.tag_ipset(tag, v)
                    if name not in fs.ipsets:
                        fs.ipsets[name] = self._tag_members(tag, v)

    def _endpoint_chains(self, ep: Endpoint, v: int, valid_profiles: frozenset[str]) -> dict[str, list[str]]:
        profs = tuple(p for p in ep.profile_ids if p in valid_profiles)
        pol = self.policy.endpoint_lines(ep.key, v)    # tiered policy lines (policy.py)
        inputs = (ep, profs, pol)
        hit = self._ep_cache.get((ep.key, v))
        if hit is not None and hit[0] == inputs:
            return hit[1]
        to_chain = names.endpoint_chain("to", ep.iface)
        from_chain = names.endpoint_chain("from", ep.iface)
        if not ep.active:
            out = {to_chain: ["-j DROP"], from_chain: ["-j DROP"]}
        else:
            clear = f"-j MARK --set-xmark 0x0/{MARK_ACCEPT}"
            to_lines = [clear]
            from_lines = [f"-j MARK --set-xmark 0x0/{_or(MARK_ACCEPT, MARK_SRC_OK)}"]
            if ep.mac:
                from_lines.append(f"-m mac ! --mac-source {ep.mac} -j DROP")
            nets = ep.nets(v)
            if not nets:
                from_lines.append("-j DROP")
            elif len(nets) == 1:
                from_lines.append(f"! -s {nets[0]} -j DROP")
            else:
                from_lines += [f"-s {n} -j MARK --set-xmark {MARK_SRC_OK}/{MARK_SRC_OK}" for n in nets]
                from_lines.append(f"-m mark ! --mark {MARK_SRC_OK}/{MARK_SRC_OK} -j DROP")
            to_lines += pol[0]
            from_lines += pol[1]
            for p in profs:
                to_lines += [f"-j {names.profile_chain(p, 'i')}",
                             f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN"]
                from_lines += [f"-j {names.profile_chain(p, 'o')}",
                               f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN"]
            to_lines.append("-j DROP")
            from_lines.append("-j DROP")
            out = {to_chain: to_lines, from_chain: from_lines}
        self._ep_cache[(ep.key, v)] = (inputs, out)
        return out

    def _base_chains(self, v: int, ifaces: tuple[str, ...]) -> dict[str, list[str]]:
        ck = (v, ifaces, self.cfg.endpoint_to_host_action, self.cfg.iface_prefix)
        hit = self._dispatch_cache.get(ck)
        if hit is not None:
            return hit
        wl = f"{self.cfg.iface_prefix}+"
        out = {}
        out.update(dispatch_chains("from", ifaces, self.cfg.iface_prefix))
        out.update(dispatch_chains("to", ifaces, self.cfg.iface_prefix))
        inp = []
        if v == 6:
            inp += [f"-i {wl} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in _ICMPV6_HOST_TYPES]
        else:
            inp.append(f"-i {wl} -p udp -m udp --sport 68 --dport 67 -j ACCEPT")
        inp += [f"-i {wl} -m conntrack --ctstate INVALID -j DROP",
                f"-i {wl} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                f"-i {wl} -j {names.FROM_ENDPOINT}"]
        if self.cfg.endpoint_to_host_action != "RETURN":
            inp.append(f"-i {wl} -j {self.cfg.endpoint_to_host_action}")
        fwd = [f"-i {wl} -m conntrack --ctstate INVALID -j DROP",
               f"-o {wl} -m conntrack --ctstate INVALID -j DROP",
               f"-i {wl} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
               f"-o {wl} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
               f"-i {wl} -j {names.FROM_ENDPOINT}",
               f"-o {wl} -j {names.TO_ENDPOINT}",
               f"-i {wl} -j ACCEPT",
               f"-o {wl} -j ACCEPT"]
        out.update({names.INPUT: inp, names.FORWARD: fwd, names.OUTPUT: []})
        self._dispatch_cache = {ck: out}
        return out


DISPATCH_LEAF = 16


def dispatch_chains(direction: str, ifaces: tuple[str, ...], iface_prefix: str) -> dict[str, list[str]]:
    """felix-FROM-ENDPOINT / felix-TO-ENDPOINT as a tree keyed on interface-name prefixes.

    One flat chain with a rule per interface would be rewritten whole (1,000
    rules) whenever one endpoint comes or goes; the tree keeps every chain
    at <= DISPATCH_LEAF rules plus one per branch, so one endpoint rewrites a
    leaf and at most its parent.  Branches use iptables' `-i prefix+`
    wildcard; a name equal to a branch prefix gets its exact rule first.
    Unknown interfaces fall to a DROP at whatever level they stop matching.
    """
    flag = "-i" if direction == "from" else "-o"
    root = names.FROM_ENDPOINT if direction == "from" else names.TO_ENDPOINT
    chains: dict[str, list[str]] = {}

    def sub_name(prefix: str) -> str:
        return names.dispatch_chain(direction, prefix)

    def build(chain: str, members: list[str], prefix: str) -> None:
        rules: list[str] = []
        if len(members) <= DISPATCH_LEAF:
            rules = [f"{flag} {i} -g {names.endpoint_chain(direction, i)}" for i in members]
        else:
            # skip the characters every member shares (members are sorted and unique)
            common = os.path.commonprefix(members)
            if len(common) > len(prefix):
                prefix = common
            n = len(prefix)
            exact = [i for i in members if len(i) == n]
            groups: dict[str, list[str]] = {}
            for i in members:
                if len(i) > n:
                    groups.setdefault(i[n], []).append(i)
            rules = [f"{flag} {i} -g {names.endpoint_chain(direction, i)}" for i in exact]
            for c in sorted(groups):
                group = groups[c]
                p = prefix + c
                if len(group) == 1:
                    rules.append(f"{flag} {group[0]} -g {names.endpoint_chain(direction, group[0])}")
                else:
                    sub = sub_name(p)
                    rules.append(f"{flag} {p}+ -g {sub}")
                    build(sub, group, p)
        # every level ends in DROP: falling off a goto'd chain would return to
        # felix-FORWARD and accept traffic from an unknown interface
        rules.append("-j DROP")
        chains[chain] = rules

    build(root, sorted(ifaces), iface_prefix)
    return chains


def _keys(v: str | set[str] | None) -> tuple[str, ...] | set[str]:
    """The endpoint keys of a one-or-many index entry."""
    if v is None:
        return ()
    return (v,) if isinstance(v, str) else v


def _add_key(index: dict, k, key: str) -> None:
    v = index.get(k)
    if v is None:
        index[k] = key
    elif isinstance(v, str):
        if v != key:
            index[k] = {v, key}
    else:
        v.add(key)


def _drop_key(index: dict, k, key: str) -> tuple[str, ...] | set[str]:
    """Drop `key` from entry `k`; returns the keys left there."""
    v = index.get(k)
    if v is None:
        return ()
    if isinstance(v, str):
        if v == key:
            del index[k]
            return ()
        return (v,)
    v.discard(key)
    if len(v) == 1:
        index[k] = next(iter(v))
        return (index[k],)
    if not v:
        del index[k]
    return v


def _or(a: str, b: str) -> str:
    return hex(int(a, 16) | int(b, 16))


def _rule_tags(rules: ProfileRules) -> set[str]:
    out = set()
    for r in rules.inbound + rules.outbound:
        for f in ("src_tag", "dst_tag", "!src_tag", "!dst_tag"):
            if r.get(f):
                out.add(r[f])
    return out
