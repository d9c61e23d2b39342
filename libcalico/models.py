"""Validated values of the datastore contract (shared/datamodel.md).

Every value read from etcd goes through `parse_value`/`parse_key_value`
before any program acts on it: a value that fails becomes one
`InvalidValue("<key>: <reason>")` and never reaches iptables, ipsets, routes
or BIRD.  Key segments that flow into the dataplane (profile, tier, policy,
host and endpoint ids) are validated here too, because keys.parse only checks
their shape.

Models ignore (but keep, in ``model_extra``) JSON fields they do not know, so
a newer writer does not break an older reader, and `to_json` writes them back.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from libcalico import keys
from libcalico.selectors import (
    Selector,
    SelectorError,
    parse_selector,
    valid_label_key,
    valid_label_value,
)
from libcalico.validation import (
    is_digits,
    validate_asn,
    validate_bgp_ip,
    validate_cidr,
    validate_config_param,
    validate_config_value,
    validate_ifname,
    validate_ip,
    validate_log_prefix,
    validate_loglevel,
    validate_mac,
    validate_name,
)
from libcalico.values import (
    DEFAULT_BLOCK_SIZE,
    MAX_VALUE_BYTES,
    PLAIN_PARSERS,
    POOL_BLOCK_SIZES,
    InvalidValue,
    PoolProperties,
    block_size,
    check_pool,
    json_object,
    json_value,
    located,
    parse_path,
    run_parser,
    strict_bool,
)

__all__ = [
    "InvalidValue", "WorkloadEndpoint", "HostEndpoint", "Rule", "ProfileRules", "Tier", "Policy",
    "Pool", "BgpPeer", "NodeMesh", "BlockAffinity", "IpNat", "parse_value", "parse_key_value",
    "to_json", "validate_asn", "validate_cidr", "validate_ip", "validate_name", "validate_ifname",
    "validate_mac", "validate_loglevel", "validate_labels", "validate_tags", "PORT_PROTOCOLS",
    "MAX_RULES", "MAX_PORT_ENTRIES", "MAX_RENDERED_LINES", "MAX_VALUE_BYTES", "ICMP_TYPE_MAX",
    "ICMP_CODE_MAX", "POOL_BLOCK_SIZES", "DEFAULT_BLOCK_SIZE",
]

PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite", 6, 17, 132, 136})
PROTOCOL_NAMES = frozenset({"tcp", "udp", "icmp", "icmpv6", "sctp", "udplite"})

# ---- limits of rule values ----------------------------------------------------
# One place for every bound on a rule list: Felix's renderer (felix.calc.rules)
# imports these rather than keeping its own, so the model and the kernel side can
# never disagree about what is valid.  They keep a single profile or policy value
# from costing more than a few tens of milliseconds of the event loop or more than
# a few MB of memory: a datastore value is written by anyone with etcd access, and
# Felix re-reads it on every restart.
MAX_RULES = 500                    # rules per direction (inbound_rules, outbound_rules)
MAX_PORT_ENTRIES = 10000           # entries (ports and 'lo:hi' ranges) in one ports list
MAX_RENDERED_LINES = 5000          # iptables lines one profile/policy renders to, per IP family
# MAX_VALUE_BYTES (checked before JSON parsing), POOL_BLOCK_SIZES, DEFAULT_BLOCK_SIZE and
# InvalidValue live in libcalico.values (no pydantic there, for confd) and are re-exported here.
# 255 is the iptables icmp match's "any type" wildcard, so a rule for type 255
# would match every ICMP packet: the one bound for icmp_type, model and renderer.
ICMP_TYPE_MAX = 254
ICMP_CODE_MAX = 255


# ---- shared field helpers -----------------------------------------------------

def validate_labels(value: object) -> dict[str, str]:
    """A label dict: Calico label keys and values (letters, digits, '-_./')."""
    if not isinstance(value, dict):
        raise ValueError("labels must be an object of string to string")
    for k, v in value.items():
        if not valid_label_key(k):
            raise ValueError(f"{k!r} is not a valid label key")
        if not valid_label_value(v):
            raise ValueError(f"label {k!r}: {v!r} is not a valid label value")
    return dict(value)


def validate_tags(value: object) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("tags must be a list of names")
    return [validate_name(t, "tag") for t in value]


def _validated_list(value: object, version: int | None, validate, what: str) -> list[str]:
    """None -> []; else every item through `validate`, an error naming the item's index."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"must be a list of {what}")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(validate(item, version))
        except ValueError as e:
            raise ValueError(f"[{i}]: {e}") from None
    return out


