"""Deletes the conntrack entries of addresses that stop belonging to a local endpoint.

Why: the filter chains accept RELATED/ESTABLISHED traffic before any policy,
so a flow that policy allowed keeps passing for as long as its conntrack
entry lives.  When a workload goes away (or loses an address) and the address
is handed to a new workload, a ping or TCP connection to the old one would
carry on into the new one, past the new one's policy.  Calico's Felix deletes
the entries of an address whenever its workload route goes away; this writer
does the same, driven by the desired state rather than by the route writer:
an address is flushed when its owner (endpoint key and interface) changes or
disappears, in the same batch that reprograms it.

How: two `conntrack -D` runs per address (`--orig-src`, covering flows the
workload started, and `--reply-src`, covering flows towards it, DNAT'd or
not), as Calico's Felix does; a wider net: `--orig-src` and `--orig-dst` with a mask.
All addresses of one batch run together, a few processes at a time.  The CLI
was measured against pyroute2's conntrack netlink API (bench/bench_conntrack.py,
docs/bench/conntrack.md): about even for a handful of entries, and 4-9x cheaper
when thousands of entries go (2,500 entries of 10 addresses out of 5,000:
0.26 s vs 2.3 s), because pyroute2 spends about a millisecond of Python per
deleted entry while the CLI filters and deletes in C.

Failures are retried a few times within the batch, then logged (rate-limited)
and dropped: a stale entry times out on its own, and one address's trouble must
never fail the apply of everything else, so `apply()` never raises.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from felix.dataplane.writer import WriterStats
from libcalico.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

Owner = tuple[str, str]
"""Who holds an address on this host: (endpoint key, interface name)."""


@dataclass(eq=False)
class ConntrackStats(WriterStats):
    flushed_addresses: int = 0      # addresses whose entries were deleted (or had none)
    runs: int = 0                   # conntrack processes started
    run_errors: int = 0             # of which failed (retries included)
    given_up: int = 0               # addresses dropped after every retry failed


def owners_of(endpoints: Mapping[str, object], versions: tuple[int, ...] = (4, 6)) -> dict[str, Owner]:
    """Every address (CIDR as the endpoint gives it) of the local endpoints, with its owner."""
    out: dict[str, Owner] = {}
    for key, ep in endpoints.items():
        for v in versions:
            for net in ep.nets(v):
                out[net] = (key, ep.iface)
    return out


def flush_argvs(cidr: str) -> list[list[str]]:
    """The `conntrack -D` command lines that delete every entry of `cidr` (both directions)."""
    net = ipaddress.ip_network(cidr, strict=False)
    fam = ["-f", "ipv6"] if net.version == 6 else ["-f", "ipv4"]
    addr = str(net.network_address)
    if net.prefixlen == net.max_prefixlen:
        return [["conntrack", *fam, "-D", "--orig-src", addr], ["conntrack", *fam, "-D", "--reply-src", addr]]
    # a wider net: flows from it (original source) and towards it (original destination)
    mask = str(net.netmask)
    return [["conntrack", *fam, "-D", "--orig-src", addr, "--mask-src", mask],
            ["conntrack", *fam, "-D", "--orig-dst", addr, "--mask-dst", mask]]


def _norm(cidr: str) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        return cidr


def _nothing_to_delete(stderr: str) -> bool:
    """Older conntrack-tools exit 1 when no entry matched; that is success here."""
    return "0 flow entries" in stderr


class ConntrackFlusher:
    """Told the local endpoints after each calculation; `apply()` deletes the flows of released addresses.

    `set_endpoints` is a model call (no I/O): it compares each address's owner
    with the previous batch's and queues those that lost theirs, and those taken
    again after a batch in which nobody owned them.  The first
    call only records owners (a restarted Felix cannot know what moved while
    it was down; entries of addresses nobody owns any more time out).
    """

    def __init__(self, runner, retries: int = 3, concurrency: int = 4,
                 ratelog: RateLimitedLog | None = None, max_unowned: int = 65536):
        self.runner = runner
        self.retries = max(1, retries)
        self.concurrency = max(1, concurrency)
        self.max_unowned = max_unowned
        self._ratelog = ratelog or RateLimitedLog(log)
        self._owners: dict[str, Owner] | None = None
        self._pending: set[str] = set()
        self._unowned: dict[str, None] = {}     # released, not yet taken again (insertion-ordered)
        self.stats = ConntrackStats()

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def set_endpoints(self, endpoints: Mapping[str, object], versions: tuple[int, ...] = (4, 6)) -> int:
        """Queue the addresses whose owner changed or went away; returns how many were queued."""
        return self.set_owners(owners_of(endpoints, versions))

    def set_owners(self, owners: Mapping[str, Owner]) -> int:
        before, self._owners = self._owners, dict(owners)
        if before is None:
            return 0
        released = {cidr for cidr, owner in before.items() if owners.get(cidr) != owner}
        # Taken again after a batch without an owner: while nobody owned it, packets to it
        # followed the default route and may have left entries; flush once more, now that
        # the new owner's policy is in place.
        retaken = {cidr for cidr in self._unowned if cidr in owners}
        for cidr in retaken:
            del self._unowned[cidr]
        for cidr in released - owners.keys():
            self._unowned[cidr] = None
        while len(self._unowned) > self.max_unowned:      # forget the oldest: bounded memory
            del self._unowned[next(iter(self._unowned))]
        queued = released | retaken
        self._pending |= queued
        return len(queued)

    def release_unowned(self, cidrs) -> int:
        """Queue host addresses whose routes were removed as stale and that no local endpoint owns.

        A restarted Felix learns only from its stale routes which addresses lost their
        workload while it was down (TCP entries live for days); wider routes are overlay
        blocks, not workloads, and are left alone.
        """
        owned = {_norm(c) for c in (self._owners or {})}
        queued = 0
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            if net.prefixlen == net.max_prefixlen and str(net) not in owned:
                self._pending.add(str(net))
                self._unowned[str(net)] = None
                queued += 1
        return queued

    async def apply(self) -> bool:
        """Flush every queued address; never raises.  True when some address was flushed."""
        if not self._pending:
            return False
        todo, self._pending = sorted(self._pending), set()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gate = asyncio.Semaphore(self.concurrency)
        results = await asyncio.gather(*(self._flush(cidr, gate) for cidr in todo))
        self.stats.applies += 1
        self.stats.last_apply_seconds = loop.time() - t0
        ok = sum(results)
        self.stats.flushed_addresses += ok
        log.info("conntrack: deleted the entries of %d released address(es) in %.3f s",
                 ok, self.stats.last_apply_seconds)
        if ok < len(todo):
            self.stats.failures += 1
        return ok > 0

    async def _flush(self, cidr: str, gate: asyncio.Semaphore) -> bool:
        try:
            argvs = flush_argvs(cidr)
        except ValueError as e:
            self._ratelog.log("conntrack-bad-address", logging.ERROR,
                              "conntrack: cannot flush %r: %s", cidr, e)
            self.stats.given_up += 1
            return False
        done = await asyncio.gather(*(self._run(argv, gate) for argv in argvs))
        if all(done):
            log.debug("conntrack entries of %s deleted", cidr)
            return True
        self.stats.given_up += 1
        self._ratelog.log("conntrack-gave-up", logging.ERROR,
                          "conntrack: gave up deleting the entries of %s after %d attempts; "
                          "established flows of its old workload may pass until they time out",
                          cidr, self.retries)
        return False

    async def _run(self, argv: list[str], gate: asyncio.Semaphore) -> bool:
        for attempt in range(1, self.retries + 1):
            async with gate:
                self.stats.runs += 1
                try:
                    r = await self.runner.run(argv, timeout=10)
                    ok, why = r.ok or _nothing_to_delete(r.stderr), (r.stderr.strip() or f"exit {r.returncode}")
                except (TimeoutError, OSError) as e:
                    ok, why = False, str(e) or type(e).__name__
            if ok:
                return True
            self.stats.run_errors += 1
            self._ratelog.log("conntrack-failed", logging.WARNING, "conntrack: %s failed (attempt %d/%d): %s",
                              " ".join(argv), attempt, self.retries, why)
        return False
