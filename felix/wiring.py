"""Builds one Felix: every component, each handed the collaborators it needs, in one place.

Why here and not in the components: nothing should construct its own
collaborators or reach back into whoever created it.  Reading this module
top to bottom tells which object talks to which:

  DatastoreClient -> Syncer -> Felix (the loop) -> UpdateRouter -> ConfigStore
                                                               -> Calculator, OverlayCalculator, NatCalculator
  Felix -> Dataplane (every writer) ; ApplyPolicy (retries, exit codes)
  StatusBoard (written by Felix) -> FelixStatus (read-only) -> health, metrics

Some parts can only exist once the first snapshot is in (their config lives
in the datastore): for those the daemon gets factories from here
(`build_calculators`, `DataplaneFactory.build`, `build_reporters`,
`InterfaceMonitor`), and calls them at its first in-sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from felix.addons import OverlayNatSettings, host_addrs
from felix.calc import CalcConfig, Calculator
from felix.calc.nat import NatCalculator
from felix.calc.overlay import OverlayCalculator
from felix.config import Config
from felix.config_store import ConfigStore
from felix.dataplane.errors import DataplaneError
from felix.dataplane_facade import Dataplane
from felix.health import HealthServer, felix_readiness
from felix.parse import parse_key_value
from felix.router import UpdateRouter
from felix.status import FelixStatus, StatusBoard
from libcalico import keys
from libcalico.datastore import DatastoreClient, DatastoreError
from libcalico.syncer import Syncer

log = logging.getLogger(__name__)

# /calico/v1/ for the core; block affinities for the overlay; every node's BGP addresses (an
# endpoint must not NAT or route a node's address to itself).
WATCH_PREFIXES = ["/calico/v1/", "/calico/ipam/v2/host/", "/calico/bgp/v1/host/"]


def calc_config(hostname: str, cfg: Config) -> CalcConfig:
    return CalcConfig(hostname=hostname, iface_prefix=cfg.InterfacePrefix,
                      endpoint_to_host_action=cfg.DefaultEndpointToHostAction, ipv6=cfg.Ipv6Support,
                      failsafe_inbound=cfg.FailsafeInboundHostPorts,
                      failsafe_outbound=cfg.FailsafeOutboundHostPorts)


@dataclass
class Calculators:
    core: Calculator
    overlay: OverlayCalculator
    nat: NatCalculator


def build_calculators(hostname: str, cfg: Config, settings: OverlayNatSettings, netns: str | None) -> Calculators:
    ocfg, ncfg = settings.configure(cfg)
    nat = NatCalculator(ncfg)
    nat.set_host_addrs(host_addrs(netns))
    return Calculators(Calculator(calc_config(hostname, cfg)), OverlayCalculator(ocfg), nat)


class Servers:
    """The health endpoints and the metrics exporter: both optional, both read FelixStatus only."""

    def __init__(self, health: HealthServer | None, metrics):
        self.health = health
        self.metrics = metrics

    async def start(self) -> None:
        """A port already taken is one error line, not a dead Felix (the probes will say so)."""
        if self.health is not None:
            try:
                await self.health.start()
            except OSError as e:
                log.error("health endpoints: cannot listen on %s:%s: %s", self.health.host, self.health.port, e)
                self.health = None
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as e:
                log.error("Prometheus metrics: cannot listen on %s:%s: %s", self.metrics.host, self.metrics.port, e)
                self.metrics = None

    def record(self, status: FelixStatus, dataplane: Dataplane | None) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.record_felix(status)
            if dataplane is not None:
                self.metrics.record_driver(dataplane)
        except Exception as e:  # noqa: BLE001 - metrics must never take Felix down
            log.debug("metrics update failed: %r", e)

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # shutdown() waits for the server's poll loop


class DataplaneFactory:
    """Builds the Dataplane, reading the kernel ahead while the datastore snapshot loads.

    Backend detection and the first `iptables-save`/`ipset save`/route dump are
    subprocess and netlink waits; overlapping them with the snapshot takes them
    off the cold-start path.  The read-ahead uses the env/file settings: if the
    datastore overrides one of them, it is discarded and the kernel read again.
    """

    def __init__(self, netns: str | None, publish_mac: Callable[[str], Awaitable[None]]):
        self.netns = netns
        self.publish_mac = publish_mac
        self._prefetch: asyncio.Task | None = None

    @staticmethod
    def _settings(cfg: Config) -> tuple:
        """The parameters the filter writers are built from (all restart-only)."""
        return (cfg.IptablesBackend, cfg.Ipv6Support, cfg.InterfacePrefix, cfg.IptablesLockTimeoutSecs)

    async def _driver(self, cfg: Config):
        from felix.dataplane import backend as backend_mod
        from felix.dataplane.cmd import CmdRunner
        from felix.dataplane.routes import RouteWriter
        from felix.driver import DataplaneDriver

        runner = CmdRunner(self.netns)
        be = await backend_mod.detect(cfg.IptablesBackend, runner)
        routes = RouteWriter(self.netns, managed_prefixes=(cfg.InterfacePrefix,))
        return DataplaneDriver(runner, be, routes, ipv6=cfg.Ipv6Support, lock_wait=cfg.IptablesLockTimeoutSecs)

    def start_prefetch(self, boot: Config) -> None:
        async def read_ahead():
            driver = await self._driver(boot)
            try:
                await driver.prefetch()
            except BaseException:
                driver.routes.close()
                raise
            return self._settings(boot), driver
        self._prefetch = asyncio.create_task(read_ahead(), name="dataplane-read-ahead")

    async def build(self, cfg: Config) -> Dataplane:
        from felix.dataplane.iptables import IptablesTable
        from felix.dataplane.overlay import OverlayDataplane
        from felix.dataplane.sysctl import SysctlWriter

        driver = None
        task, self._prefetch = self._prefetch, None
        if task is not None:
            try:
                settings, pre = await task
            except Exception as e:  # noqa: BLE001 - a failed read-ahead is only lost time
                log.warning("dataplane read-ahead failed, reading the kernel now: %s", e)
            else:
                if settings == self._settings(cfg):
                    driver = pre
                else:
                    log.info("dataplane settings from the datastore differ from env/file: re-reading the kernel")
                    pre.routes.close()
        if driver is None:
            driver = await self._driver(cfg)
        nat_tables = {v: IptablesTable(v, "nat", t.runner, t.backend, lock_wait=t.lock_wait)
                      for v, t in driver.tables.items()}
        overlay = OverlayDataplane.from_config(cfg, self.netns, driver.routes, on_vxlan_mac=self.publish_mac)
        dp = Dataplane(driver, nat_tables, overlay, SysctlWriter(self.netns))
        log.info("iptables backend: %s", dp.backend_mode)
        failed = await dp.configure_global(v6=cfg.Ipv6Support)
        if failed:
            log.warning("global sysctls: %s", "; ".join(failed))
        return dp

    async def cancel(self) -> None:
        """Felix stops before the first in-sync: drop the read-ahead and its netlink socket."""
        task, self._prefetch = self._prefetch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                _, pre = await task
                pre.routes.close()


def build_reporters(client, hostname: str, cfg: Config):
    """(StatusReporter | None, EndpointStatusReporter | None) as configured."""
    from felix.status import EndpointStatusReporter, StatusReporter

    status = (StatusReporter(client, hostname, cfg.ReportingIntervalSecs, cfg.ReportingTTLSecs)
              if cfg.ReportingIntervalSecs else None)
    endpoints = (EndpointStatusReporter(client, hostname, cfg.EndpointReportingDelaySecs)
                 if cfg.EndpointReportingEnabled else None)
    return status, endpoints


def build_felix(boot: Config, environ: dict[str, str] | None = None, netns: str | None = None):
    """One Felix for `boot` (the env/file config: enough to reach etcd).

    `netns` runs every writer inside that namespace (None: our own), which is
    how tests and benchmarks drive it.
    """
    from felix.daemon import Felix
    from felix.dataplane.interfaces import InterfaceMonitor

    hostname = boot.FelixHostname
    tls = boot.etcd_tls()
    client = DatastoreClient(endpoints=boot.etcd_endpoints(), ca=tls["ca"], cert=tls["cert"], key=tls["key"])
    syncer = Syncer(client, WATCH_PREFIXES, parser=parse_key_value, wait_for_ready=True)
    config = ConfigStore(boot, environ)
    router = UpdateRouter(config)
    board = StatusBoard()
    # The closures below name `felix`, built last: each collaborator exists before the loop runs.
    settings = OverlayNatSettings(hostname, on_resolved=lambda: felix.reconfigure_soon())
    metrics = None
    if getattr(boot, "PrometheusMetricsEnabled", False):
        from felix.metrics import Metrics  # prometheus_client: only paid for when enabled
        metrics = Metrics.from_config(boot)

    async def publish_mac(mac: str) -> None:
        try:
            await client.put(keys.host_vxlan_mac(hostname), mac)
        except DatastoreError as e:
            raise DataplaneError(f"could not publish vxlan_tunnel_mac {mac}: {e}") from e

    status = FelixStatus(board, datastore_state=lambda: syncer.status, datastore_resyncs=lambda: syncer.resyncs,
                         local_endpoints=lambda: felix.local_endpoints(),
                         dataplane_reasons=lambda: felix.dataplane_reasons(),
                         calc_counts=lambda: felix.calc_counts())
    servers = Servers(HealthServer.from_config(boot, lambda: felix_readiness(status)), metrics)
    felix = Felix(
        boot=boot, client=client, syncer=syncer, config=config, router=router, board=board, settings=settings,
        dataplanes=DataplaneFactory(netns, publish_mac),
        build_calculators=lambda cfg: build_calculators(hostname, cfg, settings, netns),
        build_reporters=lambda cfg: build_reporters(client, hostname, cfg),
        interface_monitor=lambda prefix, callback: InterfaceMonitor(netns, prefix, callback),
        status=status, servers=servers, netns=netns)
    return felix
