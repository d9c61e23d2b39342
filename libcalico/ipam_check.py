"""Checking IPAM against the workloads that exist, and repairing what the check found.

Leaked addresses (allocated, but no workload uses them) are the commonest IPAM
fault in practice: a plugin killed between allocating and writing its
endpoint, or a workload deleted behind the orchestrator's back.  The check
compares every allocation with the endpoints, tunnel addresses and nodes in
the datastore; the report it writes is what the repair acts on, and the repair
re-judges every item on the block revision it writes, so a workload that came
into being after the report is never harmed.

An allocation is live when any of these holds:
- its address is one of an endpoint's ``ipv4_nets``/``ipv6_nets``;
- its handle is an endpoint's id (calicoctl and the plugins use the endpoint id);
- its attributes name an existing endpoint (``host``, ``orchestrator``, ``workload``, ``endpoint``);
- it is a node's tunnel address (handle ``<ipip|vxlan>-tunnel-addr-<host>``, and the
  node's ``IpInIpTunnelAddr``/``VXLANTunnelAddr`` is that address).
Anything else is leaked.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from libcalico import keys
from libcalico.datastore import DatastoreClient, unchanged_since
from libcalico.ipam import Block, HandleRecord, Ipam
from libcalico.ipam_records import RecordError
from libcalico.resources import TUNNEL_PARAMS, Nodes, WorkloadEndpoints

log = logging.getLogger(__name__)

REPORT_VERSION = 1
REPAIR_ATTEMPTS = 20
MAX_REPORT_BYTES = 64 * 1024 * 1024


@dataclass
class Leak:
    ip: str
    handle: str
    block: str
    host: str | None
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Unrecorded:
    ip: str
    endpoint: str  # the endpoint's key
    holder: str | None = None  # the handle holding it, when another handle does


@dataclass
class OrphanBlock:
    block: str
    host: str
    in_use: int
    affinity_key: str


@dataclass
class HandleMismatch:
    handle: str
    recorded: dict[str, int]
    actual: dict[str, int]


@dataclass
class Report:
    revision: int = 0
    allocations: int = 0
    blocks: int = 0
    leaked: list[Leak] = field(default_factory=list)
    unrecorded: list[Unrecorded] = field(default_factory=list)
    orphan_blocks: list[OrphanBlock] = field(default_factory=list)
    handle_mismatches: list[HandleMismatch] = field(default_factory=list)
    corrupt: list[dict[str, str]] = field(default_factory=list)
    legacy_blocks: int = 0

    @property
    def clean(self) -> bool:
        return not (self.leaked or self.unrecorded or self.orphan_blocks or self.handle_mismatches or self.corrupt)

    def to_json(self) -> str:
        data = {"version": REPORT_VERSION, **asdict(self)}
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Parse a report file; ValueError naming what is wrong with it."""
        if len(text) > MAX_REPORT_BYTES:
            raise ValueError(f"report is larger than {MAX_REPORT_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"not JSON ({str(e)[:80]})") from None
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
            raise ValueError(f"not an 'ipam check' report of version {REPORT_VERSION}")
        try:
            return cls(
                revision=int(data.get("revision", 0)),
                leaked=[Leak(str(ipaddress.ip_address(x["ip"])), _text(x["handle"]), str(ipaddress.ip_network(x["block"])),
                             x.get("host"), dict(x.get("attrs") or {})) for x in data.get("leaked", [])],
                orphan_blocks=[OrphanBlock(str(ipaddress.ip_network(x["block"])), _text(x["host"]), int(x["in_use"]),
                                           _text(x["affinity_key"])) for x in data.get("orphan_blocks", [])],
                handle_mismatches=[HandleMismatch(_text(x["handle"]), dict(x["recorded"]), dict(x["actual"]))
                                   for x in data.get("handle_mismatches", [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed report entry ({e.__class__.__name__}: {str(e)[:80]})") from None


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a non-empty string")
    return v


def _tunnel_host(handle: str) -> tuple[str, str] | None:
    """(host, host config param) for a node's tunnel address handle."""
    for kind, param in TUNNEL_PARAMS.items():
        prefix = f"{kind}-tunnel-addr-"
        if handle.startswith(prefix) and len(handle) > len(prefix):
            return handle[len(prefix):], param
    return None


class Liveness:
    """What the datastore says is in use, read once per check (and again per repaired item)."""

    def __init__(self, client: DatastoreClient):
        self.client = client
        self.endpoint_ips: dict[str, str] = {}  # ip -> endpoint key
        self.endpoint_ids: set[str] = set()
        self.endpoint_keys: set[str] = set()
        self.tunnels: dict[tuple[str, str], str | None] = {}
        self.endpoints: list = []
        self.revision = 0  # the store revision the endpoints were read at

    async def load(self) -> Liveness:
        listing = await WorkloadEndpoints(self.client).list(include_invalid=True)
        self.revision = listing.revision
        for s in listing:
            self.endpoint_keys.add(s.path)
            self.endpoint_ids.add(s.key.endpoint)
            if s.value is None:
                continue
            self.endpoints.append(s)
            for net in list(s.value.ipv4_nets or []) + list(s.value.ipv6_nets or []):
                self.endpoint_ips[str(ipaddress.ip_network(net, strict=False).network_address)] = s.path
        return self

    async def tunnel(self, host: str, param: str) -> str | None:
        if (host, param) not in self.tunnels:
            try:
                stored = await Nodes(self.client).tunnel_addr(host, param)
            except keys.KeyError_:
                stored = None
            self.tunnels[(host, param)] = stored.value if stored is not None and stored.valid else None
        return self.tunnels[(host, param)]

    async def live(self, ip: str, handle: str, attrs: dict[str, str]) -> bool:
        if ip in self.endpoint_ips or handle in self.endpoint_ids:
            return True
        if all(attrs.get(k) for k in ("host", "orchestrator", "workload", "endpoint")):
            try:
                key = keys.workload_endpoint(attrs["host"], attrs["orchestrator"], attrs["workload"],
                                             attrs["endpoint"])
            except keys.KeyError_:
                key = None
            if key in self.endpoint_keys:
                return True
        tunnel = _tunnel_host(handle)
        return tunnel is not None and await self.tunnel(*tunnel) == ip


async def check(client: DatastoreClient) -> Report:
    """Compare every allocation, affinity and handle record with what exists (read-only)."""
    ipam = Ipam(client)
    report = Report(revision=await client.current_revision())
    _, block_kvs = await client.get_prefix(keys.IPAM_ASSIGN_DIR)
    blocks: list[Block] = []
    for kv in block_kvs:
        try:
            blocks.append(Block.from_kv(kv))
        except RecordError as e:
            report.corrupt.append({"key": kv.key, "error": str(e)})
    live = await Liveness(client).load()
    pools = await ipam.all_pools()
    nodes = Nodes(client)
    exists: dict[str, bool] = {}

    async def node_exists(host: str) -> bool:
        if host not in exists:
            try:
                exists[host] = await nodes.exists(host)
            except keys.KeyError_:
                exists[host] = False
        return exists[host]

    held: dict[str, str] = {}
    actual: dict[str, dict[str, int]] = {}
    report.blocks = len(blocks)
    for b in blocks:
        report.legacy_blocks += b.legacy
        for o, h in b.used():
            ip = b.address(o)
            held[ip] = h
            actual.setdefault(h, {})[b.cidr] = actual.get(h, {}).get(b.cidr, 0) + 1
            report.allocations += 1
            attrs = b.secondary_at(o)
            if not await live.live(ip, h, attrs):
                report.leaked.append(Leak(ip, h, b.cidr, b.host, attrs))
    # affinities (the keys Felix and confd route by) of nodes that are gone
    _, aff_kvs = await client.get_prefix(keys.IPAM_HOST_DIR)
    by_cidr = {b.cidr: b for b in blocks}
    for kv in aff_kvs:
        k = keys.parse(kv.key)
        if k is None or k.kind != "block_affinity":
            continue
        if not await node_exists(k.host):
            b = by_cidr.get(k.cidr)
            report.orphan_blocks.append(OrphanBlock(k.cidr, k.host, b.in_use() if b else 0, kv.key))
    seen_orphans = {o.block for o in report.orphan_blocks}
    for b in blocks:
        if b.host and b.cidr not in seen_orphans and not await node_exists(b.host):
            report.orphan_blocks.append(OrphanBlock(b.cidr, b.host, b.in_use(), keys.block_affinity(b.host, b.cidr)))
    # endpoint addresses inside a pool that IPAM does not hold for them
    nets = [ipaddress.ip_network(p.cidr) for p in pools]
    for ip, path in sorted(live.endpoint_ips.items()):
        addr = ipaddress.ip_address(ip)
        if not any(addr in n for n in nets):
            continue
        holder = held.get(ip)
        if holder is None:
            report.unrecorded.append(Unrecorded(ip, path))
    # handle records against the blocks
    _, handle_kvs = await client.get_prefix(keys.IPAM_HANDLE_DIR)
    recorded: dict[str, dict[str, int]] = {}
    for kv in handle_kvs:
        k = keys.parse(kv.key)
        if k is None or k.kind != "ipam_handle":
            continue
        rec = HandleRecord.from_kv(k.handle, kv)
        recorded[k.handle] = {c: n for c, n in rec.blocks.items() if n > 0}
    for h in sorted(set(recorded) | set(actual)):
        if recorded.get(h, {}) != actual.get(h, {}):
            report.handle_mismatches.append(HandleMismatch(h, recorded.get(h, {}), actual.get(h, {})))
    return report


@dataclass
class RepairResult:
    released: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, why)
    blocks_released: list[str] = field(default_factory=list)
    handles_fixed: list[str] = field(default_factory=list)


async def repair(client: DatastoreClient, report: Report) -> RepairResult:
    """Release what the report found leaked, give back blocks of removed nodes, and rewrite
    mismatched handle records; each item is judged again first, on fresh data.

    A leak is released by a transaction that also requires that nothing under
    the host directories (endpoints, tunnel addresses) changed since the
    liveness read it was judged on: a workload that appears meanwhile makes the
    transaction fail, and the item is judged again.
    """
    ipam = Ipam(client)
    out = RepairResult()
    live = await Liveness(client).load()
    for leak in report.leaked:
        for _ in range(REPAIR_ATTEMPTS):
            async def judge(block: Block, leak: Leak = leak, live: Liveness = live) -> bool:
                o = block.ordinal(leak.ip)
                return o is not None and not await live.live(leak.ip, leak.handle, block.secondary_at(o))

            result = await ipam.release_guarded(leak.ip, leak.handle, judge,
                                                [unchanged_since(keys.HOST_DIR, live.revision)])
            if result != "conflict":
                break
            live = await Liveness(client).load()
        if result == "released":
            out.released.append(leak.ip)
        elif result == "conflict":
            out.skipped.append((leak.ip, "kept changing while releasing; run 'ipam check' again"))
        else:
            out.skipped.append((leak.ip, "no longer leaked (in use, re-assigned or already released)"))
    for orphan in report.orphan_blocks:
        if await Nodes(client).exists(orphan.host):
            out.skipped.append((orphan.block, f"node {orphan.host} exists again"))
            continue
        released = await ipam.release_host_affinities(orphan.host)
        out.blocks_released += [c for c in released if c not in out.blocks_released]
        if await client.delete(orphan.affinity_key) and orphan.block not in out.blocks_released:
            out.blocks_released.append(orphan.block)
    for mismatch in report.handle_mismatches:
        if await ipam.fix_handle(mismatch.handle):
            out.handles_fixed.append(mismatch.handle)
    return out
