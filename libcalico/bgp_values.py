"""The BGP and IPAM values confd reads, validated without pydantic.

Why: confd reads only these kinds, and importing pydantic and
`libcalico.models` for them cost ~8 MB of each node's RSS (plus pydantic's
schemas at run time) and 70-100 ms of start-up CPU per node, at a scale
where 50 nodes start at once on two cores.  The decisions are the models':
the same field rules (shared from `libcalico.values`), the same first error
in field order, the same 'InvalidValue' text naming the key, extra fields
kept.  Differential tests hold this parser identical to
`libcalico.models.parse_key_value` for every kind here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from libcalico import keys
from libcalico.validation import validate_asn, validate_bgp_ip, validate_cidr
from libcalico.values import (
    PLAIN_PARSERS,
    InvalidValue,
    PoolProperties,
    block_size,
    check_pool,
    json_object,
    located,
    parse_path,
    run_parser,
    strict_bool,
)

__all__ = ["PoolValue", "PeerValue", "MeshValue", "AffinityValue", "KINDS", "parse_key_value", "parse_value"]

_REQUIRED = object()


def _literal(*allowed: str) -> Callable[[object], str]:
    shown = [repr(a) for a in allowed]
    text = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    def check(value: object) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"Input should be {text}")
        return value
    return check


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda v: None if v is None else check(v)


def _or_default(default: object, check: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda v: default if v is None else check(v)


def _fields(data: dict, spec: tuple[tuple[str, object, Callable[[object], Any]], ...]) -> tuple[dict, dict]:
    """(validated fields, extra fields): the first failing field in declaration order is the error."""
    out = {}
    for name, default, check in spec:
        if name not in data:
            if default is _REQUIRED:
                raise ValueError(located(name, "Field required"))
            out[name] = default
            continue
        try:
            out[name] = check(data[name])
        except ValueError as e:
            raise ValueError(located(name, str(e))) from None
    return out, {k: v for k, v in data.items() if k not in out}


@dataclass(frozen=True)
class PoolValue(PoolProperties):
    cidr: str
    ipip: str | None = None
    vxlan: str | None = None
    masquerade: bool = False
    ipam: bool = True
    disabled: bool = False
    block_size: int | None = None
    strict_affinity: bool | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PeerValue:
    ip: str
    as_num: int
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MeshValue:
    enabled: bool
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AffinityValue:
    state: str = "confirmed"
    extra: dict = field(default_factory=dict)


_POOL = (
    ("cidr", _REQUIRED, validate_cidr),
    ("ipip", None, _optional(_literal("tunl0"))),
    ("vxlan", None, _optional(_literal("vxlan.calico"))),
    ("masquerade", False, _or_default(False, strict_bool)),
    ("ipam", True, _or_default(True, strict_bool)),
    ("disabled", False, _or_default(False, strict_bool)),
    ("block_size", None, block_size),
    ("strict_affinity", None, _optional(strict_bool)),
)
_PEER = (("ip", _REQUIRED, validate_bgp_ip), ("as_num", _REQUIRED, validate_asn))
_MESH = (("enabled", _REQUIRED, strict_bool),)
_AFFINITY = (("state", "confirmed", _literal("confirmed", "pending", "pendingDeletion")),)


def _pool(key: keys.Key, raw: str) -> PoolValue:
    got, extra = _fields(json_object(raw), _POOL)
    check_pool(got["cidr"], got["ipip"], got["vxlan"], got["block_size"])
    if got["cidr"] != key.cidr:
        raise ValueError(f"cidr {got['cidr']} does not match the key's {key.cidr}")
    return PoolValue(**got, extra=extra)


def _peer(key: keys.Key, raw: str) -> PeerValue:
    got, extra = _fields(json_object(raw), _PEER)
    if got["ip"] != key.ip:
        raise ValueError(f"ip {got['ip']} does not match the key's {key.ip}")
    return PeerValue(**got, extra=extra)


def _mesh(raw: str) -> MeshValue:
    got, extra = _fields(json_object(raw), _MESH)
    return MeshValue(**got, extra=extra)


def _affinity(raw: str) -> AffinityValue:
    got, extra = _fields(json_object(raw), _AFFINITY)
    return AffinityValue(**got, extra=extra)


_PARSERS: dict[str, Callable[[keys.Key, str], object]] = {
    **PLAIN_PARSERS,
    "pool": _pool,
    "bgp_host_peer": _peer,
    "bgp_node_mesh": lambda k, r: _mesh(r),
    "bgp_global_peer": _peer,
    "block_affinity": lambda k, r: _affinity(r),
}
# The key kinds this parser validates: every kind under confd's watched prefixes.
KINDS = frozenset(_PARSERS)


def parse_value(key: keys.Key, raw: str | bytes) -> object:
    """The validated value for `key`; InvalidValue naming the key, also for a kind outside KINDS."""
    try:
        return run_parser(_PARSERS, key, raw, "BGP ")
    except ValueError as e:
        raise InvalidValue(key.path, str(e)) from None


def parse_key_value(path: str, raw: str | bytes | None) -> tuple[keys.Key | None, object]:
    """(Key, validated value) like `libcalico.models.parse_key_value`, for the kinds in KINDS."""
    return parse_path(path, raw, parse_value)
