"""The BGP view confd renders from: validated etcd values in, a template context out.

Templates never see raw etcd text.  Every value arrives already validated by
`libcalico.models` (through the syncer) and is turned here into plain,
re-checked Python data (ints, normalized IPs/CIDRs, protocol names built from
addresses), so nothing an operator or a buggy writer puts in etcd can inject
BIRD syntax.

A key whose new value is invalid keeps its last valid value ("sticky"): BIRD
keeps the last good configuration for that item, the rejection is logged once
naming the key, and readiness reports it until the value is fixed or deleted.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from libcalico import keys
from libcalico.models import BgpPeer, BlockAffinity, InvalidValue, NodeMesh, Pool, parse_key_value
from libcalico.ratelimit import RateLimitedLog
from libcalico.validation import validate_asn, validate_cidr, validate_ip, validate_loglevel, validate_name

log = logging.getLogger("confd.state")

DEFAULT_AS = 64511
BGP_KINDS = frozenset({
    "bgp_host_ip", "bgp_host_as", "bgp_host_loglevel", "bgp_host_peer", "bgp_global_as",
    "bgp_node_mesh", "bgp_global_loglevel", "bgp_global_peer", "pool", "block_affinity",
})


def protocol_id(ip: str) -> str:
    """`10.99.0.2` -> `10_99_0_2`, `fd00::1` -> `fd00__1` (BIRD protocol names)."""
    return validate_ip(ip).replace(".", "_").replace(":", "_")


@dataclass(frozen=True)
class Node:
    """This node's identity as confd sees it (environment, etcd wins where it has a value)."""

    name: str
    ip4: str | None = None
    ip6: str | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "hostname")
        if self.ip4 is not None:
            validate_ip(self.ip4, 4)
        if self.ip6 is not None:
            validate_ip(self.ip6, 6)


@dataclass
class BgpStore:
    """Validated datastore values keyed by etcd path, plus the keys currently rejected."""

    node: Node
    values: dict[str, tuple[keys.Key, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    # One line per rejected key is right for a typo and wrong for a flood of 10,000 bad keys:
    # the first few per second name their key, the rest are counted in one summary line.
    reject_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, burst=10), repr=False,
                                       compare=False)

    def relevant(self, key: keys.Key) -> bool:
        if key.kind not in BGP_KINDS:
            return False
        if key.kind in ("block_affinity", "bgp_host_peer", "bgp_host_loglevel"):
            return key.host == self.node.name  # other hosts' peers and blocks are theirs alone
        return True

    def put(self, key: keys.Key, value: Any) -> bool:
        """Store a valid value; returns True when the view changed."""
        try:
            value = _recheck(key, value)
        except (ValueError, TypeError) as e:
            return self.reject(key.path, str(e), key)
        self.rejected.pop(key.path, None)
        old = self.values.get(key.path)
        self.values[key.path] = (key, value)
        return old is None or old[1] != value

    def delete(self, path: str) -> bool:
        self.rejected.pop(path, None)
        return self.values.pop(path, None) is not None

    def reject(self, path: str, reason: str, key: keys.Key | None = None) -> bool:
        """Record an invalid value; the last valid one (if any) stays in force."""
        if self.rejected.get(path) != reason:
            kept = " (keeping its last valid value)" if path in self.values else ""
            self.reject_log.log("rejected value", logging.ERROR, "rejected %s: %s%s", path, reason, kept)
        self.rejected[path] = reason
        return False

    def blocking_rejections(self) -> list[str]:
        """Rejected keys that must not fall back to a default: rendering waits for a fix.

        Without a last valid value, a bad global or own AS (or own address)
        would silently become the default and move every session; better to
        keep the last good file and fail readiness.
        """
        out = []
        for path, reason in sorted(self.rejected.items()):
            if path in self.values:
                continue
            key = keys.parse(path)
            if key is None:
                continue
            if key.kind == "bgp_global_as" or (
                    key.kind in ("bgp_host_as", "bgp_host_ip") and key.host == self.node.name):
                out.append(f"{path}: {reason}")
        return out

    def load_raw(self, kv: dict[str, str]) -> BgpStore:
        """Fill from raw etcd text (tests, benchmarks): the same validation the syncer applies."""
        for path, raw in kv.items():
            try:
                key, value = parse_key_value(path, raw)
            except InvalidValue as e:
                self.reject(path, e.reason if hasattr(e, "reason") else str(e))
                continue
            if key is not None and self.relevant(key):
                self.put(key, value)
        return self

    # ---- the template context ------------------------------------------------

    def context(self) -> dict[str, Any]:
        """Everything the templates may use, per address family, sorted so output is stable."""
        me = self.node
        g: dict[str, Any] = {"as": None, "mesh": False, "loglevel": None}
        hosts: dict[str, dict[str, Any]] = {}
        global_peers: dict[int, dict[str, int]] = {4: {}, 6: {}}
        pools: dict[int, list[PoolView]] = {4: [], 6: []}
        blocks: dict[int, list[str]] = {4: [], 6: []}
        for key, value in self.values.values():
            k = key.kind
            if k == "bgp_global_as":
                g["as"] = value
            elif k == "bgp_node_mesh":
                g["mesh"] = value
            elif k == "bgp_global_loglevel":
                g["loglevel"] = value
            elif k == "bgp_global_peer":
                global_peers[key.version][value[0]] = value[1]
            elif k == "pool":
                pools[key.version].append(value)
            elif k == "block_affinity":
                if value == "confirmed":
                    blocks[key.version].append(key.cidr)
            else:
                h = hosts.setdefault(key.host, {"ip4": None, "ip6": None, "as": None, "loglevel": None,
                                                "peers4": {}, "peers6": {}})
                if k == "bgp_host_ip":
                    h[f"ip{key.version}"] = value
                elif k == "bgp_host_as":
                    h["as"] = value
                elif k == "bgp_host_loglevel":
                    h["loglevel"] = value
                elif k == "bgp_host_peer":
                    h[f"peers{key.version}"][value[0]] = value[1]
        mine = hosts.get(me.name, {})
        default_as = g["as"] or DEFAULT_AS
        local_as = mine.get("as") or default_as
        loglevel = mine.get("loglevel") or g["loglevel"]
        debug = None if loglevel == "none" else ("all" if loglevel == "debug" else "states")
        ip4 = mine.get("ip4") or me.ip4
        ip6 = mine.get("ip6") or me.ip6
        ctx: dict[str, Any] = {
            "node": {"name": me.name, "ip4": ip4, "ip6": ip6, "as": local_as, "debug": debug,
                     "router_id": ip4},
            "mesh": g["mesh"],
        }
        for v, own_ip in ((4, ip4), (6, ip6)):
            fam: dict[str, Any] = {"version": v, "ip": own_ip, "enabled": own_ip is not None and ip4 is not None}
            mesh = []
            if g["mesh"] and own_ip:
                for hname in sorted(hosts):
                    h = hosts[hname]
                    hip = h[f"ip{v}"]
                    if hname == me.name or not hip or hip == own_ip:
                        continue
                    # One direction only: the node with the higher address connects, the
                    # other listens. Both connecting at once makes BIRD resolve a
                    # collision by closing the session it just established, and a
                    # close during a peer's graceful restart flushes the routes the
                    # restart was meant to keep (seen as multi-second drops on a
                    # BIRD restart, and as slow mesh start-up).
                    passive = ipaddress.ip_address(hip) > ipaddress.ip_address(own_ip)
                    mesh.append({"name": f"Mesh_{protocol_id(hip)}", "ip": hip, "as": h["as"] or default_as,
                                 "host": hname, "passive": passive})
            fam["mesh_peers"] = mesh
            fam["global_peers"] = _peers("Global", global_peers[v], own_ip)
            fam["node_peers"] = _peers("Node", mine.get(f"peers{v}", {}), own_ip)
            fam["pools"] = [{"cidr": p.cidr, "ipip": p.ipip, "vxlan": p.vxlan, "overlay": p.ipip or p.vxlan,
                             "masquerade": p.masquerade, "disabled": p.disabled}
                            for p in sorted(pools[v], key=lambda p: _net_sort(p.cidr))]
            fam["blocks"] = sorted(set(blocks[v]), key=_net_sort)
            ctx[f"v{v}"] = fam
        return ctx