def _cidr_list(value: object, version: int | None) -> list[str]:
    return _validated_list(value, version, validate_cidr, "CIDRs")


def _ip_list(value: object, version: int | None) -> list[str]:
    return _validated_list(value, version, validate_ip, "IP addresses")


def _profile_ids(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("must be a list of profile ids")
    return [validate_name(p, "profile id") for p in value]


def _order(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{value!r} is not a number")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", validate_by_name=True, validate_by_alias=True, defer_build=True,
                              hide_input_in_errors=True)


# ---- endpoints ------------------------------------------------------------------

class IpNat(_Model):
    int_ip: str
    ext_ip: str

    @field_validator("int_ip", "ext_ip", mode="before")
    @classmethod
    def _ip(cls, v: object) -> str:
        return validate_ip(v, 4)


class WorkloadEndpoint(_Model):
    state: Literal["active", "inactive"]
    name: str
    mac: str | None = None
    profile_ids: list[str] = Field(default_factory=list)
    ipv4_nets: list[str] = Field(default_factory=list)
    ipv6_nets: list[str] = Field(default_factory=list)
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    ipv4_nat: list[IpNat] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_profile_id(cls, data: Any) -> Any:
        # Classic Calico wrote a single "profile_id"; keep reading it.
        if isinstance(data, dict) and "profile_ids" not in data and "profile_id" in data:
            data = dict(data)
            pid = data.pop("profile_id")
            data["profile_ids"] = [] if pid is None else [pid]
        return data

    _name = field_validator("name", mode="before")(classmethod(lambda cls, v: validate_ifname(v)))
    _mac = field_validator("mac", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_mac(v)))
    _profiles = field_validator("profile_ids", mode="before")(classmethod(lambda cls, v: _profile_ids(v)))
    _v4 = field_validator("ipv4_nets", mode="before")(classmethod(lambda cls, v: _cidr_list(v, 4)))
    _v6 = field_validator("ipv6_nets", mode="before")(classmethod(lambda cls, v: _cidr_list(v, 6)))
    _gw4 = field_validator("ipv4_gateway", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_ip(v, 4)))
    _gw6 = field_validator("ipv6_gateway", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_ip(v, 6)))
    _labels = field_validator("labels", mode="before")(
        classmethod(lambda cls, v: {} if v is None else validate_labels(v)))

    @field_validator("ipv4_nat", mode="before")
    @classmethod
    def _nat(cls, v: object) -> object:
        return [] if v is None else v


class HostEndpoint(_Model):
    name: str | None = None
    expected_ipv4_addrs: list[str] = Field(default_factory=list)
    expected_ipv6_addrs: list[str] = Field(default_factory=list)
    profile_ids: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    _name = field_validator("name", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_ifname(v)))
    _v4 = field_validator("expected_ipv4_addrs", mode="before")(classmethod(lambda cls, v: _ip_list(v, 4)))
    _v6 = field_validator("expected_ipv6_addrs", mode="before")(classmethod(lambda cls, v: _ip_list(v, 6)))
    _profiles = field_validator("profile_ids", mode="before")(classmethod(lambda cls, v: _profile_ids(v)))
    _labels = field_validator("labels", mode="before")(
        classmethod(lambda cls, v: {} if v is None else validate_labels(v)))

    @model_validator(mode="after")
    def _needs_something(self) -> HostEndpoint:
        if not self.name and not self.expected_ipv4_addrs and not self.expected_ipv6_addrs:
            raise ValueError("a host endpoint needs a name or expected addresses")
        return self


# ---- rules and policy ---------------------------------------------------------

def _protocol(v: object) -> str | int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a protocol")
    if isinstance(v, str) and v.isdigit() and v.isascii() and len(v) <= 3:
        v = int(v)
    if isinstance(v, int):
        if not 1 <= v <= 255:
            raise ValueError(f"protocol {v} out of range 1..255")
        return v
    if isinstance(v, str) and v.lower() in PROTOCOL_NAMES:
        return v.lower()
    raise ValueError(f"{v!r} is not a protocol ({', '.join(sorted(PROTOCOL_NAMES))} or 1-255)")


