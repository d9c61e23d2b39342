"""Host endpoints: policy on the host's own interfaces, with failsafe ports that always stay open.

A host endpoint (`/calico/v1/host/<host>/endpoint/<id>`) names an interface
of the host, or lists addresses, in which case it applies to the interface
that owns one of them (the daemon tells us the interfaces' addresses through
`set_interface_addrs`; the calculation stays pure).  Every host endpoint of
the cluster feeds the label index (its expected addresses are members of
selector ipsets, its labels are matched by policy selectors); only this
host's get chains.

Why this layout: traffic that involves a workload interface is decided by
workload policy alone, so the host-endpoint lines are appended to
felix-INPUT / felix-FORWARD / felix-OUTPUT *after* the core's `cali+` lines,
which end every workload packet's walk (a verdict, or ACCEPT/DROP).  What is
left is traffic to the host itself, from it, and forwarded between
non-workload interfaces.  For a host-endpoint interface X:

    felix-INPUT:   -i X conntrack INVALID DROP, RELATED,ESTABLISHED ACCEPT,
                   failsafe inbound ports ACCEPT, -i X -j felix-hi-X
    felix-OUTPUT:  -o X the same with the failsafe outbound ports, -o X -j felix-ho-X
    felix-FORWARD: -i X / -o X conntrack as above, -i X -j felix-hi-X, -o X -j felix-ho-X

`felix-hi-X` (traffic arriving on X: the endpoint's inbound rules) and
`felix-ho-X` (leaving through X: outbound) clear MARK_ACCEPT, run the tier
layout of policy.py, then the endpoint's profiles, then DROP: a host
endpoint with no policy and no profile passes only the failsafe ports.  A
chain that returns has accepted (MARK_ACCEPT set); the walk then falls off
felix-INPUT etc. to the built-in chain's own rules and policy.  Interfaces
without a host endpoint are untouched.  IPv6 neighbour discovery and MLD
stay open on host endpoints (as on workloads), or v6 would break outright.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping
from dataclasses import dataclass

from felix import names
from libcalico.validation import validate_ifname, validate_ip, validate_name

from .labels import IndexedEndpoint
from .model import model_field
from .rules import MARK_ACCEPT, MULTIPORT_MAX

log = logging.getLogger(__name__)

DEFAULT_FAILSAFE_IN = (("tcp", 22), ("udp", 68), ("tcp", 179), ("tcp", 2379), ("tcp", 2380))
DEFAULT_FAILSAFE_OUT = (("udp", 53), ("udp", 67), ("tcp", 179), ("tcp", 2379), ("tcp", 2380))
_ICMPV6_ND = (130, 131, 132, 133, 134, 135, 136)


def host_chain(direction: str, ifname: str) -> str:
    """`felix-hi-<if>` (arriving through the interface) / `felix-ho-<if>` (leaving)."""
    assert direction in ("i", "o")
    return names.host_endpoint_chain(direction, ifname)


@dataclass(frozen=True)
class HostEndpoint:
    key: str
    host: str
    endpoint_id: str
    name: str | None
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    profile_ids: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]


def host_endpoint_from_value(key: object, value: object) -> HostEndpoint:
    """Re-validate everything that reaches the kernel; ValueError names the field."""
    name = model_field(value, "name")
    name = validate_ifname(name) if name not in (None, "") else None
    addrs = {}
    for v in (4, 6):
        raw = model_field(value, f"expected_ipv{v}_addrs") or []
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise ValueError(f"expected_ipv{v}_addrs must be a list")
        addrs[v] = tuple(dict.fromkeys(validate_ip(str(a), v) for a in raw))
    if name is None and not addrs[4] and not addrs[6]:
        raise ValueError("a host endpoint needs a name or expected addresses")
    pids = model_field(value, "profile_ids") or []
    if isinstance(pids, str) or not isinstance(pids, list | tuple):
        raise ValueError("profile_ids must be a list")
    labels = model_field(value, "labels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError("labels must be a mapping")
    return HostEndpoint(key=key.path, host=key.host, endpoint_id=key.endpoint, name=name,
                        ipv4=addrs[4], ipv6=addrs[6],
                        profile_ids=tuple(dict.fromkeys(validate_name(p, "profile id") for p in pids)),
                        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())))


def failsafe_lines(flag: str, ifname: str, ports: tuple[tuple[str, int], ...]) -> list[str]:
    """ACCEPT lines for (proto, port) pairs, grouped per protocol into multiport matches."""
    by_proto: dict[str, list[int]] = {}
    for proto, port in ports:
        if proto not in ("tcp", "udp", "sctp") or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"failsafe port {proto}:{port} is invalid")
        by_proto.setdefault(proto, [])
        if port not in by_proto[proto]:
            by_proto[proto].append(port)
    out = []
    for proto in sorted(by_proto):
        ps = by_proto[proto]
        for i in range(0, len(ps), MULTIPORT_MAX):
            chunk = ",".join(map(str, ps[i:i + MULTIPORT_MAX]))
            out.append(f"{flag} {ifname} -p {proto} -m multiport --dports {chunk} -j ACCEPT")
    return out


@dataclass(frozen=True)
class HostEndpointRules:
    """One family's host-endpoint rendering, handed back for the core calculator to merge.

    Profiles are the core's (their chains and tag ipsets are rendered there), so
    each interface says which profiles its chains jump to; the core puts them in
    place before that interface's chains.  `lines` go after the core's own lines
    of felix-INPUT / felix-OUTPUT / felix-FORWARD.
    """

    interfaces: tuple[tuple[tuple[str, ...], dict[str, list[str]]], ...]   # ((profile ids, chains), ...)
    lines: dict[str, list[str]]


class HostEndpoints:
    """Host endpoints of the cluster; renders this host's. Owned by PolicyCalculator."""

    def __init__(self, policy: object):
        self.policy = policy
        self.all: dict[str, HostEndpoint] = {}
        self.iface_addrs: dict[str, frozenset[str]] = {}
        self._warned: set[str] = set()

    @property
    def hostname(self) -> str:
        return self.policy.hostname

    def put(self, key: object, value: object) -> None:
        hep = host_endpoint_from_value(key, value)
        self.all[hep.key] = hep
        self.policy.index.set_endpoint(hep.key, IndexedEndpoint(hep.labels, hep.profile_ids, hep.ipv4, hep.ipv6))

    def remove(self, key: object) -> None:
        if self.all.pop(key.path, None) is not None:
            self.policy.index.remove_endpoint(key.path)
            self.policy.forget_endpoint_layout(key.path)

    def set_interface_addrs(self, addrs: Mapping[str, set[str] | frozenset[str]]) -> bool:
        """The host's interfaces and their addresses; True if that changed anything we use."""
        new = {k: frozenset(v) for k, v in addrs.items()}
        if new == self.iface_addrs:
            return False
        self.iface_addrs = new
        return any(h.name is None for h in self.local())

    def needs_addrs(self) -> bool:
        """True when some local host endpoint is identified by address only."""
        return any(h.name is None for h in self.local())

    def local(self) -> list[HostEndpoint]:
        return [h for h in self.all.values() if h.host == self.hostname]

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("host endpoint %s: %s", key, msg)

    def resolved(self, iface_prefix: str = "cali") -> dict[str, HostEndpoint]:
        """ifname -> host endpoint, for this host (first key wins an interface; workload
        interfaces are refused: host endpoint policy must never touch workload traffic)."""
        out: dict[str, HostEndpoint] = {}
        for hep in sorted(self.local(), key=lambda h: h.key):
            ifname = hep.name
            if ifname is None:
                want = set(hep.ipv4) | set(hep.ipv6)
                owners = sorted(i for i, a in self.iface_addrs.items() if a & want)
                if not owners:
                    self._warn_once(hep.key, "no interface owns any expected address yet; no policy applied")
                    continue
                ifname = owners[0]
            if iface_prefix and ifname.startswith(iface_prefix):
                self._warn_once(hep.key, f"interface {ifname} is a workload interface "
                                f"(InterfacePrefix {iface_prefix!r}); ignored")
                continue
            if ifname in out:
                self._warn_once(hep.key, f"interface {ifname} already belongs to {out[ifname].key}; ignored")
                continue
            self._warned.discard(hep.key)
            out[ifname] = hep
        return out

    def used_policies(self, iface_prefix: str = "cali") -> set[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for hep in self.resolved(iface_prefix).values():
            out.update(self.policy.matching_policies(hep.key))
        return out

    def render(self, version: int, iface_prefix: str, failsafe_in: tuple, failsafe_out: tuple,
               profiles: Container[str]) -> HostEndpointRules | None:
        """Chains for this host's host endpoints and their lines in felix-INPUT/OUTPUT/FORWARD;
        None when there is none.  `profiles`: the profile ids that have rules (others are skipped)."""
        heps = self.resolved(iface_prefix)
        if not heps:
            return None
        interfaces = []
        inp, out, fwd = [], [], []
        for ifname in sorted(heps):
            hep = heps[ifname]
            pol_in, pol_out = self.policy.endpoint_lines(hep.key, version)
            profs = tuple(p for p in hep.profile_ids if p in profiles)
            chains = {}
            for direction, pol in (("i", pol_in), ("o", pol_out)):
                lines = [f"-j MARK --set-xmark 0x0/{MARK_ACCEPT}", *pol]
                for p in profs:
                    lines += [f"-j {names.profile_chain(p, direction)}",
                              f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN"]
                lines.append("-j DROP")
                chains[host_chain(direction, ifname)] = lines
            interfaces.append((profs, chains))
            for flag, lst, failsafe in (("-i", inp, failsafe_in), ("-o", out, failsafe_out)):
                lst += [f"{flag} {ifname} -m conntrack --ctstate INVALID -j DROP",
                        f"{flag} {ifname} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
                if version == 6:
                    lst += [f"{flag} {ifname} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
                            for t in _ICMPV6_ND]
                lst += failsafe_lines(flag, ifname, failsafe)
                lst.append(f"{flag} {ifname} -j {host_chain(flag[1], ifname)}")
            fwd += [f"-i {ifname} -m conntrack --ctstate INVALID -j DROP",
                    f"-o {ifname} -m conntrack --ctstate INVALID -j DROP",
                    f"-i {ifname} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    f"-o {ifname} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
            if version == 6:
                fwd += [f"-i {ifname} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in _ICMPV6_ND]
            fwd += [f"-i {ifname} -j {host_chain('i', ifname)}",
                    f"-o {ifname} -j {host_chain('o', ifname)}"]
        return HostEndpointRules(tuple(interfaces), {names.INPUT: inp, names.OUTPUT: out, names.FORWARD: fwd})
