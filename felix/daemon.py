"""Felix's one asyncio loop: syncer -> calculator -> dataplane writers.

Every input (syncer batches, interface events, refresh timers, retry timers)
goes through one queue and one consumer, so exactly one coroutine ever
touches the calculator and the writers; events that queue up while an apply
runs are folded into the next apply.

Nothing is programmed before the first IN_SYNC (a restarted Felix keeps the
working dataplane untouched until it knows the whole picture), and stale
felix chains, ipsets and routes are only removed after the first complete
apply.  Felix exits 1 when it loses an invariant (a writer keeps failing,
a task dies), and EXIT_CONFIG_CHANGED when a parameter that cannot change
live did change, so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from felix.addons import Addons
from felix.calc import CalcConfig, Calculator
from felix.config import EXIT_CONFIG_CHANGED, Config
from felix.dataplane.errors import DataplaneError
from libcalico import keys
from libcalico.datastore import DatastoreClient
from libcalico.ratelimit import RateLimitedLog
from libcalico.syncer import Syncer, Update

log = logging.getLogger(__name__)

# + block affinities for the overlay, and every node's BGP addresses (felix.addons.WATCH_PREFIXES)
WATCH_PREFIXES = ["/calico/v1/", "/calico/ipam/v2/host/", "/calico/bgp/v1/host/"]
MAX_APPLY_FAILURES = 8          # consecutive failed applies before Felix gives up (exit 1)
RETRY_BACKOFF = (0.2, 0.5, 1, 2, 4, 8, 15, 30)


class FelixExit(Exception):
    """Leave the loop with a process exit code (1: invariant lost, EXIT_CONFIG_CHANGED: restart me)."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


