"""Choose the host's IP when `IP`/`IP6` is empty or `autodetect`.

Split into a pure chooser (unit-testable with plain data) and a reader that
asks `ip -j addr` in the namespace the node runs in, so a test namespace and a
real host go through exactly the same selection.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

# Interfaces whose addresses are never the host's own: bridges and tunnels of
# container runtimes, workload veths and Calico's own devices.
EXCLUDED_IFACES = re.compile(r"^(docker|cbr|virbr|lxcbr|veth|cali|tunl|flannel|vxlan\.calico|lo\Z)")


@dataclass(frozen=True)
class Address:
    ifname: str
    family: int  # 4 or 6
    address: str
    prefixlen: int
    scope: str  # "global", "link", "host"


def choose(addrs: list[Address], family: int, pattern: re.Pattern[str] | None = None) -> Address | None:
    """The first global address of `family` on an eligible interface, in kernel order."""
    for a in addrs:
        if a.family != family or a.scope != "global":
            continue
        if pattern is not None:
            if not pattern.fullmatch(a.ifname):
                continue
        elif EXCLUDED_IFACES.match(a.ifname):
            continue
        return a
    return None


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
