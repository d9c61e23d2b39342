"""Attach a workload to this node: the one implementation every orchestrator plugin uses.

`calicoctl container add`, the CNI plugin and the Docker libnetwork driver
all do the same thing: a veth pair whose host side Felix recognises by its
prefix, the workload's addresses with routes pointing at the host (169.254.1.1
for IPv4, the host side's link-local for IPv6; the host side carries no
address, Felix answers ARP/NDP by proxy), an MTU the path allows
(`libcalico.mtu`), the workload endpoint record Felix programs, and the
profile the endpoint names.  Doing that in one place is what keeps a
container made by Docker and one made by podman indistinguishable to Felix,
and keeps "a failed attach leaves nothing behind" true for all of them.

API (all async functions take a `DatastoreClient`):

- `veth_name(workload_id)` -> `cali` + 11 hex chars of a stable hash (the CNI
  plugin's naming; fits IFNAMSIZ with room to spare).
- `assign_addresses(client, host, handle, ips=(), num4=0, num6=0, pools=None)`
  -> `(v4, v6)`: explicit addresses or auto-assigned ones from IPAM under
  `handle`; all or nothing (what it took is released on failure).
- `attach(client, spec, v4, v6)` -> `Attached`: the pair with its far end in
  `spec.netns` (a `libcalico.netns.NamespaceRef`) named `spec.ifname`,
  addresses, routes, MTU, profiles (created when missing and
  `spec.create_profiles`), endpoint record.  It undoes its own steps on any
  failure; the caller releases the addresses it assigned.
- `attach_host_side(client, spec, v4, v6, peer_name)` -> `Attached`: the
  libnetwork shape.  Both ends stay in this namespace (the runtime moves
  `peer_name` into the container and configures addresses and routes from
  what the driver returns: `Attached.ipv4_gateway` / `ipv6_gateway`); the
  endpoint record is written the same way.
- `detach(client, (host, orch, workload, endpoint|None), netns_ref=, ifname=, host_ifname=, handle=,
  release_endpoint_ips=, owner=)` -> `Detached`: idempotent removal of veth,
  endpoint record and (with `handle`) the handle's addresses; a missing
  namespace, interface, record or allocation is not an error.  With `owner`
  (e.g. `{"container_id": ...}`) a record written for someone else (a newer
  sandbox of the same pod) is left alone.
- `verify(client, spec, v4, v6)` -> list of drift descriptions (empty = as attached): interfaces,
  addresses, default routes, endpoint record.
- `ensure_profile(client, name)` -> True when it created the profile with the
  classic defaults (allow inbound from the same tag, allow all outbound).
- `AttachError`: every refusal, with a message naming what was wrong.

`EndpointSpec` carries the identity (host, orchestrator, workload, endpoint
id), the interface names, profiles, labels, MTU (None = choose) and `extra`
fields stored in the endpoint record (e.g. `container_id`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any

from libcalico import keys, netns
from libcalico.netns import NamespaceRef, NetnsError

GATEWAY_V4 = "169.254.1.1"
IFACE_PREFIX = "cali"

__all__ = [
    "AttachError", "EndpointSpec", "Attached", "Detached", "GATEWAY_V4", "IFACE_PREFIX",
    "veth_name", "assign_addresses", "attach", "attach_host_side", "detach", "verify", "ensure_profile",
    "delete_veth", "host_link_local", "inner_config",
]


class AttachError(RuntimeError):
    """A refusal or failure of one attach step; the message names the object at fault."""


@dataclass
class EndpointSpec:
    host: str
    orchestrator: str
    workload: str
    endpoint: str
    host_ifname: str
    netns: NamespaceRef | None = None
    ifname: str = "eth0"
    profiles: list[str] = field(default_factory=list)
    create_profiles: bool = False
    mtu: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    replace_stale: bool = False  # an old pair under the same host name (a restarted sandbox) is removed

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.host, self.orchestrator, self.workload, self.endpoint)


@dataclass
class Attached:
    host_ifname: str
    ifname: str
    mac: str
    ipv4: list[str]
    ipv6: list[str]
    ipv4_gateway: str | None
    ipv6_gateway: str | None
    mtu: int
    path: str  # the endpoint record's key


@dataclass
class Detached:
    endpoint_found: bool = False
    veth_deleted: bool = False
    released: list[str] = field(default_factory=list)
    foreign: bool = False  # the record belonged to another owner and was left alone


def veth_name(workload_id: str, prefix: str = IFACE_PREFIX) -> str:
    """`cali` + 11 hex chars of sha1(workload id): stable, so DEL finds what ADD made."""
    return prefix + hashlib.sha1(workload_id.encode()).hexdigest()[:11]


def _random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def _ipam(client: Any) -> Any:
    from libcalico.ipam import Ipam

    return Ipam(client)


# ---- addresses -------------------------------------------------------------------

async def assign_addresses(client: Any, host: str, handle: str, ips: tuple[str, ...] | list[str] = (),
                           num4: int = 0, num6: int = 0, pools: list[str] | None = None
                           ) -> tuple[list[str], list[str]]:
    """Explicit `ips` (each must be free and in an enabled pool) plus num4/num6 from IPAM.

    Either every address is assigned under `handle` or none is (what was taken
    before a failure is released).  `pools` restricts auto-assignment to those
    pool CIDRs.
    """
    from libcalico.ipam import IpamError

    ipam = _ipam(client)
    try:
        for ip in ips:
            await ipam.assign(ip, handle, host)
        v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
        v6 = [ip for ip in ips if ipaddress.ip_address(ip).version == 6]
        if num4 or num6:
            got4, got6 = await ipam.auto_assign(host, handle, num4, num6, pools=pools)
            got4 = [str(a).split("/")[0] for a in got4]
            got6 = [str(a).split("/")[0] for a in got6]
            if len(got4) < num4 or len(got6) < num6:
                want = " and ".join(f"{n} IPv{v}" for v, n in ((4, num4), (6, num6)) if n)
                where = f" in pools {', '.join(pools)}" if pools else ""
                raise AttachError(f"IPAM: no free address{where} for {want} (handle {handle})")
            v4 += got4
            v6 += got6
        return v4, v6
    except IpamError as e:
        await ipam.release_handle(handle)
        raise AttachError(f"IPAM: {e}") from None
    except BaseException:
        await ipam.release_handle(handle)
        raise


# ---- kernel side -------------------------------------------------------------------

def inner_config(iface: str, v4: list[str], v6: list[str], v6_gateway: str | None,
                 mtu: int | None = None) -> list[str]:
    """`ip -batch` lines that address the workload side and point its default routes at the host."""
    lines = ["link set lo up", f"link set {iface}" + (f" mtu {mtu}" if mtu else "") + " up"]
    for ip in v4:
        lines.append(f"addr add {ip}/32 dev {iface}")
    if v4:
        lines.append(f"route replace {GATEWAY_V4} dev {iface} scope link")
        lines.append(f"route replace default via {GATEWAY_V4} dev {iface}")
    for ip in v6:
        lines.append(f"addr add {ip}/128 dev {iface} nodad")
    if v6 and v6_gateway:
        lines.append(f"route replace ::/0 via {v6_gateway} dev {iface}")
    return lines


def host_link_local(ifname: str, timeout: float = 3.0) -> str:
    """The host-side veth's fe80:: address (the workload's IPv6 gateway)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        for a in netns.addresses(None, ifname):
            if a.get("family") == "inet6" and str(a.get("local", "")).startswith("fe80:"):
                return a["local"]
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    info = netns.link(None, ifname)
    if info is None or not info.get("address"):
        raise AttachError(f"host interface {ifname} vanished")
    return netns.eui64_link_local(info["address"])


