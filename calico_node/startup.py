"""One-shot node preparation before supervisord takes over.

Everything here is idempotent so a restarted container converges to the same
state: defaults are only written when absent, the host's keys are rewritten
from the current environment, and tunnel addresses are kept while still valid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from libcalico import keys
from libcalico.datastore import DatastoreClient, DatastoreError
from libcalico.etcdconf import ConfigError
from libcalico.models import Pool
from libcalico.resources import TUNNEL_PARAMS, AddressConflict, Conflict, Nodes, Pools

from . import autodetect
from .default_pools import DefaultPool
from .default_pools import from_env as default_pools_from_env
from .settings import AUTODETECT, NodeSettings

log = logging.getLogger("calico-node")

WAIT_LOG_INTERVAL = 5.0

# Written only when absent, so an operator's choice always survives a restart.
# Ready goes last: the programs start acting once they see it.
GLOBAL_DEFAULTS: list[tuple[str, str]] = [
    (keys.global_config("InterfacePrefix"), "cali"),
    (keys.global_config("LogSeverityScreen"), "info"),
    (keys.global_config("ReportingIntervalSecs"), "0"),
    (keys.bgp_global_as(), "64511"),
    (keys.bgp_node_mesh(), json.dumps({"enabled": True})),
    (keys.bgp_global_loglevel(), "info"),
    (keys.READY, "true"),
]

TUNNELS = {
    # param: (pool overlay kind, IPAM handle prefix)
    param: (kind, f"{kind}-tunnel-addr") for kind, param in TUNNEL_PARAMS.items()
}


class StartupError(Exception):
    """A reason the node must not start; printed as one line, exit non-zero."""


@dataclass
class StartupResult:
    ip: str
    ip6: str


def endpoints_text(env: dict[str, str]) -> str:
    """How the datastore was addressed, for error lines."""
    if env.get("ETCD_ENDPOINTS"):
        return env["ETCD_ENDPOINTS"]
    return f"{env.get('ETCD_SCHEME', 'http')}://{env.get('ETCD_AUTHORITY', '127.0.0.1:2379')}"


async def connect(settings: NodeSettings, factory: Callable[[], DatastoreClient] | None = None,
                  clock: Callable[[], float] = time.monotonic) -> DatastoreClient:
    """A datastore client that has answered once; waits only with WAIT_FOR_DATASTORE."""
    factory = factory or (lambda: DatastoreClient.from_env(settings.env))
    where = endpoints_text(settings.env)
    last_log = -WAIT_LOG_INTERVAL
    while True:
        try:
            client = factory()
        except ConfigError as e:
            raise StartupError(f"datastore settings: {e}") from None
        try:
            await client.get(keys.READY)
            return client
        except DatastoreError as e:
            await _close(client)
            if not settings.wait_for_datastore:
                raise StartupError(f"cannot reach the datastore at {where}: {e} "
                                   "(set WAIT_FOR_DATASTORE=true to wait for it)") from None
            if clock() - last_log >= WAIT_LOG_INTERVAL:
                log.info("Waiting for the datastore at %s: %s", where, e)
                last_log = clock()
            await asyncio.sleep(1.0)


async def _close(client) -> None:
    try:
        await client.close()
    except Exception:  # noqa: BLE001 - a broken client may fail to close; nothing to do about it
        pass


async def ensure_defaults(client: DatastoreClient) -> None:
    for key, value in GLOBAL_DEFAULTS:
        if await client.put_if_absent(key, value):
            log.info("Set default %s = %s", key, value)


def resolve_ips(settings: NodeSettings, read: Callable[[], list[autodetect.Address]] = autodetect.read_addresses,
                source: Callable[[str, int], str] = autodetect.route_source) -> StartupResult:
    """Concrete IP/IP6: validated values pass through, `autodetect` picks by the family's method."""
    ip, ip6 = settings.ip, settings.ip6
    addrs: list[autodetect.Address] | None = None
    if ip == AUTODETECT or ip6 == AUTODETECT:
        addrs = read()
    out = {4: ip, 6: ip6}
    for v, var, method in ((4, "IP", settings.autodetect4), (6, "IP6", settings.autodetect6)):
        if out[v] != AUTODETECT:
            continue
        mvar = "IP_AUTODETECTION_METHOD" if v == 4 else "IP6_AUTODETECTION_METHOD"
        try:
            found = autodetect.choose_by(method, addrs or [], v, source)
        except OSError as e:
            raise StartupError(f"{mvar}={method.text}: cannot find the route to {method.dest}: {e}") from None
        if found is None:
            raise StartupError(f"{var}: no global IPv{v} address found by {mvar}={method.text} "
                               f"(set {var}{', or IP=none for an IPv6-only node' if v == 4 else ''})")
        out[v] = found.address
        log.info("Autodetected IPv%d %s/%d on %s using %s", v, found.address, found.prefixlen, found.ifname,
                 method.text)
    return StartupResult(ip=out[4], ip6=out[6])


