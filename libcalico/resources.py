"""Typed resources over the datastore: one way to read and write each kind, for every program.

Programs and plugins (calicoctl, calico-node, the CNI and libnetwork plugins)
should never build keys or parse values by hand: each did it a little
differently (one pool reader honoured `ipam: false`, another did not).  A
repository here owns the key layout of one resource, validates through
`libcalico.models` on the way in and out, and hands back the revisions a
compare-and-swap needs, so a read-modify-write cannot lose a concurrent edit.

Map:
- `Stored[M]`: one key read back (parsed key, model or validation error, revisions).
- `Pools`: IP pools; the only place that says which pools IPAM may use and what
  overlaps what.
- `WorkloadEndpoints`, `HostEndpoints`: endpoints Felix programs.
- `Nodes`: a node's registration (BGP addresses, AS, bird_ip, tunnel addresses).
- `BgpPeers`: global and per-node peers.
- `FelixStatuses`: what Felix reports about its host and each local endpoint.
- `Profiles`, `Tiers`, `Policies`: profiles (rules, tags, labels), tier metadata and tiered
  policies; `checked_put` builds a validated transaction put for multi-resource writes.
- `Resources(client)`: all of the above on one client.

Listings skip invalid values unless asked (`include_invalid=True`): show commands
report them, actions must not act on them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from libcalico import keys
from libcalico.datastore import (
    KV,
    DatastoreClient,
    op_delete,
    op_put,
    unchanged_since,
    version,
)
from libcalico.models import (
    BgpPeer,
    HostEndpoint,
    InvalidValue,
    Pool,
    ProfileRules,
    WorkloadEndpoint,
    parse_key_value,
    to_json,
)
from libcalico.validation import validate_asn, validate_bgp_ip, validate_ip

M = TypeVar("M")

__all__ = [
    "Stored", "Listing", "ResourceError", "PoolOverlap", "AddressConflict", "Conflict",
    "Pools", "WorkloadEndpoints", "HostEndpoints", "Nodes", "Node", "BgpPeers", "FelixStatuses", "Resources",
    "Profile", "Profiles", "Tiers", "Policies", "checked_put",
    "BLOCK_PREFIX", "TUNNEL_PARAMS",
]

# IPAM carves pools into blocks of this size (/26 v4, /122 v6).
BLOCK_PREFIX = {4: 26, 6: 122}
# Host config parameter holding this host's tunnel address, per pool overlay kind.
TUNNEL_PARAMS = {"ipip": "IpInIpTunnelAddr", "vxlan": "VXLANTunnelAddr"}
CAS_ATTEMPTS = 10
# Registration is guarded on the whole BGP host directory, which a cluster started at once (every
# node registering in the same second) and the nodes' BGP status documents keep changing: more
# attempts, each after a short random pause so the contenders spread out instead of colliding again.
REGISTER_ATTEMPTS = 200
REGISTER_PAUSE_MAX = 0.25


class ResourceError(Exception):
    """A write the datastore's current state refuses (message names the resource)."""


class PoolOverlap(ResourceError, ValueError):
    """A new pool overlaps another one (`new`, `other`: their CIDRs)."""

    def __init__(self, new: str, other: str):
        super().__init__(f"pools {new} and {other} overlap")
        self.new = new
        self.other = other


class AddressConflict(ResourceError):
    """Another node already registered with this node's address."""

    def __init__(self, message: str, node: str, key: str):
        super().__init__(message)
        self.node = node
        self.key = key


class Conflict(ResourceError):
    """The data kept changing during every compare-and-swap attempt; nothing was written."""


@dataclass(frozen=True)
class Stored(Generic[M]):
    """One key as read: its parsed key, the validated value (None when invalid) and revisions.

    `mod_revision` is what `cas` compares against, so an edit of a stored
    record applies only if nobody changed it since it was read.
    """

    key: keys.Key
    value: M | None
    mod_revision: int
    create_revision: int
    error: str | None = None  # the validation reason when value is None

    @property
    def path(self) -> str:
        return self.key.path

    @property
    def valid(self) -> bool:
        return self.error is None


