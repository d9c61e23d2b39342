"""Felix's one asyncio loop: syncer -> router -> calculators -> Dataplane.

Every input (syncer batches, interface events, refresh timers, retry timers,
resolved names) goes through one queue and one consumer, so exactly one
coroutine ever touches the calculators and the writers; events that queue up
while an apply runs are folded into the next apply.

Nothing is programmed before the first in-sync (a restarted Felix keeps the
working dataplane untouched until it knows the whole picture), and stale
felix chains, ipsets and routes are only removed after the first complete
apply.  Felix exits 1 when it loses an invariant (a writer keeps failing,
a task dies), and EXIT_CONFIG_CHANGED when a parameter that cannot change
live did change, so its supervisor restarts it.

The parts are built by felix.wiring and handed in; this module only runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

from felix.config import EXIT_CONFIG_CHANGED, Config
from felix.dataplane.errors import DataplaneError
from felix.policy_apply import MAX_APPLY_FAILURES, RETRY_BACKOFF, ApplyPolicy, FelixExit
from felix.router import ADDONS, CORE
from felix.status import FelixState

log = logging.getLogger(__name__)

ROUND_INTERVAL = 0.05   # seconds: the shortest gap between two rounds once in sync
FREEZE_GC = False       # gc.freeze() after the first complete program (the calico-felix process)

__all__ = ["MAX_APPLY_FAILURES", "RETRY_BACKOFF", "Felix", "FelixExit", "set_log_level", "setup_logging"]


class Felix:
    """The loop of one Felix.  Build it with `felix.wiring.build_felix(boot, environ, netns)`."""

    def __init__(self, *, boot: Config, client, syncer, config, router, board, settings, dataplanes,
                 build_calculators: Callable, build_reporters: Callable, interface_monitor: Callable,
                 status, servers, netns: str | None = None):
        self.boot = boot
        self.hostname: str = boot.FelixHostname
        self.netns = netns
        self._client = client
        self._syncer = syncer
        self._config = config
        self._router = router
        self._board = board
        self._settings = settings
        self._dataplanes = dataplanes
        self._build_calculators = build_calculators
        self._build_reporters = build_reporters
        self._interface_monitor = interface_monitor
        self.status = status            # read-only view: what health and metrics see
        self._servers = servers
        self._queue: asyncio.Queue = asyncio.Queue()
        self._policy = ApplyPolicy(self._retry_later)
        self._tasks: list[asyncio.Task] = []
        self._calcs = None              # felix.wiring.Calculators, from the first in-sync
        self.dataplane = None           # felix.dataplane_facade.Dataplane, from the first in-sync
        self._stale: set[str] = {ADDONS}  # calculators whose output is not in the kernel yet
        self._ifaces_up: set[str] = set()
        self._iface_index: dict[str, int] = {}
        self._endpoint_status = None

    # ---- read-only answers for FelixStatus ----

    def local_endpoints(self) -> int:
        """Local workload and host endpoints (real Felix's felix_active_local_endpoints counts both)."""
        if self._calcs is None:
            return 0
        return len(self._calcs.core.local) + len(self._calcs.core.policy.hosts.local())

    def calc_counts(self) -> dict[str, int]:
        """What the calculators already hold, counted for metrics (felix_cluster_*, active policies)."""
        if self._calcs is None:
            return {}
        core = self._calcs.core
        policy = core.policy
        prefix = self._config.current.InterfacePrefix if self._config.current is not None else "cali"
        active = policy.hosts.used_policies(prefix)
        for key in core.local:
            active.update(policy.matching_policies(key))
        hosts = set(core.endpoint_hosts())     # kept by the calculator: no pass over every endpoint
        hosts.update(h for h in map(core.nodes.owner, core.nodes.addresses()) if h is not None)
        hosts.update(h.host for h in policy.hosts.all.values())
        return {"local_policies": len(active), "hosts": len(hosts), "workload_endpoints": len(core.endpoints),
                "host_endpoints": len(policy.hosts.all)}

    def dataplane_reasons(self) -> list[str]:
        return self.dataplane.not_ready_reasons() if self.dataplane is not None else []

    def reconfigure_soon(self) -> None:
        """A name lookup changed the NAT config: fold it in on the loop, then apply."""
        self._queue.put_nowait(("reconfigure", None))

    # ---- main -----------------------------------------------------------------------

    async def run(self) -> int:
        """Run until an exit condition; returns the process exit code (cancel it to stop: 0)."""
        try:
            return await self._run()
        except FelixExit as e:
            log.log(logging.INFO if e.code == EXIT_CONFIG_CHANGED else logging.ERROR, "exiting: %s", e)
            return e.code
        finally:
            self._board.state = FelixState.STOPPING
            await self._dataplanes.cancel()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._settings.stop()
            with contextlib.suppress(Exception):
                await self._servers.stop()
            if self.dataplane is not None:
                with contextlib.suppress(Exception):
                    self.dataplane.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.close(), 1)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        t = asyncio.create_task(coro, name=name)
        self._watch(t)
        return t

    def _watch(self, t: asyncio.Task) -> None:
        t.add_done_callback(self._task_done)
        self._tasks.append(t)

    def _task_done(self, t: asyncio.Task) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        # Any background task ending is an invariant lost: the main loop exits non-zero.
        self._queue.put_nowait(("died", f"task {t.get_name()} ended: {exc!r}" if exc else
                                f"task {t.get_name()} ended"))

    async def _run(self) -> int:
        await self._servers.start()
        log.info("Felix starting for host %s, etcd %s", self.hostname, ", ".join(self.boot.etcd_endpoints()))
        self._spawn(self._pump(), "syncer")
        self._dataplanes.start_prefetch(self.boot)
        last_round = 0.0
        while True:
            items = [await self._queue.get()]
            if self._board.state is FelixState.IN_SYNC:
                # Under steady churn (workloads starting and stopping across the cluster) every
                # round costs the same fixed work whatever it carries: rounds at most every
                # ROUND_INTERVAL fold what arrives meanwhile into one apply.  A lone change after
                # a quiet spell goes at once.
                wait = last_round + ROUND_INTERVAL - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            last_round = time.monotonic()
            await self._handle(items)

    async def _pump(self) -> None:
        async for batch in self._syncer.batches():
            await self._queue.put(("batch", batch))

    async def _ticker(self, what: str, interval_param: str) -> None:
        while True:
            interval = getattr(self._config.current, interval_param)
            if not interval:
                await asyncio.sleep(5)
                continue
            await asyncio.sleep(interval)
            await self._queue.put((what, None))

    def _retry_later(self, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await self._queue.put(("retry", None))
        t = asyncio.create_task(later(), name="retry")
        self._tasks.append(t)
        t.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # ---- one round of the loop --------------------------------------------------------

    async def _handle(self, items: list[tuple[str, object]]) -> None:
        self._router.flush_log()
        t0 = time.monotonic()
        dirty = False
        refresh_ipt = refresh_routes = refresh_sets = False
        new_ifaces: list[str] = []
        for what, payload in items:
            if what == "died":
                raise FelixExit(1, str(payload))
            if what == "batch":
                dirty |= self._on_batch(payload)
            elif what == "iface":
                name, state, index = payload
                dirty |= self._on_iface(name, state, index)
                if state == "up":
                    new_ifaces.append(name)
            elif what == "refresh-iptables":
                refresh_ipt = True
            elif what == "refresh-routes":
                refresh_routes = True
            elif what == "refresh-ipsets":
                refresh_sets = True
            elif what == "retry":
                self._policy.retry_due()
                dirty = True
            elif what == "reconfigure":
                dirty |= self._nat_reconfigured()
        if self._board.state is FelixState.WAIT_FOR_READY:
            return
        if self._board.state is FelixState.PROGRAMMING:
            await self._first_program()
            return
        cfg = self._config.current
        for name in new_ifaces:
            if name in self._ifaces_up:
                await self.dataplane.configure_interface(name, v6=cfg.Ipv6Support)
        t_apply = time.monotonic()
        try:
            if dirty:
                await self._push()
                await self.dataplane.apply()
                await self._apply_nat_overlay()
            if refresh_ipt:
                await self.dataplane.refresh_iptables()
                await self._refresh_host_addrs()
                await self._apply_nat_overlay(force=True)
            if refresh_routes:
                await self.dataplane.refresh_routes()
            if refresh_sets:
                await self.dataplane.refresh_ipsets()
            self._policy.succeeded()
            self._board.applied(True, 0, time.monotonic() - t_apply)
        except DataplaneError as e:
            try:
                self._policy.failed(e)          # raises FelixExit once failures reach the limit
            finally:
                self._board.applied(False, self._policy.failures, time.monotonic() - t_apply)
        self._servers.record(self.status, self.dataplane)
        if dirty:
            log.debug("batch applied in %.1f ms (%s)", (time.monotonic() - t0) * 1000,
                      ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.dataplane.last_timings.items()))

    def _on_batch(self, batch: list) -> bool:
        self._board.counts["batches"] += 1
        routed = self._router.route(batch)
        batch.clear()   # routed: the router (or the calculators) hold what they need of it
        self._board.counts["updates"] += routed.updates
        self._stale |= routed.changed
        if routed.in_sync and self._board.state is FelixState.WAIT_FOR_READY:
            self._board.state = FelixState.PROGRAMMING
            log.info("in sync with the datastore")
        dirty = bool(routed.changed)
        if routed.config and self._config.current is not None:
            self._config_changed()
            dirty = True
        return dirty

    def _config_changed(self) -> None:
        new = self._config.reload()
        set_log_level(new.LogSeverityScreen)
        calcs = self._calcs
        if calcs.core.set_config(self._calc_config(new)):
            self._stale.add(CORE)
        ocfg, ncfg = self._settings.configure(new)
        if calcs.overlay.set_config(ocfg) | calcs.nat.set_config(ncfg):
            self._stale.add(ADDONS)

    def _calc_config(self, cfg: Config):
        from felix.wiring import calc_config
        return calc_config(self.hostname, cfg)

    def _nat_reconfigured(self) -> bool:
        if self._calcs is None or not self._calcs.nat.set_config(self._settings.nat_config()):
            return False
        self._stale.add(ADDONS)
        return True

    def _on_iface(self, name: str, state: str, index: int) -> bool:
        if state == "up":
            self._ifaces_up.add(name)
        else:
            self._ifaces_up.discard(name)
        prev = self._iface_index.pop(name, None)
        if state != "gone":
            self._iface_index[name] = index
        if self.dataplane is None:
            return False
        if prev is None and state != "gone" and self.dataplane.routes_settled():
            # First report of an interface (the monitor's initial dump) while every route is
            # programmed: the route writer resolved it already, re-queueing 1,000 interfaces
            # would only burn CPU.  Re-created interfaces (a new index) always re-queue.
            return self._endpoint_status is not None
        self.dataplane.interface_changed(name)
        return True

    async def _push(self) -> None:
        """The core calculator's desired state to the Dataplane (model only), and endpoint status."""
        core = self._calcs.core
        if core.policy.hosts.needs_addrs():   # host endpoints by expected address
            from felix.hostaddrs import read_interface_addrs
            # `ip addr` is a child process (up to its timeout): never on the event loop itself
            addrs = await asyncio.to_thread(read_interface_addrs, self.netns)
            core.policy.hosts.set_interface_addrs(addrs)
        desired = core.desired()
        self.dataplane.push(desired)
        self._stale.discard(CORE)
        if self._endpoint_status is not None:
            statuses = {
                (ep.orchestrator, ep.workload, ep.endpoint_id):
                    "up" if ep.active and ep.iface in self._ifaces_up else "down"
                for ep in desired.endpoints.values()}
            for ep, reason in desired.conflicts.values():
                statuses[(ep.orchestrator, ep.workload, ep.endpoint_id)] = ("error", reason)
            self._endpoint_status.update(statuses)

    async def _apply_nat_overlay(self, force: bool = False) -> None:
        """NAT and overlay, when their calculators changed (or `force`: drift repair)."""
        calcs = self._calcs
        if calcs.nat.set_losers(calcs.core.conflicts):   # whose int_ip is really its own
            self._stale.add(ADDONS)
        if ADDONS not in self._stale and not force:
            return
        nat = {v: calcs.nat.desired(v) for v in self.dataplane.versions}
        overlay = calcs.overlay.desired()
        self._router.log_errors()
        self.dataplane.push_nat_overlay(nat, overlay, calcs.overlay.host_mac(self.hostname))
        await self.dataplane.apply_nat_overlay()
        self._stale.discard(ADDONS)

    async def _refresh_host_addrs(self) -> None:
        from felix.addons import host_addrs
        addrs = await asyncio.to_thread(host_addrs, self.netns)
        if self._calcs.nat.set_host_addrs(addrs):
            self._stale.add(ADDONS)

    async def _first_program(self) -> None:
        """First in-sync: resolve config, build calculators and writers, program everything, clean up."""
        phases: dict[str, float] = {}
        tp = time.monotonic()
        cfg = self._config.first()
        set_log_level(cfg.LogSeverityScreen)
        self._calcs = self._build_calculators(cfg)
        self._router.attach(self._calcs.core, self._calcs.overlay, self._calcs.nat)
        phases["calc"] = time.monotonic() - tp
        tp = time.monotonic()
        self.dataplane = await self._dataplanes.build(cfg)
        phases["driver"] = time.monotonic() - tp
        for attempt in range(MAX_APPLY_FAILURES):
            try:
                t0 = time.monotonic()
                await self._push()
                phases["push"] = time.monotonic() - t0
                await self.dataplane.apply()
                await self._apply_nat_overlay()
                t1 = time.monotonic()
                await self.dataplane.cleanup_stale()
                log.info("dataplane programmed: %d local endpoint(s) in %.2fs (%s; stale cleanup %.0f ms; "
                         "before it: %s)",
                         self.local_endpoints(), time.monotonic() - t0,
                         ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.dataplane.last_timings.items()),
                         (time.monotonic() - t1) * 1000,
                         ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in phases.items()))
                self._policy.succeeded()
                break
            except DataplaneError as e:
                delay = self._policy.first_apply_delay(attempt)
                log.error("first dataplane apply failed, retrying in %.1fs: %s", delay, e)
                await asyncio.sleep(delay)
        else:
            raise FelixExit(1, "could not program the dataplane at start")
        self._board.state = FelixState.IN_SYNC
        self._board.applied(True, 0, t1 - t0)
        # Everything built so far lives as long as the cluster does: out of the collector's
        # sight, a full collection no longer walks 50,000 endpoints' objects (a pause of a few
        # hundred ms in the middle of steady churn).  Only in the program (felix.__main__ sets
        # FREEZE_GC): a test process running many Felixes would keep each one's garbage.
        if FREEZE_GC:
            gc.freeze()
        # Started only now: its initial dump reports every existing interface
        # (sysctls are written then), and it must not slow the first apply.
        self._start_interface_monitor(cfg.InterfacePrefix)
        self._servers.record(self.status, self.dataplane)
        self._spawn(self._ticker("refresh-iptables", "IptablesRefreshInterval"), "iptables-refresh")
        self._spawn(self._ticker("refresh-routes", "RouteRefreshInterval"), "route-refresh")
        self._spawn(self._ticker("refresh-ipsets", "IpsetsRefreshInterval"), "ipset-refresh")
        reporter, self._endpoint_status = self._build_reporters(cfg)
        if reporter is not None:
            self._spawn(reporter.run(), "status-reporter")
        if self._endpoint_status is not None:
            self._spawn(self._endpoint_status.run(), "endpoint-status")
            await self._push()

    def _start_interface_monitor(self, prefix: str) -> None:
        def changed(name: str, state: str, index: int) -> None:
            self._queue.put_nowait(("iface", (name, state, index)))

        self._watch(self._interface_monitor(prefix, changed).start())


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL, "none": logging.CRITICAL + 10}


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(_LEVELS.get(level, logging.INFO))


def setup_logging(level: str = "info") -> None:
    from libcalico import logsafe
    logsafe.basic_config(format="%(asctime)s.%(msecs)03d [%(levelname)s] %(name)s: %(message)s",
                         datefmt="%Y-%m-%dT%H:%M:%S", force=True)
    set_log_level(level)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
