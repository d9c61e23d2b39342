"""The pydantic-free half of datastore value validation: limits, key checks, plain values.

`libcalico.models` validates every value with pydantic; confd reads only a
few BGP and IPAM kinds, and loading pydantic and the models for them cost
each node ~8 MB of RSS and 70-100 ms of start-up CPU in confd alone.  So the
pieces that need no pydantic live here, with ONE definition each: models
imports (and re-exports) them, and `libcalico.bgp_values` builds confd's
parser from them, so the two paths cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from libcalico import keys
from libcalico.validation import (
    validate_asn,
    validate_bgp_ip,
    validate_config_param,
    validate_ip,
    validate_loglevel,
    validate_name,
)

# Checked before JSON parsing: parsing and validating a value costs event-loop time and
# memory in proportion to its size, and etcd accepts 1.5 MiB.
MAX_VALUE_BYTES = {"profile_rules": 128 * 1024, "tier_policy": 128 * 1024, "bgp_host_status": 256 * 1024}
# IPAM block sizes a pool may ask for (prefix lengths), and the default.
POOL_BLOCK_SIZES = {4: (20, 32), 6: (116, 128)}
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}


class InvalidValue(ValueError):
    """A key or value that fails validation; str() is '<key>: <reason>'."""

    def __init__(self, key_path: str, reason: str) -> None:
        self.key_path = key_path
        self.reason = reason
        super().__init__(f"{key_path}: {reason}")

    def __str__(self) -> str:
        return f"{self.key_path}: {self.reason}"


_ID_FIELDS = {
    "host": "hostname", "orchestrator": "orchestrator id", "workload": "workload id",
    "endpoint": "endpoint id", "profile": "profile id", "tier": "tier name", "policy": "policy name",
    "handle": "handle id",
}


def check_key(key: keys.Key) -> None:
    """Key segments reach chain names, ipsets and BIRD config: hold them to the safe charsets."""
    for name, what in _ID_FIELDS.items():
        if name in key.fields:
            validate_name(key.fields[name], what)
    if "ip" in key.fields:
        validate_ip(key.fields["ip"])
    if "param" in key.fields:
        validate_config_param(key.fields["param"])


def check_size(kind: str, raw: str) -> None:
    """Reject an oversized value before JSON parsing (see MAX_VALUE_BYTES)."""
    limit = MAX_VALUE_BYTES.get(kind)
    if limit is None or len(raw) * 4 <= limit:   # a character is at most 4 UTF-8 bytes
        return
    size = len(raw) if len(raw) > limit else len(raw.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValueError(f"value: {size} bytes exceed the limit of {limit} for a {kind.replace('_', ' ')} value")


def checked_text(key: keys.Key, raw: str | bytes) -> str:
    """`raw` as text, after the checks every value kind shares (UTF-8, key segments, size)."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("value is not valid UTF-8") from None
    if not isinstance(raw, str):
        raise ValueError(f"value must be a string, got {type(raw).__name__}")
    check_key(key)
    check_size(key.kind, raw)
    return raw


def checked_key(path: str) -> keys.Key | None:
    """The parsed key of a deletion (None outside the contract); InvalidValue for a bad segment."""
    key = keys.parse(path)
    if key is not None:
        try:
            check_key(key)
        except ValueError as e:
            raise InvalidValue(path, str(e)) from None
    return key


def json_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"malformed JSON ({e.__class__.__name__}: {str(e)[:80]})") from None


def json_object(raw: str) -> dict:
    data = json_value(raw)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def ready(raw: str) -> bool:
    v = raw.strip().lower()
    if v not in ("true", "false"):
        raise ValueError(f"{raw[:40]!r} is not true or false")
    return v == "true"


def rr_cluster_id(raw: str) -> str | None:
    """A route reflector's cluster id: a dotted quad (BIRD's `rr cluster id`); empty = not a reflector."""
    text = raw.strip()
    if not text:
        return None
    try:
        return validate_ip(text, 4)
    except ValueError:
        raise ValueError(f"rr_cluster_id {text[:40]!r} is not a dotted-quad cluster id (e.g. 1.0.0.1)") from None