class Listing(list):
    """A list of `Stored` plus the store revision it was read at (for `unchanged_since` guards)."""

    def __init__(self, items: Iterable = (), revision: int = 0):
        super().__init__(items)
        self.revision = revision


def _stored(kv: KV, kinds: tuple[str, ...]) -> Stored | None:
    """The record for a KV of one of `kinds`; None for keys of other kinds."""
    k = keys.parse(kv.key)
    if k is None or k.kind not in kinds:
        return None
    try:
        _, val = parse_key_value(kv.key, kv.value)
    except InvalidValue as e:
        return Stored(k, None, kv.mod_revision, kv.create_revision, e.reason)
    return Stored(k, val, kv.mod_revision, kv.create_revision)


async def _list(client: DatastoreClient, prefix: str, kinds: tuple[str, ...],
                include_invalid: bool) -> Listing:
    rev, kvs = await client.get_prefix(prefix)
    out = [s for kv in kvs if (s := _stored(kv, kinds)) is not None and (include_invalid or s.valid)]
    return Listing(out, rev)


async def _get(client: DatastoreClient, path: str, kind: str) -> Stored | None:
    kv = await client.get_kv(path)
    return None if kv is None else _stored(kv, (kind,))


def _check(path: str, text: str) -> str:
    """Never write what the readers would reject: the same validation, before the write."""
    parse_key_value(path, text)
    return text


class _Repo:
    def __init__(self, client: DatastoreClient):
        self.client = client

    async def cas(self, stored: Stored | str, value: Any, expected_mod_revision: int | None = None) -> bool:
        """Write `value` (a model; None deletes) only if the key is still at the revision read.

        `stored` is a record read from this repository (its mod_revision is
        the guard) or a key path with `expected_mod_revision` (0 = absent).
        """
        path = stored if isinstance(stored, str) else stored.path
        rev = expected_mod_revision if expected_mod_revision is not None else (
            0 if isinstance(stored, str) else stored.mod_revision)
        return await self.client.cas(path, rev, None if value is None else _check(path, self._json(value)))

    @staticmethod
    def _json(value: Any) -> str:
        return to_json(value)


# ---- pools ----------------------------------------------------------------------

def _net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


