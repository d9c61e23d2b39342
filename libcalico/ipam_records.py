"""The IPAM block and handle records, in the classic libcalico shape.

Classic Calico (pycalico's block.py and handle.py, then libcalico-go) stores a
block as one slot per address, so any tool that knows that layout (and an
operator reading etcd) can tell who holds an address without our code:

- block ``/calico/ipam/v2/assignment/ipv4/block/<cidr-key>``::

    {"cidr": "10.65.0.0/26", "affinity": "host:<name>" | null, "strictAffinity": false,
     "allocations": [null, 0, 0, null, ...],      # one slot per address: null or an index into attributes
     "unallocated": [0, 3, ...],                   # the free ordinals (kept in address order here)
     "attributes": [{"handle_id": "<handle>", "secondary": {"orchestrator": ..., ...}}]}

- handle ``/calico/ipam/v2/handle/<handle>``: ``{"id": "<handle>", "block": {"<cidr>": <count>}}``

Records written by this project before it adopted that shape (``allocations``
a dict of ordinal -> handle; handles as ``{"handle", "blocks"}``) are read as
well: `Block.legacy` / `HandleRecord.legacy` say so, and the next
compare-and-swap write of the record stores the classic shape, so migration
happens on first touch under the same guard as any other change and loses
nothing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from libcalico.datastore import KV

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A block's slot list is read whole on every allocation: its size is bounded by the
# largest block a pool may ask for (/20 IPv4, /116 IPv6: 4096 addresses).
MAX_BLOCK_ADDRESSES = 4096
MAX_SECONDARY_ITEMS = 16
MAX_SECONDARY_TEXT = 253


class RecordError(ValueError):
    """A stored block or handle value that cannot be read (message names the key)."""


def check_secondary(attrs: dict[str, str] | None) -> dict[str, str]:
    """Free-form allocation attributes (orchestrator, workload and endpoint ids): bounded text only,
    because they are written into every slot's attribute entry and shown to operators."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict) or len(attrs) > MAX_SECONDARY_ITEMS:
        raise ValueError(f"attrs must be a mapping of at most {MAX_SECONDARY_ITEMS} items")
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or len(k) > 64 or len(v) > MAX_SECONDARY_TEXT:
            raise ValueError(f"attrs item {str(k)[:64]!r}: keys and values must be text (key <= 64, "
                             f"value <= {MAX_SECONDARY_TEXT} characters)")
        out[k] = v
    return dict(sorted(out.items()))