def _set_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass  # IPv6 disabled here: the gateway then comes from the MAC


def delete_veth(ns: NamespaceRef | None, host_if: str, iface: str = "eth0") -> bool:
    """Remove the pair (deleting either end removes both); True when something was deleted."""
    if host_if and netns.run(None, ["ip", "link", "del", host_if], check=False).returncode == 0:
        return True
    if ns is not None and os.path.exists(ns.path):
        info = netns.link(ns, iface)
        if info is not None and info.get("linkinfo", {}).get("info_kind") == "veth":
            netns.run(ns, ["ip", "link", "del", iface], check=False)
            return True
    return False


def _make_pair(spec: EndpointSpec, peer: str, mtu: int, mac: str, into: NamespaceRef | None) -> None:
    """The veth pair, host side up; the peer in `into` (or here).

    One `ip link add` (argv, not a batch line: a namespace path may hold any
    character), atomic in the kernel; only when it fails do we look at why.
    A peer name already taken in `into` fails it too, with nothing made, so
    that is found here rather than by a look into the namespace on every
    attach (one `nsenter` + `ip` less per CNI ADD); it is refused even when a
    stale host side may be replaced.
    """
    where = ["netns", into.path] if into is not None else []
    argv = ["ip", "link", "add", spec.host_ifname, "mtu", str(mtu), "up", "type", "veth",
            "peer", "name", peer, "mtu", str(mtu), "address", mac, *where]
    r = netns.run(None, argv, check=False)
    if r.returncode != 0 and into is not None and netns.link(into, peer) is not None:
        raise AttachError(f"interface {peer} already exists in namespace {into.arg}")
    if r.returncode != 0 and netns.link(None, spec.host_ifname) is not None:
        if not spec.replace_stale:
            raise AttachError(f"interface {spec.host_ifname} already exists on this node")
        netns.run(None, ["ip", "link", "del", spec.host_ifname], check=False)
        r = netns.run(None, argv, check=False)
    if r.returncode != 0:
        raise AttachError(f"cannot create veth {spec.host_ifname}: {(r.stderr or r.stdout).strip()}")