class Pools(_Repo):
    """IP pools.  The rules for which pool may hand out addresses live here only:
    a pool IPAM uses is valid, not `disabled` and not `ipam: false`."""

    @staticmethod
    def usable(pool: Pool) -> bool:
        return not pool.disabled and pool.ipam

    async def list(self, version: int | None = None, include_invalid: bool = False) -> Listing:
        """Pools of one IP version (None: both), sorted by address; `.revision` guards a later write."""
        prefix = {4: keys.POOL_DIR_V4, 6: keys.POOL_DIR_V6}.get(version, keys.IPAM_V1_DIR)  # type: ignore[arg-type]
        out = await _list(self.client, prefix, ("pool",), include_invalid)
        out.sort(key=lambda s: (s.key.version, int(_net(s.key.cidr).network_address), _net(s.key.cidr).prefixlen))
        return out

    async def get(self, cidr: str) -> Stored | None:
        return await _get(self.client, keys.pool(cidr), "pool")

    async def for_ipam(self, version: int, overlay: str | None = None) -> list[Pool]:
        """Pools IPAM may assign from (optionally only those with overlay 'ipip'/'vxlan')."""
        return [s.value for s in await self.list(version)
                if self.usable(s.value) and (overlay is None or s.value.overlay == overlay)]

    async def containing(self, ip: str) -> Pool | None:
        """The usable pool an address lies in, or None."""
        addr = ipaddress.ip_address(ip)
        return next((p for p in await self.for_ipam(addr.version) if addr in _net(p.cidr)), None)

    @staticmethod
    def overlapping(new: Iterable[Pool], existing: Iterable[Pool]) -> tuple[str, str] | None:
        """The first (new cidr, other cidr) that overlap, among the new pools and against
        the existing ones (a pool replacing its own cidr does not count)."""
        new = list(new)
        for i, a in enumerate(new):
            for b in new[i + 1:]:
                if _net(a.cidr).overlaps(_net(b.cidr)):
                    return a.cidr, b.cidr
        for a in new:
            for b in existing:
                if a.cidr != b.cidr and _net(a.cidr).overlaps(_net(b.cidr)):
                    return a.cidr, b.cidr
        return None

    async def add(self, pools: list[Pool]) -> None:
        """Write every pool or none, refusing overlaps (PoolOverlap); an existing cidr is replaced.

        The overlap check and the write are one guarded transaction: a pool
        written meanwhile by anyone makes it retry from a fresh read.
        """
        for _ in range(CAS_ATTEMPTS):
            existing = await self.list()
            clash = self.overlapping(pools, [s.value for s in existing])
            if clash is not None:
                raise PoolOverlap(*clash)
            ok, _ = await self.client.txn(
                [unchanged_since(keys.IPAM_V1_DIR, existing.revision)],
                [op_put(keys.pool(p.cidr), _check(keys.pool(p.cidr), to_json(p))) for p in pools], [],
                what="pool add")
            if ok:
                return
        raise Conflict("the pools kept changing while checking for overlaps; nothing written")

    async def create_if_none(self, pool: Pool) -> bool:
        """Write `pool` only while its IP version has no pool at all (a default never
        overrides an operator's pool, even one written concurrently)."""
        prefix = keys.POOL_DIR_V4 if pool.version == 4 else keys.POOL_DIR_V6
        rev, existing = await self.client.get_prefix(prefix)
        if existing:
            return False
        ok, _ = await self.client.txn([unchanged_since(prefix, rev)],
                                      [op_put(keys.pool(pool.cidr), to_json(pool))], [],
                                      what=f"create default pool {pool.cidr}")
        return ok

    async def put(self, pool: Pool) -> None:
        path = keys.pool(pool.cidr)
        await self.client.put(path, _check(path, to_json(pool)))

    async def remove(self, cidrs: list[str]) -> tuple[bool, list[str]]:
        """Delete all of `cidrs` or none: (deleted, the cidrs that were not pools when it failed)."""
        paths = [keys.pool(c) for c in cidrs]
        ok, _ = await self.client.txn([version(p) > 0 for p in paths], [op_delete(p) for p in paths], [],
                                      what="pool remove")
        if ok:
            return True, []
        return False, [c for c, p in zip(cidrs, paths, strict=True) if await self.client.get(p) is None]

    async def delete(self, cidr: str) -> bool:
        return await self.client.delete(keys.pool(cidr))


# ---- endpoints -------------------------------------------------------------------

class WorkloadEndpoints(_Repo):
    """Workload endpoints (`/calico/v1/host/<h>/workload/<orch>/<wl>/endpoint/<id>`).

    Written sparsely (only the fields the model was given, plus unknown ones it
    kept), so a value round-trips as its writer wrote it.
    """

    @staticmethod
    def _json(value: Any) -> str:
        return json.dumps(value.model_dump(by_alias=True, exclude_unset=True), separators=(",", ":"))

    @staticmethod
    def _prefix(host: str | None, orchestrator: str | None, workload: str | None) -> str:
        if host is None:
            return keys.HOST_DIR
        if orchestrator is None:
            return keys.workload_dir(host)
        if workload is None:  # the builder validates the segments; "_" stands for the rest
            return keys.workload_endpoint(host, orchestrator, "_", "_").removesuffix("_/endpoint/_")
        return keys.workload_endpoint(host, orchestrator, workload, "_").removesuffix("_")

    async def list(self, host: str | None = None, orchestrator: str | None = None,
                   workload: str | None = None, endpoint: str | None = None,
                   include_invalid: bool = False) -> Listing:
        """Endpoints matching every id given, sorted by key (the read is narrowed to the most
        specific directory the ids allow)."""
        out = await _list(self.client, self._prefix(host, orchestrator, workload), ("workload_endpoint",),
                          include_invalid)
        want = {"host": host, "orchestrator": orchestrator, "workload": workload, "endpoint": endpoint}
        return Listing((s for s in out if all(v is None or getattr(s.key, f) == v for f, v in want.items())),
                       out.revision)

    async def get(self, host: str, orchestrator: str, workload: str, endpoint: str) -> Stored | None:
        return await _get(self.client, keys.workload_endpoint(host, orchestrator, workload, endpoint),
                          "workload_endpoint")

    async def create(self, host: str, orchestrator: str, workload: str, endpoint: str,
                     ep: WorkloadEndpoint) -> bool:
        """Write a new endpoint; False (nothing written) when the key already exists."""
        path = keys.workload_endpoint(host, orchestrator, workload, endpoint)
        return await self.client.put_if_absent(path, _check(path, self._json(ep)))

    async def put(self, host: str, orchestrator: str, workload: str, endpoint: str,
                  ep: WorkloadEndpoint) -> None:
        path = keys.workload_endpoint(host, orchestrator, workload, endpoint)
        await self.client.put(path, _check(path, self._json(ep)))

    async def delete(self, stored_or_ids: Stored | tuple[str, str, str, str]) -> bool:
        path = stored_or_ids.path if isinstance(stored_or_ids, Stored) else keys.workload_endpoint(*stored_or_ids)
        return await self.client.delete(path)