def bgp_host_ip(key: keys.Key, raw: str) -> str | None:
    text = raw.strip()
    if not text and key.version == 6:
        return None
    return validate_bgp_ip(text, key.version)


# The kinds whose values are plain text (or any JSON object): one parser each, used by models and
# bgp_values alike.
PLAIN_PARSERS: dict[str, Callable[[keys.Key, str], object]] = {
    "ready": lambda k, r: ready(r),
    "bgp_host_ip": bgp_host_ip,
    "bgp_host_as": lambda k, r: validate_asn(r.strip()),
    "bgp_host_loglevel": lambda k, r: validate_loglevel(r),
    "bgp_host_rr_cluster_id": lambda k, r: rr_cluster_id(r),
    "bgp_host_status": lambda k, r: json_object(r),
    "bgp_global_as": lambda k, r: validate_asn(r.strip()),
    "bgp_global_loglevel": lambda k, r: validate_loglevel(r),
}


# ---- field rules shared by the pydantic models and the lean BGP parser ----------

def located(loc: str, msg: str) -> str:
    """A field error as models report it: 'field: msg', or 'field[i]...' when msg already names an index."""
    if msg.startswith("["):
        return f"{loc}{msg}"
    return f"{loc}: {msg}" if loc else msg


def strict_bool(value: object) -> bool:
    """JSON true/false only: 1, "true" or "yes" would silently turn a pool or the mesh on."""
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def block_size(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a prefix length")
    return value


def check_pool(cidr: str, ipip: str | None, vxlan: str | None, size: int | None) -> None:
    """The rules across a pool's fields: one overlay, a block size its IP version can carve."""
    if ipip is not None and vxlan is not None:
        raise ValueError("a pool can have ipip or vxlan, not both")
    if size is not None:
        version = keys.ip_version(cidr)
        lo, hi = POOL_BLOCK_SIZES[version]
        if not lo <= size <= hi:
            raise ValueError(f"block_size {size} is outside /{lo}../{hi} for an IPv{version} pool")


class PoolProperties:
    """What programs derive from a pool's fields, for both pool types (models.Pool, bgp_values.PoolValue).

    It reads their cidr, ipip, vxlan and block_size but declares no annotations:
    pydantic would take them for fields of models.Pool and change its field order
    (which decides the first error reported).
    """

    @property
    def block_prefix(self) -> int:
        """The prefix length of the blocks IPAM carves this pool into (never wider than the pool)."""
        size = self.block_size if self.block_size is not None else DEFAULT_BLOCK_SIZE[self.version]
        return max(size, int(self.cidr.rsplit("/", 1)[1]))

    @property
    def version(self) -> int:
        return keys.ip_version(self.cidr)

    @property
    def overlay(self) -> str | None:
        """'ipip', 'vxlan' or None: which tunnel carries the pool's traffic between hosts."""
        return "ipip" if self.ipip else "vxlan" if self.vxlan else None


def run_parser(parsers: dict[str, Callable[[keys.Key, str], object]], key: keys.Key, raw: str | bytes,
               what: str = "") -> object:
    """`raw` through the shared checks, then the parser of its key kind; ValueError when either fails."""
    raw = checked_text(key, raw)
    parser = parsers.get(key.kind)
    if parser is None:
        raise ValueError(f"no {what}validator for key kind {key.kind!r}")
    return parser(key, raw)


def parse_path(path: str, raw: str | bytes | None,
               parse_value: Callable[[keys.Key, str | bytes], object]) -> tuple[keys.Key | None, object]:
    """(Key, parse_value's value); (None, None) outside the contract; a deletion (raw None) checks the key only."""
    key = checked_key(path) if raw is None else keys.parse(path)
    if key is None or raw is None:
        return key, None
    return key, parse_value(key, raw)