async def _write_record(client: Any, spec: EndpointSpec, host_if: str, mac: str, v4: list[str], v6: list[str],
                        gw6: str | None, replace: bool) -> str:
    from libcalico.models import WorkloadEndpoint
    from libcalico.resources import WorkloadEndpoints

    fields: dict[str, Any] = {
        **spec.extra,
        "state": "active", "name": host_if, "mac": mac, "profile_ids": list(spec.profiles),
        "ipv4_nets": [f"{a}/32" for a in v4], "ipv6_nets": [f"{a}/128" for a in v6],
    }
    if v4:
        fields["ipv4_gateway"] = GATEWAY_V4
    if v6 and gw6:
        fields["ipv6_gateway"] = gw6
    if spec.labels:
        fields["labels"] = dict(spec.labels)
    try:
        model = WorkloadEndpoint.model_validate(fields)
    except ValueError as e:
        raise AttachError(f"endpoint {keys.workload_endpoint(*spec.key)}: {e}") from None
    repo = WorkloadEndpoints(client)
    path = keys.workload_endpoint(*spec.key)
    if replace:
        await repo.put(*spec.key, model)
    elif not await repo.create(*spec.key, model):
        raise AttachError(f"{path} already exists")
    return path


async def ensure_profile(client: Any, name: str) -> bool:
    """Create profile `name` with the classic defaults unless it exists; True when created.

    Atomic (create-revision guards), so two plugins racing on a new network
    make it once and never overwrite rules an operator already edited.
    """
    from libcalico.datastore import create, op_put

    _, kvs = await client.get_prefix(keys.profile_dir(name))
    if kvs:
        return False
    rules, tags = keys.profile_rules(name), keys.profile_tags(name)
    default = {"inbound_rules": [{"action": "allow", "src_tag": name}], "outbound_rules": [{"action": "allow"}]}
    ok, _ = await client.txn([create(rules) == 0, create(tags) == 0],
                             [op_put(rules, json.dumps(default)), op_put(tags, json.dumps([name]))], [],
                             what=f"profile {name} create")
    return bool(ok)