class HostEndpoints(_Repo):
    """Host endpoints (`/calico/v1/host/<h>/endpoint/<id>`)."""

    async def list(self, host: str | None = None, include_invalid: bool = False) -> Listing:
        prefix = keys.HOST_DIR if host is None else keys.host_dir(host)
        return await _list(self.client, prefix, ("host_endpoint",), include_invalid)

    async def get(self, host: str, endpoint: str) -> Stored | None:
        return await _get(self.client, keys.host_endpoint(host, endpoint), "host_endpoint")

    async def put(self, host: str, endpoint: str, ep: HostEndpoint) -> None:
        path = keys.host_endpoint(host, endpoint)
        await self.client.put(path, _check(path, to_json(ep)))

    async def delete(self, host: str, endpoint: str) -> bool:
        return await self.client.delete(keys.host_endpoint(host, endpoint))


# ---- nodes ---------------------------------------------------------------------

@dataclass
class Node:
    """A node's registration.  `list()` fills the BGP fields only (one read of the BGP
    host directory); `get()` also reads bird_ip and the tunnel addresses."""

    name: str
    ip4: str | None = None
    ip6: str | None = None
    as_num: int | None = None  # None: the global AS applies
    bird_ip: str | None = None
    tunnel_addrs: dict[str, str] = field(default_factory=dict)  # param -> IPv4
    errors: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of invalid values
    raw: dict[str, str] = field(default_factory=dict)  # "v4"/"v6"/"as": the stored text, even when invalid


@dataclass(frozen=True)
class Registration:
    revision: int
    as_removed: bool


