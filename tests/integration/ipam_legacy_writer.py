"""FROZEN COPY of libcalico/ipam.py as it was before IPAM adopted the classic record shape.

Tests use it to write a datastore exactly as the previous release did, then
check that today's IPAM reads it, converts each block on its first write and
loses nothing.  Do not edit it to follow libcalico: it stands for old code.

The original module docstring follows.

IP address management: per-host blocks carved from pools, claimed with etcd transactions.

Several nodes (and several CNI calls on one node) allocate at once with no
coordinator, so every change is a compare-and-swap on the block's allocation
record (and on the handle record, in the same transaction): a lost race is
retried from a fresh read, and no address can be handed out twice.  A
transaction whose reply is lost is settled by reading the block back, so a
timeout neither leaks the address nor returns one that was never written.

Records (ours; the datamodel leaves their shape to IPAM):
- ``/calico/ipam/v2/assignment/ipv4/block/<cidr-key>``:
  ``{"cidr": "10.65.0.0/26", "affinity": "host:<h>" | null, "allocations": {"<ordinal>": "<handle>"}}``
- ``/calico/ipam/v2/host/<h>/ipv4/block/<cidr-key>``: ``{"state": "confirmed"}``
- ``/calico/ipam/v2/handle/<handle>``: ``{"handle": "<handle>", "blocks": {"<cidr>": <count>}}``
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from libcalico import keys
from libcalico.datastore import KV, DatastoreClient, DatastoreUnavailable, create, mod, op_delete, op_put

log = logging.getLogger(__name__)

BLOCK_PREFIX = {4: 26, 6: 122}
MAX_ATTEMPTS = 200  # CAS retries per operation; each conflict means someone else progressed
OUTCOME_READS = 5  # reads (each with the client's own retries) to learn a lost transaction's fate

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpamError(Exception):
    """An IPAM request that cannot be satisfied (message names the IP/handle/host)."""


@dataclass
class Block:
    cidr: str
    affinity: str | None
    allocations: dict[int, str] = field(default_factory=dict)
    mod_revision: int = 0

    @property
    def net(self) -> Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def host(self) -> str | None:
        return self.affinity[5:] if self.affinity and self.affinity.startswith("host:") else None

    def free_ordinals(self) -> Iterator[int]:
        return (i for i in range(self.net.num_addresses) if i not in self.allocations)

    def to_json(self) -> str:
        return json.dumps({"cidr": self.cidr, "affinity": self.affinity,
                           "allocations": {str(k): v for k, v in sorted(self.allocations.items())}},
                          separators=(",", ":"))

    @classmethod
    def from_kv(cls, kv: KV) -> Block:
        try:
            data = json.loads(kv.value)
            allocs = {int(k): str(v) for k, v in (data.get("allocations") or {}).items()}
            return cls(str(ipaddress.ip_network(data["cidr"])), data.get("affinity"), allocs, kv.mod_revision)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IpamError(f"{kv.key}: corrupt block record ({e})") from None


def _handle_json(handle: str, blocks: dict[str, int]) -> str:
    return json.dumps({"handle": handle, "blocks": dict(sorted(blocks.items()))}, separators=(",", ":"))


def _handle_blocks(kv: KV | None) -> dict[str, int]:
    if kv is None:
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(kv.value).get("blocks", {}).items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("%s: corrupt handle record, rebuilding it", kv.key)
        return {}


def _canon(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def block_of(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{addr}/{BLOCK_PREFIX[addr.version]}", strict=False))


class Ipam:
    """Allocate and release workload IPs; safe against any number of concurrent allocators."""

    def __init__(self, client: DatastoreClient):
        self.client = client

    # ---- reads --------------------------------------------------------------

    async def pools(self, version: int) -> list[Network]:
        """Pools that may give addresses (the rule is `resources.Pools.usable`)."""
        from libcalico.resources import Pools

        nets = [ipaddress.ip_network(p.cidr) for p in await Pools(self.client).for_ipam(version)]
        return sorted(nets, key=lambda n: (n.network_address, n.prefixlen))

    @staticmethod
    def _block_size(pool: Network) -> int:
        return max(BLOCK_PREFIX[pool.version], pool.prefixlen)

    async def host_blocks(self, host: str, version: int | None = None) -> list[str]:
        """CIDRs of the blocks affine to host (from the affinity keys)."""
        _, kvs = await self.client.get_prefix(keys.ipam_host_dir(host))
        out = []
        for kv in kvs:
            k = keys.parse(kv.key)
            if k is not None and k.kind == "block_affinity" and (version is None or k.version == version):
                out.append(k.cidr)
        # lowest address first: released space low in the range is reused before fresh space
        return sorted(out, key=lambda c: (ipaddress.ip_network(c).version, ipaddress.ip_network(c)))

    async def _block(self, cidr: str) -> Block | None:
        kv = await self.client.get_kv(keys.block_allocation(cidr))
        return Block.from_kv(kv) if kv else None

    async def all_blocks(self, version: int) -> list[Block]:
        _, kvs = await self.client.get_prefix(f"{keys.IPAM_ASSIGN_DIR}ipv{version}/block/")
        out = []
        for kv in kvs:
            try:
                out.append(Block.from_kv(kv))
            except IpamError as e:
                log.warning("%s", e)
        return out

    async def get_assignment(self, ip: str) -> dict | None:
        """{"ip", "handle", "block", "host"} for an assigned IP, else None."""
        addr = ipaddress.ip_address(ip)
        block = await self._block(block_of(ip))
        if block is None:
            return None
        ordinal = int(addr) - int(block.net.network_address)
        handle = block.allocations.get(ordinal)
        if handle is None:
            return None
        return {"ip": str(addr), "handle": handle, "block": block.cidr, "host": block.host}

    # ---- the CAS core ------------------------------------------------------

    async def _commit(self, block: Block, handle_changes: dict[str, dict[str, int]],
                      handle_kvs: dict[str, KV | None], extra_compare: list | None = None,
                      extra_ops: list | None = None) -> bool:
        """Write block + handle records iff none of them changed since they were read."""
        bkey = keys.block_allocation(block.cidr)
        compare = [mod(bkey) == block.mod_revision] + list(extra_compare or [])
        ops = [op_put(bkey, block.to_json())] + list(extra_ops or [])
        for handle, blocks in handle_changes.items():
            hkey = keys.ipam_handle(handle)
            kv = handle_kvs.get(handle)
            compare.append(mod(hkey) == (kv.mod_revision if kv else 0))
            live = {b: n for b, n in blocks.items() if n > 0}
            ops.append(op_put(hkey, _handle_json(handle, live)) if live else op_delete(hkey))
        ok, _ = await self.client.txn(compare, ops, [], what=f"ipam commit {block.cidr}")
        return ok

    async def _commit_or_verify(self, block: Block, handle_changes: dict[str, dict[str, int]],
                                handle_kvs: dict[str, KV | None], applied: Callable[[Block], bool]) -> bool:
        """_commit, but when the reply is lost, read back whether it applied.

        A transaction that timed out may or may not have committed; assuming
        either way leaks the address (assume not) or hands out one never
        written (assume yes).  `applied(block)` tells from the block as it is
        now whether our change is in it; the block and handle records change in
        one transaction, so the block alone decides.
        """
        try:
            return await self._commit(block, handle_changes, handle_kvs)
        except DatastoreUnavailable as e:
            log.warning("ipam commit %s: reply lost (%s); reading back whether it applied", block.cidr, e)
        last: Exception | None = None
        for _ in range(OUTCOME_READS):
            try:
                now = await self._block(block.cidr)
            except DatastoreUnavailable as e:
                last = e
                continue
            done = now is not None and applied(now)
            log.info("ipam commit %s: %s", block.cidr, "it had applied" if done else "it had not applied, retrying")
            return done
        raise DatastoreUnavailable(
            f"ipam commit {block.cidr}: outcome unknown, etcd unreachable ({last}); handle(s) "
            f"{', '.join(sorted(handle_changes))} may hold addresses: release them by handle once etcd is back")

    async def _allocate_in(self, cidr: str, handle: str, count: int, pools: list[Network],
                           owner: str | None = None) -> list[str]:
        """Take up to count free addresses of one block for handle; [] if it is full, gone or not owner's."""
        for _ in range(MAX_ATTEMPTS):
            block = await self._block(cidr)
            if block is None or (owner is not None and block.host != owner):
                return []
            net = block.net
            taken = [o for o in block.free_ordinals() if self._usable(net, o, pools)][:count]
            if not taken:
                return []
            hkv = await self.client.get_kv(keys.ipam_handle(handle))
            hblocks = _handle_blocks(hkv)
            for o in taken:
                block.allocations[o] = handle
            hblocks[block.cidr] = hblocks.get(block.cidr, 0) + len(taken)
            if await self._commit_or_verify(block, {handle: hblocks}, {handle: hkv},
                                            lambda b, t=taken: all(b.allocations.get(o) == handle for o in t)):
                return [str(net.network_address + o) for o in taken]
            await asyncio.sleep(random.uniform(0, 0.01))
        raise IpamError(f"block {cidr}: too much contention, gave up after {MAX_ATTEMPTS} attempts")

    @staticmethod
    def _usable(net: Network, ordinal: int, pools: list[Network]) -> bool:
        """Not a pool's IPv4 network or broadcast address (some stacks mishandle them)."""
        if net.version != 4:
            return True
        addr = net.network_address + ordinal
        for p in pools:
            if addr in p:
                return p.prefixlen >= 31 or addr not in (p.network_address, p.broadcast_address)
        return True

    async def _claim_block(self, host: str, cidr: str) -> bool:
        """Create the block record affine to host together with the affinity key, only if unclaimed."""
        bkey, akey = keys.block_allocation(cidr), keys.block_affinity(host, cidr)
        block = Block(cidr, f"host:{host}")
        ok, _ = await self.client.txn([create(bkey) == 0],
                                      [op_put(bkey, block.to_json()), op_put(akey, '{"state":"confirmed"}')],
                                      [], what=f"claim block {cidr} for {host}")
        if ok:
            log.info("claimed block %s for host %s", cidr, host)
        return ok

    @staticmethod
    def _candidate_blocks(pool: Network, taken: set[str]) -> Iterator[str]:
        for sub in pool.subnets(new_prefix=Ipam._block_size(pool)):
            cidr = str(sub)
            if cidr not in taken:
                yield cidr

    # ---- public operations ---------------------------------------------------

    async def auto_assign(self, host: str, handle: str, num4: int = 0, num6: int = 0,
                          pools: list[str] | None = None) -> tuple[list[str], list[str]]:
        """Up to num4/num6 addresses for handle (fewer when the pools are exhausted).

        ``pools`` limits the choice to those pool CIDRs (e.g. the IPIP pools for
        a tunnel address); they must still exist, be enabled and allow IPAM.
        """
        keys.ipam_handle(handle)  # validates the handle as a key segment
        keys.ipam_host_dir(host)
        only = None if pools is None else {ipaddress.ip_network(p) for p in pools}
        v4 = await self._auto(host, handle, 4, num4, only) if num4 > 0 else []
        v6 = await self._auto(host, handle, 6, num6, only) if num6 > 0 else []
        return v4, v6

    async def _auto(self, host: str, handle: str, version: int, num: int, only: set | None) -> list[str]:
        pools = [p for p in await self.pools(version) if only is None or p in only]
        if not pools:
            log.warning("no enabled IPv%d pool with IPAM: cannot assign for %s", version, handle)
            return []

        def in_pools(cidr: str) -> bool:
            net = ipaddress.ip_network(cidr)
            return any(net.subnet_of(p) for p in pools)

        got: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            # 1. blocks this host already owns
            for cidr in await self.host_blocks(host, version):
                if in_pools(cidr):
                    got += await self._allocate_in(cidr, handle, num - len(got), pools, owner=host)
                    if len(got) >= num:
                        return got
            # 2. claim a fresh block; won or lost (another host raced us), look again
            taken = {b.cidr for b in await self.all_blocks(version)}
            free = next((c for pool in pools for c in self._candidate_blocks(pool, taken)), None)
            if free is not None:
                await self._claim_block(host, free)
                continue
            # 3. no free block anywhere: borrow from other hosts' blocks (as Calico does)
            for block in await self.all_blocks(version):
                if block.host != host and in_pools(block.cidr):
                    got += await self._allocate_in(block.cidr, handle, num - len(got), pools)
                    if len(got) >= num:
                        return got
            log.warning("IPv%d pools exhausted: %d of %d addresses for %s", version, len(got), num, handle)
            return got
        raise IpamError(f"auto_assign {handle} on {host}: gave up after {MAX_ATTEMPTS} rounds")

    async def assign(self, ip: str, handle: str, host: str) -> None:
        """Assign one given address to handle; IpamError if it is taken or in no pool."""
        keys.ipam_handle(handle)
        addr = ipaddress.ip_address(ip)
        pools = await self.pools(addr.version)
        if not any(addr in p for p in pools):
            raise IpamError(f"{ip}: not in any enabled IPAM pool")
        pool = next(p for p in pools if addr in p)
        cidr = str(ipaddress.ip_network(f"{addr}/{self._block_size(pool)}", strict=False))
        for _ in range(MAX_ATTEMPTS):
            block = await self._block(cidr)
            if block is None:
                await self._claim_block(host, cidr)
                continue
            ordinal = int(addr) - int(block.net.network_address)
            if ordinal in block.allocations:
                raise IpamError(f"{ip}: already assigned to {block.allocations[ordinal]}")
            hkv = await self.client.get_kv(keys.ipam_handle(handle))
            hblocks = _handle_blocks(hkv)
            block.allocations[ordinal] = handle
            hblocks[cidr] = hblocks.get(cidr, 0) + 1
            if await self._commit_or_verify(block, {handle: hblocks}, {handle: hkv},
                                            lambda b, o=ordinal: b.allocations.get(o) == handle):
                return
            await asyncio.sleep(random.uniform(0, 0.01))
        raise IpamError(f"assign {ip}: too much contention")

    async def _release_where(self, cidr: str, pick) -> list[str]:
        """Free the ordinals pick(block) returns, fixing the handle records in the same transaction."""
        for _ in range(MAX_ATTEMPTS):
            block = await self._block(cidr)
            if block is None:
                return []
            ordinals = [o for o in pick(block) if o in block.allocations]
            if not ordinals:
                return []
            before = {o: block.allocations[o] for o in ordinals}
            hkvs = {h: await self.client.get_kv(keys.ipam_handle(h)) for h in set(before.values())}
            changes = {h: _handle_blocks(kv) for h, kv in hkvs.items()}
            for o in ordinals:
                h = block.allocations.pop(o)
                changes[h][cidr] = changes[h].get(cidr, 1) - 1
            if await self._commit_or_verify(block, changes, hkvs, lambda b, was=before: all(
                    b.allocations.get(o) != h for o, h in was.items())):
                net = block.net
                return [str(net.network_address + o) for o in ordinals]
            await asyncio.sleep(random.uniform(0, 0.01))
        raise IpamError(f"release in {cidr}: too much contention")

    async def release_ips(self, ips: list[str]) -> list[str]:
        """Release addresses; returns those that were not assigned (or not valid IPs)."""
        by_block: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        unreleased: list[str] = []
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                unreleased.append(ip)
                continue
            by_block.setdefault(block_of(ip), []).append(addr)
        for cidr, addrs in by_block.items():
            base = int(ipaddress.ip_network(cidr).network_address)
            wanted = {int(a) - base for a in addrs}
            released = set(await self._release_where(cidr, lambda b, w=wanted: w))
            unreleased += [str(a) for a in addrs if str(a) not in released]
        bad = set(unreleased)
        return [ip for ip in ips if ip in bad or (ip not in bad and _canon(ip) in bad)]

    async def release_handle(self, handle: str) -> list[str]:
        """Release every address held by handle (e.g. a deleted workload); returns them."""
        hkey = keys.ipam_handle(handle)
        kv = await self.client.get_kv(hkey)
        released: list[str] = []
        for cidr in _handle_blocks(kv) or {}:
            released += await self._release_where(
                cidr, lambda b: [o for o, h in b.allocations.items() if h == handle])
        if kv is not None and not _handle_blocks(kv):
            await self.client.delete(hkey)  # a corrupt or empty record
        return released

    async def release_host_affinities(self, host: str) -> list[str]:
        """Node removal: delete its affinity keys; empty blocks go back to the pool.

        A block still holding addresses keeps them but loses its affinity (it
        can then only be borrowed from).  Returns the CIDRs whose affinity was released.
        """
        out = []
        for cidr in await self.host_blocks(host):
            akey, bkey = keys.block_affinity(host, cidr), keys.block_allocation(cidr)
            for _ in range(MAX_ATTEMPTS):
                block = await self._block(cidr)
                if block is None or block.host != host:
                    await self.client.delete(akey)
                    break
                if block.allocations:
                    block.affinity = None
                    ok = await self._commit(block, {}, {}, extra_ops=[op_delete(akey)])
                else:
                    ok, _ = await self.client.txn([mod(bkey) == block.mod_revision],
                                                  [op_delete(bkey), op_delete(akey)], [],
                                                  what=f"release block {cidr}")
                if ok:
                    break
            else:
                raise IpamError(f"release affinity {cidr} of {host}: too much contention")
            out.append(cidr)
        return out
