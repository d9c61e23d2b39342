"""Pure calculation of Felix's `nat` table: NAT outgoing, 1:1 `ipv4_nat`, metadata DNAT.

Why these shapes:
- NAT outgoing matches pools through two ipsets (`felix-v<N>-i:masq-ipam-pools`,
  `felix-v<N>-i:all-ipam-pools`, named in felix.names' internal namespace
  so no tag can spell them) rather than one rule per pool, so adding a pool
  changes set members, not chains, and the rule stays O(1) per packet.
  Traffic whose destination is in any pool is never NATed (pod-to-pod keeps
  its source); everything else from a masquerade pool is MASQUERADEd (or
  SNATed to `NatOutgoingAddress` when set).
- 1:1 NAT (`ipv4_nat` of this host's endpoints): DNAT ext->int in PREROUTING
  and OUTPUT, and SNAT int->ext for traffic leaving the pools plus the
  hairpin case (an endpoint reaching its own external address).  These come
  before NAT outgoing so a floating IP wins over masquerade.  Because the
  DNAT also catches the host's own traffic, an entry is only honoured when
  `int_ip` is the endpoint's own address and `ext_ip` is nobody else's: not a
  node's, not in a pool, not this host's or a server it depends on (etcd,
  DNS), and not claimed by an endpoint created earlier.
- Metadata: TCP to 169.254.169.254:80 arriving from a workload interface is
  DNATed to MetadataAddr:MetadataPort.

Values arrive as the syncer parsed them: libcalico models (`Pool`,
`WorkloadEndpoint` with its `IpNat` entries), never raw JSON, so how the JSON
is spelled is the model's business alone.  Everything is still re-validated as
an IP/CIDR before it can become rule text; a bad value (or anything that is
not a model) is recorded in `take_errors()` and treated as absent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from felix import names
from felix.desired import Endpoint, NatState

from .model import model_field, workload_net
from .nodes import NodeAddresses

METADATA_IP = "169.254.169.254"
MASQ_SET_ID = names.MASQ_POOLS
ALL_SET_ID = names.ALL_POOLS

CH_PREROUTING = names.NAT_PREROUTING
CH_OUTPUT = names.NAT_OUTPUT
CH_POSTROUTING = names.NAT_POSTROUTING
CH_FIP_DNAT = names.NAT_FIP_DNAT
CH_FIP_SNAT = names.NAT_FIP_SNAT
CH_NAT_OUTGOING = names.NAT_OUTGOING
ALL_CHAINS = (CH_PREROUTING, CH_OUTPUT, CH_POSTROUTING, CH_FIP_DNAT, CH_FIP_SNAT, CH_NAT_OUTGOING)
_IFPREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,14}\Z")


def set_name(version: int, ident: str) -> str:
    return names.internal_ipset(ident, version)


@dataclass(frozen=True)
class NatConfig:
    hostname: str
    iface_prefix: str = "cali"
    metadata_addr: str | None = None      # IPv4 (resolve hostnames first); None = no metadata DNAT
    metadata_port: int = 8775
    nat_outgoing_address: str | None = None
    # Addresses this host depends on that no endpoint may take over (etcd servers, DNS servers).
    protected: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Claim:
    """One endpoint's `ipv4_nat`, already checked against the endpoint's own value."""

    order: tuple[int, str]                 # (create revision, key): who claimed first
    host: str
    pairs: tuple[tuple[str, str], ...]     # ((int_ip, ext_ip), ...)


def _claim_pairs(value: object) -> tuple[tuple[str, str], ...]:
    """The endpoint's (int_ip, ext_ip) pairs, or ValueError naming why the whole list is refused.

    `int_ip` must be one of the endpoint's own addresses (else an endpoint could
    pull any address to any other), and `ext_ip` must be a unicast address
    that is not special to the host (loopback, link-local holds the metadata
    service and the workload gateway).
    """
    raw = model_field(value, "ipv4_nat", None) or []
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ValueError("ipv4_nat must be a list")
    own: set[str] = set()
    for v in (4, 6):
        nets = model_field(value, f"ipv{v}_nets", None) or []
        if isinstance(nets, str) or not isinstance(nets, list | tuple):
            raise ValueError(f"ipv{v}_nets must be a list")
        for n in nets:
            own.add(str(ipaddress.ip_network(workload_net(str(n), v)).network_address))
    pairs: dict[str, str] = {}
    for i, n in enumerate(raw):
        try:
            int_ip = str(ipaddress.IPv4Address(str(model_field(n, "int_ip"))))
            ext = ipaddress.IPv4Address(str(model_field(n, "ext_ip")))
        except ValueError as e:
            raise ValueError(f"ipv4_nat[{i}]: {e}") from None
        ext_ip = str(ext)
        if int_ip not in own:
            raise ValueError(f"ipv4_nat[{i}]: int_ip {int_ip} is not one of this endpoint's addresses")
        if ext.is_loopback or ext.is_multicast or ext.is_unspecified or ext.is_link_local \
                or ext.is_reserved or ext == ipaddress.IPv4Address("255.255.255.255"):
            raise ValueError(f"ipv4_nat[{i}]: ext_ip {ext_ip} cannot be an endpoint's external address")
        if ext_ip in own:
            raise ValueError(f"ipv4_nat[{i}]: ext_ip {ext_ip} is the endpoint's own address")
        if pairs.get(ext_ip, int_ip) != int_ip:
            raise ValueError(f"ipv4_nat[{i}]: ext_ip {ext_ip} is mapped twice")
        pairs[ext_ip] = int_ip
    return tuple(sorted((i, e) for e, i in pairs.items()))


class NatCalculator:
    """Feed syncer updates with `on_update(kind, key, value, create_revision) -> changed`; read `desired(version)`.

    1:1 NAT entries of every host's endpoints are tracked, not only this
    host's: an `ext_ip` belongs to the endpoint whose key etcd created first
    (then the lower key), and every Felix must reach the same verdict whatever
    order updates arrive in and across restarts.  Entries that lose, or whose
    `ext_ip` is a node's address (`nodes`, fed from the same updates), lies in
    a pool, or is one of this host's own or protected addresses, are refused for
    that endpoint as a whole and reported once in `take_errors()`.
    """

    KINDS = frozenset({"pool", "workload_endpoint"}) | NodeAddresses.KINDS

    def __init__(self, cfg: NatConfig):
        self._check_cfg(cfg)
        self.cfg = cfg
        self.nodes = NodeAddresses()
        self._pools: dict[str, tuple[int, str, bool]] = {}            # key -> (version, cidr, masquerade)
        self._claims: dict[str, _Claim] = {}                           # endpoint key (any host) -> claim
        self._host_addrs: frozenset[str] = frozenset()
        self._losers: dict[str, str] = {}                              # endpoint key -> lost claim
        self._errors: list[tuple[str, str]] = []
        self._refused: dict[str, str] = {}                             # local key -> reason, while it lasts
        self._pairs: list[tuple[str, str]] | None = None               # cache of nat_pairs()

    @staticmethod
    def _check_cfg(cfg: NatConfig) -> None:
        if not _IFPREFIX_RE.match(cfg.iface_prefix):
            raise ValueError(f"interface prefix {cfg.iface_prefix!r} is not valid")
        if cfg.metadata_addr is not None:
            ipaddress.IPv4Address(cfg.metadata_addr)
        if not 0 < int(cfg.metadata_port) < 65536:
            raise ValueError(f"metadata port {cfg.metadata_port} out of range")
        if cfg.nat_outgoing_address is not None:
            ipaddress.ip_address(cfg.nat_outgoing_address)
        for ip in cfg.protected:
            ipaddress.ip_address(ip)

    def set_config(self, cfg: NatConfig) -> bool:
        if cfg == self.cfg:
            return False
        self._check_cfg(cfg)
        self.cfg = cfg
        self._pairs = None
        return True

    def set_host_addrs(self, addrs: object) -> bool:
        """This host's own interface addresses: an endpoint must never DNAT the host to itself."""
        new = frozenset(str(ipaddress.ip_address(a)) for a in addrs)
        if new == self._host_addrs:
            return False
        self._host_addrs = new
        self._pairs = None
        return bool(self._claims)

    def set_losers(self, losers: Mapping[str, str]) -> bool:
        """Endpoints that lost their IP or interface to an earlier claimant (key -> why).

        Such an endpoint owns none of its addresses, so its `int_ip` is not its own:
        without this a thief claiming a victim's IP could DNAT an address to the victim.
        """
        new = dict(losers)
        if new == self._losers:
            return False
        changed = any(k in self._claims for k in set(new) ^ set(self._losers))
        self._losers = new
        if changed:
            self._pairs = None
        return changed

    def take_errors(self) -> list[tuple[str, str]]:
        out, self._errors = self._errors + self.nodes.take_errors(), []
        return out

    def on_update(self, kind: str, key: object, value: object = None, create_revision: int = 0) -> bool:
        k = getattr(key, "kind", None)
        if k not in self.KINDS:
            return False
        path = key.path if hasattr(key, "path") else str(key)   # no repr of every key
        if kind != "put":
            value = None
        if k in NodeAddresses.KINDS:
            changed = self.nodes.on_update(kind, key, value)
            if changed:
                self._pairs = None
            return changed and bool(self._claims)
        try:
            changed = self._apply(k, key, path, value, create_revision)
        except (ValueError, TypeError) as e:
            self._errors.append((path, str(e)))
            changed = self._apply(k, key, path, None, create_revision)
        if changed:
            self._pairs = None
        return changed

    def _apply(self, k: str, key: object, path: str, value: object, create_revision: int) -> bool:
        if k == "pool":
            old = self._pools.get(path)
            new = None
            if value is not None:
                net = ipaddress.ip_network(str(model_field(value, "cidr")), strict=False)
                if net.version != key.version:
                    raise ValueError(f"pool cidr {net} is not IPv{key.version}")
                new = (net.version, str(net), bool(model_field(value, "masquerade", False)))
            if new is None:
                self._pools.pop(path, None)
            else:
                self._pools[path] = new
            return old != new
        # workload endpoint of any host: its claims decide who owns an ext_ip
        old_c = self._claims.get(path)
        new_c = None
        # an Endpoint value is one the parser took directly: it carries no ipv4_nat
        if value is not None and not isinstance(value, Endpoint) and model_field(value, "ipv4_nat", None):
            pairs = _claim_pairs(value)
            if pairs:
                new_c = _Claim((int(create_revision or 0), path), key.host, pairs)
        if new_c is None:
            self._claims.pop(path, None)
        else:
            self._claims[path] = new_c
        return old_c != new_c

    def _cluster_reason(self, int_ip: str, ext_ip: str, taken: Mapping[str, str]) -> str | None:
        """Why an entry is refused on every host alike (same datastore, same verdict)."""
        if ext_ip in taken:
            return f"ipv4_nat ext_ip {ext_ip} is already claimed by {taken[ext_ip]}"
        owner = self.nodes.owner(ext_ip)
        if owner is not None:
            return f"ipv4_nat ext_ip {ext_ip} is the address of node {owner}"
        addr = ipaddress.IPv4Address(ext_ip)
        for v, cidr, _ in self._pools.values():
            if v == 4 and addr in ipaddress.ip_network(cidr):
                return f"ipv4_nat ext_ip {ext_ip} lies in IP pool {cidr}"
        return None

    def _local_reason(self, ext_ip: str) -> str | None:
        if ext_ip in self._host_addrs:
            return f"ipv4_nat ext_ip {ext_ip} is an address of this host"
        if ext_ip in self.cfg.protected or ext_ip in (self.cfg.metadata_addr, self.cfg.nat_outgoing_address):
            return f"ipv4_nat ext_ip {ext_ip} is a server this host depends on"
        return None

    # ---- output ----
    def pool_sets(self, version: int) -> dict[str, frozenset[str]]:
        all_nets = {c for v, c, _ in self._pools.values() if v == version}
        masq = {c for v, c, m in self._pools.values() if v == version and m}
        return {set_name(version, MASQ_SET_ID): frozenset(masq), set_name(version, ALL_SET_ID): frozenset(all_nets)}

    def nat_pairs(self) -> list[tuple[str, str]]:
        """(int_ip, ext_ip) of this host's endpoints whose entries all stand (see the class doc)."""
        if self._pairs is not None:
            return self._pairs
        taken: dict[str, str] = {}
        out: list[tuple[str, str]] = []
        refused: dict[str, str] = {}
        for claim in sorted(self._claims.values(), key=lambda c: c.order):
            path = claim.order[1]
            reason = self._losers.get(path)
            if reason is None:
                reason = next((r for i, e in claim.pairs if (r := self._cluster_reason(i, e, taken))), None)
            if reason is None:
                for _, ext_ip in claim.pairs:
                    taken[ext_ip] = path
                if claim.host == self.cfg.hostname:
                    reason = next((r for _, e in claim.pairs if (r := self._local_reason(e))), None)
            if claim.host != self.cfg.hostname:
                continue
            if reason is not None:
                refused[path] = reason
                if self._refused.get(path) != reason:  # once while it lasts, not on every recompute
                    self._errors.append((path, f"{reason}: this endpoint's 1:1 NAT is refused"))
                continue
            out.extend(claim.pairs)
        self._refused = refused
        self._pairs = sorted(set(out))
        return self._pairs

    def desired(self, version: int = 4) -> NatState:
        """Chains/hooks/ipsets of the nat table for IPv`version`.

        Either the full, stable set of six chains, or nothing at all when there
        is no pool, no 1:1 NAT and no metadata DNAT for this family.
        """
        sets = self.pool_sets(version)
        pairs = self.nat_pairs() if version == 4 else []
        if not any(sets.values()) and not pairs and not (version == 4 and self.cfg.metadata_addr):
            # Nothing to NAT: no chains, hooks or sets at all (a plain Felix leaves the nat table alone).
            return NatState()
        masq_set, all_set = set_name(version, MASQ_SET_ID), set_name(version, ALL_SET_ID)
        dnat: list[str] = []
        snat: list[str] = []
        pre: list[str] = []
        if version == 4:
            for int_ip, ext_ip in pairs:
                dnat.append(f"-d {ext_ip}/32 -j DNAT --to-destination {int_ip}")
                snat.append(f"-s {int_ip}/32 -d {int_ip}/32 -j SNAT --to-source {ext_ip}")
                snat.append(f"-s {int_ip}/32 -m set ! --match-set {all_set} dst -j SNAT --to-source {ext_ip}")
            if self.cfg.metadata_addr:
                pre.append(f"-d {METADATA_IP}/32 -i {self.cfg.iface_prefix}+ -p tcp -m tcp --dport 80 "
                           f"-j DNAT --to-destination {self.cfg.metadata_addr}:{int(self.cfg.metadata_port)}")
        pre.append(f"-j {CH_FIP_DNAT}")
        out_addr = self.cfg.nat_outgoing_address
        if out_addr and ipaddress.ip_address(out_addr).version == version:
            action = f"-j SNAT --to-source {out_addr}"
        else:
            action = "-j MASQUERADE"
        nat_out = [f"-m set --match-set {masq_set} src -m set ! --match-set {all_set} dst {action}"]
        chains = {
            CH_PREROUTING: pre,
            CH_OUTPUT: [f"-j {CH_FIP_DNAT}"],
            CH_POSTROUTING: [f"-j {CH_FIP_SNAT}", f"-j {CH_NAT_OUTGOING}"],
            CH_FIP_DNAT: dnat,
            CH_FIP_SNAT: snat,
            CH_NAT_OUTGOING: nat_out,
        }
        hooks = {
            "PREROUTING": [f"-j {CH_PREROUTING}"],
            "OUTPUT": [f"-j {CH_OUTPUT}"],
            "POSTROUTING": [f"-j {CH_POSTROUTING}"],
        }
        return NatState(chains, hooks, sets)
