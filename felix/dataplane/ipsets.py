"""Felix's ipsets of one IP family, applied with one `ipset restore` per batch.

Why this shape:
- One `ipset restore` for the whole batch (1,000 `ipset add` processes cost
  ~25x more).
- Small changes go as add/del deltas so a set in use never empties; a big
  rewrite (more than half the set) fills a temporary set and `swap`s it in,
  which replaces the contents atomically for the rules that use it.
- Sets are only destroyed once nothing refers to them: callers apply
  `apply_updates()` (creates and fills) before the iptables writers and
  `apply()` (which also destroys) after them.  That split is the one shape
  this writer adds to the common protocol (`writer.StagedWriter`): a single
  apply would need the iptables restore in its middle.
- `ipset restore` is not transactional: on failure the kernel is re-read and
  the remaining difference retried.
- At cluster scale a tag set holds tens of thousands of remote endpoints and
  changes by a few per batch: a new member list is diffed against the
  previous one (C-speed set operations) and only the difference normalised,
  and only sets changed since the last restore are diffed against the kernel.
  Python work per batch follows the change, not the set sizes.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import MappingProxyType

from felix.dataplane.errors import DataplaneError
from felix.dataplane.writer import WriterBase, WriterStats, log_restore_failure, offending_line
from libcalico.validation import V4_HOST_RE

log = logging.getLogger(__name__)

MAX_SET_NAME = 31  # IPSET_MAXNAMELEN 32 incl. NUL
MAXELEM = 1048576
SET_TYPE = "hash:net"
_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]+")
SWAP_MIN_SIZE = 16  # below this, deltas are always cheap enough
# A canonical dotted quad, bare or /32, normalises to the bare address without ipaddress
# (what the calculator hands over for every endpoint).
_V4_HOST_RE = V4_HOST_RE


def set_prefix(family: int) -> str:
    """The names this writer owns; felix.names makes every name under it."""
    return f"felix-v{family}-"


def normalize_members(family: int, members: Iterable[str]) -> frozenset[str]:
    """Members in the form `ipset save` prints (host routes without /32 or /128; /0 split in two /1).

    hash:net cannot hold a /0, and comparing with what the kernel shows needs one spelling.
    Raises ValueError on a member of the wrong family: the calculator validated it already,
    a wrong one here is a bug that must not reach the kernel.
    """
    out = set()
    fast = _V4_HOST_RE.match if family == 4 else None
    for m in members:
        if fast is not None and isinstance(m, str) and fast(m):
            out.add(m[:-3] if m.endswith("/32") else m)
            continue
        net = ipaddress.ip_network(m, strict=False)
        if net.version != family:
            raise ValueError(f"ipset member {m!r} is not IPv{family}")
        if net.prefixlen == 0:
            out.update(str(n) for n in net.subnets(new_prefix=1))
        elif net.prefixlen == net.max_prefixlen:
            out.add(str(net.network_address))
        else:
            out.add(str(net))
    return frozenset(out)


def parse_save(text: str, prefix: str) -> tuple[dict[str, set[str]], dict[str, str]]:
    """`ipset save` -> (members per set, create line args per set), only sets named with `prefix`."""
    members: dict[str, set[str]] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[1].startswith(prefix):
            continue
        if parts[0] == "create":
            members.setdefault(parts[1], set())
            types[parts[1]] = " ".join(parts[2:5])  # "hash:net family inet"
        elif parts[0] == "add":
            members.setdefault(parts[1], set()).add(parts[2])
    return members, types


@dataclass
class IpsetStats(WriterStats):
    restores: int = 0
    restore_errors: int = 0
    saves: int = 0
    swaps: int = 0
    members_added: int = 0
    members_removed: int = 0
    sets_destroyed: int = 0


class IpsetWriter(WriterBase):
    """Owner of the `felix-v<family>-*` ipsets in one namespace; a `writer.StagedWriter`."""

    stats: IpsetStats

    def __init__(self, family: int, runner, retries: int = 3, backoff: float = 0.1):
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family!r}")
        super().__init__(IpsetStats(), retries, backoff)
        self.family = family
        self.runner = runner
        self.prefix = set_prefix(family)
        self.tmp_name = self.prefix + "_tmp"  # lowercase: hashed names are upper-case base32, no clash
        self._create_args = f"{SET_TYPE} family {'inet' if family == 4 else 'inet6'}"
        self._desired: dict[str, set[str]] = {}        # name -> members (this writer's own sets)
        self._raw: dict[str, tuple[frozenset, int]] = {}   # name -> (members as given, how many not fast)
        self._changed: set[str] = set()   # desired sets that may differ from the kernel view
        # changed sets whose difference from the kernel view is known: name -> (adds, dels)
        self._deltas: dict[str, tuple[set[str], set[str]]] = {}
        self._to_delete: set[str] = set()
        self._kernel: dict[str, set[str]] | None = None
        self._kernel_types: dict[str, str] = {}

    # ---- model ----
    def _check_name(self, name: str) -> None:
        if not name.startswith(self.prefix) or len(name) > MAX_SET_NAME or not _NAME_RE.fullmatch(name) \
                or name == self.tmp_name:
            raise ValueError(f"invalid ipset name {name!r} for IPv{self.family} (want {self.prefix}<id>, <= 31 chars)")

    def set_members(self, name: str, members: Iterable[str]) -> None:
        """Desired members (IPs or CIDRs of this writer's family) of set `name`."""
        self._check_name(name)
        self._to_delete.discard(name)
        raw = members if isinstance(members, frozenset) else frozenset(members)
        prev = self._raw.get(name)
        old = self._desired.get(name)
        if prev is not None and old is not None:
            if raw is prev[0]:
                return
            if self._delta(name, old, prev, raw):
                return
        self._deltas.pop(name, None)
        self._desired[name] = set(normalize_members(self.family, raw))
        self._raw[name] = (raw, sum(1 for m in raw if not self._fast(m)))
        self._changed.add(name)

    def _fast(self, m: object) -> bool:
        return self.family == 4 and isinstance(m, str) and _V4_HOST_RE.match(m) is not None

    def _delta(self, name: str, old: set[str], prev: tuple[frozenset, int], raw: frozenset) -> bool:
        """Update set `name` from the old normalised set and the difference of the inputs (given
        by a MemberSet derived from the previous input, else computed); False when the inputs
        hold a member only the full normalisation can spell (then two members may share a
        spelling, e.g. a /0 and the /1s it splits into, and a removal is not a plain removal)."""
        if prev[1]:
            return False
        if getattr(raw, "base", None) is prev[0]:
            added, removed = raw.added, raw.removed
        else:
            added, removed = raw - prev[0], prev[0] - raw
        if not all(self._fast(m) for m in added):
            return False
        self._raw[name] = (raw, 0)
        gone = set()
        for m in removed:
            n = m[:-3] if m.endswith("/32") else m
            # the other spelling of the same address may still be there
            if n in old and (n if m.endswith("/32") else m + "/32") not in raw:
                gone.add(n)
        new_in = {n for n in normalize_members(self.family, added) if n not in old}
        if not gone and not new_in:
            return True
        old.difference_update(gone)     # in place: the model's own set, never handed out to keep
        old.update(new_in)
        # the difference from the kernel adds up while the kernel view still equals the set
        # before this batch (not changed since the last commit, or changed by deltas only)
        if name not in self._changed or name in self._deltas:
            adds, dels = self._deltas.setdefault(name, (set(), set()))
            for n in new_in:
                if n in dels:
                    dels.discard(n)
                else:
                    adds.add(n)
            for n in gone:
                if n in adds:
                    adds.discard(n)
                else:
                    dels.add(n)
        self._changed.add(name)
        return True

    def remove(self, name: str) -> None:
        """Destroy `name` at the next `apply()` (not `apply_updates()`)."""
        self._check_name(name)
        self._desired.pop(name, None)
        self._raw.pop(name, None)
        self._changed.discard(name)
        self._deltas.pop(name, None)
        self._to_delete.add(name)

    def members(self, name: str) -> frozenset[str] | None:
        m = self._desired.get(name)
        return None if m is None else frozenset(m)

    def desired_sets(self) -> Mapping[str, AbstractSet[str]]:
        """Read-only live view of the model (name -> members), for metrics: no copy per scrape."""
        return MappingProxyType(self._desired)

    @property
    def loaded(self) -> bool:
        return self._kernel is not None

    @property
    def dirty(self) -> bool:
        if self._kernel is None:
            return True
        text, _ = self.render(deletions=True)
        return bool(text)

    # ---- diff ----
    def _create(self, name: str) -> str:
        return f"create {name} {self._create_args} maxelem {MAXELEM}"

    def render(self, deletions: bool) -> tuple[str, int]:
        """Restore text for the difference between model and kernel view; also the number of swaps in it."""
        k = self._kernel
        lines: list[str] = []
        swaps = 0
        # a set not changed since the last commit or kernel read matches the kernel view
        for name in sorted(self._changed):
            want = self._desired[name]
            have = k.get(name)
            if have is not None and self._kernel_types.get(name) != self._create_args:
                lines.append(f"destroy {name}")  # wrong type/family: recreate (fails if referenced)
                have = None
            if have is None:
                lines.append(self._create(name))
                lines += [f"add {name} {m}" for m in sorted(want)]
                continue
            known = self._deltas.get(name)
            adds, dels = known if known is not None else (want - have, have - want)
            if not adds and not dels:
                continue
            if len(want) >= SWAP_MIN_SIZE and len(adds) + len(dels) > max(len(want), len(have)) / 2:
                swaps += 1
                t = self.tmp_name
                lines += [self._create(t), f"flush {t}"]
                lines += [f"add {t} {m}" for m in sorted(want)]
                lines += [f"swap {t} {name}", f"destroy {t}"]
            else:
                lines += [f"del {name} {m}" for m in sorted(dels)]
                lines += [f"add {name} {m}" for m in sorted(adds)]
        if deletions:
            lines += [f"destroy {n}" for n in sorted(self._to_delete) if n in k]
        return ("\n".join(lines) + "\n" if lines else ""), swaps

    # ---- kernel ----
    async def load(self) -> dict[str, set[str]]:
        r = await self.runner.run(["ipset", "save"])
        self.stats.saves += 1
        if not r.ok:
            raise DataplaneError(f"ipset save failed: {r.stderr.strip()}")
        self._kernel, self._kernel_types = parse_save(r.stdout, self.prefix)
        self._kernel.pop(self.tmp_name, None)
        self._changed = set(self._desired)
        self._deltas = {}
        return self._kernel

    def _commit(self, deletions: bool) -> None:
        k = self._kernel
        for name in self._changed:
            want = self._desired[name]
            have = k.get(name, frozenset())
            known = self._deltas.get(name)
            if known is not None and isinstance(have, set):
                adds, dels = known
                have -= dels        # the kernel view's own set, moved by the same difference
                have |= adds
            else:
                adds, dels = want - have, have - want
                k[name] = set(want)
            self.stats.members_added += len(adds)
            self.stats.members_removed += len(dels)
            self._kernel_types[name] = self._create_args
        self._changed = set()
        self._deltas = {}
        if deletions:
            for n in list(self._to_delete):
                if n in k:
                    self.stats.sets_destroyed += 1
                    k.pop(n)
                    self._kernel_types.pop(n, None)
            self._to_delete.clear()

    async def _apply(self) -> bool:
        """Everything, destroys included (the protocol's apply)."""
        return await self._restore(deletions=True)

    async def _restore(self, deletions: bool) -> bool:
        """The difference in one `ipset restore`; on failure the kernel is re-read and the rest retried."""
        last_err = ""
        for attempt in range(self.retries + 1):
            with_del = deletions and (attempt < self.retries)
            text, swaps = self.render(with_del)
            if not text:
                if deletions and not with_del and self._to_delete:
                    log.error("ipsets v%d: destroying %s failed, deferred: %s",
                              self.family, sorted(self._to_delete), last_err)
                return attempt > 0
            self.stats.restores += 1
            r = await self.runner.run(["ipset", "-exist", "restore"], input=text)
            if r.ok:
                self.stats.swaps += swaps
                self._commit(with_del)
                if deletions and not with_del:
                    log.error("ipsets v%d: destroying sets failed, deferred: %s", self.family, last_err)
                return True
            self.stats.restore_errors += 1
            last_err = r.stderr.strip()
            if (culprit := offending_line(text, last_err)) is not None:
                last_err = f"{last_err} [{culprit}]"
            log_restore_failure(log, f"ipset restore v{self.family}", attempt + 1, text, r.stderr)
            await self._backoff(attempt)
            await self.load()  # restore is not atomic: see what did land
        raise DataplaneError(f"ipsets v{self.family}: restore failed: {last_err}")

    async def apply_updates(self) -> bool:
        """Create and fill sets; destroys nothing (run before iptables so new rules find their sets)."""
        async with self._lock:
            return await self._run(self._restore, False)

    async def apply(self) -> bool:
        """Everything, including destroying removed sets (run after iptables dropped their references)."""
        return await super().apply()

    async def refresh(self) -> bool:
        """Re-read `ipset save` and repair any drift in our sets (members added/removed by hand).

        Destroys nothing: destroying is `apply()`'s, which the caller runs only
        once the iptables writers no longer reference the set.
        """
        async with self._lock:
            await self.load()
            return await self._run(self._restore, False)

    async def cleanup_stale(self, keep: set[str] | frozenset[str] = frozenset()) -> bool:
        """Destroy our-prefixed sets the model does not know (only once in sync).

        The kernel view is as fresh as the first apply: when `ipset list -n` shows exactly
        the sets that view knows, nothing needs reading again (`ipset save` of a cluster's
        members, 186,000 at 50,000 endpoints, was most of a second of cold start; member
        drift is `refresh()`'s).  Any other set list, or a failed listing, re-reads it all.
        """
        async with self._lock:
            names = await self._set_names() if self._kernel is not None else None
            if names is None or names != self._kernel.keys():
                await self.load()
            for n in self._kernel:
                if n not in self._desired and n not in keep:
                    self._to_delete.add(n)
            return await self._run(self._restore, True)

    async def _set_names(self) -> set[str] | None:
        """Our sets' names in the kernel (None if the listing failed)."""
        r = await self.runner.run(["ipset", "list", "-n"])
        if not r.ok:
            return None
        return {n for line in r.stdout.splitlines() if (n := line.strip()).startswith(self.prefix)
                and n != self.tmp_name}

    def kernel_sets(self) -> dict[str, set[str]]:
        return {} if self._kernel is None else {k: set(v) for k, v in self._kernel.items()}