@dataclass(frozen=True)
class PoolView:
    """The pool fields BIRD's config depends on (unknown JSON fields must not count as changes)."""

    cidr: str
    ipip: bool
    vxlan: bool
    masquerade: bool
    disabled: bool


def _net_sort(cidr: str) -> tuple:
    import ipaddress
    n = ipaddress.ip_network(cidr)
    return (n.version, int(n.network_address), n.prefixlen)


def _peers(prefix: str, peers: dict[str, int], own_ip: str | None) -> list[dict[str, Any]]:
    import ipaddress
    out = []
    for ip in sorted(peers, key=lambda i: int(ipaddress.ip_address(i))):
        if ip == own_ip:
            continue
        out.append({"name": f"{prefix}_{protocol_id(ip)}", "ip": ip, "as": peers[ip]})
    return out


def _recheck(key: keys.Key, value: Any) -> Any:
    """Belt and braces: re-validate what the templates will print, whatever produced `value`."""
    if "host" in key.fields:
        validate_name(key.host, "hostname")
    k = key.kind
    if k in ("bgp_global_as", "bgp_host_as"):
        return validate_asn(value)
    if k in ("bgp_global_loglevel", "bgp_host_loglevel"):
        return validate_loglevel(value)
    if k == "bgp_host_ip":
        return None if value in (None, "") else validate_ip(value, key.version)
    if k == "bgp_node_mesh":
        if not isinstance(value, NodeMesh):
            raise TypeError(f"expected a node_mesh object, got {value!r}")
        return bool(value.enabled)
    if k in ("bgp_global_peer", "bgp_host_peer"):
        if not isinstance(value, BgpPeer):
            raise TypeError(f"expected a peer object, got {value!r}")
        validate_ip(value.ip, key.version)
        validate_asn(value.as_num)
        if value.ip != key.ip:
            raise ValueError(f"ip {value.ip} does not match the key's {key.ip}")
        return (value.ip, value.as_num)
    if k == "pool":
        if not isinstance(value, Pool):
            raise TypeError(f"expected a pool object, got {value!r}")
        if validate_cidr(value.cidr, key.version) != key.cidr:
            raise ValueError(f"cidr {value.cidr} does not match the key's {key.cidr}")
        return PoolView(key.cidr, value.ipip is not None, value.vxlan is not None, bool(value.masquerade),
                        bool(value.disabled))
    if k == "block_affinity":
        if not isinstance(value, BlockAffinity):
            raise TypeError(f"expected a block affinity, got {value!r}")
        validate_cidr(key.cidr, key.version)
        return value.state
    raise ValueError(f"confd does not use key kind {k}")
