"""The contract between Felix's calculators and its dataplane writers.

Why a module of its own: the calculators (felix.calc) decide what the kernel
should hold and the writers (felix.dataplane, felix.driver, felix.addons)
make it so.  If either side defined these shapes, the other would have to
import it and the two could never change apart.  So both import this module
(and felix.names, the naming authority), and neither imports the other.

Everything here is plain data: a calculator builds it, a writer reads it.
- `DesiredState` / `FamilyState`: the filter table, ipsets, routes and
  neighbours of the main calculator, with the local endpoints they came from;
- `OverlayState` (`VxlanState`, `IpipState`) and the overlay device names;
- `NatState`: one family's nat table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

VXLAN_DEV = "vxlan.calico"
IPIP_DEV = "tunl0"


class MemberSet(frozenset):
    """An ipset's members that may also know how they differ from the calculator's previous set.

    At cluster scale a tag or selector set holds thousands of remote endpoints
    and changes by a few per batch; with the difference at hand the driver and
    the ipset writer work on the few, not the thousands.  `base` is the earlier
    set (or None: no difference known), `added`/`removed` what changed since it.
    To everyone else it is just a frozenset.
    """

    __slots__ = ("base", "added", "removed")

    def __new__(cls, members=(), base: frozenset | None = None, added=frozenset(), removed=frozenset()):
        self = super().__new__(cls, members)
        self.base = base
        self.added = frozenset(added)
        self.removed = frozenset(removed)
        return self

    @classmethod
    def derive(cls, base: frozenset, added, removed) -> MemberSet:
        """`base` + `added` - `removed` (added and removed disjoint), remembering the difference.

        Only one step is remembered: `base` forgets its own base, so a long-lived set
        does not hold every earlier version."""
        if isinstance(base, MemberSet):
            base.base = None
        if not removed:
            members = base.union(added)
        elif not added:
            members = base.difference(removed)
        else:
            members = base.difference(removed).union(added)
        return cls(members, base, added, removed)


@dataclass(frozen=True)
class Endpoint:
    """A workload endpoint as Felix programs it: immutable, so the calculator can compare
    versions by value and the status reporter can keep one without copying."""

    key: str
    host: str
    orchestrator: str
    workload: str
    endpoint_id: str
    active: bool
    iface: str
    mac: str | None
    profile_ids: tuple[str, ...]
    ipv4_nets: tuple[str, ...]
    ipv6_nets: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()

    def nets(self, version: int) -> tuple[str, ...]:
        return self.ipv4_nets if version == 4 else self.ipv6_nets


@dataclass
class FamilyState:
    """The filter table and ipsets of one IP family."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    hooks: dict[str, list[str]] = field(default_factory=dict)
    ipsets: dict[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class DesiredState:
    v4: FamilyState
    v6: FamilyState
    routes: dict[str, frozenset[str]]          # ifname -> CIDRs (both families)
    neighbours: dict[str, dict[str, str]]      # ifname -> {ip: mac}
    endpoints: dict[str, Endpoint]             # local endpoints by key
    conflicts: dict[str, tuple[Endpoint, str]] = field(default_factory=dict)  # local losers: key -> (ep, reason)

    def family(self, version: int) -> FamilyState:
        return self.v4 if version == 4 else self.v6


@dataclass(frozen=True)
class VxlanState:
    enabled: bool = False
    local_ip: str | None = None           # this host's bird_ip: the VXLAN `local` address
    tunnel_addr: str | None = None        # this host's VTEP address (/32 on vxlan.calico)
    neighbours: Mapping[str, str] = field(default_factory=dict)   # VTEP ip -> MAC
    fdb: Mapping[str, str] = field(default_factory=dict)          # MAC -> remote bird_ip
    routes: Mapping[str, str] = field(default_factory=dict)       # block cidr -> VTEP ip (onlink)

    @property
    def ready(self) -> bool:
        """The device can only be built once we know where to send from and our VTEP address."""
        return self.enabled and self.local_ip is not None and self.tunnel_addr is not None


@dataclass(frozen=True)
class IpipState:
    enabled: bool = False
    tunnel_addr: str | None = None
    routes: Mapping[str, str] = field(default_factory=dict)       # block cidr -> remote bird_ip (onlink)


@dataclass(frozen=True)
class OverlayState:
    vxlan: VxlanState = field(default_factory=VxlanState)
    ipip: IpipState = field(default_factory=IpipState)


@dataclass(frozen=True)
class NatState:
    """The nat table of one family: chains, hook rules for builtins, and the ipsets they use."""

    chains: Mapping[str, list[str]] = field(default_factory=dict)
    hooks: Mapping[str, list[str]] = field(default_factory=dict)
    ipsets: Mapping[str, frozenset[str]] = field(default_factory=dict)
