"""Overlay and NAT settings: Felix's Config turned into OverlayConfig and NatConfig.

Why a module of its own: two of those settings are names, not addresses
(MetadataAddr may be a host name; the etcd endpoints Felix depends on must be
protected from 1:1 NAT, and they may be names too).  Resolving a name can take
seconds, and nothing on Felix's loop may wait for DNS: lookups run as tasks,
the configs use what is known now, and `on_resolved()` tells the daemon when a
lookup changed the NAT config, so it folds it in and applies again.

Nothing here holds the calculators or the daemon: the wiring builds the
calculators from `configure(cfg)`, the daemon feeds `nat_config()` back in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from felix.calc.nat import NatConfig
from felix.calc.overlay import OverlayConfig
from felix.dataplane_facade import NatPusher

log = logging.getLogger(__name__)

__all__ = ["NatPusher", "OverlayNatSettings", "host_addrs", "protected_addrs"]


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
    """This host's own addresses: an endpoint must never 1:1 NAT the host to itself."""
    from felix.hostaddrs import read_interface_addrs
    return {a.split("%")[0] for addrs in read_interface_addrs(netns).values() for a in addrs}


class OverlayNatSettings:
    """`configure(cfg) -> (OverlayConfig, NatConfig)`; `nat_config()` once a lookup resolved."""

    def __init__(self, hostname: str, on_resolved: Callable[[], None] = lambda: None,
                 resolver: Resolver | None = None):
        self.hostname = hostname
        self.on_resolved = on_resolved
        self.resolver = resolver  # None: the running loop's getaddrinfo
        self._metadata: tuple[str | None, str | None] = (None, None)   # (configured, resolved)
        self._protected: tuple[object, frozenset[str]] = (None, frozenset())  # (endpoints, resolved)
        self._cfg: object = None
        self._lookups: dict[str, asyncio.Task] = {}

    def configure(self, cfg: object) -> tuple[OverlayConfig, NatConfig]:
        """The overlay and NAT configs for `cfg`, starting (or cancelling) name lookups as needed."""
        ocfg = OverlayConfig(self.hostname, vxlan_enabled=cfg.VXLANEnabled, ipip_enabled=cfg.IpInIpEnabled,
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
        return ocfg, self.nat_config()

    def nat_config(self) -> NatConfig:
        """The NAT config of the last `configure()`, with whatever names are resolved by now."""
        cfg = self._cfg
        return NatConfig(self.hostname, iface_prefix=cfg.InterfacePrefix, metadata_addr=self._metadata[1],
                         metadata_port=cfg.MetadataPort, nat_outgoing_address=cfg.NatOutgoingAddress,
                         protected=self._protected[1])

    def pending_lookups(self) -> frozenset[str]:
        return frozenset(self._lookups)

    def stop(self) -> None:
        for t in list(self._lookups.values()):
            t.cancel()

    # configure() is called synchronously from the daemon's loop, so name
    # lookups cannot happen inside it: they run as tasks, and their result is
    # reported through on_resolved() when it arrives.  A newer configuration
    # cancels an older lookup of the same kind.
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
            self.on_resolved()

    async def _resolve_protected(self, endpoints: tuple, cfg: object) -> None:
        addrs = await protected_addrs(cfg, self.resolver)
        if self._protected[0] == endpoints and self._protected[1] != addrs:
            self._protected = (endpoints, addrs)
            self.on_resolved()