class Felix:
    """One Felix: owns the syncer, the calculator, the writers and the timers of one host.

    `boot` is the env/file config (enough to reach etcd); the full config is
    resolved at the first in-sync.  `netns` runs every writer inside that
    namespace (None: our own), which is how tests and benchmarks drive it.
    """

    def __init__(self, boot: Config, environ: dict[str, str] | None = None, netns: str | None = None):
        self.boot = boot
        self.environ = environ
        self.netns = netns
        self.hostname: str = boot.FelixHostname
        self.cfg: Config | None = None
        self.host_cfg: dict[str, str] = {}
        self.global_cfg: dict[str, str] = {}
        self.calc: Calculator | None = None
        # A flood of bad keys must not become a flood of log lines: a few per second, then a count.
        self._bad_data_log = RateLimitedLog(log)
        self.driver = None
        self.ifmon = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.in_sync = False
        self.programmed = False          # first full apply done
        self.apply_failures = 0
        self.last_apply_ok = False
        self.retry_pending = False
        self.tasks: list[asyncio.Task] = []
        self.ifaces_up: set[str] = set()
        self.iface_index: dict[str, int] = {}
        self.stats = {"batches": 0, "updates": 0, "applies": 0, "apply_errors": 0}
        self.endpoint_status = None
        self._warned: set[str] = set()
        self.sysctl = None
        self._prefetch: asyncio.Task | None = None  # read-ahead of the kernel during the snapshot
        self._pending: list[Update] = []
        self.addons = Addons(self)        # overlay, NAT, health, metrics (felix/addons.py)

    # ---- config ---------------------------------------------------------------------

    def _config_update(self, u: Update) -> bool:
        """Record a config key; True if it was one."""
        k = u.parsed_key or keys.parse(u.key or "")
        if k is None or k.kind not in ("global_config", "host_config"):
            return False
        if k.kind == "host_config" and k.host != self.hostname:
            return True
        target = self.global_cfg if k.kind == "global_config" else self.host_cfg
        if u.kind == "put" and isinstance(u.value, str):
            target[k.param] = u.value
        else:
            target.pop(k.param, None)
        return True

    def _resolve_config(self) -> Config:
        return Config.resolve(self.host_cfg, self.global_cfg, environ=self.environ, hostname=self.hostname)

    def _calc_config(self, cfg: Config) -> CalcConfig:
        return CalcConfig(hostname=self.hostname, iface_prefix=cfg.InterfacePrefix,
                          endpoint_to_host_action=cfg.DefaultEndpointToHostAction, ipv6=cfg.Ipv6Support,
                          failsafe_inbound=cfg.FailsafeInboundHostPorts,
                          failsafe_outbound=cfg.FailsafeOutboundHostPorts)

    def _config_changed(self) -> None:
        new = self._resolve_config()
        for w in new.warnings:
            if w not in self._warned:           # a bad value written after start: logged once
                self._warned.add(w)
                log.warning("config: %s", w)
        changed = self.cfg.restart_needed(new)
        if changed:
            raise FelixExit(EXIT_CONFIG_CHANGED,
                            f"parameter(s) {', '.join(changed)} changed and cannot apply live: restarting")
        for name, v in new.items():
            if v.value != getattr(self.cfg, name):
                log.info("config: %s changed to %r (from %s)", name, v.value, v.source)
        self.cfg = new
        set_log_level(new.LogSeverityScreen)
        self.calc.cfg = self._calc_config(new)
        self.addons.configure(new)

    # ---- main -----------------------------------------------------------------------

    async def run(self) -> int:
        """Run until an exit condition; returns the process exit code (cancel it to stop: 0)."""
        try:
            return await self._run()
        except FelixExit as e:
            log.log(logging.INFO if e.code == EXIT_CONFIG_CHANGED else logging.ERROR, "exiting: %s", e)
            return e.code
        finally:
            if self._prefetch is not None:
                self._prefetch.cancel()
                with contextlib.suppress(BaseException):
                    _, pre = await self._prefetch
                    pre.routes.close()
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.addons.stop()
            if self.driver is not None:
                with contextlib.suppress(Exception):
                    self.driver.routes.close()
            if self.sysctl is not None:
                self.sysctl.close()
            client = getattr(self, "client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 1)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        t = asyncio.create_task(coro, name=name)
        t.add_done_callback(self._task_done)
        self.tasks.append(t)
        return t

    def _task_done(self, t: asyncio.Task) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        # Any background task ending is an invariant lost: the main loop exits non-zero.
        self.queue.put_nowait(("died", f"task {t.get_name()} ended: {exc!r}" if exc else
                               f"task {t.get_name()} ended"))

    async def _run(self) -> int:
        b = self.boot
        tls = b.etcd_tls()
        client = DatastoreClient(endpoints=b.etcd_endpoints(), ca=tls["ca"], cert=tls["cert"], key=tls["key"])
        self.client = client
        syncer = Syncer(client, WATCH_PREFIXES, wait_for_ready=True)
        self.syncer = syncer
        await self.addons.start_servers(b)
        log.info("Felix starting for host %s, etcd %s", self.hostname, ", ".join(b.etcd_endpoints()))
        self._spawn(self._pump(syncer), "syncer")
        self._prefetch = asyncio.create_task(self._prefetch_driver(), name="dataplane-read-ahead")
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            await self._handle(items)

    async def _pump(self, syncer: Syncer) -> None:
        async for batch in syncer.batches():
            await self.queue.put(("batch", batch))

    async def _ticker(self, what: str, interval_param: str) -> None:
        while True:
            interval = getattr(self.cfg, interval_param)
            if not interval:
                await asyncio.sleep(5)
                continue
            await asyncio.sleep(interval)
            await self.queue.put((what, None))

    async def _retry_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.queue.put(("retry", None))

    async def _handle(self, items: list[tuple[str, object]]) -> None:
        self._bad_data_log.flush()
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
                self.retry_pending = False
                dirty = True
        if not self.in_sync:
            return
        if not self.programmed:
            await self._first_program()
            return
        for name in new_ifaces:
            if name in self.ifaces_up:
                await self.sysctl.configure_interface(name, v6=self.cfg.Ipv6Support)
        try:
            if dirty:
                await self._push()
                await self.driver.apply()
                await self.addons.apply()
            if refresh_ipt:
                await self.driver.refresh_iptables()
                await self.addons.refresh()
            if refresh_routes:
                await self.driver.refresh_routes()
            if refresh_sets:
                await self.driver.refresh_ipsets()
            self._applied_ok()
        except DataplaneError as e:
            self._apply_failed(e)
        self.addons.after_apply()
        if dirty and self.driver is not None:
            log.debug("batch applied in %.1f ms (%s)", (time.monotonic() - t0) * 1000,
                      ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.driver.last_timings.items()))

    def _applied_ok(self) -> None:
        if self.apply_failures:
            log.info("dataplane applied again after %d failure(s)", self.apply_failures)
        self.apply_failures = 0
        self.last_apply_ok = True
        self.stats["applies"] += 1

    def _apply_failed(self, e: Exception) -> None:
        self.apply_failures += 1
        self.last_apply_ok = False
        self.stats["apply_errors"] += 1
        if self.apply_failures >= MAX_APPLY_FAILURES:
            raise FelixExit(1, f"dataplane apply failed {self.apply_failures} times in a row: {e}")
        delay = RETRY_BACKOFF[min(self.apply_failures - 1, len(RETRY_BACKOFF) - 1)]
        log.error("dataplane apply failed (%d in a row), retrying in %.1fs: %s", self.apply_failures, delay, e)
        if not self.retry_pending:
            self.retry_pending = True
            self._spawn_retry(delay)

    def _spawn_retry(self, delay: float) -> None:
        t = asyncio.create_task(self._retry_later(delay), name="retry")
        self.tasks.append(t)
        t.add_done_callback(lambda t: self.tasks.remove(t) if t in self.tasks else None)

    def _on_batch(self, batch: list[Update]) -> bool:
        self.stats["batches"] += 1
        dirty = False
        config_changed = False
        for u in batch:
            if u.kind == "in_sync":
                if not self.in_sync:
                    self.in_sync = True
                    log.info("in sync with the datastore")
                continue
            if u.kind == "unknown":
                continue
            self.stats["updates"] += 1
            dirty |= self.addons.feed(u)
            if self._config_update(u):
                config_changed = True
                if not _names_node_address(u):
                    continue
            if self.calc is None:
                self._pending.append(u)
            else:
                self._feed(u)
                dirty = True
        if self.calc is not None:
            self._log_calc_errors()
        if config_changed and self.cfg is not None:
            self._config_changed()
            dirty = True
        return dirty

    def _feed(self, u: Update) -> None:
        key = u.parsed_key or keys.parse(u.key or "")
        if key is None:
            return
        self.calc.on_update(u.kind, key, u.value if u.kind == "put" else u.error,
                            create_revision=getattr(u, "create_revision", 0))

    def _log_calc_errors(self) -> None:
        """Once per batch: the calculator ranks claimants of one address or interface
        when asked, so asking per update would rank a batch of them once per update."""
        for k, reason in self.calc.take_errors():
            self._bad_data_log.log("invalid data", logging.WARNING, "ignoring invalid data at %s: %s", k, reason)

    def _on_iface(self, name: str, state: str, index: int) -> bool:
        if state == "up":
            self.ifaces_up.add(name)
        else:
            self.ifaces_up.discard(name)
        prev = self.iface_index.pop(name, None)
        if state != "gone":
            self.iface_index[name] = index
        if self.driver is None:
            return False
        if prev is None and state != "gone" and not self.driver.routes.stats.get("deferred", 1):
            # First report of an interface (the monitor's initial dump) while every route is
            # programmed: the route writer resolved it already, re-queueing 1,000 interfaces
            # would only burn CPU.  Re-created interfaces (a new index) always re-queue.
            return self.endpoint_status is not None
        self.driver.routes.interface_changed(name)
        return True

    async def _push(self) -> None:
        if self.calc.policy.hosts.needs_addrs():   # host endpoints by expected address
            from felix.hostaddrs import read_interface_addrs
            # `ip addr` is a child process (up to its timeout): never on the event loop itself
            addrs = await asyncio.to_thread(read_interface_addrs, self.netns)
            self.calc.policy.hosts.set_interface_addrs(addrs)
        desired = self.calc.desired()
        self.driver.push(desired)
        if self.endpoint_status is not None:
            statuses = {
                (ep.orchestrator, ep.workload, ep.endpoint_id):
                    "up" if ep.active and ep.iface in self.ifaces_up else "down"
                for ep in desired.endpoints.values()}
            for ep, reason in desired.conflicts.values():
                statuses[(ep.orchestrator, ep.workload, ep.endpoint_id)] = ("error", reason)
            self.endpoint_status.update(statuses)

    async def _first_program(self) -> None:
        """First IN_SYNC: resolve config, build writers, program everything, then clean up."""
        phases: dict[str, float] = {}
        tp = time.monotonic()
        self.cfg = self._resolve_config()
        self.cfg.log_all(log, already_warned=set(self.boot.warnings))
        self._warned = set(self.boot.warnings) | set(self.cfg.warnings)
        set_log_level(self.cfg.LogSeverityScreen)
        self.calc = Calculator(self._calc_config(self.cfg))
        self.addons.configure(self.cfg)
        for u in self._pending:
            self._feed(u)
        self._pending = []
        self._log_calc_errors()
        phases["calc"] = time.monotonic() - tp
        tp = time.monotonic()
        self.driver = await self._make_driver()
        phases["driver"] = time.monotonic() - tp
        for attempt in range(MAX_APPLY_FAILURES):
            try:
                t0 = time.monotonic()
                await self._push()
                phases["push"] = time.monotonic() - t0
                await self.driver.apply()
                await self.addons.apply()
                t1 = time.monotonic()
                await self.driver.cleanup_stale()
                await self.addons.cleanup_stale()
                log.info("dataplane programmed: %d local endpoint(s) in %.2fs (%s; stale cleanup %.0f ms; "
                         "before it: %s)",
                         len(self.calc.local), time.monotonic() - t0,
                         ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.driver.last_timings.items()),
                         (time.monotonic() - t1) * 1000,
                         ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in phases.items()))
                self._applied_ok()
                break
            except DataplaneError as e:
                delay = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
                log.error("first dataplane apply failed, retrying in %.1fs: %s", delay, e)
                await asyncio.sleep(delay)
        else:
            raise FelixExit(1, "could not program the dataplane at start")
        self.programmed = True
        # Started only now: its initial dump reports every existing interface
        # (sysctls are written then), and it must not slow the first apply.
        await self._start_interface_monitor()
        self.addons.after_apply()
        self._spawn(self._ticker("refresh-iptables", "IptablesRefreshInterval"), "iptables-refresh")
        self._spawn(self._ticker("refresh-routes", "RouteRefreshInterval"), "route-refresh")
        self._spawn(self._ticker("refresh-ipsets", "IpsetsRefreshInterval"), "ipset-refresh")
        if self.cfg.ReportingIntervalSecs:
            from felix.status import StatusReporter
            rep = StatusReporter(self.client, self.hostname, self.cfg.ReportingIntervalSecs,
                                 self.cfg.ReportingTTLSecs)
            self._spawn(rep.run(), "status-reporter")
        if self.cfg.EndpointReportingEnabled:
            from felix.status import EndpointStatusReporter
            self.endpoint_status = EndpointStatusReporter(self.client, self.hostname,
                                                          self.cfg.EndpointReportingDelaySecs)
            self._spawn(self.endpoint_status.run(), "endpoint-status")
            await self._push()

    @staticmethod
    def _driver_settings(cfg: Config) -> tuple:
        """The parameters a DataplaneDriver is built from (all restart-only)."""
        return (cfg.IptablesBackend, cfg.Ipv6Support, cfg.InterfacePrefix, cfg.IptablesLockTimeoutSecs)

    async def _build_driver(self, cfg: Config):
        from felix.dataplane import backend as backend_mod
        from felix.dataplane.cmd import CmdRunner
        from felix.dataplane.routes import RouteWriter
        from felix.driver import DataplaneDriver

        runner = CmdRunner(self.netns)
        be = await backend_mod.detect(cfg.IptablesBackend, runner)
        routes = RouteWriter(self.netns, managed_prefixes=(cfg.InterfacePrefix,))
        return DataplaneDriver(runner, be, routes, ipv6=cfg.Ipv6Support, lock_wait=cfg.IptablesLockTimeoutSecs)

    async def _prefetch_driver(self) -> tuple[tuple, object]:
        """Start-up work that only reads the kernel, run while the datastore snapshot loads.

        Backend detection and the first `iptables-save`/`ipset save`/route
        dump are subprocess and netlink waits; overlapping them with the
        snapshot takes them off the cold-start path.  Built from the env/file
        settings: if the datastore overrides one of them, the result is
        discarded and the driver built again (see _make_driver).
        """
        driver = await self._build_driver(self.boot)
        try:
            await driver.prefetch()
        except BaseException:
            driver.routes.close()
            raise
        return self._driver_settings(self.boot), driver

    async def _make_driver(self):
        driver = None
        task, self._prefetch = self._prefetch, None
        if task is not None:
            try:
                settings, pre = await task
            except Exception as e:  # noqa: BLE001 - a failed read-ahead is only lost time
                log.warning("dataplane read-ahead failed, reading the kernel now: %s", e)
            else:
                if settings == self._driver_settings(self.cfg):
                    driver = pre
                else:
                    log.info("dataplane settings from the datastore differ from env/file: re-reading the kernel")
                    pre.routes.close()
        if driver is None:
            driver = await self._build_driver(self.cfg)
        log.info("iptables backend: %s", driver.tables[4].backend.mode)
        from felix.dataplane.sysctl import SysctlWriter
        self.sysctl = SysctlWriter(self.netns)
        failed = await self.sysctl.configure_global(v6=self.cfg.Ipv6Support)
        if failed:
            log.warning("global sysctls: %s", "; ".join(failed))
        return driver

    async def _start_interface_monitor(self) -> None:
        from felix.dataplane.interfaces import InterfaceMonitor

        def changed(name: str, state: str, index: int) -> None:
            self.queue.put_nowait(("iface", (name, state, index)))

        self.ifmon = InterfaceMonitor(self.netns, self.cfg.InterfacePrefix, changed)
        t = self.ifmon.start()
        t.add_done_callback(self._task_done)
        self.tasks.append(t)


def _names_node_address(u: Update) -> bool:
    """A host's tunnel address is config and a node's own address: the calculator refuses
    workloads that claim one, so it must see these keys too."""
    from felix.calc.nodes import TUNNEL_PARAMS

    k = u.parsed_key or keys.parse(u.key or "")
    return k is not None and k.kind == "host_config" and k.param in TUNNEL_PARAMS


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL, "none": logging.CRITICAL + 10}


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(_LEVELS.get(level, logging.INFO))


def setup_logging(level: str = "info") -> None:
    from libcalico import logsafe
    logsafe.basic_config(format="%(asctime)s.%(msecs)03d [%(levelname)s] %(name)s: %(message)s",
                         datefmt="%Y-%m-%dT%H:%M:%S", force=True)
    set_log_level(level)
    for noisy in ("aetcd", "grpc", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