def warn_if_not_local(result: StartupResult, read: Callable[[], list[autodetect.Address]] = autodetect.read_addresses
                      ) -> None:
    """A configured IP that no interface carries is usually a typo: say so, but do not refuse."""
    try:
        local = {a.address for a in read()}
    except (OSError, RuntimeError, ValueError):
        return
    for var, value in (("IP", result.ip), ("IP6", result.ip6)):
        if value and value not in local:
            log.warning("%s=%s is not an address of any interface in this network namespace", var, value)


async def register_host(client: DatastoreClient, settings: NodeSettings, result: StartupResult) -> None:
    """Register this host's addresses and AS, refusing an address another host peers from
    (two BGP speakers on one IP break the mesh); check and write are one guarded transaction."""
    host = settings.nodename
    nodes = Nodes(client)
    await warn_if_moved(nodes, host, result)
    try:
        reg = await nodes.register(host, result.ip or None, result.ip6 or None, settings.as_num)
    except AddressConflict as e:
        raise StartupError(f"{e}; refusing to start") from None
    except Conflict as e:
        raise StartupError(str(e)) from None
    if reg.as_removed:
        log.info("AS unset: removed %s (the global AS applies)", keys.bgp_host_as(host))
    log.info("Registered host %s: IPv4 %s, IPv6 %s, AS %s", host, result.ip or "none", result.ip6 or "none",
             settings.as_num or "global")


async def warn_if_moved(nodes: Nodes, host: str, result: StartupResult) -> None:
    """This node's name registered with other addresses: a renamed or cloned machine, or a moved
    IP.  Calico warns and re-registers (the operator may mean it); so do we."""
    try:
        old = await nodes.get(host)
    except (DatastoreError, ValueError) as e:
        log.debug("could not read the old registration of %s: %s", host, e)
        return
    if old is None:
        return
    for var, was, now in (("IP", old.raw.get("v4") or old.ip4, result.ip),
                          ("IP6", old.raw.get("v6") or old.ip6, result.ip6)):
        if was and was != (now or ""):
            log.warning("Node %s is already registered with %s %s; it now registers %s (another machine using "
                        "this node name?)", host, var, was, now or "none")


def pool_model(spec: DefaultPool) -> Pool:
    """The stored pool for a default-pool spec (the block size is stored: IPAM reads it per pool)."""
    return Pool(cidr=spec.cidr, masquerade=spec.nat_outgoing, ipam=True, disabled=False,
                ipip="tunl0" if spec.ipip else None, vxlan="vxlan.calico" if spec.vxlan else None,
                block_size=spec.block_size)


DEFAULT_POOLS = tuple(pool_model(p) for p in default_pools_from_env({}))


async def ensure_default_pools(client: DatastoreClient, settings: NodeSettings) -> None:
    if settings.no_default_pools:
        return
    pools = Pools(client)
    for pool in (tuple(pool_model(p) for p in settings.pools) if settings.pools else DEFAULT_POOLS):
        # Only into an empty pool directory: an operator's pool written meanwhile wins.
        if await pools.create_if_none(pool):
            log.info("Created default IPv%d pool %s (%s)", pool.version, pool.cidr,
                     pool.overlay or "no overlay")


def _in_pools(ip: str, pools: list[Pool]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(p.cidr) for p in pools)


async def _assign(ipam, host: str, handle: str, pools: list[Pool]) -> str | None:
    """One IPv4 from `pools` (IPAM limits the choice to them)."""
    v4, _ = await ipam.auto_assign(host, handle, num4=1, pools=[p.cidr for p in pools])
    if not v4:
        return None
    if not _in_pools(v4[0], pools):  # never trust a wider answer: the tunnel must be inside its pool kind
        await ipam.release_ips(v4)
        return None
    return v4[0]


