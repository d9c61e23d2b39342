"""Choose the host's IP when `IP`/`IP6` is empty or `autodetect`.

Split into a pure chooser (unit-testable with plain data) and a reader that
asks `ip -j addr` in the namespace the node runs in, so a test namespace and a
real host go through exactly the same selection.

The methods are Calico 3.x's `IP_AUTODETECTION_METHOD` forms: `first-found`,
`can-reach=<dest>`, `interface=<regex,...>`, `skip-interface=<regex,...>`,
`cidr=<cidr,...>`.  Their regexes match anywhere in the name (Go's
MatchString, as Calico does); the classic `IP_AUTODETECT_INTERFACE` keeps its
whole-name match.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

# Interfaces whose addresses are never the host's own: bridges and tunnels of
# container runtimes, workload veths and Calico's own devices (Calico's list).
EXCLUDED_IFACES = re.compile(r"^(docker|cbr|dummy|virbr|lxcbr|veth|cali|tunl|flannel|kube-ipvs|cni|"
                             r"vxlan\.calico|vxlan-v6\.calico|wireguard\.cali|wg-v6\.cali|lo\Z)")


@dataclass(frozen=True)
class Address:
    ifname: str
    family: int  # 4 or 6
    address: str
    prefixlen: int
    scope: str  # "global", "link", "host"


def choose(addrs: list[Address], family: int, pattern: re.Pattern[str] | None = None) -> Address | None:
    """The first global address of `family` on an eligible interface (or one whose whole name
    matches `pattern`), in kernel order: first-found, or the classic IP_AUTODETECT_INTERFACE."""
    return choose_by(classic_interface(pattern) if pattern is not None else FIRST_FOUND, addrs, family)


def parse_ip_json(text: str) -> list[Address]:
    """`ip -j addr show` output -> addresses in the order the kernel lists them."""
    out: list[Address] = []
    for link in json.loads(text or "[]"):
        for info in link.get("addr_info", []):
            fam = {"inet": 4, "inet6": 6}.get(info.get("family"))
            if fam is None or "local" not in info:
                continue
            out.append(Address(link.get("ifname", ""), fam, info["local"], int(info.get("prefixlen", 0)),
                               info.get("scope", "global")))
    return out


def read_addresses() -> list[Address]:
    """Addresses of the current network namespace."""
    r = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"ip -j addr show failed: {r.stderr.strip()}")
    return parse_ip_json(r.stdout)


METHODS = ("first-found", "can-reach", "interface", "skip-interface", "cidr")


@dataclass(frozen=True)
class Method:
    """One parsed autodetection method; `text` is what the operator wrote (for log lines)."""

    kind: str  # one of METHODS
    text: str = "first-found"
    patterns: tuple[re.Pattern[str], ...] = ()
    fullmatch: bool = False  # the classic IP_AUTODETECT_INTERFACE form
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dest: str = ""


FIRST_FOUND = Method("first-found")


def parse_method(raw: str, family: int) -> Method:
    """`IP_AUTODETECTION_METHOD` text -> Method; ValueError says what is wrong with it."""
    text = raw.strip()
    if len(text) > 1024:
        raise ValueError(f"{len(text)} characters long (at most 1024)")
    if not text or text == "first-found":
        return FIRST_FOUND
    kind, sep, arg = text.partition("=")
    kind = kind.strip()
    arg = arg.strip()
    if kind not in METHODS or kind == "first-found":
        raise ValueError(f"unknown method {text!r}: expected first-found, can-reach=<dest>, interface=<regex>, "
                         "skip-interface=<regex> or cidr=<cidr,...>")
    if not sep or not arg:
        raise ValueError(f"{kind} needs a value ({kind}=...)")
    if kind == "can-reach":
        return Method(kind, text, dest=_reach_dest(arg, family))
    if kind == "cidr":
        nets = []
        for part in arg.split(","):
            try:
                net = ipaddress.ip_network(part.strip(), strict=False)
            except ValueError:
                raise ValueError(f"cidr: {part.strip()!r} is not a CIDR") from None
            if net.version != family:
                raise ValueError(f"cidr: {part.strip()} is not an IPv{family} CIDR")
            nets.append(net)
        return Method(kind, text, cidrs=tuple(nets))
    pats = []
    for part in arg.split(","):
        try:
            pats.append(re.compile(part.strip()))
        except re.error as e:
            raise ValueError(f"{kind}: bad regular expression {part.strip()!r}: {e}") from None
    return Method(kind, text, patterns=tuple(pats))


def _reach_dest(arg: str, family: int) -> str:
    try:
        addr = ipaddress.ip_address(arg)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", arg):
            raise ValueError(f"can-reach: {arg!r} is neither an IP address nor a host name") from None
        return arg
    if addr.version != family:
        raise ValueError(f"can-reach: {arg} is not an IPv{family} address")
    return str(addr)


def classic_interface(pattern: re.Pattern[str]) -> Method:
    """IP_AUTODETECT_INTERFACE: one regex that must match the whole interface name."""
    return Method("interface", f"interface={pattern.pattern}", patterns=(pattern,), fullmatch=True)


def _matches(m: Method, name: str) -> bool:
    return any((p.fullmatch(name) if m.fullmatch else p.search(name)) for p in m.patterns)


def route_source(dest: str, family: int) -> str:
    """The source address the kernel picks to reach `dest` (a connected UDP socket sends nothing)."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    infos = socket.getaddrinfo(dest, 53, fam, socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{dest} has no IPv{family} address")
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect(infos[0][4])
        return s.getsockname()[0]


def choose_by(method: Method, addrs: list[Address], family: int,
              source: Callable[[str, int], str] = route_source) -> Address | None:
    """The address `method` picks among `addrs` (kernel order); None when nothing qualifies."""
    if method.kind == "can-reach":
        src = source(method.dest, family)
        for a in addrs:
            if a.family == family and a.address == src:
                return a
        return None
    for a in addrs:
        if a.family != family or a.scope != "global":
            continue
        if method.kind == "interface":
            if not _matches(method, a.ifname):
                continue
        elif EXCLUDED_IFACES.match(a.ifname):
            continue
        if method.kind == "skip-interface" and _matches(method, a.ifname):
            continue
        if method.kind == "cidr" and not any(ipaddress.ip_address(a.address) in n for n in method.cidrs):
            continue
        return a
    return None