def _ports(v: object) -> list[int | str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v:
        raise ValueError("ports must be a non-empty list of ports and 'lo:hi' ranges")
    if len(v) > MAX_PORT_ENTRIES:
        raise ValueError(f"{len(v)} entries exceed the limit of {MAX_PORT_ENTRIES}")
    out: list[int | str] = []
    for i, p in enumerate(v):
        if isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 65535:
            out.append(p)
            continue
        if isinstance(p, str) and p.isascii():
            lo, sep, hi = p.partition(":")
            if is_digits(lo) and len(lo) <= 5 and not sep and int(lo) <= 65535:
                out.append(int(lo))
                continue
            if sep and is_digits(lo) and is_digits(hi) and len(lo) <= 5 and len(hi) <= 5 \
                    and int(lo) <= int(hi) <= 65535:
                out.append(f"{int(lo)}:{int(hi)}")
                continue
        raise ValueError(f"[{i}]: {p!r} is not a port (0-65535) or 'lo:hi' range")
    return out


def _icmp_field(v: object, hi: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise ValueError(f"{v!r} is not an integer 0-{hi}")
    return v


def _selector(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a selector string")
    try:
        return parse_selector(v).canonical
    except SelectorError as e:
        raise ValueError(str(e)) from None


_NEGATABLE = ("protocol", "src_net", "src_tag", "src_selector", "src_ports",
              "dst_net", "dst_tag", "dst_selector", "dst_ports", "icmp_type", "icmp_code")


class Rule(_Model):
    """One rule; negated matches are stored as `not_<field>` (JSON key `!<field>`)."""

    action: Literal["allow", "deny", "next-tier", "log"] = "allow"
    ip_version: Literal[4, 6] | None = None
    log_prefix: str | None = None

    protocol: str | int | None = None
    src_net: str | None = None
    src_tag: str | None = None
    src_selector: str | None = None
    src_ports: list[int | str] | None = None
    dst_net: str | None = None
    dst_tag: str | None = None
    dst_selector: str | None = None
    dst_ports: list[int | str] | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    not_protocol: str | int | None = Field(None, alias="!protocol")
    not_src_net: str | None = Field(None, alias="!src_net")
    not_src_tag: str | None = Field(None, alias="!src_tag")
    not_src_selector: str | None = Field(None, alias="!src_selector")
    not_src_ports: list[int | str] | None = Field(None, alias="!src_ports")
    not_dst_net: str | None = Field(None, alias="!dst_net")
    not_dst_tag: str | None = Field(None, alias="!dst_tag")
    not_dst_selector: str | None = Field(None, alias="!dst_selector")
    not_dst_ports: list[int | str] | None = Field(None, alias="!dst_ports")
    not_icmp_type: int | None = Field(None, alias="!icmp_type")
    not_icmp_code: int | None = Field(None, alias="!icmp_code")

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: object) -> object:
        return "allow" if v is None else v

    @field_validator("ip_version", mode="before")
    @classmethod
    def _ipv(cls, v: object) -> object:
        if v is None:
            return None
        if isinstance(v, bool) or v not in (4, 6, "4", "6"):
            raise ValueError(f"{v!r} is not an IP version (4 or 6)")
        return int(v)

    _logp = field_validator("log_prefix", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_log_prefix(v)))
    _proto = field_validator("protocol", "not_protocol", mode="before")(
        classmethod(lambda cls, v: _protocol(v)))
    _nets = field_validator("src_net", "dst_net", "not_src_net", "not_dst_net", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_cidr(v)))
    _tags = field_validator("src_tag", "dst_tag", "not_src_tag", "not_dst_tag", mode="before")(
        classmethod(lambda cls, v: None if v is None else validate_name(v, "tag")))
    _sels = field_validator("src_selector", "dst_selector", "not_src_selector", "not_dst_selector",
                            mode="before")(classmethod(lambda cls, v: _selector(v)))
    _ports_v = field_validator("src_ports", "dst_ports", "not_src_ports", "not_dst_ports", mode="before")(
        classmethod(lambda cls, v: _ports(v)))
    _icmp_t = field_validator("icmp_type", "not_icmp_type", mode="before")(
        classmethod(lambda cls, v: _icmp_field(v, ICMP_TYPE_MAX)))
    _icmp_c = field_validator("icmp_code", "not_icmp_code", mode="before")(
        classmethod(lambda cls, v: _icmp_field(v, ICMP_CODE_MAX)))

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        has_ports = any(p is not None for p in (self.src_ports, self.dst_ports,
                                                 self.not_src_ports, self.not_dst_ports))
        if has_ports and self.protocol not in PORT_PROTOCOLS:
            raise ValueError("ports are only allowed with protocol tcp, udp, sctp or udplite")
        if self.icmp_code is not None and self.icmp_type is None:
            raise ValueError("icmp_code requires icmp_type")
        if self.not_icmp_code is not None and self.not_icmp_type is None:
            raise ValueError("!icmp_code requires !icmp_type")
        icmp = self.icmp_type is not None or self.not_icmp_type is not None
        if icmp and self.protocol not in ("icmp", "icmpv6", 1, 58):
            raise ValueError("icmp_type/icmp_code are only allowed with protocol icmp or icmpv6")
        if self.ip_version is not None:
            for name in ("src_net", "dst_net", "not_src_net", "not_dst_net"):
                net = getattr(self, name)
                if net is not None and keys.ip_version(net) != self.ip_version:
                    raise ValueError(f"{name} {net} does not match ip_version {self.ip_version}")
        if self.protocol == "icmpv6" and self.ip_version == 4 or self.protocol == "icmp" and self.ip_version == 6:
            raise ValueError(f"protocol {self.protocol} does not match ip_version {self.ip_version}")
        return self

    def selector(self, which: str) -> Selector | None:
        """The parsed selector of `which` (e.g. 'src_selector', 'not_dst_selector')."""
        text = getattr(self, which)
        return None if text is None else parse_selector(text)


