"""The Dataplane: every writer of one Felix behind one object, the only thing the daemon applies.

Why a facade: the kernel state Felix owns is split across writers (the filter
and nat tables per family, the ipsets per family, routes, the overlay devices,
sysctls), and the order between them matters.  Before this, the daemon applied
the filter writers and an add-on object reached into them to apply the nat
tables and the overlay with the same ipset writers.  Here one object holds all
of them and knows the order:

  ipsets (new sets) -> filter tables -> ipset deletes -> routes   (felix.driver)
  -> conntrack deletes of addresses that left their endpoint
  then: ipsets -> nat tables -> ipset deletes, then overlay devices (+ routes)

The conntrack flush goes after the routes: by then the new owner's policy is
in place, so the first packet of a flushed flow is judged by it (deleting
earlier could let the old policy re-admit the flow).

The daemon hands desired state over (`push`, `push_nat_overlay`: model only,
no I/O) and calls `apply()` / `apply_nat_overlay()`; a kernel refusal raises
DataplaneError and the daemon's ApplyPolicy decides what follows.  Nothing
here knows the calculators: desired state arrives as felix.desired data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from felix.dataplane.conntrack import ConntrackFlusher
from felix.driver import DataplaneDriver

if TYPE_CHECKING:
    from felix.dataplane.ipsets import IpsetWriter
    from felix.dataplane.iptables import IptablesTable
    from felix.dataplane.overlay import OverlayDataplane
    from felix.dataplane.routes import RouteWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Writers:
    """A Dataplane's writers by role, for readers of their stats and models (metrics).

    Readers get them here, named and typed, instead of probing the facade's
    attributes: the facade stays free to rearrange how it holds them.  The
    mappings are read-only; driving a writer stays the facade's job alone.
    """

    filter_tables: Mapping[int, IptablesTable]
    nat_tables: Mapping[int, IptablesTable]
    ipsets: Mapping[int, IpsetWriter]
    routes: RouteWriter
    overlay: OverlayDataplane


class NatPusher:
    """Hands one family's NatState to its nat IptablesTable and IpsetWriter (model calls only).

    Remembers what it handed over last so chains, hooks and sets that are no
    longer wanted are removed (the nat table goes back to untouched when there
    is nothing to NAT).  Apply order stays the caller's: ipsets.apply_updates()
    -> table.apply() -> ipsets.apply() (which destroys removed sets).
    """

    def __init__(self, table, ipsets):
        self.table, self.ipsets = table, ipsets
        self._chains: set[str] = set()
        self._hooks: set[str] = set()
        self._sets: set[str] = set()

    def push(self, st) -> None:
        for name, members in st.ipsets.items():
            self.ipsets.set_members(name, members)
        for name, rules in st.chains.items():
            self.table.set_chain(name, rules)
        for builtin, rules in st.hooks.items():
            self.table.set_hooks(builtin, rules)
        for builtin in self._hooks - set(st.hooks):
            self.table.set_hooks(builtin, [])
        for name in self._chains - set(st.chains):
            self.table.remove_chain(name)
        for name in self._sets - set(st.ipsets):
            self.ipsets.remove(name)
        self._chains, self._hooks, self._sets = set(st.chains), set(st.hooks), set(st.ipsets)


class Dataplane:
    """Owns the filter writers (a DataplaneDriver), the nat tables, the overlay devices and sysctls.

    Metrics read the writers' own stats through `writers()` after each batch;
    the daemon times the whole apply.
    """

    def __init__(self, driver: DataplaneDriver, nat_tables: Mapping[int, object], overlay, sysctl,
                 conntrack: ConntrackFlusher | None = None):
        self.driver = driver
        # default: the filter tables' runner, so conntrack runs in the same namespace as they do
        self.conntrack = conntrack if conntrack is not None else ConntrackFlusher(
            driver.tables[driver.versions[0]].runner)
        self.nat_tables = dict(nat_tables)
        self._nat_pushers = {v: NatPusher(t, driver.ipsets[v]) for v, t in self.nat_tables.items()}
        self.overlay = overlay
        self.sysctl = sysctl

    # ---- read-only answers ----
    def writers(self) -> Writers:
        return Writers(filter_tables=MappingProxyType(self.driver.tables),
                       nat_tables=MappingProxyType(self.nat_tables),
                       ipsets=MappingProxyType(self.driver.ipsets),
                       routes=self.driver.routes, overlay=self.overlay)

    @property
    def versions(self) -> tuple[int, ...]:
        return self.driver.versions

    @property
    def last_timings(self) -> dict[str, float]:
        return self.driver.last_timings

    @property
    def backend_mode(self) -> str:
        return self.driver.tables[4].backend.mode

    def not_ready_reasons(self) -> list[str]:
        return self.overlay.not_ready_reasons()

    def routes_settled(self) -> bool:
        """Every route is programmed (none waits for its interface)."""
        return not self.driver.routes.stats.get("deferred", 1)

    # ---- model (no I/O) ----
    def push(self, desired) -> int:
        """The core calculator's DesiredState: filter chains, ipsets, routes, neighbours."""
        self.conntrack.set_endpoints(desired.endpoints, self.driver.versions)
        return self.driver.push(desired)

    def push_nat_overlay(self, nat: Mapping[int, object], overlay_state, datastore_mac: str | None) -> None:
        """One NatState per family and the OverlayState; `datastore_mac` is what etcd holds as our
        VXLAN MAC: when it is another, the overlay writer publishes ours again."""
        for v, pusher in self._nat_pushers.items():
            pusher.push(nat[v])
        self.overlay.set_state(overlay_state)
        mac = self.overlay.vxlan_mac
        if mac and datastore_mac not in (None, mac):
            self.overlay.republish_mac()

    def interface_changed(self, name: str) -> None:
        self.driver.routes.interface_changed(name)

    # ---- kernel ----
    async def prefetch(self) -> None:
        await self.driver.prefetch()

    async def apply(self) -> None:
        await self.driver.apply()
        await self.conntrack.apply()      # never raises: a failure is logged, the flows time out

    async def apply_nat_overlay(self) -> None:
        ipsets = self.driver.ipsets
        await asyncio.gather(*(ipsets[v].apply_updates() for v in self.nat_tables))
        await asyncio.gather(*(t.apply() for t in self.nat_tables.values()))
        await asyncio.gather(*(ipsets[v].apply() for v in self.nat_tables))
        await self.overlay.apply()

    async def cleanup_stale(self) -> None:
        """After the first complete apply: remove what Felix owns and nobody desires."""
        before = self.driver.routes.kernel_routes().keys()
        await self.driver.cleanup_stale()
        # workloads removed while Felix was down: their stale routes went just now, so their flows go too
        self.conntrack.release_unowned(before - self.driver.routes.kernel_routes().keys())
        await self.conntrack.apply()
        await asyncio.gather(*(t.cleanup_stale() for t in self.nat_tables.values()))
        await self.overlay.cleanup_stale()

    async def refresh_iptables(self) -> None:
        await self.driver.refresh_iptables()
        await asyncio.gather(*(t.refresh() for t in self.nat_tables.values()))

    async def refresh_routes(self) -> None:
        await self.driver.refresh_routes()

    async def refresh_ipsets(self) -> None:
        await self.driver.refresh_ipsets()

    async def configure_global(self, v6: bool) -> list[str]:
        return await self.sysctl.configure_global(v6=v6)

    async def configure_interface(self, name: str, v6: bool) -> list[str]:
        return await self.sysctl.configure_interface(name, v6=v6)

    def close(self) -> None:
        self.overlay.close()     # its RouteWriter is the driver's: closed below, once
        self.driver.routes.close()
        self.sysctl.close()
