"""Hand the calculator's desired state to the dataplane writers, one diff per batch.

The calculator returns the whole desired state each time (with unchanged
chains as the same list objects), so this module remembers what it last
handed over and calls the writers only for what changed: one new endpoint
costs two chain writes and one route, not a rewrite of everything.  The
writers themselves diff against the kernel and batch the kernel calls.

Apply order matters: ipsets are created/filled before iptables rules that
reference them and destroyed only after those rules are gone.  Routes go
last, so a workload is reachable only once its policy is in place (running
them alongside the restore was measured slower on 2 cores: both are CPU-bound).
"""

from __future__ import annotations

import asyncio
import logging
import time

from felix.dataplane.backend import Backend
from felix.dataplane.ipsets import IpsetWriter
from felix.dataplane.iptables import IptablesTable
from felix.dataplane.routes import RouteWriter
from felix.desired import DesiredState

log = logging.getLogger(__name__)


class DataplaneDriver:
    """Owns one filter IptablesTable and one IpsetWriter per IP family, and the RouteWriter."""

    def __init__(self, runner, backend: Backend, routes: RouteWriter, ipv6: bool = True, lock_wait: int = 10):
        self.versions = (4, 6) if ipv6 else (4,)
        self.tables = {v: IptablesTable(v, "filter", runner, backend, lock_wait=lock_wait) for v in self.versions}
        self.ipsets = {v: IpsetWriter(v, runner) for v in self.versions}
        self.routes = routes
        self._chains: dict[int, dict[str, list[str]]] = {v: {} for v in self.versions}
        self._hooks: dict[int, dict[str, list[str]]] = {v: {} for v in self.versions}
        self._sets: dict[int, dict[str, frozenset[str]]] = {v: {} for v in self.versions}
        self._routes: dict[str, frozenset[str]] = {}
        self._neigh: dict[tuple[str, str], str] = {}
        self._new_sets = True          # the kernel may lack any set until the first apply
        self.last_timings: dict[str, float] = {}

    def push(self, desired: DesiredState) -> int:
        """Tell the writers what changed since the last push; returns the number of changed objects."""
        n = 0
        for v in self.versions:
            fs = desired.family(v)
            table, last = self.tables[v], self._chains[v]
            for name, rules in fs.chains.items():
                old = last.get(name)
                if old is not rules and old != rules:
                    table.set_chain(name, rules)
                    n += 1
            for name in last.keys() - fs.chains.keys():
                table.remove_chain(name)
                n += 1
            self._chains[v] = dict(fs.chains)
            for builtin, rules in fs.hooks.items():
                if self._hooks[v].get(builtin) != rules:
                    table.set_hooks(builtin, rules)
                    n += 1
            self._hooks[v] = dict(fs.hooks)
            ips, last_sets = self.ipsets[v], self._sets[v]
            for name, members in fs.ipsets.items():
                if name not in last_sets:
                    self._new_sets = True
                old = last_sets.get(name)
                # a MemberSet derived from what we pushed last differs from it (no O(n) compare)
                if old is not members and (getattr(members, "base", None) is old or old != members):
                    ips.set_members(name, members)
                    n += 1
            for name in last_sets.keys() - fs.ipsets.keys():
                ips.remove(name)
                n += 1
            self._sets[v] = dict(fs.ipsets)
        for ifname, cidrs in desired.routes.items():
            if self._routes.get(ifname) != cidrs:
                self.routes.set_routes(ifname, cidrs)
                n += 1
        for ifname in self._routes.keys() - desired.routes.keys():
            self.routes.set_routes(ifname, set())
            n += 1
        self._routes = dict(desired.routes)
        neigh = {(ifname, ip): mac for ifname, m in desired.neighbours.items() for ip, mac in m.items()}
        for key, mac in neigh.items():
            if self._neigh.get(key) != mac:
                self.routes.set_neighbour(key[0], key[1], mac)
                n += 1
        for key in self._neigh.keys() - neigh.keys():
            self.routes.set_neighbour(key[0], key[1], None)
            n += 1
        self._neigh = neigh
        return n

    async def apply(self) -> None:
        """Apply every writer once; raises DataplaneError (the caller retries with backoff).

        New ipsets must exist before iptables rules that name them, so then the
        ipset restore goes first; when only members change, it runs alongside
        the iptables restores (the common incremental case: one process less on
        the critical path).  Set destruction waits until the rules are gone.
        """
        t: dict[str, float] = {}
        t0 = time.perf_counter()

        async def timed(name: str, *aws) -> None:
            await asyncio.gather(*aws)
            t[name] = time.perf_counter() - t0

        ips = [self.ipsets[v].apply_updates() for v in self.versions]
        ipt = [self.tables[v].apply() for v in self.versions]
        if self._new_sets:
            await timed("ipsets", *ips)
            await timed("iptables", *ipt)
        else:
            await timed("iptables", *ips, *ipt)
        self._new_sets = False
        await timed("ipset-deletes", *(self.ipsets[v].apply() for v in self.versions))
        await timed("routes", self.routes.apply())
        t["total"] = time.perf_counter() - t0
        self.last_timings = t

    async def prefetch(self) -> None:
        """Read every writer's kernel state at once, before the first apply needs it."""
        await asyncio.gather(*(self.tables[v].prefetch() for v in self.versions),
                             *(self.ipsets[v].prefetch() for v in self.versions),
                             self.routes.prefetch())

    async def cleanup_stale(self) -> None:
        """After the first in-sync apply: remove felix chains, ipsets and routes nobody desires."""
        await asyncio.gather(*(self.tables[v].cleanup_stale() for v in self.versions))
        await asyncio.gather(*(self.ipsets[v].cleanup_stale() for v in self.versions))
        await self.routes.cleanup_stale()

    async def refresh_iptables(self) -> None:
        await asyncio.gather(*(self.tables[v].refresh() for v in self.versions))

    async def refresh_ipsets(self) -> None:
        await asyncio.gather(*(self.ipsets[v].refresh() for v in self.versions))

    async def refresh_routes(self) -> None:
        await self.routes.refresh()