def _rule_list(v: object) -> object:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValueError("must be a list of rules")
    if len(v) > MAX_RULES:
        raise ValueError(f"{len(v)} rules exceed the limit of {MAX_RULES}")
    return v


class ProfileRules(_Model):
    inbound_rules: list[Rule] = Field(default_factory=list)
    outbound_rules: list[Rule] = Field(default_factory=list)

    _rules = field_validator("inbound_rules", "outbound_rules", mode="before")(
        classmethod(lambda cls, v: _rule_list(v)))


class Tier(_Model):
    """Tier metadata; `order` None means "default" (after every ordered tier)."""

    order: int | float | None = None

    @field_validator("order", mode="before")
    @classmethod
    def _order_v(cls, v: object) -> object:
        if v is None or v == "default":
            return None
        return _order(v)


class Policy(_Model):
    selector: str
    order: int | float | None = None
    inbound_rules: list[Rule] = Field(default_factory=list)
    outbound_rules: list[Rule] = Field(default_factory=list)

    _sel = field_validator("selector", mode="before")(classmethod(lambda cls, v: _selector_required(v)))
    _rules = field_validator("inbound_rules", "outbound_rules", mode="before")(
        classmethod(lambda cls, v: _rule_list(v)))

    @field_validator("order", mode="before")
    @classmethod
    def _order_v(cls, v: object) -> object:
        return None if v is None else _order(v)

    @property
    def parsed_selector(self) -> Selector:
        return parse_selector(self.selector)


def _selector_required(v: object) -> str:
    out = _selector(v)
    if out is None:
        raise ValueError("selector is required")
    return out


# ---- IPAM and BGP -------------------------------------------------------------

class Pool(_Model, PoolProperties):
    cidr: str
    ipip: Literal["tunl0"] | None = None
    vxlan: Literal["vxlan.calico"] | None = None
    masquerade: bool = False
    ipam: bool = True
    disabled: bool = False
    # IPAM's block size for this pool (prefix length); None: the default (/26 IPv4, /122 IPv6)
    block_size: int | None = None
    # true: hosts never borrow addresses from other hosts' blocks of this pool
    strict_affinity: bool | None = None

    _cidr = field_validator("cidr", mode="before")(classmethod(lambda cls, v: validate_cidr(v)))

    @field_validator("block_size", mode="before")
    @classmethod
    def _block_size(cls, v: object) -> object:
        return block_size(v)

    @field_validator("strict_affinity", mode="before")
    @classmethod
    def _strict_affinity(cls, v: object) -> object:
        return None if v is None else strict_bool(v)

    @field_validator("masquerade", "ipam", "disabled", mode="before")
    @classmethod
    def _strict_bool(cls, v: object, info: Any) -> object:
        if v is None:
            return {"ipam": True}.get(info.field_name, False)
        return strict_bool(v)

    @model_validator(mode="after")
    def _one_overlay(self) -> Pool:
        check_pool(self.cidr, self.ipip, self.vxlan, self.block_size)
        return self


class BgpPeer(_Model):
    ip: str
    as_num: int

    _ip = field_validator("ip", mode="before")(classmethod(lambda cls, v: validate_bgp_ip(v)))
    _as = field_validator("as_num", mode="before")(classmethod(lambda cls, v: validate_asn(v)))


