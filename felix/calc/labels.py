"""Which endpoints of the cluster each selector in use matches, kept incrementally.

Why an index: selector ipsets (rules' `src_selector`/`dst_selector`) hold the
IPs of *every* endpoint in the cluster that matches, and policy selectors pick
the endpoints a policy applies to.  With 1,000 endpoints and dozens of
selectors a rescan per change would cost tens of thousands of evaluations;
instead a label change re-evaluates only the selectors that read one of the
label keys whose value changed (`Selector.label_keys`), against that one
endpoint (or the endpoints of the one profile that changed).

At cluster scale (50,000 endpoints, 1,000 policies) even "every selector once
per new endpoint" is millions of evaluations, so selectors that require one of
a few values at a key (`app == "x"`, `role in {...}`, and any `&&` holding
one: `Selector.required`) are also indexed by (key, value), and endpoints by
each (key, value) of their effective labels.  A new endpoint is evaluated
against the selectors its own label values name plus the few that cannot be
narrowed; a new selector against the endpoints carrying a value it requires.

Invariants:
- an endpoint's effective labels are its profiles' labels, the first profile
  in `profile_ids` winning for a key they share, with the endpoint's own
  labels over all of them;
- `matches(uid)` is exactly {endpoint keys whose effective labels satisfy the
  selector} for every registered selector, after every call returns;
- selectors are reference counted: `add_selector` twice needs
  `remove_selector` twice before the selector (and its match set) goes;
- `take_changed()` reports every selector uid whose match set or whose
  members' IPs changed since the last call (the caller re-renders from it).

Pure and synchronous: no I/O, no logging of data (the caller validates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from felix.desired import MemberSet
from libcalico.selectors import Selector


@dataclass(frozen=True)
class IndexedEndpoint:
    """What the index needs of an endpoint (workload or host): labels, profiles, addresses."""

    labels: tuple[tuple[str, str], ...]
    profile_ids: tuple[str, ...]
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]

    def ips(self, version: int) -> tuple[str, ...]:
        return self.ipv4 if version == 4 else self.ipv6


class LabelIndex:
    def __init__(self) -> None:
        self._eps: dict[str, IndexedEndpoint] = {}
        self._eff: dict[str, dict[str, str]] = {}          # endpoint key -> effective labels
        self._prof_labels: dict[str, dict[str, str]] = {}
        self._prof_eps: dict[str, set[str]] = {}            # profile -> endpoint keys
        self._sels: dict[str, Selector] = {}                # uid -> selector
        self._refs: dict[str, int] = {}
        self._by_key: dict[str, set[str]] = {}              # label key -> uids reading it
        self._keyless: set[str] = set()                     # uids reading no key (all(), !has...)
        self._by_kv: dict[tuple[str, str], set[str]] = {}   # (key, value) -> uids requiring it
        self._unindexed: set[str] = set()                   # uids without such a requirement
        self._kv_eps: dict[tuple[str, str], set[str]] = {}  # (key, value) -> endpoint keys having it
        self._matches: dict[str, set[str]] = {}             # uid -> endpoint keys
        # endpoint key -> uids (a tuple: a few per endpoint, and a set costs ~700 bytes)
        self._ep_matches: dict[str, tuple[str, ...]] = {}
        self._changed: set[str] = set()
        self._ep_changed: set[str] = set()                  # endpoint keys whose matches changed
        # (uid, version) -> the members counted, for the sets asked for: one endpoint joining or
        # leaving a 2,500-member set costs its own addresses
        self._counts: dict[tuple[str, int], CountedMembers] = {}
        self.evaluations = 0                                # for tests and the benchmark

    # ---- selectors ------------------------------------------------------------------

    def add_selector(self, sel: Selector) -> str:
        uid = sel.unique_id
        self._refs[uid] = self._refs.get(uid, 0) + 1
        if uid in self._sels:
            return uid
        self._sels[uid] = sel
        if sel.label_keys:
            for k in sel.label_keys:
                self._by_key.setdefault(k, set()).add(uid)
        else:
            self._keyless.add(uid)
        req = sel.required
        if req is None:
            self._unindexed.add(uid)
            candidates: Iterable[str] = self._eff
        else:
            k = req[0]
            for v in req[1]:
                self._by_kv.setdefault((k, v), set()).add(uid)
            candidates = set().union(*(self._kv_eps.get((k, v), ()) for v in req[1]))
        hits = set()
        eff = self._eff
        for key in candidates:
            self.evaluations += 1
            if sel.evaluate(eff[key]):
                hits.add(key)
                self._ep_matches[key] = self._ep_matches.get(key, ()) + (uid,)
        self._matches[uid] = hits
        self._changed.add(uid)
        return uid

    def remove_selector(self, uid: str) -> None:
        n = self._refs.get(uid, 0) - 1
        if n > 0:
            self._refs[uid] = n
            return
        self._refs.pop(uid, None)
        sel = self._sels.pop(uid, None)
        if sel is None:
            return
        for k in sel.label_keys:
            _discard(self._by_key, k, uid)
        self._keyless.discard(uid)
        self._unindexed.discard(uid)
        if sel.required is not None:
            for v in sel.required[1]:
                _discard(self._by_kv, (sel.required[0], v), uid)
        for key in self._matches.pop(uid, ()):
            m = self._ep_matches.get(key)
            if m is not None:
                self._ep_matches[key] = tuple(u for u in m if u != uid)
        for v in (4, 6):
            self._counts.pop((uid, v), None)
        self._changed.discard(uid)

    def selector(self, uid: str) -> Selector | None:
        return self._sels.get(uid)

    # ---- endpoints and profiles -----------------------------------------------------

    def set_endpoint(self, key: str, ep: IndexedEndpoint) -> None:
        old = self._eps.get(key)
        if old == ep:
            return
        if old is not None and (old.ipv4 != ep.ipv4 or old.ipv6 != ep.ipv6):
            # new addresses: leave every set with the old ones and come back as new
            self.remove_endpoint(key)
            old = None
        self._eps[key] = ep
        if old is not None:
            for p in old.profile_ids:
                _discard(self._prof_eps, p, key)
        for p in ep.profile_ids:
            self._prof_eps.setdefault(p, set()).add(key)
        if old is None:
            eff = self._eff[key] = self._effective(ep)
            for item in eff.items():
                self._kv_eps.setdefault(item, set()).add(key)
            self._evaluate(key, self._candidates(eff))
        else:
            self._relabel(key)

    def remove_endpoint(self, key: str) -> None:
        old = self._eps.pop(key, None)
        if old is None:
            return
        for p in old.profile_ids:
            _discard(self._prof_eps, p, key)
        for item in self._eff.pop(key).items():
            _discard(self._kv_eps, item, key)
        uids = self._ep_matches.pop(key, ())
        for uid in uids:
            self._matches[uid].discard(key)
            self._count(uid, old, -1)
        self._touch(uids)
        self._ep_changed.add(key)

    def set_profile_labels(self, profile: str, labels: Mapping[str, str] | None) -> None:
        new = dict(labels) if labels else {}
        if self._prof_labels.get(profile, {}) == new:
            return
        if new:
            self._prof_labels[profile] = new
        else:
            self._prof_labels.pop(profile, None)
        for key in list(self._prof_eps.get(profile, ())):
            self._relabel(key)

    # ---- queries --------------------------------------------------------------------

    def effective_labels(self, key: str) -> dict[str, str] | None:
        return self._eff.get(key)

    def matches(self, uid: str) -> frozenset[str]:
        return frozenset(self._matches.get(uid, ()))

    def endpoint_matches(self, key: str) -> frozenset[str]:
        """Uids of the registered selectors that match endpoint `key`."""
        return frozenset(self._ep_matches.get(key, ()))

    def members(self, uid: str, version: int) -> MemberSet:
        """IPs (as in the endpoints' nets, e.g. 10.0.0.1/32) of every endpoint matching `uid`.

        The same set object comes back until the selector's matches or one
        matching endpoint's addresses change; a changed one knows its difference.
        """
        cm = self._counts.get((uid, version))
        if cm is None:
            cm = CountedMembers()
            if uid in self._sels:      # only registered selectors' counts are kept up to date
                self._counts[(uid, version)] = cm
            for key in self._matches.get(uid, ()):
                cm.change(self._eps[key].ips(version), 1)
        return cm.current()

    def take_changed(self) -> set[str]:
        out, self._changed = self._changed, set()
        return out

    def take_changed_endpoints(self) -> set[str]:
        """Endpoint keys whose set of matching selectors changed (or that went) since the last call."""
        out, self._ep_changed = self._ep_changed, set()
        return out

    # ---- internals ------------------------------------------------------------------

    def _effective(self, ep: IndexedEndpoint) -> dict[str, str]:
        prof_labels = self._prof_labels
        if not prof_labels or not any(p in prof_labels for p in ep.profile_ids):
            return dict(ep.labels)     # the common case: no profile labels to inherit
        eff: dict[str, str] = {}
        for p in ep.profile_ids:
            for k, v in prof_labels.get(p, {}).items():
                eff.setdefault(k, v)
        eff.update(ep.labels)
        return eff

    def _relabel(self, key: str) -> None:
        old = self._eff[key]
        new = self._effective(self._eps[key])
        if new == old:
            return
        self._eff[key] = new
        for item in old.items() - new.items():
            _discard(self._kv_eps, item, key)
        for item in new.items() - old.items():
            self._kv_eps.setdefault(item, set()).add(key)
        changed_keys = {k for k in old.keys() ^ new.keys()}
        changed_keys |= {k for k in old.keys() & new.keys() if old[k] != new[k]}
        uids: set[str] = set()
        for k in changed_keys:
            uids |= self._by_key.get(k, set())
        # a selector that does not match now and whose required value the new labels lack
        # cannot match after the change either
        mine = self._ep_matches.get(key, ())
        cand = self._candidates(new)
        self._evaluate(key, [u for u in uids if u in mine or u in cand])

    def _candidates(self, labels: Mapping[str, str]) -> set[str]:
        """Uids that could match `labels`: the unindexed ones and those requiring one of its values."""
        out = set(self._unindexed)
        by_kv = self._by_kv
        for item in labels.items():
            hit = by_kv.get(item)
            if hit:
                out |= hit
        return out

    def _evaluate(self, key: str, uids: Iterable[str]) -> None:
        labels = self._eff[key]
        mine = self._ep_matches.get(key, ())
        before = mine
        sels, matches, changed, counted = self._sels, self._matches, self._changed, bool(self._counts)
        uids = list(uids)
        self.evaluations += len(uids)
        for uid in uids:
            hit = sels[uid].evaluate(labels)
            if hit == (uid in mine):
                continue
            if hit:
                mine = mine + (uid,)
                matches[uid].add(key)
            else:
                mine = tuple(u for u in mine if u != uid)
                matches[uid].discard(key)
            if counted:
                self._count(uid, self._eps[key], 1 if hit else -1)
            changed.add(uid)
        if mine is not before:
            self._ep_matches[key] = mine
            self._ep_changed.add(key)

    def _count(self, uid: str, ep: IndexedEndpoint, delta: int) -> None:
        if not self._counts:    # nothing asked for yet (a snapshot before the first desired())
            return
        for v in (4, 6):
            cm = self._counts.get((uid, v))
            if cm is not None:
                cm.change(ep.ips(v), delta)

    def _touch(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self._changed.add(uid)


class CountedMembers:
    """The addresses of a changing group of endpoints, each counted by how many hold it.

    `current()` is a MemberSet: the same object until something changed, then
    the previous one plus its difference (so the ipset writer handles a few
    members, not the whole set).
    """

    __slots__ = ("counts", "_emitted", "_added", "_removed")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._emitted: MemberSet | None = None
        self._added: set[str] = set()       # in since the last current(), and not before it
        self._removed: set[str] = set()     # out since the last current(), and in before it

    def change(self, members: Iterable[str], delta: int) -> None:
        """One holder of each of `members` more (delta 1) or fewer (-1)."""
        counts = self.counts
        for m in members:
            c = counts.get(m, 0) + delta
            if c > 0:
                counts[m] = c
                if c == 1 and delta > 0:
                    if m in self._removed:
                        self._removed.discard(m)
                    else:
                        self._added.add(m)
            elif m in counts:
                del counts[m]
                if m in self._added:
                    self._added.discard(m)
                else:
                    self._removed.add(m)

    def current(self) -> MemberSet:
        e = self._emitted
        if e is not None and not self._added and not self._removed:
            return e
        e = MemberSet(self.counts) if e is None else MemberSet.derive(e, self._added, self._removed)
        self._emitted, self._added, self._removed = e, set(), set()
        return e


def count_members(counts: dict[str, int], members: Iterable[str], delta: int) -> None:
    """Add (delta 1) or take away (-1) one holder of each member; a member stays while held."""
    for m in members:
        c = counts.get(m, 0) + delta
        if c > 0:
            counts[m] = c
        else:
            counts.pop(m, None)


def _discard(index: dict, k, v) -> None:
    """Drop `v` from the set `index[k]`, and the key once its set is empty (no empty sets linger)."""
    s = index.get(k)
    if s is not None:
        s.discard(v)
        if not s:
            del index[k]
