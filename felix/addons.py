"""Wiring of the issue-5 pieces (overlay, NAT, health, metrics) into the Felix daemon.

Why a separate module: the daemon owns the loop, the syncer and the core
writers; this object plugs into it through a handful of calls so the core
stays readable and each piece can be switched off by configuration:

- `await start_servers(cfg)` as soon as the bootstrap config is known, so
  /readiness answers 503 while Felix is still syncing;
- `feed(update) -> dirty` for EVERY syncer update, before the daemon's own
  config handling (other hosts' tunnel addresses are host-config keys);
- `configure(cfg)` at the first in-sync and after live config changes;
- `await apply()` after the core writers applied, `await cleanup_stale()`
  after the core's cleanup, `await refresh()` on the iptables refresh timer;
- `after_apply()` to fold counters into the metrics; `await stop()`.

Failures raise DataplaneError like the core writers, so the daemon's retry
and readiness logic covers them too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from felix.calc.nat import NatCalculator, NatConfig
from felix.calc.overlay import OverlayCalculator, OverlayConfig
from felix.dataplane.errors import DataplaneError
from felix.health import HealthServer, felix_readiness
from libcalico import keys

if TYPE_CHECKING:
    from felix.metrics import Metrics

log = logging.getLogger(__name__)

# In addition to the core's /calico/v1/: block affinities, and every node's BGP addresses (an
# endpoint must not NAT or route a node's address to itself).
WATCH_PREFIXES = ["/calico/ipam/v2/host/", "/calico/bgp/v1/host/"]
KINDS = OverlayCalculator.KINDS | NatCalculator.KINDS


def _source(cfg: object, name: str) -> str:
    try:
        return cfg.source(name)
    except (AttributeError, KeyError):
        return "default"


def _local_override(cfg: object, name: str) -> str | None:
    """A tunnel address set in env/file wins; one from etcd reaches the calculator through its key."""
    return getattr(cfg, name) if _source(cfg, name).startswith(("env", "file")) else None


RESOLVE_TIMEOUT = 5.0

# loop.getaddrinfo's signature; tests inject a slow or failing one.
Resolver = Callable[..., Awaitable[list]]


def _resolver() -> Resolver:
    return asyncio.get_running_loop().getaddrinfo


def _literal_ipv4(value: str | None) -> str | None:
    try:
        return str(ipaddress.IPv4Address(value)) if value else None
    except ValueError:
        return None


async def _metadata_ip(value: str | None, resolver: Resolver | None = None,
                       timeout: float = RESOLVE_TIMEOUT) -> str | None:
    """MetadataAddr may be a hostname: resolve it once to an IPv4 (None and a log line if it fails).

    Resolved off the loop (loop.getaddrinfo runs in the default executor) and
    bounded: a DNS server that does not answer must not freeze every other
    task of Felix (syncer, interface monitor, health answers) with it.
    """
    if not value:
        return None
    literal = _literal_ipv4(value)
    if literal is not None:
        return literal
    resolver = resolver or _resolver()
    try:
        infos = await asyncio.wait_for(resolver(value, None, family=socket.AF_INET, type=socket.SOCK_STREAM),
                                       timeout)
        return infos[0][4][0]
    except (OSError, IndexError, TimeoutError) as e:
        log.error("MetadataAddr %r does not resolve to an IPv4 address (%s): no metadata DNAT", value,
                  str(e) or "timed out")
        return None


async def _resolve_all(host: str, resolver: Resolver | None = None, timeout: float = RESOLVE_TIMEOUT) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    resolver = resolver or _resolver()
    try:
        infos = await asyncio.wait_for(resolver(host, None, proto=socket.IPPROTO_TCP), timeout)
        return {info[4][0].split("%")[0] for info in infos}
    except (OSError, TimeoutError) as e:
        log.warning("cannot resolve %r to protect it from 1:1 NAT: %s", host, str(e) or "timed out")
        return set()


def _nameservers(path: str = "/etc/resolv.conf") -> set[str]:
    out = set()
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    out.add(parts[1].split("%")[0])
    except OSError:
        pass
    return out


def _ip_or_none(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _protected_now(cfg: object) -> tuple[frozenset[str], list[str]]:
    """(addresses known without DNS: literal etcd hosts and the DNS servers, etcd host names to look up)."""
    try:
        endpoints = cfg.etcd_endpoints()
    except AttributeError:
        endpoints = []
    known: set[str] = set()
    names: list[str] = []
    for ep in endpoints:
        try:
            name = urlsplit(ep if "//" in ep else f"//{ep}").hostname
        except ValueError:
            name = None
        if not name:
            continue
        ip = _ip_or_none(name)
        if ip is not None:
            known.add(ip)
        elif name not in names:
            names.append(name)
    known |= {ip for ip in map(_ip_or_none, _nameservers()) if ip is not None}
    return frozenset(known), names


async def protected_addrs(cfg: object, resolver: Resolver | None = None) -> frozenset[str]:
    """Servers this host depends on (its etcd endpoints, its DNS servers): no endpoint may DNAT them."""
    known, names = _protected_now(cfg)
    out = set(known)
    for name in names:
        out |= {ip for ip in map(_ip_or_none, await _resolve_all(name, resolver)) if ip is not None}
    return frozenset(out)


def host_addrs(netns: str | None) -> set[str]:
    from felix.hostaddrs import read_interface_addrs
    return {a.split("%")[0] for addrs in read_interface_addrs(netns).values() for a in addrs}


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


class Addons:
    def __init__(self, felix: object):
        self.felix = felix
        self.health: HealthServer | None = None
        self.metrics: Metrics | None = None
        self.overlay: OverlayCalculator | None = None
        self.nat: NatCalculator | None = None
        self.overlay_dp = None
        self.nat_tables: dict = {}
        self._nat_pushers: dict[int, NatPusher] = {}
        self._pending: list = []
        self._dirty = True
        self._metadata: tuple[str | None, str | None] = (None, None)   # (configured, resolved)
        self._protected: tuple[object, frozenset[str]] = (None, frozenset())  # (endpoints, resolved)
        self.resolver: Resolver | None = None  # None: the running loop's getaddrinfo
        self._cfg: object = None
        self._lookups: dict[str, asyncio.Task] = {}

    # ---- servers ----
    async def start_servers(self, cfg: object) -> None:
        """A port already taken is one error line, not a dead Felix (the probes will say so)."""
        if self.health is None:
            health = HealthServer.from_config(cfg, self.readiness)
            if health is not None:
                try:
                    await health.start()
                    self.health = health
                except OSError as e:
                    log.error("health endpoints: cannot listen on %s:%s: %s", health.host, health.port, e)
        if self.metrics is None:
            from felix.metrics import Metrics  # prometheus_client: only paid for when enabled
            metrics = Metrics.from_config(cfg)
            if metrics is not None:
                try:
                    metrics.start()
                    self.metrics = metrics
                except OSError as e:
                    log.error("Prometheus metrics: cannot listen on %s:%s: %s", metrics.host, metrics.port, e)

    def readiness(self) -> list[str]:
        reasons = felix_readiness(self.felix)
        if self.overlay_dp is not None:
            reasons += self.overlay_dp.not_ready_reasons()
        return reasons

    async def stop(self) -> None:
        for t in list(self._lookups.values()):
            t.cancel()
        if self.health is not None:
            await self.health.stop()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)  # shutdown() waits for the server's poll loop
        if self.overlay_dp is not None:
            self.overlay_dp._own_routes = False  # the daemon closes its RouteWriter itself
            self.overlay_dp.close()

    # ---- input ----
    def feed(self, u: object) -> bool:
        """One syncer update; True when the overlay or NAT state may have changed."""
        key = getattr(u, "parsed_key", None) or keys.parse(getattr(u, "key", "") or "")
        if key is None or key.kind not in KINDS:
            return False
        created = getattr(u, "create_revision", 0) or 0
        if self.overlay is None:
            self._pending.append((u.kind, key, u.value if u.kind == "put" else None, created))
            return True
        return self._feed(u.kind, key, u.value if u.kind == "put" else None, created)

    def _feed(self, kind: str, key: object, value: object, created: int = 0) -> bool:
        changed = self.overlay.on_update(kind, key, value)
        changed |= self.nat.on_update(kind, key, value, create_revision=created)
        self._log_errors()
        self._dirty |= changed
        return changed

    def _log_errors(self) -> None:
        for calc in (self.overlay, self.nat):
            for k, reason in calc.take_errors():
                log.warning("ignoring invalid data at %s: %s", k, reason)

    def configure(self, cfg: object) -> None:
        """First call builds the calculators (replaying buffered updates); later ones update them."""
        host = self.felix.hostname
        ocfg = OverlayConfig(host, vxlan_enabled=cfg.VXLANEnabled, ipip_enabled=cfg.IpInIpEnabled,
                             vxlan_tunnel_addr=_local_override(cfg, "VXLANTunnelAddr"),
                             ipip_tunnel_addr=_local_override(cfg, "IpInIpTunnelAddr"))
        self._cfg = cfg
        # Metadata DNAT only when MetadataAddr is configured (as modern Felix does outside OpenStack):
        # the built-in default would otherwise hijack 169.254.169.254 on every node.
        wanted = cfg.MetadataAddr if _source(cfg, "MetadataAddr") != "default" else None
        if self._metadata[0] != wanted:
            literal = _literal_ipv4(wanted)
            self._metadata = (wanted, literal)
            if wanted and literal is None:
                self._lookup("metadata", self._resolve_metadata(wanted))
            else:
                self._cancel_lookup("metadata")
        endpoints = tuple(cfg.etcd_endpoints()) if hasattr(cfg, "etcd_endpoints") else ()
        if self._protected[0] != endpoints:
            known, names = _protected_now(cfg)
            # Until the names are resolved, the old set keeps protecting what it did.
            self._protected = (endpoints, known | (self._protected[1] if names else frozenset()))
            if names:
                self._lookup("protected", self._resolve_protected(endpoints, cfg))
            else:
                self._cancel_lookup("protected")
        ncfg = self._nat_config(cfg)
        if self.overlay is None:
            self.overlay, self.nat = OverlayCalculator(ocfg), NatCalculator(ncfg)
            self.nat.set_host_addrs(host_addrs(getattr(self.felix, "netns", None)))
            for kind, key, value, created in self._pending:
                self._feed(kind, key, value, created)
            self._pending = []
        else:
            self._dirty |= self.overlay.set_config(ocfg) | self.nat.set_config(ncfg)

    def _nat_config(self, cfg: object) -> NatConfig:
        return NatConfig(self.felix.hostname, iface_prefix=cfg.InterfacePrefix, metadata_addr=self._metadata[1],
                         metadata_port=cfg.MetadataPort, nat_outgoing_address=cfg.NatOutgoingAddress,
                         protected=self._protected[1])

    # ---- name lookups ----
    # configure() is called synchronously from the daemon's loop, so name
    # lookups cannot happen inside it: they run as tasks, and their result is
    # folded in (and the dataplane re-applied) when it arrives.  A newer
    # configuration cancels an older lookup of the same kind.
    def _cancel_lookup(self, kind: str) -> None:
        old = self._lookups.pop(kind, None)
        if old is not None:
            old.cancel()

    def _lookup(self, kind: str, coro) -> None:
        self._cancel_lookup(kind)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # configured outside a loop (tools, tests): nothing can wait for DNS
            coro.close()
            return
        t = loop.create_task(coro, name=f"felix-lookup-{kind}")
        self._lookups[kind] = t
        t.add_done_callback(lambda t: self._lookups.pop(kind, None) if self._lookups.get(kind) is t else None)

    async def _resolve_metadata(self, wanted: str | None) -> None:
        ip = await _metadata_ip(wanted, self.resolver)
        if self._metadata[0] == wanted and self._metadata[1] != ip:
            self._metadata = (wanted, ip)
            self._config_resolved()

    async def _resolve_protected(self, endpoints: tuple, cfg: object) -> None:
        addrs = await protected_addrs(cfg, self.resolver)
        if self._protected[0] == endpoints and self._protected[1] != addrs:
            self._protected = (endpoints, addrs)
            self._config_resolved()

    def _config_resolved(self) -> None:
        if self.nat is not None:
            self._dirty |= self.nat.set_config(self._nat_config(self._cfg))
        queue = getattr(self.felix, "queue", None)
        if self._dirty and queue is not None:
            queue.put_nowait(("retry", None))  # "apply again" to the daemon's loop

    # ---- dataplane ----
    def _build(self) -> None:
        from felix.dataplane.iptables import IptablesTable
        from felix.dataplane.overlay import OverlayDataplane

        drv = self.felix.driver
        for v, table in drv.tables.items():
            self.nat_tables[v] = IptablesTable(v, "nat", table.runner, table.backend, lock_wait=table.lock_wait)
            self._nat_pushers[v] = NatPusher(self.nat_tables[v], drv.ipsets[v])
        drv.nat_tables = self.nat_tables  # lets Metrics.record_driver see them
        self.overlay_dp = OverlayDataplane.from_config(self.felix.cfg, self.felix.netns, drv.routes,
                                                       on_vxlan_mac=self._publish_mac)

    async def _publish_mac(self, mac: str) -> None:
        from libcalico.datastore import DatastoreError
        try:
            await self.felix.client.put(keys.host_vxlan_mac(self.felix.hostname), mac)
        except DatastoreError as e:
            raise DataplaneError(f"could not publish vxlan_tunnel_mac {mac}: {e}") from e

    async def apply(self, force: bool = False) -> None:
        """Program NAT chains/ipsets and the overlay if anything changed (or `force`)."""
        calc = getattr(self.felix, "calc", None)
        if calc is not None and self.overlay is not None:   # whose int_ip is really its own
            self._dirty |= self.nat.set_losers(calc.conflicts)
        if self.overlay is None or not (self._dirty or force):
            return
        if self.overlay_dp is None:
            self._build()
        drv = self.felix.driver
        t0 = asyncio.get_running_loop().time()
        stage = "nat"
        try:
            for v, pusher in self._nat_pushers.items():
                pusher.push(self.nat.desired(v))
            self._log_errors()
            await asyncio.gather(*(drv.ipsets[v].apply_updates() for v in self.nat_tables))
            await asyncio.gather(*(t.apply() for t in self.nat_tables.values()))
            await asyncio.gather(*(drv.ipsets[v].apply() for v in self.nat_tables))
            stage = "overlay"
            state = self.overlay.desired()
            self._log_errors()
            dp = self.overlay_dp
            if dp.vxlan_mac and self.overlay.host_mac(self.felix.hostname) not in (None, dp.vxlan_mac):
                dp._published_mac = None  # the datastore holds a stale MAC for us: publish again
            await dp.apply(state)
            self._dirty = False
        except DataplaneError:
            if self.metrics is not None:
                self.metrics.observe_apply(stage, asyncio.get_running_loop().time() - t0, ok=False)
            raise
        if self.metrics is not None:
            self.metrics.observe_apply("overlay", self.overlay_dp.stats["last_apply_seconds"])

    async def cleanup_stale(self) -> None:
        if self.overlay_dp is None:
            return
        await asyncio.gather(*(t.cleanup_stale() for t in self.nat_tables.values()))
        await self.overlay_dp.cleanup_stale()

    async def refresh(self) -> None:
        """Drift repair: NAT chains (iptables timer) and the tunnel devices themselves."""
        if self.overlay_dp is None:
            return
        await asyncio.gather(*(t.refresh() for t in self.nat_tables.values()))
        if self.nat is not None:
            addrs = await asyncio.to_thread(host_addrs, getattr(self.felix, "netns", None))
            self._dirty |= self.nat.set_host_addrs(addrs)
        await self.apply(force=True)

    def after_apply(self) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.record_felix(self.felix)
            if getattr(self.felix, "driver", None) is not None:
                self.metrics.record_driver(self.felix.driver)
        except Exception as e:  # noqa: BLE001 - metrics must never take Felix down
            log.debug("metrics update failed: %r", e)
