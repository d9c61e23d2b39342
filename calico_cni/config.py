"""The network config of the `calico` and `calico-ipam` plugins.

Key names are the real calico-cni plugin's, so a node's existing conflist
works unchanged: `etcd_endpoints` (or `etcd_authority` + `etcd_scheme`),
`etcd_ca_cert_file` / `etcd_cert_file` / `etcd_key_file`, `nodename`
(older configs: `hostname`), `mtu`, `log_level`, `log_file_path`, and `ipam`
with `type` (`calico-ipam` or any other IPAM plugin) and, for calico-ipam,
`assign_ipv4` / `assign_ipv6` (booleans or the strings "true"/"false", as
the real plugin wrote them), `ipv4_pools` / `ipv6_pools`.  Unknown keys are
ignored, as the spec asks.  Every refusal names its key.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from calico_cni.spec import INVALID_CONFIG, CniError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}\Z")
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50, "fatal": 50,
              "panic": 50, "none": 100}


@dataclass
class IpamConf:
    type: str
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)


@dataclass
class NetConf:
    name: str
    cni_version: str
    etcd_env: dict[str, str]  # as ETCD_* variables for libcalico.etcdconf
    nodename: str
    mtu: int | None
    log_level: int
    log_file_path: str | None
    ipam: IpamConf
    raw: dict[str, Any]


def bad(key: str, why: str) -> CniError:
    return CniError(INVALID_CONFIG, f"{key}: {why}")


def _str(conf: dict, key: str, default: str | None = None, limit: int = 4096) -> str | None:
    v = conf.get(key, default)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad(key, f"must be a string, not {type(v).__name__}")
    if len(v) > limit:
        raise bad(key, f"longer than {limit} characters")
    return v


def _bool(conf: dict, key: str, default: bool) -> bool:
    v = conf.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise bad(key, f"must be true or false, not {v!r}")


def _pools(conf: dict, key: str, version: int) -> list[str]:
    v = conf.get(key, [])
    if not isinstance(v, list) or len(v) > 1000:
        raise bad(key, "must be a list of pool CIDRs")
    out = []
    for item in v:
        try:
            net = ipaddress.ip_network(item, strict=False) if isinstance(item, str) else None
        except ValueError:
            net = None
        if net is None or net.version != version:
            raise bad(key, f"{item!r} is not an IPv{version} CIDR")
        out.append(str(net))
    return out


def parse_ipam(raw: Any) -> IpamConf:
    if not isinstance(raw, dict):
        raise bad("ipam", "must be an object with a type")
    t = _str(raw, "type", limit=200)
    if not t or not _NAME_RE.match(t):
        raise bad("ipam.type", f"{t!r} is not a plugin name")
    try:
        return IpamConf(type=t, assign_ipv4=_bool(raw, "assign_ipv4", True),
                        assign_ipv6=_bool(raw, "assign_ipv6", False),
                        ipv4_pools=_pools(raw, "ipv4_pools", 4), ipv6_pools=_pools(raw, "ipv6_pools", 6))
    except CniError as e:
        raise CniError(e.code, f"ipam.{e.msg}") from None


def parse(conf: dict[str, Any], version: str) -> NetConf:
    name = _str(conf, "name", limit=253)
    if not name or not _NAME_RE.match(name):
        raise bad("name", f"{name!r} is not a valid network name (letters, digits, _ . -)")
    env: dict[str, str] = {}
    endpoints = _str(conf, "etcd_endpoints")
    if endpoints:
        env["ETCD_ENDPOINTS"] = endpoints
    else:
        for key, var in (("etcd_authority", "ETCD_AUTHORITY"), ("etcd_scheme", "ETCD_SCHEME")):
            v = _str(conf, key)
            if v:
                env[var] = v
    for key, var in (("etcd_ca_cert_file", "ETCD_CA_CERT_FILE"), ("etcd_cert_file", "ETCD_CERT_FILE"),
                     ("etcd_key_file", "ETCD_KEY_FILE")):
        v = _str(conf, key)
        if v:
            env[var] = v
    nodename = _str(conf, "nodename") or _str(conf, "hostname") or socket.gethostname()
    if not _NAME_RE.match(nodename):
        raise bad("nodename", f"{nodename!r} is not a valid node name")
    mtu = conf.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535):
        raise bad("mtu", f"{mtu!r} is not an MTU (576..65535)")
    level = (_str(conf, "log_level", "warning") or "warning").lower()
    if level not in LOG_LEVELS:
        raise bad("log_level", f"{level!r} is not one of {', '.join(sorted(LOG_LEVELS))}")
    ipam = parse_ipam(conf.get("ipam", {"type": "calico-ipam"}))
    return NetConf(name=name, cni_version=version, etcd_env=env, nodename=nodename, mtu=mtu,
                   log_level=LOG_LEVELS[level], log_file_path=_str(conf, "log_file_path"), ipam=ipam, raw=conf)


def etcd_config(conf: NetConf) -> Any:
    """libcalico's EtcdConfig for the config's etcd keys; errors name the config key."""
    from libcalico import etcdconf

    try:
        return etcdconf.from_env(conf.etcd_env)
    except etcdconf.ConfigError as e:
        msg = str(e)
        for key, var in (("etcd_endpoints", "ETCD_ENDPOINTS"), ("etcd_authority", "ETCD_AUTHORITY"),
                         ("etcd_scheme", "ETCD_SCHEME"), ("etcd_ca_cert_file", "ETCD_CA_CERT_FILE"),
                         ("etcd_cert_file", "ETCD_CERT_FILE"), ("etcd_key_file", "ETCD_KEY_FILE")):
            msg = msg.replace(var, key)
        raise CniError(INVALID_CONFIG, msg) from None
