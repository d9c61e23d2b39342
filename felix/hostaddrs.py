"""The host's interface addresses, for host endpoints identified by expected address only.

Why a subprocess and not netlink: this runs only when such a host endpoint
exists, from the daemon's synchronous push, and `ip -o addr` is one short
call with no event-loop entanglement (pyroute2's sync IPRoute cannot run
inside the loop).  A failure is logged and treated as "no addresses known":
the host endpoint then gets no chains until the next push.
"""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger(__name__)


def parse_ip_addr(text: str) -> dict[str, set[str]]:
    """`ip -o addr show` output -> {ifname: {address, ...}} (prefix lengths dropped)."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
            continue
        ifname = parts[1].split("@")[0]
        out.setdefault(ifname, set()).add(parts[3].split("/")[0])
    return out


def read_interface_addrs(netns: str | None = None) -> dict[str, set[str]]:
    cmd = ["ip", *(["-n", netns] if netns else []), "-o", "addr", "show"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("cannot read interface addresses for host endpoints (%s): %s", " ".join(cmd), e)
        return {}
    return parse_ip_addr(r.stdout)