class Nodes(_Repo):
    """Node registrations: the BGP host keys, bird_ip and the tunnel address config."""

    @staticmethod
    def _fold(nodes: dict[str, Node], kv: KV) -> None:
        k = keys.parse(kv.key)
        if k is None or k.kind not in ("bgp_host_ip", "bgp_host_as"):
            return
        node = nodes.setdefault(k.host, Node(k.host))
        text = (kv.value or "").strip()
        field_ = f"v{k.version}" if k.kind == "bgp_host_ip" else "as"
        node.raw[field_] = text
        try:
            _, val = parse_key_value(kv.key, kv.value)
        except InvalidValue as e:
            node.errors.append((kv.key, e.reason))
            return
        if k.kind == "bgp_host_as":
            node.as_num = val  # type: ignore[assignment]
        elif k.version == 4:
            node.ip4 = val  # type: ignore[assignment]
        else:
            node.ip6 = val  # type: ignore[assignment]

    async def list(self) -> Listing:
        """Every node with a BGP registration, sorted by name; `.revision` guards `register`."""
        rev, kvs = await self.client.get_prefix(keys.BGP_HOST_DIR)
        nodes: dict[str, Node] = {}
        for kv in kvs:
            self._fold(nodes, kv)
        return Listing((nodes[n] for n in sorted(nodes)), rev)

    async def get(self, name: str) -> Node | None:
        """The node's registration, or None when nothing of it is stored."""
        _, kvs = await self.client.get_prefix(keys.bgp_host_dir(name))
        nodes: dict[str, Node] = {}
        for kv in kvs:
            self._fold(nodes, kv)
        node = nodes.get(name)
        bird = await self.client.get(keys.host_bird_ip(name))
        tunnels = {p: await self.tunnel_addr(name, p) for p in TUNNEL_PARAMS.values()}
        if node is None and bird is None and not any(tunnels.values()):
            return None
        node = node or Node(name)
        if bird is not None:
            try:
                node.bird_ip = validate_ip(bird.strip(), 4)
            except ValueError as e:
                node.errors.append((keys.host_bird_ip(name), str(e)))
        node.tunnel_addrs = {p: s.value for p, s in tunnels.items() if s is not None and s.valid}
        return node

    async def exists(self, name: str) -> bool:
        """Anything stored for the node, under its host or BGP directory."""
        return bool((await self.client.get_prefix(keys.host_dir(name)))[1]
                    or (await self.client.get_prefix(keys.bgp_host_dir(name)))[1])

    async def register(self, name: str, ip4: str | None, ip6: str | None, as_num: int | None) -> Registration:
        """Write the node's addresses and AS, refusing an address another node registered.

        Check and write are one transaction guarded on the whole BGP host
        directory: two nodes started at once with one IP cannot both pass.
        Raises AddressConflict, or Conflict when the directory never held still.
        """
        mine = {4: ip4, 6: ip6 or None}
        for attempt in range(REGISTER_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, min(REGISTER_PAUSE_MAX, 0.01 * attempt)))
            nodes = await self.list()
            for other in nodes:
                if other.name == name:
                    continue
                for v in (4, 6):
                    if mine[v] and other.raw.get(f"v{v}") == mine[v]:
                        key = keys.bgp_host_ip(other.name, v)
                        raise AddressConflict(f"IP{'' if v == 4 else '6'} {mine[v]} is already used by node "
                                              f"{other.name!r} ({key})", other.name, key)
            # ip4 None: an IPv6-only node has no bird_ip and no IPv4 registration
            ops = [op_put(keys.host_bird_ip(name), ip4) if ip4 else op_delete(keys.host_bird_ip(name)),
                   op_put(keys.bgp_host_ip(name, 4), ip4) if ip4 else op_delete(keys.bgp_host_ip(name, 4)),
                   op_put(keys.bgp_host_ip(name, 6), ip6 or ""),
                   op_put(keys.bgp_host_as(name), str(as_num)) if as_num is not None
                   else op_delete(keys.bgp_host_as(name))]
            ok, resp = await self.client.txn([unchanged_since(keys.BGP_HOST_DIR, nodes.revision)], ops, [],
                                             what=f"register host {name}")
            if ok:
                return Registration(nodes.revision, as_num is None and bool(resp[-1]))
        raise Conflict(f"could not register host {name}: the keys under {keys.BGP_HOST_DIR} kept "
                       f"changing during {REGISTER_ATTEMPTS} attempts")

    async def tunnel_addr(self, name: str, param: str) -> Stored | None:
        """The host's IpInIpTunnelAddr/VXLANTunnelAddr (value an IPv4, or the error)."""
        return await _get(self.client, keys.host_config(name, param), "host_config")

    async def set_tunnel_addr(self, name: str, param: str, ip: str | None) -> None:
        path = keys.host_config(name, param)
        if ip is None:
            await self.client.delete(path)
        else:
            await self.client.put(path, _check(path, ip))

    async def remove(self, name: str) -> int:
        """Delete everything stored for the node (host, BGP, Felix status, block affinities);
        returns the number of keys deleted.  Release its IPAM records first."""
        n = 0
        for prefix in (keys.host_dir(name), keys.bgp_host_dir(name), f"{keys.FELIX_STATUS_DIR}{name}/",
                       keys.ipam_host_dir(name)):
            n += await self.client.delete_prefix(prefix)
        return n


# ---- BGP peers -------------------------------------------------------------------