async def _prepare(client: Any, spec: EndpointSpec) -> int:
    for p in spec.profiles:
        keys.profile_dir(p)  # validates the name before anything is made
    if spec.mtu is not None:
        return spec.mtu
    from libcalico.mtu import workload_mtu

    return await workload_mtu(client, spec.host)


async def _finish(client: Any, spec: EndpointSpec) -> None:
    if spec.create_profiles:
        for p in spec.profiles:
            await ensure_profile(client, p)


async def attach(client: Any, spec: EndpointSpec, v4: list[str], v6: list[str]) -> Attached:
    """Wire `spec.netns` to this node and write its endpoint; all or nothing (addresses excepted)."""
    ns = spec.netns
    if ns is None:
        raise AttachError("attach needs the workload's network namespace")
    if not os.path.exists(ns.path):
        raise AttachError(f"network namespace {ns.arg} does not exist")
    mtu = await _prepare(client, spec)  # an interface name taken in `ns` is found by _make_pair
    mac = _random_mac()
    _make_pair(spec, spec.ifname, mtu, mac, ns)
    try:
        gw6 = None
        if v6:
            # No DAD on the host side: the workload's default route points at its link-local.
            _set_sysctl(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}/accept_dad", "0")
            # The host side gets its link-local only once it has carrier, i.e. the far end is up.
            netns.ip_batch(ns, [f"link set {spec.ifname} up"])
            gw6 = host_link_local(spec.host_ifname)
        try:
            netns.ip_batch(ns, inner_config(spec.ifname, v4, v6, gw6))
        except NetnsError as e:
            raise AttachError(f"configuring {spec.ifname} in {ns.arg}: {e}") from None
        await _finish(client, spec)
        path = await _write_record(client, spec, spec.host_ifname, mac, v4, v6, gw6, spec.replace_stale)
    except BaseException:
        delete_veth(ns, spec.host_ifname, spec.ifname)
        raise
    return Attached(spec.host_ifname, spec.ifname, mac, list(v4), list(v6), GATEWAY_V4 if v4 else None,
                    gw6, mtu, path)


async def attach_host_side(client: Any, spec: EndpointSpec, v4: list[str], v6: list[str],
                           peer_name: str) -> Attached:
    """The libnetwork shape: both ends here, the runtime moves `peer_name` into the container."""
    if netns.link(None, peer_name) is not None:
        raise AttachError(f"interface {peer_name} already exists on this node")
    mtu = await _prepare(client, spec)
    mac = _random_mac()
    _make_pair(spec, peer_name, mtu, mac, None)
    try:
        gw6 = None
        if v6:
            _set_sysctl(f"/proc/sys/net/ipv6/conf/{spec.host_ifname}/accept_dad", "0")
            gw6 = host_link_local(spec.host_ifname)
        await _finish(client, spec)
        path = await _write_record(client, spec, spec.host_ifname, mac, v4, v6, gw6, spec.replace_stale)
    except BaseException:
        delete_veth(None, spec.host_ifname)
        raise
    return Attached(spec.host_ifname, peer_name, mac, list(v4), list(v6), GATEWAY_V4 if v4 else None,
                    gw6, mtu, path)


# ---- removal ---------------------------------------------------------------------