class NodeMesh(_Model):
    enabled: bool

    @field_validator("enabled", mode="before")
    @classmethod
    def _b(cls, v: object) -> object:
        return strict_bool(v)


class BlockAffinity(_Model):
    state: Literal["confirmed", "pending", "pendingDeletion"] = "confirmed"


# ---- dispatch -----------------------------------------------------------------

_json = json_value
_json_object = json_object


def _model(cls: type[BaseModel], raw: str) -> BaseModel:
    return cls.model_validate(json_object(raw))


def _host_config(key: keys.Key, raw: str) -> object:
    validate_config_param(key.param)
    if key.param in ("IpInIpTunnelAddr", "VXLANTunnelAddr"):
        return validate_ip(raw.strip(), 4)
    return validate_config_value(raw)


def _pool(key: keys.Key, raw: str) -> Pool:
    pool = _model(Pool, raw)
    assert isinstance(pool, Pool)
    if pool.cidr != key.cidr:
        raise ValueError(f"cidr {pool.cidr} does not match the key's {key.cidr}")
    return pool


def _peer(key: keys.Key, raw: str) -> BgpPeer:
    peer = _model(BgpPeer, raw)
    assert isinstance(peer, BgpPeer)
    if peer.ip != key.ip:
        raise ValueError(f"ip {peer.ip} does not match the key's {key.ip}")
    return peer


def _tags(raw: str) -> list[str]:
    return validate_tags(_json(raw))


def _labels(raw: str) -> dict[str, str]:
    return validate_labels(_json(raw))


_PARSERS: dict[str, Any] = {
    **PLAIN_PARSERS,
    "global_config": lambda k, r: (validate_config_param(k.param), validate_config_value(r))[1],
    "host_config": _host_config,
    "host_bird_ip": lambda k, r: validate_ip(r.strip(), 4),
    "host_vxlan_mac": lambda k, r: validate_mac(r.strip()),
    "workload_endpoint": lambda k, r: _model(WorkloadEndpoint, r),
    "host_endpoint": lambda k, r: _model(HostEndpoint, r),
    "profile_rules": lambda k, r: _model(ProfileRules, r),
    "profile_tags": lambda k, r: _tags(r),
    "profile_labels": lambda k, r: _labels(r),
    "tier_metadata": lambda k, r: _model(Tier, r),
    "tier_policy": lambda k, r: _model(Policy, r),
    "pool": _pool,
    "bgp_host_peer": _peer,
    "bgp_node_mesh": lambda k, r: _model(NodeMesh, r),
    "bgp_global_peer": _peer,
    "block_affinity": lambda k, r: _model(BlockAffinity, r),
    "block_allocation": lambda k, r: _json_object(r),
    "ipam_handle": lambda k, r: _json_object(r),
    "felix_status": lambda k, r: _json_object(r),
    "felix_last_status": lambda k, r: _json_object(r),
    "felix_endpoint_status": lambda k, r: _json_object(r),
}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _reason(err: ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    return located(_loc(tuple(first.get("loc", ()))), msg)


def parse_value(key: keys.Key, raw: str | bytes) -> object:
    """The validated value for `key`; raises InvalidValue naming the key and the reason."""
    try:
        return run_parser(_PARSERS, key, raw)
    except ValidationError as e:
        raise InvalidValue(key.path, _reason(e)) from None
    except ValueError as e:
        raise InvalidValue(key.path, str(e)) from None


def parse_key_value(path: str, raw: str | bytes | None) -> tuple[keys.Key | None, object]:
    """(Key, validated value); (None, None) for a key outside the contract.

    `raw` None (a deletion) only validates the key.  Raises InvalidValue for a
    bad key segment or value.
    """
    return parse_path(path, raw, parse_value)


def to_json(value: object) -> str:
    """The datamodel's JSON for a model (or a plain list/dict), as written to etcd.

    Negated rule matches come back as '!field' keys, and defaults the
    datamodel spells out (pool flags) are written, so `show` round-trips.
    """
    if isinstance(value, BaseModel):
        return json.dumps(_dump(value), separators=(",", ":"))
    return json.dumps(value, separators=(",", ":"))


def _dump(model: BaseModel) -> dict:
    if isinstance(model, Pool):
        data = model.model_dump(by_alias=True, exclude_none=True)
    elif isinstance(model, Tier):
        data = model.model_dump()
        if data["order"] is None:
            data["order"] = "default"
    elif isinstance(model, Rule | ProfileRules | Policy):
        data = model.model_dump(by_alias=True, exclude_none=True)
    else:
        data = model.model_dump(by_alias=True)
    return data
