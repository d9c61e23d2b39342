"""The BGP view confd renders from: validated etcd values in, a template context out.

Templates never see raw etcd text.  Every value arrives already validated by
`libcalico.bgp_values` (through the syncer; the models' rules without pydantic,
which would cost each node's confd ~8 MB and its start-up CPU) and is turned here into plain,
re-checked Python data (ints, normalized IPs/CIDRs, protocol names built from
addresses), so nothing an operator or a buggy writer puts in etcd can inject
BIRD syntax.

A key whose new value is invalid keeps its last valid value ("sticky"): BIRD
keeps the last good configuration for that item, the rejection is logged once
naming the key, and readiness reports it until the value is fixed or deleted.

Values that are valid one by one can still contradict each other (two hosts
registering one address, two hosts claiming one block, a block outside every
pool).  Those are resolved here, when the context is built, by rules that do
not depend on arrival order or restarts, and each losing key becomes a
`Finding`: left out of the config, logged once, and counted against this
node's readiness only when the key is this node's (or global) business, so a
hostile host cannot make its neighbours unready.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from libcalico import keys
from libcalico.bgp_values import AffinityValue, MeshValue, PeerValue, PoolValue, parse_key_value
from libcalico.ratelimit import RateLimitedLog
from libcalico.validation import validate_asn, validate_cidr, validate_ip, validate_loglevel, validate_name
from libcalico.values import DEFAULT_BLOCK_SIZE, InvalidValue

log = logging.getLogger("confd.state")

DEFAULT_AS = 64511
BGP_KINDS = frozenset({
    "bgp_host_ip", "bgp_host_as", "bgp_host_loglevel", "bgp_host_peer", "bgp_global_as",
    "bgp_node_mesh", "bgp_global_loglevel", "bgp_global_peer", "pool", "block_affinity",
    "bgp_host_rr_cluster_id",
})


def protocol_id(ip: str) -> str:
    """`10.99.0.2` -> `10_99_0_2`, `fd00::1` -> `fd00__1` (BIRD protocol names)."""
    return validate_ip(ip).replace(".", "_").replace(":", "_")


@dataclass(frozen=True)
class Finding:
    """A key left out of the rendered config, and why (the reason names the key that won)."""

    path: str
    reason: str
    mine: bool  # this node's or a global key: readiness reports it (another host's key: logged only)


def _owner_order(rev: int, host: str) -> tuple[int, str]:
    """Who keeps a contested address or block: the key created first in etcd.

    etcd's create revision survives restarts, resnapshots and rewrites of the
    value, and a squatter that registers after the rightful owner always loses.
    Without revisions (values loaded from plain text), or on a tie, the
    lexically smallest host name decides, which is still independent of
    arrival order.
    """
    return (rev if rev > 0 else 1 << 62, host)


def _won_by(rev: int) -> str:
    return f"created first (etcd revision {rev})" if rev > 0 else "smallest host name (no create revision known)"


@dataclass(frozen=True)
class Node:
    """This node's identity as confd sees it (environment, etcd wins where it has a value)."""

    name: str
    ip4: str | None = None
    ip6: str | None = None
    router_id: str | None = None  # CALICO_ROUTER_ID resolved (libcalico.router_id); None: the IPv4

    def __post_init__(self) -> None:
        validate_name(self.name, "hostname")
        if self.router_id is not None:
            validate_ip(self.router_id, 4)
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
    # etcd create revision per stored path (0 = unknown): the tie-breaker for contested resources.
    revisions: dict[str, int] = field(default_factory=dict)
    # Other hosts' confirmed block affinities: never rendered, only compared with ours.
    claims: dict[str, tuple[keys.Key, int]] = field(default_factory=dict)
    # The findings last reported, so each one is logged once while it lasts.
    reported: dict[tuple[str, str], Finding] = field(default_factory=dict, repr=False, compare=False)
    finding_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, burst=10), repr=False,
                                        compare=False)
    # One line per rejected key is right for a typo and wrong for a flood of 10,000 bad keys:
    # the first few per second name their key, the rest are counted in one summary line.
    reject_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, burst=10), repr=False,
                                       compare=False)

    def relevant(self, key: keys.Key) -> bool:
        if key.kind not in BGP_KINDS:
            return False
        if key.kind in ("block_affinity", "bgp_host_loglevel"):
            return key.host == self.node.name  # other hosts' blocks are theirs alone
        # Other hosts' own peers matter too: a route reflector serves, as its clients, the hosts
        # that list its address among their peers.
        return True

    def is_claim(self, key: keys.Key) -> bool:
        """Another host's block affinity: needed to detect two hosts announcing one block."""
        return key.kind == "block_affinity" and key.host != self.node.name

    def claim_matters(self, key: keys.Key) -> bool:
        """Whether another host's claim can change this node's config (we claim the same block)."""
        return self.is_claim(key) and keys.block_affinity(self.node.name, key.cidr) in self.values

    def put_claim(self, key: keys.Key, value: Any, create_revision: int = 0) -> bool:
        """Track (or, when not a confirmed valid affinity, forget) another host's claim; never rejected here:
        another host's bad key is its own business (its confd reports it)."""
        try:
            confirmed = _recheck(key, value) == "confirmed"
        except (ValueError, TypeError):
            confirmed = False
        if not confirmed:
            return self.claims.pop(key.path, None) is not None
        new = (key, create_revision)
        changed = self.claims.get(key.path) != new
        self.claims[key.path] = new
        return changed

    def put(self, key: keys.Key, value: Any, create_revision: int = 0) -> bool:
        """Store a valid value; returns True when the view changed."""
        if self.is_claim(key):
            return self.put_claim(key, value, create_revision)
        try:
            value = _recheck(key, value)
        except (ValueError, TypeError) as e:
            return self.reject(key.path, str(e), key)
        self.rejected.pop(key.path, None)
        old = self.values.get(key.path)
        old_rev = self.revisions.get(key.path, 0)
        self.values[key.path] = (key, value)
        self.revisions[key.path] = create_revision
        return old is None or old[1] != value or old_rev != create_revision

    def delete(self, path: str) -> bool:
        self.rejected.pop(path, None)
        self.revisions.pop(path, None)
        claim = self.claims.pop(path, None) is not None
        return self.values.pop(path, None) is not None or claim

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

    def load_raw(self, kv: dict[str, str], revisions: dict[str, int] | None = None) -> BgpStore:
        """Fill from raw etcd text (tests, benchmarks): the same validation the syncer applies."""
        for path, raw in kv.items():
            try:
                key, value = parse_key_value(path, raw)
            except InvalidValue as e:
                parsed = keys.parse(path)
                if parsed is not None and self.is_claim(parsed):
                    self.delete(path)
                elif parsed is None or self.relevant(parsed):
                    self.reject(path, e.reason if hasattr(e, "reason") else str(e))
                continue
            if key is not None and (self.relevant(key) or self.is_claim(key)):
                self.put(key, value, (revisions or {}).get(path, 0))
        return self

    def mine(self, path: str) -> bool:
        """A key this node answers for (its own or a global one), as opposed to another host's."""
        key = keys.parse(path)
        return key is None or "host" not in key.fields or key.host == self.node.name

    def concerns_me(self, path: str) -> bool:
        """Whether a rejected key counts against this node's readiness: not another host's own peer or
        reflector setting (read here only to serve that host as a reflector; its confd reports it)."""
        key = keys.parse(path)
        return key is None or key.kind not in ("bgp_host_peer", "bgp_host_rr_cluster_id") or self.mine(path)

    def groups(self) -> list[tuple[str, ...]]:
        """The keys that can be left out of a config independently, earliest created first.

        Global settings and this node's own identity (address, AS, log level)
        are not among them: without them there is no config to speak of.
        Another host's keys form one group (its mesh session needs all of them).
        """
        me = self.node.name
        by_host: dict[str, list[str]] = {}
        out: list[tuple[str, ...]] = []
        for path, (key, _) in self.values.items():
            if key.kind in ("bgp_global_as", "bgp_node_mesh", "bgp_global_loglevel"):
                continue
            if key.kind in ("bgp_host_ip", "bgp_host_as", "bgp_host_loglevel", "bgp_host_rr_cluster_id") or (
                    key.kind == "bgp_host_peer" and key.host != me):
                if key.host != me:
                    by_host.setdefault(key.host, []).append(path)
                continue
            out.append((path,))
        out += [tuple(sorted(ps)) for ps in by_host.values()]

        def order(g: tuple[str, ...]) -> tuple[int, str]:
            revs = [self.revisions.get(p, 0) for p in g]
            known = [r for r in revs if r > 0]
            return (min(known) if known else 1 << 62, g[0])
        return sorted(out, key=order)

    def note(self, findings: list[Finding]) -> None:
        """Log each finding once while it lasts (rate-limited); a finding that went away and comes
        back is logged again."""
        current = {(f.path, f.reason): f for f in findings}
        for k, f in sorted(current.items()):
            if k not in self.reported:
                self.finding_log.log("conflict", logging.ERROR if f.mine else logging.WARNING,
                                     "left out %s: %s", f.path, f.reason)
        for k in self.reported.keys() - current.keys():
            log.info("no longer left out for that reason: %s", k[0])
        self.reported = current

    # ---- the template context ------------------------------------------------

    def context(self, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        """Everything the templates may use, per address family, sorted so output is stable."""
        return self.resolve(exclude)[0]

    def resolve(self, exclude: frozenset[str] | set[str] = frozenset()) -> tuple[dict[str, Any], list[Finding]]:
        """The template context without the keys in `exclude`, and the keys the rules left out."""
        me = self.node
        findings: list[Finding] = []
        got = self._gather(exclude)
        mine = got.hosts.get(me.name, {})
        default_as = got.g["as"] or DEFAULT_AS
        local_as = mine.get("as") or default_as
        loglevel = mine.get("loglevel") or got.g["loglevel"]
        debug = None if loglevel == "none" else ("all" if loglevel == "debug" else "states")
        ip4 = mine.get("ip4") or me.ip4
        ip6 = mine.get("ip6") or me.ip6
        rr = mine.get("rr")
        ctx: dict[str, Any] = {
            "node": {"name": me.name, "ip4": ip4, "ip6": ip6, "as": local_as, "debug": debug,
                     "router_id": me.router_id or ip4, "rr_cluster_id": rr},
            "mesh": got.g["mesh"],
        }
        for v, own_ip in ((4, ip4), (6, ip6)):
            # BIRD needs a router id: an IPv6-only node has one only from CALICO_ROUTER_ID
            fam: dict[str, Any] = {"version": v, "ip": own_ip,
                                   "enabled": own_ip is not None and ctx["node"]["router_id"] is not None}
            holders = self._address_holders(got.hosts, v, findings)
            mesh = self._mesh_peers(got.hosts, holders, v, own_ip, default_as) if got.g["mesh"] and own_ip else []
            node_peers = _peers("Node", mine.get(f"peers{v}", {}), own_ip)
            glob = _peers("Global", got.global_peers[v], own_ip)
            reverse = self._reverse_peers(got, holders, v, own_ip, default_as) if rr and own_ip else []
            kept = _one_session_per_neighbour(node_peers, glob, reverse, mesh, findings)
            self._reflection(got, holders, v, own_ip, local_as, default_as, rr, kept)
            fam["mesh_peers"] = kept["mesh"]
            fam["global_peers"] = kept["global"]
            fam["node_peers"] = kept["node"]
            fam["rr_peers"] = kept["reverse"]
            fam["pools"] = [{"cidr": p.cidr, "ipip": p.ipip, "vxlan": p.vxlan, "overlay": p.ipip or p.vxlan,
                             "masquerade": p.masquerade, "disabled": p.disabled}
                            for p in sorted(got.pools[v], key=lambda p: _net_sort(p.cidr))]
            fam["blocks"] = self._valid_blocks(v, got.blocks[v], got.pools[v], findings)
            ctx[f"v{v}"] = fam
        return ctx, findings

    def _gather(self, exclude: frozenset[str] | set[str]) -> _Gathered:
        """The stored values sorted by what they configure, so the context is built from one pass."""
        got = _Gathered()
        g = got.g
        for path, (key, value) in self.values.items():
            if path in exclude:
                continue
            k = key.kind
            if k == "bgp_global_as":
                g["as"] = value
            elif k == "bgp_node_mesh":
                g["mesh"] = value
            elif k == "bgp_global_loglevel":
                g["loglevel"] = value
            elif k == "bgp_global_peer":
                got.global_peers[key.version][value[0]] = (value[1], path)
            elif k == "pool":
                got.pools[key.version].append(value)
            elif k == "block_affinity":
                if value == "confirmed":
                    got.blocks[key.version].append((key.cidr, path))
            else:
                h = got.hosts.setdefault(key.host, {"ip4": None, "ip6": None, "as": None, "loglevel": None,
                                                    "peers4": {}, "peers6": {}, "path4": None, "path6": None,
                                                    "rr": None, "rr_path": None})
                if k == "bgp_host_ip":
                    h[f"ip{key.version}"] = value
                    h[f"path{key.version}"] = path
                elif k == "bgp_host_as":
                    h["as"] = value
                elif k == "bgp_host_loglevel":
                    h["loglevel"] = value
                elif k == "bgp_host_peer":
                    h[f"peers{key.version}"][value[0]] = (value[1], path)
                elif k == "bgp_host_rr_cluster_id":
                    h["rr"] = value
                    h["rr_path"] = path
        return got

    def _peers_of(self, got: _Gathered, hname: str, v: int) -> set[str]:
        """The addresses a host peers with (global peers plus its own node peers), as its confd renders."""
        return set(got.global_peers[v]) | set(got.hosts.get(hname, {}).get(f"peers{v}", {}))

    def _reverse_peers(self, got: _Gathered, holders: dict[str, str], v: int, own_ip: str,
                       default_as: Any) -> list[dict[str, Any]]:
        """A route reflector's sessions to every host that lists this node's address as a peer.

        Those hosts configured the session on their side (a global or node peer); the reflector
        renders the other end itself, so an operator adds a reflector in one place. Passive: the
        host, which knows it wants this session, connects; one direction avoids BIRD's collision
        handling closing a freshly established session.
        """
        out = []
        for hip in sorted(holders, key=lambda i: int(ipaddress.ip_address(i))):
            hname = holders[hip]
            if hname == self.node.name or hip == own_ip:
                continue
            if own_ip not in self._peers_of(got, hname, v):
                continue
            h = got.hosts[hname]
            out.append({"name": f"RR_{protocol_id(hip)}", "ip": hip, "as": h["as"] or default_as,
                        "host": hname, "passive": True, "path": h[f"path{v}"]})
        return out

    def _reflection(self, got: _Gathered, holders: dict[str, str], v: int, own_ip: str | None, local_as: Any,
                    default_as: Any, rr: str | None, kept: dict[str, list[dict[str, Any]]]) -> None:
        """Mark the kept sessions for route reflection, and pick one connecting side between nodes.

        On a reflector every iBGP session carries its cluster id; a session to a host that is
        not itself a reflector is `rr client`.  Reflectors (of this cluster or another) are
        plain iBGP peers of each other: BIRD reflects client routes to them and theirs to
        our clients, and the cluster list stops a route coming back into its cluster.
        A configured peer that is another node which also lists this node is a two-sided
        session: as in the mesh, the node with the higher address listens.
        """
        for kind in ("node", "global", "reverse", "mesh"):
            for p in kept[kind]:
                hname = holders.get(p["ip"])
                h = got.hosts.get(hname) if hname else None
                ibgp = str(p["as"]) == str(local_as)
                p["rr_cluster_id"] = rr if rr and ibgp else None
                p["rr_client"] = bool(rr and ibgp and h is not None and not h.get("rr"))
                if kind in ("node", "global") and h is not None and own_ip and own_ip in self._peers_of(got, hname, v):
                    p["passive"] = ipaddress.ip_address(p["ip"]) > ipaddress.ip_address(own_ip)

    def _mesh_peers(self, hosts: dict[str, dict[str, Any]], holders: dict[str, str], v: int, own_ip: str,
                    default_as: Any) -> list[dict[str, Any]]:
        mesh = []
        for hip in sorted(holders, key=lambda i: int(ipaddress.ip_address(i))):
            hname = holders[hip]
            h = hosts[hname]
            if hname == self.node.name or hip == own_ip:
                continue  # never a session to this node's own address
            # One direction only: the node with the higher address connects, the
            # other listens. Both connecting at once makes BIRD resolve a
            # collision by closing the session it just established, and a
            # close during a peer's graceful restart flushes the routes the
            # restart was meant to keep (seen as multi-second drops on a
            # BIRD restart, and as slow mesh start-up).
            passive = ipaddress.ip_address(hip) > ipaddress.ip_address(own_ip)
            mesh.append({"name": f"Mesh_{protocol_id(hip)}", "ip": hip, "as": h["as"] or default_as,
                         "host": hname, "passive": passive, "path": h[f"path{v}"]})
        return mesh

    def _address_holders(self, hosts: dict[str, dict[str, Any]], v: int,
                         findings: list[Finding]) -> dict[str, str]:
        """Address -> the one host that keeps it; every other host registering it is a finding."""
        by_ip: dict[str, list[str]] = {}
        for hname, h in hosts.items():
            if h[f"ip{v}"]:
                by_ip.setdefault(h[f"ip{v}"], []).append(hname)
        out = {}
        for ip, names in by_ip.items():
            order = sorted(names, key=lambda n: _owner_order(self.revisions.get(hosts[n][f"path{v}"], 0), n))
            winner = order[0]
            out[ip] = winner
            wpath = hosts[winner][f"path{v}"]
            wrev = self.revisions.get(wpath, 0)
            for loser in order[1:]:
                findings.append(Finding(
                    hosts[loser][f"path{v}"],
                    f"address {ip} is also registered by {wpath}, which keeps it ({_won_by(wrev)})",
                    mine=loser == self.node.name))
        return out

    def _valid_blocks(self, v: int, blocks: list[tuple[str, str]], pools: list[PoolView],
                      findings: list[Finding]) -> list[str]:
        """This host's blocks that may be announced: inside a pool of the family, of that pool's block
        size (as IPAM allocates them), and not claimed first by another host."""
        nets = [(ipaddress.ip_network(p.cidr), p.cidr) for p in pools]
        sizes_by_cidr = {p.cidr: p.block_prefix for p in pools}  # each pool's own block size
        out = []
        for cidr, path in blocks:
            net = ipaddress.ip_network(cidr)
            inside = [(pn, pc) for pn, pc in nets if pn.version == net.version and net.subnet_of(pn)]
            if not inside:
                findings.append(Finding(path, f"block {cidr} is inside no IPv{v} pool", mine=True))
                continue
            sizes = {sizes_by_cidr.get(pc) or max(DEFAULT_BLOCK_SIZE[v], pn.prefixlen) for pn, pc in inside}
            if net.prefixlen not in sizes:
                want = " or ".join(f"/{n}" for n in sorted(sizes))
                findings.append(Finding(path, f"block {cidr} is not a block of pool {inside[0][1]} "
                                              f"(blocks are {want})", mine=True))
                continue
            rival = self._first_claim(v, cidr, path)
            if rival is not None:
                findings.append(Finding(path, rival, mine=True))
                continue
            out.append(cidr)
        return sorted(set(out), key=_net_sort)

    def _first_claim(self, v: int, cidr: str, path: str) -> str | None:
        """Why another host keeps this block, or None when this host does."""
        mine = _owner_order(self.revisions.get(path, 0), self.node.name)
        best = None
        for cpath, (key, rev) in self.claims.items():
            if key.version == v and key.cidr == cidr:
                o = _owner_order(rev, key.host)
                if o < mine and (best is None or o < best[0]):
                    best = (o, cpath, rev, key.host)
        if best is None:
            return None
        return f"block {cidr} is also claimed by {best[1]}, which keeps it ({_won_by(best[2])})"


@dataclass(frozen=True)
class PoolView:
    """The pool fields BIRD's config depends on (unknown JSON fields must not count as changes)."""

    cidr: str
    ipip: bool
    vxlan: bool
    masquerade: bool
    disabled: bool
    block_prefix: int = 0  # the pool's IPAM block size (0: the default)


def _net_sort(cidr: str) -> tuple:
    n = ipaddress.ip_network(cidr)
    return (n.version, int(n.network_address), n.prefixlen)


@dataclass
class _Gathered:
    g: dict[str, Any] = field(default_factory=lambda: {"as": None, "mesh": False, "loglevel": None})
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    global_peers: dict[int, dict[str, tuple[int, str]]] = field(default_factory=lambda: {4: {}, 6: {}})
    pools: dict[int, list[PoolView]] = field(default_factory=lambda: {4: [], 6: []})
    blocks: dict[int, list[tuple[str, str]]] = field(default_factory=lambda: {4: [], 6: []})


def _one_session_per_neighbour(node_peers: list[dict[str, Any]], glob: list[dict[str, Any]],
                               reverse: list[dict[str, Any]], mesh: list[dict[str, Any]],
                               findings: list[Finding]) -> dict[str, list[dict[str, Any]]]:
    """An explicit node peer beats a global one, either beats a reflector's session to a host that peers
    with it, and all beat the mesh (an AS written for that neighbour on purpose wins): two BIRD protocols
    to one neighbour both come up half-working, or not at all."""
    taken: dict[str, str] = {}
    names: set[str] = set()
    kept: dict[str, list[dict[str, Any]]] = {"node": [], "global": [], "reverse": [], "mesh": []}
    for kind, plist in (("node", node_peers), ("global", glob), ("reverse", reverse), ("mesh", mesh)):
        for p in plist:
            other = taken.get(p["ip"])
            if other is None and p["name"] in names:
                other = "a protocol of the same name"
            if other is not None:
                findings.append(Finding(p["path"], f"neighbour {p['ip']} is already peered by {other}",
                                        mine=False))
                continue
            taken[p["ip"]] = p["path"]
            names.add(p["name"])
            kept[kind].append(p)
    return kept


def _peers(prefix: str, peers: dict[str, tuple[int, str]], own_ip: str | None) -> list[dict[str, Any]]:
    out = []
    for ip in sorted(peers, key=lambda i: int(ipaddress.ip_address(i))):
        if ip == own_ip:
            continue  # a node never peers with its own address
        asn, path = peers[ip]
        out.append({"name": f"{prefix}_{protocol_id(ip)}", "ip": ip, "as": asn, "path": path, "passive": False})
    return out


def _recheck(key: keys.Key, value: Any) -> Any:
    """Belt and braces: re-validate what the templates will print, whatever produced `value`."""
    if "host" in key.fields:
        validate_name(key.host, "hostname")
    k = key.kind
    if k in ("bgp_global_as", "bgp_host_as"):
        return validate_asn(value)
    if k == "bgp_host_rr_cluster_id":
        return None if value in (None, "") else validate_ip(value, 4)
    if k in ("bgp_global_loglevel", "bgp_host_loglevel"):
        return validate_loglevel(value)
    if k == "bgp_host_ip":
        return None if value in (None, "") else validate_ip(value, key.version)
    if k == "bgp_node_mesh":
        if not isinstance(value, MeshValue):
            raise TypeError(f"expected a node_mesh object, got {value!r}")
        return bool(value.enabled)
    if k in ("bgp_global_peer", "bgp_host_peer"):
        if not isinstance(value, PeerValue):
            raise TypeError(f"expected a peer object, got {value!r}")
        validate_ip(value.ip, key.version)
        validate_asn(value.as_num)
        if value.ip != key.ip:
            raise ValueError(f"ip {value.ip} does not match the key's {key.ip}")
        return (value.ip, value.as_num)
    if k == "pool":
        if not isinstance(value, PoolValue):
            raise TypeError(f"expected a pool object, got {value!r}")
        if validate_cidr(value.cidr, key.version) != key.cidr:
            raise ValueError(f"cidr {value.cidr} does not match the key's {key.cidr}")
        return PoolView(key.cidr, value.ipip is not None, value.vxlan is not None, bool(value.masquerade),
                        bool(value.disabled), value.block_prefix)
    if k == "block_affinity":
        if not isinstance(value, AffinityValue):
            raise TypeError(f"expected a block affinity, got {value!r}")
        validate_cidr(key.cidr, key.version)
        return value.state
    raise ValueError(f"confd does not use key kind {k}")