async def _reassign(ipam, ip: str, handle: str, host: str) -> bool:
    """Record a tunnel address whose IPAM assignment was lost (e.g. restored etcd); False if taken."""
    try:
        await ipam.assign(ip, handle, host)
        return True
    except Exception as e:  # noqa: BLE001 - IpamError or a race: allocate a fresh one instead
        log.warning("Could not re-record %s for %s: %s", ip, handle, e)
        return False


def _default_ipam(client):
    from libcalico.ipam import Ipam

    return Ipam(client)


async def ensure_tunnel_addrs(client: DatastoreClient, host: str,
                              ipam_factory: Callable[[DatastoreClient], object] = _default_ipam
                              ) -> dict[str, str | None]:
    """Allocate (or release) IpInIpTunnelAddr / VXLANTunnelAddr to match the pool kinds that exist."""
    pools = await Pools(client).for_ipam(4)
    nodes = Nodes(client)
    ipam = None
    out: dict[str, str | None] = {}
    for param, (kind, handle_prefix) in TUNNELS.items():
        key = keys.host_config(host, param)
        wanted = [p for p in pools if p.overlay == kind]
        stored = await nodes.tunnel_addr(host, param)
        current = None
        handle = f"{handle_prefix}-{host}"
        if stored is not None and not stored.valid:
            log.warning("Replacing invalid %s: %s", key, stored.error)
            await nodes.set_tunnel_addr(host, param, None)
        elif stored is not None:
            current = stored.value
        if (current or wanted) and ipam is None:
            ipam = ipam_factory(client)
        if current:
            owner = await ipam.get_assignment(current)
            ours = owner is not None and owner.get("handle") == handle
            if wanted and _in_pools(current, wanted):
                if ours:
                    out[param] = current
                    continue
                if owner is None and await _reassign(ipam, current, handle, host):
                    log.info("Re-recorded %s %s in IPAM (its assignment was missing)", param, current)
                    out[param] = current
                    continue
            if ours:
                await ipam.release_ips([current])
                log.info("Released %s %s (no %s pool contains it)", param, current, kind.upper())
            elif owner is not None:
                log.warning("%s %s is assigned to %s in IPAM, not to this host: replacing it", param, current,
                            owner.get("handle"))
            await nodes.set_tunnel_addr(host, param, None)
        if not wanted:
            out[param] = None
            continue
        ip = await _assign(ipam, host, handle, wanted)
        if ip is None:
            raise StartupError(f"{param}: could not allocate an address from the {kind.upper()} pools "
                               f"{', '.join(p.cidr for p in wanted)}")
        await nodes.set_tunnel_addr(host, param, ip)
        log.info("Allocated %s %s", param, ip)
        out[param] = ip
    return out


def enable_ip_forwarding(ip6: bool, proc_sys: str = "/proc/sys") -> None:
    """Routing workloads needs forwarding; written from inside the node's own network namespace."""
    paths = [os.path.join(proc_sys, "net/ipv4/ip_forward")]
    if ip6:
        paths.append(os.path.join(proc_sys, "net/ipv6/conf/all/forwarding"))
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("1\n")
        except OSError as e:
            log.warning("Could not enable IP forwarding (%s): %s", path, e)


async def run(settings: NodeSettings, client_factory: Callable[[], DatastoreClient] | None = None,
              read_addresses: Callable[[], list[autodetect.Address]] = autodetect.read_addresses,
              proc_sys: str = "/proc/sys") -> StartupResult:
    """The whole startup sequence; raises StartupError with the one line to print."""
    result = resolve_ips(settings, read_addresses)
    if settings.ip != AUTODETECT or (settings.ip6 and settings.ip6 != AUTODETECT):
        warn_if_not_local(result, read_addresses)
    client = await connect(settings, client_factory)
    try:
        await ensure_defaults(client)
        await register_host(client, settings, result)
        await ensure_default_pools(client, settings)
        await ensure_tunnel_addrs(client, settings.nodename)
    finally:
        await _close(client)
    enable_ip_forwarding(bool(result.ip6), proc_sys)
    return result
