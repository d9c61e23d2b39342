"""Pure calculation of Felix's `nat` table: NAT outgoing, 1:1 `ipv4_nat`, metadata DNAT.

Why these shapes:
- NAT outgoing matches pools through two ipsets (`felix-v<N>-masq-ipam-pools`,
  `felix-v<N>-all-ipam-pools`) rather than one rule per pool, so adding a pool
  changes set members, not chains, and the rule stays O(1) per packet.
  Traffic whose destination is in any pool is never NATed (pod-to-pod keeps
  its source); everything else from a masquerade pool is MASQUERADEd (or
  SNATed to `NatOutgoingAddress` when set).
- 1:1 NAT (`ipv4_nat` of this host's endpoints): DNAT ext->int in PREROUTING
  and OUTPUT, and SNAT int->ext for traffic leaving the pools plus the
  hairpin case (an endpoint reaching its own external address).  These come
  before NAT outgoing so a floating IP wins over masquerade.
- Metadata: TCP to 169.254.169.254:80 arriving from a workload interface is
  DNATed to MetadataAddr:MetadataPort.

Everything from etcd is re-validated as an IP/CIDR before it can become rule
text; a bad value is recorded in `take_errors()` and treated as absent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

METADATA_IP = "169.254.169.254"
MASQ_SET_ID = "masq-ipam-pools"
ALL_SET_ID = "all-ipam-pools"

CH_PREROUTING = "felix-PREROUTING"
CH_OUTPUT = "felix-OUTPUT"
CH_POSTROUTING = "felix-POSTROUTING"
CH_FIP_DNAT = "felix-FIP-DNAT"
CH_FIP_SNAT = "felix-FIP-SNAT"
CH_NAT_OUTGOING = "felix-nat-outgoing"
ALL_CHAINS = (CH_PREROUTING, CH_OUTPUT, CH_POSTROUTING, CH_FIP_DNAT, CH_FIP_SNAT, CH_NAT_OUTGOING)
_IFPREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,14}\Z")


def set_name(version: int, ident: str) -> str:
    """Same spelling as felix.dataplane.ipsets.ipset_name for these short ids (kept pure: no import)."""
    return f"felix-v{version}-{ident}"


@dataclass(frozen=True)
class NatConfig:
    hostname: str
    iface_prefix: str = "cali"
    metadata_addr: str | None = None      # IPv4 (resolve hostnames first); None = no metadata DNAT
    metadata_port: int = 8775
    nat_outgoing_address: str | None = None


@dataclass(frozen=True)
class NatState:
    """The nat table of one family: chains, hook rules for builtins, and the ipsets they use."""

    chains: Mapping[str, list[str]] = field(default_factory=dict)
    hooks: Mapping[str, list[str]] = field(default_factory=dict)
    ipsets: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _field(value: object, name: str, default: object = None) -> object:
    if isinstance(value, Mapping):
        return value.get(name, default)
    return getattr(value, name, default)


class NatCalculator:
    """Feed syncer updates with `on_update(kind, key, value) -> changed`; read `desired(version)`."""

    KINDS = frozenset({"pool", "workload_endpoint"})

    def __init__(self, cfg: NatConfig):
        self._check_cfg(cfg)
        self.cfg = cfg
        self._pools: dict[str, tuple[int, str, bool]] = {}            # key -> (version, cidr, masquerade)
        self._nats: dict[str, tuple[tuple[str, str], ...]] = {}        # local endpoint key -> ((int, ext), ...)
        self._errors: list[tuple[str, str]] = []
        self._conflicts: set[tuple[str, str]] = set()

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

    def set_config(self, cfg: NatConfig) -> bool:
        if cfg == self.cfg:
            return False
        self._check_cfg(cfg)
        self.cfg = cfg
        return True

    def take_errors(self) -> list[tuple[str, str]]:
        out, self._errors = self._errors, []
        return out

    def on_update(self, kind: str, key: object, value: object = None) -> bool:
        k = getattr(key, "kind", None)
        if k not in self.KINDS:
            return False
        path = getattr(key, "path", str(key))
        if kind != "put":
            value = None
        try:
            return self._apply(k, key, path, value)
        except (ValueError, TypeError) as e:
            self._errors.append((path, str(e)))
            return self._apply(k, key, path, None)

    def _apply(self, k: str, key: object, path: str, value: object) -> bool:
        if k == "pool":
            old = self._pools.get(path)
            new = None
            if value is not None:
                net = ipaddress.ip_network(str(_field(value, "cidr")), strict=False)
                if net.version != key.version:
                    raise ValueError(f"pool cidr {net} is not IPv{key.version}")
                new = (net.version, str(net), bool(_field(value, "masquerade", False)))
            if new is None:
                self._pools.pop(path, None)
            else:
                self._pools[path] = new
            return old != new
        # workload endpoint: only this host's 1:1 NAT entries matter here
        if key.host != self.cfg.hostname:
            return False
        old_n = self._nats.get(path, ())
        new_n: tuple[tuple[str, str], ...] = ()
        if value is not None:
            pairs = []
            for i, n in enumerate(_field(value, "ipv4_nat", None) or []):
                try:
                    pairs.append((str(ipaddress.IPv4Address(str(_field(n, "int_ip")))),
                                  str(ipaddress.IPv4Address(str(_field(n, "ext_ip"))))))
                except ValueError as e:
                    raise ValueError(f"ipv4_nat[{i}]: {e}") from None
            new_n = tuple(sorted(set(pairs)))
        if new_n:
            self._nats[path] = new_n
        else:
            self._nats.pop(path, None)
        return old_n != new_n

    # ---- output ----
    def pool_sets(self, version: int) -> dict[str, frozenset[str]]:
        all_nets = {c for v, c, _ in self._pools.values() if v == version}
        masq = {c for v, c, m in self._pools.values() if v == version and m}
        return {set_name(version, MASQ_SET_ID): frozenset(masq), set_name(version, ALL_SET_ID): frozenset(all_nets)}

    def nat_pairs(self) -> list[tuple[str, str]]:
        """All (int_ip, ext_ip) of local endpoints; an ext_ip claimed twice keeps the first key's pair."""
        seen: dict[str, str] = {}
        out = []
        conflicts = set()
        for path in sorted(self._nats):
            for int_ip, ext_ip in self._nats[path]:
                if ext_ip in seen and seen[ext_ip] != int_ip:
                    item = (path, f"ipv4_nat ext_ip {ext_ip} already maps to {seen[ext_ip]}; ignored")
                    if item not in self._conflicts:  # once while it lasts, not on every recompute
                        self._errors.append(item)
                    conflicts.add(item)
                    continue
                seen[ext_ip] = int_ip
                out.append((int_ip, ext_ip))
        self._conflicts = conflicts
        return sorted(set(out))

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