class BgpPeers(_Repo):
    """BGP peers of every node (host None) or of one node."""

    @staticmethod
    def _dir(host: str | None, version: int) -> str:
        base = keys.BGP_GLOBAL_DIR if host is None else keys.bgp_host_dir(host)
        return f"{base}peer_v{version}/"

    @staticmethod
    def _path(ip: str, host: str | None) -> str:
        return keys.bgp_global_peer(ip) if host is None else keys.bgp_host_peer(host, ip)

    @staticmethod
    def _json(value: Any) -> str:
        # The classic form: as_num as a string.
        return json.dumps({"ip": value.ip, "as_num": str(value.as_num)}, separators=(",", ":"))

    async def list(self, host: str | None = None, version: int | None = None,
                   include_invalid: bool = False) -> Listing:
        kind = "bgp_global_peer" if host is None else "bgp_host_peer"
        out = Listing()
        for v in (4, 6) if version is None else (version,):
            part = await _list(self.client, self._dir(host, v), (kind,), include_invalid)
            out.extend(part)
            out.revision = part.revision
        return out

    async def get(self, ip: str, host: str | None = None) -> Stored | None:
        return await _get(self.client, self._path(ip, host), "bgp_global_peer" if host is None else "bgp_host_peer")

    async def put(self, ip: str, as_num: int | str, host: str | None = None) -> BgpPeer:
        peer = BgpPeer.model_validate({"ip": validate_bgp_ip(ip), "as_num": validate_asn(as_num)})
        path = self._path(peer.ip, host)
        await self.client.put(path, _check(path, self._json(peer)))
        return peer

    async def delete(self, ip: str, host: str | None = None) -> bool:
        return await self.client.delete(self._path(ip, host))


# ---- Felix's status reports ------------------------------------------------------

class FelixStatuses(_Repo):
    """Felix's reports under `/calico/felix/v1/host/<h>/`: its own liveness document
    (`status`, under a lease, and `last_reported_status`) and one document per local
    endpoint (`{"status": "up"|"down"|"error", "reason"?}`).

    The values are plain JSON objects with no model; they are written as `json.dumps`
    spells them, so readers of these keys see the bytes they always saw.
    """

    @staticmethod
    def _json(value: Any) -> str:
        return json.dumps(value)

    @staticmethod
    def _dir(host: str) -> str:
        return keys.felix_status(host).removesuffix("status")  # the builder validates the hostname

    async def put_status(self, host: str, doc: dict, lease: Any = None) -> None:
        """The liveness document: `status` expires with `lease`, `last_reported_status` stays."""
        text = self._json(doc)
        path = keys.felix_status(host)
        await self.client.put(path, _check(path, text), lease=lease)
        path = keys.felix_last_status(host)
        await self.client.put(path, _check(path, text))

    async def endpoints(self, host: str, include_invalid: bool = False) -> Listing:
        """Every endpoint status the host has written (`Stored.key` names the endpoint)."""
        return await _list(self.client, f"{self._dir(host)}workload/", ("felix_endpoint_status",),
                           include_invalid)

    async def put_endpoint(self, host: str, orchestrator: str, workload: str, endpoint: str,
                           doc: dict) -> None:
        path = keys.felix_endpoint_status(host, orchestrator, workload, endpoint)
        await self.client.put(path, _check(path, self._json(doc)))

    async def delete_endpoint(self, host: str, orchestrator: str, workload: str, endpoint: str) -> bool:
        return await self.client.delete(keys.felix_endpoint_status(host, orchestrator, workload, endpoint))


# ---- profiles, tiers and policies -------------------------------------------------

@dataclass
class Profile:
    """A profile's three keys as read: rules, tags and labels (None when that key is absent).

    `revision` is the store revision of the read: `unchanged_since(profile_dir, revision)`
    guards a later write of the whole profile.
    """

    name: str
    rules: ProfileRules | None = None
    tags: list[str] | None = None
    labels: dict[str, str] | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of invalid values
    revision: int = 0


def checked_put(path: str, value: Any) -> Any:
    """A transaction put of `value` (a model, list, dict or plain text) validated as readers will.

    Callers that write several resources in one transaction build their ops
    with this, so a batch can never contain a value Felix or confd would refuse.
    """
    text = value if isinstance(value, str) else to_json(value)
    return op_put(path, _check(path, text))


