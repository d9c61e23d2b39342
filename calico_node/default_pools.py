"""The default IP pools calico-node creates on an empty cluster, from Calico 3.x's env.

`CALICO_IPV4POOL_CIDR`, `_BLOCK_SIZE`, `_IPIP`, `_VXLAN`, `_NAT_OUTGOING` and
the `CALICO_IPV6POOL_*` twins.  Parsed with the rest of the environment so a
typo stops the node before it writes anything; each error names its variable.
Encapsulation modes take Calico's spellings (`Always`, `Never`, `CrossSubnet`,
case-insensitive) and the classic v0.x ones (`always`, `off`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_CIDR = {4: "192.168.0.0/16", 6: "fd80:24e2:f998:72d6::/64"}
DEFAULT_BLOCK = {4: 26, 6: 122}
BLOCK_RANGE = {4: (20, 32), 6: (116, 128)}
DEFAULT_NAT = {4: True, 6: False}


class PoolEnvError(ValueError):
    """str() names the variable."""


@dataclass(frozen=True)
class DefaultPool:
    cidr: str
    block_size: int
    ipip: bool = False
    vxlan: bool = False
    nat_outgoing: bool = False

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.cidr).version


def _var(v: int, suffix: str) -> str:
    return f"CALICO_IPV{v}POOL_{suffix}"


def _mode(env: Mapping[str, str], v: int, what: str) -> bool:
    """Always -> True, Never/off/empty -> False; CrossSubnet is refused (not implemented here)."""
    name = _var(v, what)
    raw = env.get(name, "").strip()
    low = raw.lower().replace("-", "").replace("_", "")
    if low in ("", "never", "off", "false"):
        return False
    if low in ("always", "true"):
        if v == 6 and what == "IPIP":
            raise PoolEnvError(f"{name}={raw!r}: IPIP carries IPv4 only")
        if v == 6 and what == "VXLAN":
            raise PoolEnvError(f"{name}={raw!r}: VXLAN for IPv6 pools is not supported by this Felix (use Never)")
        return True
    if low == "crosssubnet":
        raise PoolEnvError(f"{name}={raw!r}: CrossSubnet is not supported by this calico/node (use Always or Never)")
    raise PoolEnvError(f"{name}={raw[:64]!r}: expected Always, Never or CrossSubnet")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("true", "1", "yes", "on"):
        return True
    if raw.lower() in ("false", "0", "no", "off"):
        return False
    raise PoolEnvError(f"{name}={raw[:64]!r}: expected true or false")


def _cidr(env: Mapping[str, str], v: int) -> str:
    name = _var(v, "CIDR")
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_CIDR[v]
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise PoolEnvError(f"{name}={raw[:64]!r}: not a CIDR") from None
    if net.version != v:
        raise PoolEnvError(f"{name}={raw!r}: not an IPv{v} CIDR")
    return str(net)


def _block(env: Mapping[str, str], v: int, cidr: str) -> int:
    name = _var(v, "BLOCK_SIZE")
    raw = env.get(name, "").strip()
    lo, hi = BLOCK_RANGE[v]
    if not raw:
        size = DEFAULT_BLOCK[v]
    elif not re.fullmatch(r"[0-9]{1,3}", raw) or not lo <= int(raw) <= hi:
        raise PoolEnvError(f"{name}={raw[:64]!r}: expected an integer from {lo} to {hi}")
    else:
        size = int(raw)
    plen = ipaddress.ip_network(cidr).prefixlen
    if size < plen:
        if raw:
            raise PoolEnvError(f"{name}={size}: larger than the pool {cidr} ({_var(v, 'CIDR')})")
        size = plen  # a small pool with the default block size: one block is the pool
    return size


def from_env(env: Mapping[str, str]) -> tuple[DefaultPool, DefaultPool]:
    """The IPv4 and IPv6 default pools as the environment describes them."""
    out = []
    for v in (4, 6):
        cidr = _cidr(env, v)
        ipip = _mode(env, v, "IPIP")
        vxlan = _mode(env, v, "VXLAN")
        if ipip and vxlan:
            raise PoolEnvError(f"{_var(v, 'IPIP')} and {_var(v, 'VXLAN')} are both Always: a pool has one overlay")
        out.append(DefaultPool(cidr=cidr, block_size=_block(env, v, cidr), ipip=ipip, vxlan=vxlan,
                               nat_outgoing=_bool(env, _var(v, "NAT_OUTGOING"), DEFAULT_NAT[v])))
    return out[0], out[1]