@dataclass
class Block:
    """One block's allocation record; ordinals are offsets from the block's first address."""

    cidr: str
    affinity: str | None
    strict_affinity: bool = False
    allocations: list[int | None] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    mod_revision: int = 0
    legacy: bool = False  # read from the pre-classic shape; the next write converts it
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, written back

    @classmethod
    def new(cls, cidr: str, host: str | None, strict: bool = False) -> Block:
        net = ipaddress.ip_network(cidr)
        return cls(str(net), f"host:{host}" if host else None, strict, [None] * net.num_addresses)

    @property
    def net(self) -> Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def host(self) -> str | None:
        return self.affinity[5:] if self.affinity and self.affinity.startswith("host:") else None

    # ---- slots ----------------------------------------------------------------

    def handle_at(self, ordinal: int) -> str | None:
        idx = self.allocations[ordinal]
        return None if idx is None else self.attributes[idx]["handle_id"]

    def secondary_at(self, ordinal: int) -> dict[str, str]:
        idx = self.allocations[ordinal]
        return {} if idx is None else dict(self.attributes[idx].get("secondary") or {})

    def free_ordinals(self) -> Iterator[int]:
        return (i for i, a in enumerate(self.allocations) if a is None)

    def used(self) -> Iterator[tuple[int, str]]:
        """(ordinal, handle) of every allocated address."""
        for i, a in enumerate(self.allocations):
            if a is not None:
                yield i, self.attributes[a]["handle_id"]

    def in_use(self) -> int:
        return sum(a is not None for a in self.allocations)

    def handle_counts(self) -> Counter:
        return Counter(h for _, h in self.used())

    def address(self, ordinal: int) -> str:
        return str(self.net.network_address + ordinal)

    def ordinal(self, ip: str) -> int | None:
        addr = ipaddress.ip_address(ip)
        net = self.net
        return int(addr) - int(net.network_address) if addr in net else None

    def assign(self, ordinal: int, handle: str, secondary: dict[str, str] | None = None) -> None:
        """Give a free slot to handle; slots of one handle with equal attributes share one entry."""
        if self.allocations[ordinal] is not None:
            raise ValueError(f"{self.address(ordinal)} is already allocated")
        want = {"handle_id": handle, "secondary": dict(secondary or {})}
        for idx, a in enumerate(self.attributes):
            if a.get("handle_id") == handle and (a.get("secondary") or {}) == want["secondary"]:
                self.allocations[ordinal] = idx
                return
        self.attributes.append(want)
        self.allocations[ordinal] = len(self.attributes) - 1

    def release(self, ordinal: int) -> str | None:
        """Free a slot; returns the handle that held it.  Call `compact` after a batch."""
        handle = self.handle_at(ordinal)
        self.allocations[ordinal] = None
        return handle

    def compact(self) -> None:
        """Drop attribute entries no slot uses and renumber the slots (as classic libcalico does)."""
        used = sorted({a for a in self.allocations if a is not None})
        if used == list(range(len(self.attributes))):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if a is None else remap[a] for a in self.allocations]

    # ---- storage --------------------------------------------------------------

    def to_json(self) -> str:
        self.compact()
        data = dict(self.extra)
        data.update({
            "cidr": self.cidr, "affinity": self.affinity, "strictAffinity": self.strict_affinity,
            "allocations": self.allocations, "unallocated": list(self.free_ordinals()),
            "attributes": self.attributes,
        })
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_kv(cls, kv: KV) -> Block:
        try:
            return cls._parse(json.loads(kv.value), kv.mod_revision)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
            raise RecordError(f"{kv.key}: corrupt block record ({str(e)[:120]})") from None

    @classmethod
    def _parse(cls, data: dict, revision: int) -> Block:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        net = ipaddress.ip_network(data["cidr"])
        n = net.num_addresses
        if n > MAX_BLOCK_ADDRESSES:
            raise ValueError(f"block {net} has {n} addresses, more than the {MAX_BLOCK_ADDRESSES} a block may have")
        affinity = data.get("affinity")
        if affinity is not None and not isinstance(affinity, str):
            raise ValueError("affinity must be text or null")
        raw = data.get("allocations")
        extra = {k: v for k, v in data.items()
                 if k not in ("cidr", "affinity", "strictAffinity", "allocations", "unallocated", "attributes")}
        if isinstance(raw, dict) or raw is None:  # the pre-classic shape: {"<ordinal>": "<handle>"}
            block = cls.new(str(net), None)
            block.affinity, block.mod_revision, block.legacy, block.extra = affinity, revision, True, extra
            for k, h in sorted((raw or {}).items(), key=lambda kv: int(kv[0])):
                o = int(k)
                if not 0 <= o < n or not isinstance(h, str) or not h:
                    raise ValueError(f"allocation {k!r}: {h!r} is not an ordinal of the block and a handle")
                block.assign(o, h)
            return block
        if not isinstance(raw, list) or len(raw) != n:
            raise ValueError(f"allocations must list one slot per address ({n})")
        attrs = data.get("attributes") or []
        if not isinstance(attrs, list):
            raise ValueError("attributes must be a list")
        clean_attrs = []
        for i, a in enumerate(attrs):
            if not isinstance(a, dict) or not isinstance(a.get("handle_id"), str) or not a["handle_id"]:
                raise ValueError(f"attributes[{i}] has no handle_id")
            sec = a.get("secondary") or {}
            if not isinstance(sec, dict):
                raise ValueError(f"attributes[{i}].secondary must be an object")
            clean_attrs.append({**a, "handle_id": a["handle_id"], "secondary": sec})
        for i, a in enumerate(raw):
            if a is not None and (not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < len(clean_attrs)):
                raise ValueError(f"allocations[{i}] = {a!r} is not null or an index into attributes")
        strict = data.get("strictAffinity", False)
        if not isinstance(strict, bool):
            raise ValueError("strictAffinity must be true or false")
        return cls(str(net), affinity, strict, list(raw), clean_attrs, revision, False, extra)


@dataclass
class HandleRecord:
    """A handle's per-block address counts (kept in step with the blocks, in the same transactions)."""

    handle: str
    blocks: dict[str, int] = field(default_factory=dict)
    mod_revision: int = 0
    legacy: bool = False

    @classmethod
    def from_kv(cls, handle: str, kv: KV | None) -> HandleRecord:
        if kv is None:
            return cls(handle)
        try:
            data = json.loads(kv.value)
            legacy = "block" not in data and "blocks" in data
            raw = data.get("blocks" if legacy else "block") or {}
            blocks = {str(ipaddress.ip_network(k)): int(v) for k, v in raw.items()}
            return cls(handle, blocks, kv.mod_revision, legacy)
        except (ValueError, TypeError, AttributeError, RecursionError):
            log.warning("%s: corrupt handle record, rebuilding it", kv.key)
            return cls(handle, {}, kv.mod_revision)

    def to_json(self) -> str:
        live = {b: n for b, n in sorted(self.blocks.items()) if n > 0}
        return json.dumps({"id": self.handle, "block": live}, separators=(",", ":"))

    @property
    def empty(self) -> bool:
        return not any(n > 0 for n in self.blocks.values())
