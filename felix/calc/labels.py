"""Which endpoints of the cluster each selector in use matches, kept incrementally.

Why an index: selector ipsets (rules' `src_selector`/`dst_selector`) hold the
IPs of *every* endpoint in the cluster that matches, and policy selectors pick
the endpoints a policy applies to.  With 1,000 endpoints and dozens of
selectors a rescan per change would cost tens of thousands of evaluations;
instead a label change re-evaluates only the selectors that read one of the
label keys whose value changed (`Selector.label_keys`), against that one
endpoint (or the endpoints of the one profile that changed).

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
        self._matches: dict[str, set[str]] = {}             # uid -> endpoint keys
        self._ep_matches: dict[str, set[str]] = {}          # endpoint key -> uids
        self._changed: set[str] = set()
        self._members: dict[tuple[str, int], frozenset[str]] = {}
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
        hits = set()
        for key, labels in self._eff.items():
            self.evaluations += 1
            if sel.evaluate(labels):
                hits.add(key)
                self._ep_matches.setdefault(key, set()).add(uid)
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
        for key in self._matches.pop(uid, ()):
            m = self._ep_matches.get(key)
            if m is not None:
                m.discard(uid)
        self._members.pop((uid, 4), None)
        self._members.pop((uid, 6), None)
        self._changed.discard(uid)

    def selector(self, uid: str) -> Selector | None:
        return self._sels.get(uid)

    # ---- endpoints and profiles -----------------------------------------------------

    def set_endpoint(self, key: str, ep: IndexedEndpoint) -> None:
        old = self._eps.get(key)
        if old == ep:
            return
        self._eps[key] = ep
        if old is not None:
            for p in old.profile_ids:
                _discard(self._prof_eps, p, key)
        for p in ep.profile_ids:
            self._prof_eps.setdefault(p, set()).add(key)
        if old is None:
            self._eff[key] = self._effective(ep)
            self._evaluate(key, self._sels.keys())
        else:
            self._relabel(key)
            if old.ipv4 != ep.ipv4 or old.ipv6 != ep.ipv6:
                self._touch(self._ep_matches.get(key, ()))

    def remove_endpoint(self, key: str) -> None:
        old = self._eps.pop(key, None)
        if old is None:
            return
        for p in old.profile_ids:
            _discard(self._prof_eps, p, key)
        del self._eff[key]
        uids = self._ep_matches.pop(key, set())
        for uid in uids:
            self._matches[uid].discard(key)
        self._touch(uids)

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

    def members(self, uid: str, version: int) -> frozenset[str]:
        """IPs (as in the endpoints' nets, e.g. 10.0.0.1/32) of every endpoint matching `uid`.

        The same frozenset object comes back until the selector's matches or
        one matching endpoint's addresses change.
        """
        hit = self._members.get((uid, version))
        if hit is None:
            out: set[str] = set()
            for key in self._matches.get(uid, ()):
                out.update(self._eps[key].ips(version))
            hit = self._members[(uid, version)] = frozenset(out)
        return hit

    def take_changed(self) -> set[str]:
        out, self._changed = self._changed, set()
        return out

    # ---- internals ------------------------------------------------------------------

    def _effective(self, ep: IndexedEndpoint) -> dict[str, str]:
        eff: dict[str, str] = {}
        for p in ep.profile_ids:
            for k, v in self._prof_labels.get(p, {}).items():
                eff.setdefault(k, v)
        eff.update(ep.labels)
        return eff

    def _relabel(self, key: str) -> None:
        old = self._eff[key]
        new = self._effective(self._eps[key])
        if new == old:
            return
        self._eff[key] = new
        changed_keys = {k for k in old.keys() ^ new.keys()}
        changed_keys |= {k for k in old.keys() & new.keys() if old[k] != new[k]}
        uids: set[str] = set()
        for k in changed_keys:
            uids |= self._by_key.get(k, set())
        self._evaluate(key, uids)

    def _evaluate(self, key: str, uids: Iterable[str]) -> None:
        labels = self._eff[key]
        mine = self._ep_matches.setdefault(key, set())
        for uid in list(uids):
            self.evaluations += 1
            hit = self._sels[uid].evaluate(labels)
            if hit == (uid in mine):
                continue
            if hit:
                mine.add(uid)
                self._matches[uid].add(key)
            else:
                mine.discard(uid)
                self._matches[uid].discard(key)
            self._touch((uid,))

    def _touch(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self._changed.add(uid)
            self._members.pop((uid, 4), None)
            self._members.pop((uid, 6), None)


def _discard(index: dict, k, v) -> None:
    """Drop `v` from the set `index[k]`, and the key once its set is empty (no empty sets linger)."""
    s = index.get(k)
    if s is not None:
        s.discard(v)
        if not s:
            del index[k]