async def detach(client: Any, key: tuple[str, str, str, str | None], *, netns_ref: NamespaceRef | None = None,
                 ifname: str = "eth0", host_ifname: str | None = None, handle: str | None = None,
                 release_endpoint_ips: bool = False, owner: dict[str, Any] | None = None) -> Detached:
    """Remove what `attach` made for `key` (host, orchestrator, workload, endpoint or None = all).

    Nothing missing is an error.  `handle` releases that IPAM handle;
    `release_endpoint_ips` also frees the record's addresses by address (for
    records an older tool wrote without a handle).
    """
    from libcalico.resources import WorkloadEndpoints

    host, orch, workload, endpoint = key
    repo = WorkloadEndpoints(client)
    out = Detached()
    eps = await repo.list(host, orch, workload, endpoint, include_invalid=True)
    if owner and any(ep.valid and _foreign(ep.value, owner) for ep in eps):
        out.foreign = True
        return out
    names: list[str] = [ep.value.name for ep in eps if ep.valid] + ([host_ifname] if host_ifname else [])
    for name in dict.fromkeys(names):
        if name and delete_veth(None, name):
            out.veth_deleted = True
    if not out.veth_deleted and netns_ref is not None:
        out.veth_deleted = delete_veth(netns_ref, "", ifname)
    ips: list[str] = []
    for ep in eps:
        out.endpoint_found = True
        if ep.valid:
            ips += [str(ipaddress.ip_interface(n).ip) for n in ep.value.ipv4_nets + ep.value.ipv6_nets]
        await repo.delete(ep)
    ipam = _ipam(client)
    if handle:
        out.released += await ipam.release_handle(handle)
    if release_endpoint_ips and ips:
        out.released += await ipam.release_ips(ips)
    return out


def _foreign(ep: Any, owner: dict[str, Any]) -> bool:
    extra = ep.model_extra or {}
    return any(k in extra and extra[k] != v for k, v in owner.items())


# ---- checking ----------------------------------------------------------------------

async def verify(client: Any, spec: EndpointSpec, v4: list[str], v6: list[str], mac: str | None = None
                 ) -> list[str]:
    """What differs from an attach of `spec` with these addresses (and workload MAC, when given)."""
    from libcalico.resources import WorkloadEndpoints

    problems: list[str] = []
    host = netns.link(None, spec.host_ifname)
    if host is None:
        problems.append(f"host interface {spec.host_ifname} is missing")
    elif "UP" not in host.get("flags", []):
        problems.append(f"host interface {spec.host_ifname} is down")
    ns = spec.netns
    if ns is None or not os.path.exists(ns.path):
        problems.append(f"network namespace {ns.arg if ns else '?'} is missing")
    else:
        inner = netns.link(ns, spec.ifname)
        if inner is None:
            problems.append(f"interface {spec.ifname} is missing in {ns.arg}")
        else:
            if mac and str(inner.get("address", "")).lower() != mac.lower():
                problems.append(f"interface {spec.ifname} in {ns.arg} has MAC {inner.get('address')}, expected {mac}")
            have = {a.get("local") for a in netns.addresses(ns, spec.ifname)}
            for ip in v4 + v6:
                if ip not in have:
                    problems.append(f"address {ip} is missing on {spec.ifname} in {ns.arg}")
            if v4:
                defaults = [r for r in netns.routes(ns, 4) if r.get("dst") == "default"]
                if not any(r.get("gateway") == GATEWAY_V4 for r in defaults):
                    problems.append(f"IPv4 default route via {GATEWAY_V4} is missing in {ns.arg}")
            if v6:
                defaults = [r for r in netns.routes(ns, 6) if r.get("dst") == "default"]
                if not defaults:
                    problems.append(f"IPv6 default route is missing in {ns.arg}")
    ep = await WorkloadEndpoints(client).get(*spec.key)
    path = keys.workload_endpoint(*spec.key)
    if ep is None:
        problems.append(f"endpoint record {path} is missing")
    elif not ep.valid:
        problems.append(f"endpoint record {path} is invalid: {ep.error}")
    else:
        want = sorted([f"{a}/32" for a in v4] + [f"{a}/128" for a in v6])
        got = sorted(ep.value.ipv4_nets + ep.value.ipv6_nets)
        if got != want:
            problems.append(f"endpoint record {path} has addresses {got}, expected {want}")
        if ep.value.name != spec.host_ifname:
            problems.append(f"endpoint record {path} names {ep.value.name}, expected {spec.host_ifname}")
    return problems
