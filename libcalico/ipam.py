"""IP address management: per-host blocks carved from pools, claimed with etcd transactions.

Several nodes (and several CNI calls on one node) allocate at once with no
coordinator, so every change is a compare-and-swap on the block's allocation
record (and on the handle record, in the same transaction): a lost race is
retried from a fresh read, and no address can be handed out twice.  A
transaction whose reply is lost is settled by reading the block back, so a
timeout neither leaks the address nor returns one that was never written.

Records are classic libcalico's (see `libcalico.ipam_records`); blocks of the
older shape are converted by the first write that touches them.

- ``/calico/ipam/v2/assignment/ipv4/block/<cidr-key>``: the block (slots, affinity, attributes)
- ``/calico/ipam/v2/host/<h>/ipv4/block/<cidr-key>``: ``{"state": "confirmed"}`` (affinity)
- ``/calico/ipam/v2/handle/<handle>``: ``{"id": "<handle>", "block": {"<cidr>": <count>}}``
- ``/calico/ipam/v2/config``: ``{"strictAffinity": false, "releaseEmptyBlocks": false}`` (global)

Each pool is carved into blocks of its own ``block_size`` (default /26 and
/122).  A host allocates from its own blocks, claims a fresh block when they
are full, and borrows from other hosts' blocks only when no block is left and
neither the global config, the pool nor the block asks for strict affinity.

Public API (keyword arguments after ``*`` are additions; old calls keep working)::

    Ipam(client)
    await auto_assign(host, handle, num4=0, num6=0, pools=None, *, ipv4_pools=None, ipv6_pools=None,
                      attrs=None, partial=True) -> (list[str] v4, list[str] v6)
        pools: legacy filter (CIDRs; unusable ones silently ignored)
        ipv4_pools / ipv6_pools: only these pool CIDRs; UnknownPool / PoolDisabled if one is not
            a configured, usable pool of that family
        attrs: free-form text attributes stored with each slot (e.g. {"orchestrator": "k8s",
            "workload": "ns.pod", "endpoint": "eth0", "host": "node1"}); `ipam check` treats an
            allocation whose attrs name an existing endpoint (host/orchestrator/workload/endpoint) as live
        partial=True: fewer addresses when the pools run out (the old behaviour, with a warning);
        partial=False: all or nothing, PoolExhausted (naming the pools) when they run out
    await assign(ip, handle, host, *, attrs=None)   IpamError (already assigned), UnknownPool (in no
        pool), PoolDisabled (its pool is disabled)
    await release_ips(ips) -> the ones that were not assigned
    await release_handle(handle) -> released IPs
    await release_host_affinities(host) -> CIDRs of the blocks it owned
    await get_assignment(ip) -> {"ip", "handle", "block", "host", "attrs"} | None
    await config() / set_config(strict_affinity=..., release_empty_blocks=...)
    await blocks(version=None) -> [Block]; pool_usage() -> [PoolUsage]; host_blocks(host, version=None)
    await release_guarded(ip, handle, judge, guard) / fix_handle(handle): the repairs behind
        `calicoctl ipam release --from-report` (libcalico.ipam_check)

Exceptions: IpamError, and its subclass PoolError (``.pool``: the CIDR) with
UnknownPool, PoolDisabled and PoolExhausted (``.pools``: every CIDR that was tried).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from libcalico import keys
from libcalico.datastore import (
    KV,
    DatastoreClient,
    DatastoreUnavailable,
    create,
    mod,
    op_delete,
    op_get,
    op_put,
)
from libcalico.ipam_records import Block, HandleRecord, RecordError, check_secondary
from libcalico.models import DEFAULT_BLOCK_SIZE, Pool

log = logging.getLogger(__name__)

BLOCK_PREFIX = DEFAULT_BLOCK_SIZE  # the default block size; a pool's own is Pool.block_prefix
IPAM_CONFIG = f"{keys.IPAM_V2_DIR}config"
MAX_ATTEMPTS = 200  # CAS retries per operation; each conflict means someone else progressed
OUTCOME_READS = 5  # reads (each with the client's own retries) to learn a lost transaction's fate
TXN_READS = 100  # gets per read transaction (etcd allows 128 operations in one)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "Ipam", "IpamError", "PoolError", "UnknownPool", "PoolDisabled", "PoolExhausted", "IpamConfig",
    "PoolUsage", "Block", "HandleRecord", "BLOCK_PREFIX", "IPAM_CONFIG", "block_of",
]


class IpamError(Exception):
    """An IPAM request that cannot be satisfied (message names the IP/handle/host)."""


class PoolError(IpamError):
    """A request a pool cannot serve; ``pool`` is its CIDR."""

    def __init__(self, message: str, pool: str):
        super().__init__(message)
        self.pool = pool


class UnknownPool(PoolError):
    """The CIDR is not a configured pool (or an address lies in none)."""


class PoolDisabled(PoolError):
    """The pool exists but gives no new addresses (``disabled: true`` or ``ipam: false``)."""


class PoolExhausted(PoolError):
    """No free address left in the pools tried (``pools``: their CIDRs)."""

    def __init__(self, message: str, pools: list[str]):
        super().__init__(message, pools[0] if pools else "")
        self.pools = pools


@dataclass(frozen=True)
class IpamConfig:
    """Cluster-wide IPAM settings (``/calico/ipam/v2/config``).

    strict_affinity: no host ever borrows from another host's block.
    release_empty_blocks: a block emptied by a release is given back to the pool
    when its host does not need it (the classic default keeps empty affine blocks).
    """

    strict_affinity: bool = False
    release_empty_blocks: bool = False

    def to_json(self) -> str:
        return json.dumps({"strictAffinity": self.strict_affinity,
                           "releaseEmptyBlocks": self.release_empty_blocks}, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | None) -> IpamConfig:
        if raw is None:
            return cls()
        try:
            data = json.loads(raw)
            strict, release = data.get("strictAffinity", False), data.get("releaseEmptyBlocks", False)
            if not isinstance(strict, bool) or not isinstance(release, bool):
                raise ValueError("strictAffinity and releaseEmptyBlocks must be true or false")
            return cls(strict, release)
        except (ValueError, AttributeError, RecursionError) as e:
            log.warning("%s: ignoring an invalid IPAM config (%s)", IPAM_CONFIG, str(e)[:120])
            return cls()


@dataclass(frozen=True)
class PoolUsage:
    """How much of a pool is handed out (for `calicoctl ipam show`)."""

    pool: Pool
    size: int
    in_use: int
    blocks: list[Block]

    @property
    def free(self) -> int:
        return self.size - self.in_use


def block_of(ip: str, prefix: int | None = None) -> str:
    """The CIDR of the block of `prefix` (default size when None) that holds ip."""
    addr = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{addr}/{prefix or BLOCK_PREFIX[addr.version]}", strict=False))


def _canon(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _net(cidr: str) -> Network:
    return ipaddress.ip_network(cidr)


class Ipam:
    """Allocate and release workload IPs; safe against any number of concurrent allocators."""

    def __init__(self, client: DatastoreClient):
        self.client = client
        self._full: dict[str, int] = {}  # block CIDR -> the mod_revision at which it had no free address

    # ---- reads --------------------------------------------------------------

    async def all_pools(self, version: int | None = None) -> list[Pool]:
        """Every valid pool (usable or not): their block sizes locate existing blocks."""
        from libcalico.resources import Pools

        return [s.value for s in await Pools(self.client).list(version)]

    async def pools(self, version: int) -> list[Network]:
        """Pools that may give addresses (the rule is `resources.Pools.usable`)."""
        from libcalico.resources import Pools

        nets = [_net(p.cidr) for p in await Pools(self.client).for_ipam(version)]
        return sorted(nets, key=lambda n: (n.network_address, n.prefixlen))

    async def config(self) -> IpamConfig:
        return IpamConfig.parse(await self.client.get(IPAM_CONFIG))

    async def set_config(self, strict_affinity: bool | None = None,
                         release_empty_blocks: bool | None = None) -> IpamConfig:
        """Change the given settings, keep the others (compare-and-swap on the config key)."""
        for _ in range(MAX_ATTEMPTS):
            kv = await self.client.get_kv(IPAM_CONFIG)
            old = IpamConfig.parse(kv.value if kv else None)
            new = IpamConfig(old.strict_affinity if strict_affinity is None else strict_affinity,
                             old.release_empty_blocks if release_empty_blocks is None else release_empty_blocks)
            if await self.client.cas(IPAM_CONFIG, kv.mod_revision if kv else 0, new.to_json()):
                return new
        raise IpamError(f"{IPAM_CONFIG}: too much contention")

    async def host_blocks(self, host: str, version: int | None = None) -> list[str]:
        """CIDRs of the blocks affine to host (from the affinity keys)."""
        _, kvs = await self.client.get_prefix(keys.ipam_host_dir(host))
        out = []
        for kv in kvs:
            k = keys.parse(kv.key)
            if k is not None and k.kind == "block_affinity" and (version is None or k.version == version):
                out.append(k.cidr)
        # lowest address first: released space low in the range is reused before fresh space
        return sorted(out, key=lambda c: (_net(c).version, _net(c)))

    async def _block(self, cidr: str) -> Block | None:
        kv = await self.client.get_kv(keys.block_allocation(cidr))
        return self._parse_block(kv) if kv else None

    @staticmethod
    def _parse_block(kv: KV) -> Block:
        try:
            return Block.from_kv(kv)
        except RecordError as e:
            raise IpamError(str(e)) from None

    async def _blocks_named(self, cidrs: list[str]) -> dict[str, Block]:
        """Several blocks in as few round trips as etcd allows (one read transaction per TXN_READS)."""
        out: dict[str, Block] = {}
        for i in range(0, len(cidrs), TXN_READS):
            chunk = cidrs[i:i + TXN_READS]
            _, resp = await self.client.txn([], [op_get(keys.block_allocation(c)) for c in chunk], [],
                                            what="ipam read blocks")
            for cidr, kvs in zip(chunk, resp, strict=True):
                if kvs:
                    try:
                        out[cidr] = Block.from_kv(kvs[0])
                    except RecordError as e:
                        log.warning("%s", e)
        return out

    async def _with_room(self, cidrs: list[str], nets: list[Network]) -> AsyncIterator[Block]:
        """The blocks among cidrs (in order) that have a usable free address.

        A host with many full blocks would otherwise read every one of them on
        each allocation.  Blocks seen full are remembered with their
        mod_revision; each read transaction compares those revisions and only
        fetches the others, falling back to fetching all when any changed.
        """
        for i in range(0, len(cidrs), TXN_READS // 2):
            chunk = cidrs[i:i + TXN_READS // 2]
            known = [c for c in chunk if c in self._full]
            rest = [c for c in chunk if c not in self._full]
            ok, resp = await self.client.txn(
                [mod(keys.block_allocation(c)) == self._full[c] for c in known],
                [op_get(keys.block_allocation(c)) for c in rest],
                [op_get(keys.block_allocation(c)) for c in chunk], what="ipam read host blocks")
            for cidr, kvs in zip(rest if ok else chunk, resp, strict=True):
                if not kvs:
                    self._full.pop(cidr, None)
                    continue
                try:
                    block = Block.from_kv(kvs[0])
                except RecordError as e:
                    log.warning("%s", e)
                    continue
                if any(self._usable(block.net, o, nets) for o in block.free_ordinals()):
                    self._full.pop(cidr, None)
                    yield block
                else:
                    self._full[cidr] = block.mod_revision

    async def all_blocks(self, version: int) -> list[Block]:
        return [b for b in await self.blocks() if b.net.version == version]

    async def blocks(self, version: int | None = None) -> list[Block]:
        """Every readable block record (corrupt ones are logged and left out), in address order."""
        return (await self._blocks_and_keys(version))[0]

    async def _blocks_and_keys(self, version: int | None) -> tuple[list[Block], list[Network]]:
        """(readable blocks, the CIDR of every block key): a corrupt record still occupies its range."""
        prefix = keys.IPAM_ASSIGN_DIR if version is None else f"{keys.IPAM_ASSIGN_DIR}ipv{version}/block/"
        _, kvs = await self.client.get_prefix(prefix)
        out, taken = [], []
        for kv in kvs:
            k = keys.parse(kv.key)
            if k is not None and k.kind == "block_allocation":
                taken.append(_net(k.cidr))
            try:
                out.append(Block.from_kv(kv))
            except RecordError as e:
                log.warning("%s", e)
        return sorted(out, key=lambda b: (b.net.version, b.net)), taken

    async def _find_block(self, ip: str, pools: list[Pool] | None = None) -> Block | None:
        """The block holding ip: the one its pool's block size names, else any block containing it
        (its pool may have gone, or have been re-created with another block size)."""
        addr = ipaddress.ip_address(ip)
        pools = await self.all_pools(addr.version) if pools is None else pools
        pool = next((p for p in pools if addr in _net(p.cidr)), None)
        guess = block_of(ip, pool.block_prefix if pool else None)
        block = await self._block(guess)
        if block is not None:
            return block
        return next((b for b in await self.blocks(addr.version) if addr in b.net), None)

    async def get_assignment(self, ip: str) -> dict | None:
        """{"ip", "handle", "block", "host", "attrs"} for an assigned IP, else None."""
        addr = ipaddress.ip_address(ip)
        block = await self._find_block(str(addr))
        if block is None:
            return None
        ordinal = block.ordinal(str(addr))
        handle = block.handle_at(ordinal) if ordinal is not None else None
        if handle is None:
            return None
        return {"ip": str(addr), "handle": handle, "block": block.cidr, "host": block.host,
                "attrs": block.secondary_at(ordinal)}

    # ---- the CAS core ------------------------------------------------------

    async def _commit(self, block: Block, handles: Iterable[HandleRecord], extra_compare: list | None = None,
                      extra_ops: list | None = None) -> bool:
        """Write block + handle records iff none of them changed since they were read."""
        bkey = keys.block_allocation(block.cidr)
        compare = [mod(bkey) == block.mod_revision] + list(extra_compare or [])
        ops = [op_put(bkey, block.to_json())] + list(extra_ops or [])
        for h in handles:
            hkey = keys.ipam_handle(h.handle)
            compare.append(mod(hkey) == h.mod_revision)
            ops.append(op_delete(hkey) if h.empty else op_put(hkey, h.to_json()))
        ok, _ = await self.client.txn(compare, ops, [], what=f"ipam commit {block.cidr}")
        if ok and block.legacy:
            log.info("block %s: converted to the classic record shape", block.cidr)
        return ok

    async def _commit_or_verify(self, block: Block, handles: list[HandleRecord],
                                applied: Callable[[Block], bool]) -> bool:
        """_commit, but when the reply is lost, read back whether it applied.

        A transaction that timed out may or may not have committed; assuming
        either way leaks the address (assume not) or hands out one never
        written (assume yes).  `applied(block)` tells from the block as it is
        now whether our change is in it; the block and handle records change in
        one transaction, so the block alone decides.
        """
        try:
            return await self._commit(block, handles)
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
            f"{', '.join(sorted(h.handle for h in handles))} may hold addresses: release them by handle "
            "once etcd is back")

    async def _handle(self, handle: str) -> HandleRecord:
        return HandleRecord.from_kv(handle, await self.client.get_kv(keys.ipam_handle(handle)))

    async def _allocate_in(self, cidr: str, handle: str, count: int, pools: list[Network],
                           secondary: dict[str, str], owner: str | None = None,
                           first: Block | None = None, may_borrow: Callable[[Block], bool] | None = None,
                           strict: bool | None = None) -> list[str]:
        """Take up to count free addresses of one block for handle; [] if it is full, gone or not
        owner's (or, when borrowing, if `may_borrow` refuses the block)."""
        block = first
        for _ in range(MAX_ATTEMPTS):
            if block is None:
                block = await self._block(cidr)
            if block is None or (owner is not None and block.host != owner):
                return []
            if may_borrow is not None and not may_borrow(block):
                return []
            net = block.net
            taken = [o for o in block.free_ordinals() if self._usable(net, o, pools)][:count]
            if not taken:
                return []
            hrec = await self._handle(handle)
            if strict is not None:
                block.strict_affinity = strict
            for o in taken:
                block.assign(o, handle, secondary)
            hrec.blocks[block.cidr] = hrec.blocks.get(block.cidr, 0) + len(taken)
            if await self._commit_or_verify(block, [hrec],
                                            lambda b, t=taken: all(b.handle_at(o) == handle for o in t)):
                return [block.address(o) for o in taken]
            block = None
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

    async def _claim_block(self, host: str, cidr: str, strict: bool = False) -> bool:
        """Create the block record affine to host together with the affinity key, only if unclaimed."""
        bkey, akey = keys.block_allocation(cidr), keys.block_affinity(host, cidr)
        block = Block.new(cidr, host, strict)
        ok, _ = await self.client.txn([create(bkey) == 0],
                                      [op_put(bkey, block.to_json()), op_put(akey, '{"state":"confirmed"}')],
                                      [], what=f"claim block {cidr} for {host}")
        if ok:
            log.info("claimed block %s for host %s", cidr, host)
        return ok

    @staticmethod
    def _free_block(pool: Pool, taken: list[Network]) -> str | None:
        """The first block of the pool's size that overlaps no existing block."""
        pnet, size = _net(pool.cidr), pool.block_prefix
        inside = [t for t in taken if t.version == pnet.version and t.overlaps(pnet)]
        same = {t for t in inside if t.prefixlen == size}
        odd = [t for t in inside if t.prefixlen != size]  # blocks of an earlier block size
        for sub in pnet.subnets(new_prefix=size):
            if sub not in same and not any(sub.overlaps(t) for t in odd):
                return str(sub)
        return None

    # ---- public operations ---------------------------------------------------

    async def _chosen_pools(self, version: int, legacy: list[str] | None, wanted: list[str] | None) -> list[Pool]:
        from libcalico.resources import Pools

        usable = [p for p in await self.all_pools(version) if Pools.usable(p)]
        if wanted is not None:
            configured = {p.cidr: p for p in await self.all_pools()}
            out = []
            for text in wanted:
                try:
                    cidr = str(_net(text))
                except ValueError:
                    raise UnknownPool(f"{text!r} is not a pool CIDR", str(text)) from None
                pool = configured.get(cidr)
                if pool is None:
                    raise UnknownPool(f"pool {cidr} is not configured (see 'calicoctl pool show')", cidr)
                if pool.version != version:
                    raise UnknownPool(f"pool {cidr} is not an IPv{version} pool", cidr)
                if not Pools.usable(pool):
                    why = "disabled" if pool.disabled else "not used by IPAM (ipam: false)"
                    raise PoolDisabled(f"pool {cidr} is {why}: it gives no new addresses", cidr)
                out.append(pool)
            usable = out
        if legacy is not None:
            only = {_net(p) for p in legacy}
            usable = [p for p in usable if _net(p.cidr) in only]
        return usable

    async def auto_assign(self, host: str, handle: str, num4: int = 0, num6: int = 0,
                          pools: list[str] | None = None, *, ipv4_pools: list[str] | None = None,
                          ipv6_pools: list[str] | None = None, attrs: dict[str, str] | None = None,
                          partial: bool = True) -> tuple[list[str], list[str]]:
        """Up to num4/num6 addresses for handle (see the module docstring for the keywords)."""
        keys.ipam_handle(handle)  # validates the handle as a key segment
        keys.ipam_host_dir(host)
        secondary = check_secondary(attrs)
        chosen = {4: await self._chosen_pools(4, pools, ipv4_pools) if num4 > 0 else [],
                  6: await self._chosen_pools(6, pools, ipv6_pools) if num6 > 0 else []}
        cfg = await self.config() if num4 > 0 or num6 > 0 else IpamConfig()
        v4 = await self._auto(host, handle, 4, num4, chosen[4], secondary, cfg) if num4 > 0 else []
        try:
            v6 = await self._auto(host, handle, 6, num6, chosen[6], secondary, cfg) if num6 > 0 else []
        except BaseException:
            if v4:
                await self.release_ips(v4)
            raise
        short = [(v, n, got) for v, n, got in ((4, num4, v4), (6, num6, v6)) if len(got) < n]
        if not short:
            return v4, v6
        v, n, got = short[0]
        names = [p.cidr for p in chosen[v]]
        strict = cfg.strict_affinity or any(p.strict_affinity for p in chosen[v])
        what = (f"IPv{v} pool{'s' if len(names) != 1 else ''} {', '.join(names)} exhausted" if names
                else f"no enabled IPv{v} pool with IPAM")
        msg = (f"{what}: {len(got)} of {n} addresses for {handle} on host {host}"
               + (" (strict affinity: other hosts' blocks are not borrowed from)" if strict and names else ""))
        if partial:
            log.warning("%s", msg)
            return v4, v6
        if v4 or v6:
            await self.release_ips(v4 + v6)
        if not names:
            raise UnknownPool(msg, "")
        raise PoolExhausted(msg, names)

    async def _auto(self, host: str, handle: str, version: int, num: int, pools: list[Pool],
                    secondary: dict[str, str], cfg: IpamConfig) -> list[str]:
        if not pools:
            return []
        nets = sorted((_net(p.cidr) for p in pools), key=lambda n: (n.network_address, n.prefixlen))
        by_net = {_net(p.cidr): p for p in pools}

        def pool_of(cidr: str) -> Pool | None:
            net = _net(cidr)
            return next((p for pn, p in by_net.items() if net.subnet_of(pn)), None)

        def may_borrow(block: Block) -> bool:
            """Today's settings decide (the block's own flag records them as of its last write)."""
            pool = pool_of(block.cidr)
            return not (cfg.strict_affinity or pool is None or pool.strict_affinity)

        def strict_for(cidr: str) -> bool:
            pool = pool_of(cidr)
            return cfg.strict_affinity or bool(pool and pool.strict_affinity)

        got: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            # 1. blocks this host already owns (read in one go; full ones are skipped without a write)
            mine = [c for c in await self.host_blocks(host, version) if pool_of(c) is not None]
            async for block in self._with_room(mine, nets):
                if block.host != host:
                    continue
                got += await self._allocate_in(block.cidr, handle, num - len(got), nets, secondary, owner=host,
                                               first=block, strict=strict_for(block.cidr))
                if len(got) >= num:
                    return got
            # 2. claim a fresh block; won or lost (another host raced us), look again
            existing, taken = await self._blocks_and_keys(version)
            for pool in pools:
                free = self._free_block(pool, taken)
                if free is not None:
                    strict = cfg.strict_affinity or bool(pool.strict_affinity)
                    await self._claim_block(host, free, strict)
                    break
            else:
                # 3. no free block anywhere: borrow from other hosts' blocks (as Calico does),
                #    unless strict affinity forbids it
                for block in existing:
                    if block.host != host and pool_of(block.cidr) is not None and may_borrow(block):
                        got += await self._allocate_in(block.cidr, handle, num - len(got), nets, secondary,
                                                       first=block, may_borrow=may_borrow,
                                                       strict=strict_for(block.cidr))
                        if len(got) >= num:
                            return got
                return got
        raise IpamError(f"auto_assign {handle} on {host}: gave up after {MAX_ATTEMPTS} rounds")

    async def assign(self, ip: str, handle: str, host: str, *, attrs: dict[str, str] | None = None) -> None:
        """Assign one given address to handle; IpamError if it is taken, PoolError if no usable pool has it."""
        from libcalico.resources import Pools

        keys.ipam_handle(handle)
        secondary = check_secondary(attrs)
        addr = ipaddress.ip_address(ip)
        all_pools = await self.all_pools(addr.version)
        pool = next((p for p in all_pools if addr in _net(p.cidr)), None)
        if pool is None:
            raise UnknownPool(f"{ip}: not in any enabled IPAM pool", "")
        if not Pools.usable(pool):
            raise PoolDisabled(f"{ip}: not in any enabled IPAM pool (pool {pool.cidr} is "
                               f"{'disabled' if pool.disabled else 'ipam: false'})", pool.cidr)
        nets = [_net(p.cidr) for p in all_pools if Pools.usable(p)]
        for _ in range(MAX_ATTEMPTS):
            block = await self._find_block(str(addr), all_pools)
            if block is None:
                cfg = await self.config()
                await self._claim_block(host, block_of(str(addr), pool.block_prefix),
                                        cfg.strict_affinity or bool(pool.strict_affinity))
                continue
            ordinal = block.ordinal(str(addr))
            assert ordinal is not None
            holder = block.handle_at(ordinal)
            if holder is not None:
                raise IpamError(f"{ip}: already assigned to {holder}")
            if not self._usable(block.net, ordinal, nets):
                raise IpamError(f"{ip}: the network or broadcast address of pool {pool.cidr} is never assigned")
            hrec = await self._handle(handle)
            block.assign(ordinal, handle, secondary)
            hrec.blocks[block.cidr] = hrec.blocks.get(block.cidr, 0) + 1
            if await self._commit_or_verify(block, [hrec], lambda b, o=ordinal: b.handle_at(o) == handle):
                return
            await asyncio.sleep(random.uniform(0, 0.01))
        raise IpamError(f"assign {ip}: too much contention")

    async def _release_where(self, cidr: str, pick: Callable[[Block], Iterable[int]]) -> list[str]:
        """Free the ordinals pick(block) returns, fixing the handle records in the same transaction."""
        for _ in range(MAX_ATTEMPTS):
            block = await self._block(cidr)
            if block is None:
                return []
            ordinals = [o for o in pick(block) if 0 <= o < len(block.allocations) and block.handle_at(o)]
            if not ordinals:
                return []
            before = {o: block.handle_at(o) for o in ordinals}
            hrecs = {h: await self._handle(h) for h in set(before.values()) if h}
            for o in ordinals:
                h = block.release(o)
                rec = hrecs[h]  # type: ignore[index]
                rec.blocks[cidr] = rec.blocks.get(cidr, 1) - 1
            if await self._commit_or_verify(block, list(hrecs.values()), lambda b, was=before: all(
                    b.handle_at(o) != h for o, h in was.items())):
                if block.in_use() == 0:
                    await self._maybe_free_block(cidr)
                return [block.address(o) for o in ordinals]
            await asyncio.sleep(random.uniform(0, 0.01))
        raise IpamError(f"release in {cidr}: too much contention")

    async def _maybe_free_block(self, cidr: str) -> None:
        """An emptied block goes back to the pool when nobody needs it: always when it has no
        host; with `release_empty_blocks`, also when its host is gone, its pool is gone or
        disabled, or the host has another block of the pool with room."""
        from libcalico.resources import Nodes, Pools

        block = await self._block(cidr)
        if block is None or block.in_use():
            return
        host = block.host
        if host is not None:
            if not (await self.config()).release_empty_blocks:
                return
            pools = [p for p in await self.all_pools(block.net.version) if Pools.usable(p)]
            pool = next((p for p in pools if block.net.subnet_of(_net(p.cidr))), None)
            needed = pool is not None and await Nodes(self.client).exists(host)
            if needed:
                others = [c for c in await self.host_blocks(host, block.net.version)
                          if c != cidr and _net(c).subnet_of(_net(pool.cidr))]  # type: ignore[union-attr]
                nets = [_net(p.cidr) for p in pools]
                for other in (await self._blocks_named(others)).values():
                    if any(self._usable(other.net, o, nets) for o in other.free_ordinals()):
                        needed = False
                        break
            if needed:
                return
        ops = [op_delete(keys.block_allocation(cidr))]
        if host is not None:
            ops.append(op_delete(keys.block_affinity(host, cidr)))
        ok, _ = await self.client.txn([mod(keys.block_allocation(cidr)) == block.mod_revision], ops, [],
                                      what=f"free empty block {cidr}")
        if ok:
            log.info("freed empty block %s%s", cidr, f" of host {host}" if host else "")

    async def release_ips(self, ips: list[str]) -> list[str]:
        """Release addresses; returns those that were not assigned (or not valid IPs)."""
        by_block: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        unreleased: list[str] = []
        pools = await self.all_pools() if ips else []
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                unreleased.append(ip)
                continue
            block = await self._find_block(str(addr), [p for p in pools if p.version == addr.version])
            if block is None:
                unreleased.append(str(addr))
                continue
            by_block.setdefault(block.cidr, []).append(addr)
        for cidr, addrs in by_block.items():
            base = int(_net(cidr).network_address)
            wanted = {int(a) - base for a in addrs}
            released = set(await self._release_where(cidr, lambda b, w=wanted: w))
            unreleased += [str(a) for a in addrs if str(a) not in released]
        bad = set(unreleased)
        return [ip for ip in ips if ip in bad or (ip not in bad and _canon(ip) in bad)]

    async def release_handle(self, handle: str) -> list[str]:
        """Release every address held by handle (e.g. a deleted workload); returns them."""
        hkey = keys.ipam_handle(handle)
        kv = await self.client.get_kv(hkey)
        rec = HandleRecord.from_kv(handle, kv)
        released: list[str] = []
        for cidr in rec.blocks:
            released += await self._release_where(cidr, lambda b: [o for o, h in b.used() if h == handle])
        if kv is not None and rec.empty:
            await self.client.delete(hkey)  # a corrupt or empty record
        return released

    async def release_guarded(self, ip: str, handle: str, judge: Callable[[Block], Awaitable[bool]],
                              guard: list) -> str:
        """Release ip from handle only if `judge(block)` agrees on the very block revision the
        release writes, and the `guard` compares hold in the same transaction.

        Returns "released", "kept" (not held by handle, or judged in use) or
        "conflict" (the block or the guard changed: judge again on fresh data).
        This is how `ipam release --from-report` avoids freeing an address a
        workload took, or started using, since the report.
        """
        block = await self._find_block(ip)
        ordinal = block.ordinal(ip) if block is not None else None
        if block is None or ordinal is None or block.handle_at(ordinal) != handle or not await judge(block):
            return "kept"
        hrec = await self._handle(handle)
        block.release(ordinal)
        hrec.blocks[block.cidr] = hrec.blocks.get(block.cidr, 1) - 1
        if not await self._commit(block, [hrec], extra_compare=guard):
            return "conflict"
        if block.in_use() == 0:
            await self._maybe_free_block(block.cidr)
        return "released"

    async def fix_handle(self, handle: str) -> bool:
        """Rewrite a handle record from what the blocks hold (the blocks are the truth)."""
        for _ in range(MAX_ATTEMPTS):
            rec = await self._handle(handle)
            truth: dict[str, int] = {}
            for b in await self.blocks():
                n = b.handle_counts().get(handle, 0)
                if n:
                    truth[b.cidr] = n
            if truth == {c: n for c, n in rec.blocks.items() if n > 0} and not rec.legacy:
                return False
            new = HandleRecord(handle, truth)
            if await self.client.cas(keys.ipam_handle(handle), rec.mod_revision, None if new.empty else new.to_json()):
                return True
        raise IpamError(f"handle {handle}: too much contention")

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
                if block.in_use():
                    block.affinity = None
                    ok = await self._commit(block, [], extra_ops=[op_delete(akey)])
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

    async def pool_usage(self, version: int | None = None) -> list[PoolUsage]:
        """Per pool (usable or not): addresses, in use, and its blocks."""
        pools = await self.all_pools(version)
        blocks = await self.blocks(version)
        out = []
        for p in pools:
            pnet = _net(p.cidr)
            mine = [b for b in blocks if b.net.version == pnet.version and b.net.subnet_of(pnet)]
            out.append(PoolUsage(p, pnet.num_addresses, sum(b.in_use() for b in mine), mine))
        return out