class Profiles(_Repo):
    """Profiles (`/calico/v1/policy/profile/<id>/{rules,tags,labels}`)."""

    @staticmethod
    def _fold(out: dict[str, Profile], kv: KV) -> None:
        k = keys.parse(kv.key)
        if k is None or k.kind not in ("profile_rules", "profile_tags", "profile_labels"):
            return
        prof = out.setdefault(k.profile, Profile(k.profile))
        try:
            _, val = parse_key_value(kv.key, kv.value)
        except InvalidValue as e:
            prof.errors.append((kv.key, e.reason))
            return
        setattr(prof, k.kind.removeprefix("profile_"), val)

    async def list(self) -> Listing:
        """Every profile (any of its keys stored), sorted by name."""
        rev, kvs = await self.client.get_prefix(keys.PROFILE_DIR)
        out: dict[str, Profile] = {}
        for kv in kvs:
            self._fold(out, kv)
        for p in out.values():
            p.revision = rev
        return Listing((out[n] for n in sorted(out)), rev)

    async def get(self, name: str) -> Profile | None:
        rev, kvs = await self.client.get_prefix(keys.profile_dir(name))
        out: dict[str, Profile] = {}
        for kv in kvs:
            self._fold(out, kv)
        prof = out.get(name)
        if prof is not None:
            prof.revision = rev
        return prof

    @staticmethod
    def write_ops(name: str, rules: ProfileRules, tags: list[str] | None,
                  labels: dict[str, str] | None) -> list:
        """Ops that make the profile exactly this: an absent tags/labels key is deleted."""
        ops = [checked_put(keys.profile_rules(name), rules)]
        for path, val in ((keys.profile_tags(name), tags), (keys.profile_labels(name), labels)):
            ops.append(op_delete(path) if val is None else checked_put(path, val))
        return ops

    async def users(self, name: str) -> list[str]:
        """Keys of the valid endpoints (workload and host) that name this profile."""
        wl = await WorkloadEndpoints(self.client).list()
        hs = await HostEndpoints(self.client).list()
        return [s.path for s in [*wl, *hs] if name in s.value.profile_ids]

    async def delete(self, name: str) -> bool:
        return bool(await self.client.delete_prefix(keys.profile_dir(name)))


class Tiers(_Repo):
    """Tier metadata (`/calico/v1/policy/tier/<tier>/metadata`); a tier without it is not in force."""

    async def list(self, include_invalid: bool = False) -> Listing:
        out = await _list(self.client, keys.TIER_DIR, ("tier_metadata",), include_invalid)
        out.sort(key=lambda s: s.key.tier)
        return out

    async def get(self, name: str) -> Stored | None:
        return await _get(self.client, keys.tier_metadata(name), "tier_metadata")

    async def policy_names(self, name: str) -> list[str]:
        _, kvs = await self.client.get_prefix(keys.tier_policy(name, "_").removesuffix("_"))
        return sorted(k.policy for kv in kvs if (k := keys.parse(kv.key)) is not None and k.kind == "tier_policy")


class Policies(_Repo):
    """Tiered policies (`/calico/v1/policy/tier/<tier>/policy/<name>`)."""

    async def list(self, tier: str | None = None, include_invalid: bool = False) -> Listing:
        prefix = keys.TIER_DIR if tier is None else keys.tier_policy(tier, "_").removesuffix("_")
        out = await _list(self.client, prefix, ("tier_policy",), include_invalid)
        out.sort(key=lambda s: (s.key.tier, s.key.policy))
        return out

    async def get(self, tier: str, name: str) -> Stored | None:
        return await _get(self.client, keys.tier_policy(tier, name), "tier_policy")


class Resources:
    """Every repository on one client: `Resources(client).pools.list()`."""

    def __init__(self, client: DatastoreClient):
        self.client = client
        self.pools = Pools(client)
        self.workload_endpoints = WorkloadEndpoints(client)
        self.host_endpoints = HostEndpoints(client)
        self.nodes = Nodes(client)
        self.bgp_peers = BgpPeers(client)
        self.felix_statuses = FelixStatuses(client)
        self.profiles = Profiles(client)
        self.tiers = Tiers(client)
        self.policies = Policies(client)
