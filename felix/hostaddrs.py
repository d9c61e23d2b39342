"""The host's interface addresses, for host endpoints identified by expected address only.

Why a subprocess and not netlink: this runs only when such a host endpoint
exists, from the daemon's synchronous push, and `ip -o addr` is one short
call with no event-loop entanglement (pyroute2's sync IPRoute cannot run
inside the loop).  A failure is logged and treated as "no addresses known":
the host endpoint then gets no chains until the next push.

Why the names are checked here: an interface name from the kernel goes
straight into `-i <name>` / `-o <name>` of iptables-restore input.  The
kernel allows names iptables reads differently (`eth+` is a wildcard over
every `eth*` interface, a quote or `#` breaks the restore line) and names the
text output cannot carry unambiguously (`x@y` reads as `x`).  So the names
are read from `ip -j` (JSON, exact) and held to the same rule as a host
endpoint's own `name`; any other interface is left out, as if it had no
addresses, and named once in the log.
"""

from __future__ import annotations

import json
import logging
import subprocess

from libcalico.validation import validate_ifname

log = logging.getLogger(__name__)

_reported: set[str] = set()
_REPORTED_MAX = 1024


def _usable(ifname: object) -> bool:
    """True for a name that is safe in an iptables rule; an unsafe one is logged once."""
    try:
        validate_ifname(ifname)
        return True
    except ValueError as e:
        key = repr(ifname)
        if key not in _reported:
            if len(_reported) >= _REPORTED_MAX:
                _reported.clear()
            _reported.add(key)
            log.error("host interface %s skipped for host endpoints: %s", key, e)
        return False


def parse_ip_addr_json(text: str) -> dict[str, set[str]]:
    """`ip -j addr show` output -> {ifname: {address, ...}}; unsafe names left out."""
    out: dict[str, set[str]] = {}
    for link in json.loads(text or "[]"):
        if not isinstance(link, dict):
            continue
        ifname = link.get("ifname")
        addrs = {a.get("local") for a in link.get("addr_info") or ()
                 if isinstance(a, dict) and a.get("family") in ("inet", "inet6") and isinstance(a.get("local"), str)}
        if addrs and _usable(ifname):
            out.setdefault(ifname, set()).update(addrs)
    return out


def parse_ip_addr(text: str) -> dict[str, set[str]]:
    """`ip -o addr show` output -> {ifname: {address, ...}} (prefix lengths dropped; unsafe names left out).

    Only for an `ip` without JSON output: an `@` in a name is ambiguous here.
    """
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
            continue
        ifname = parts[1].split("@")[0]
        if _usable(ifname):
            out.setdefault(ifname, set()).add(parts[3].split("/")[0])
    return out


def read_interface_addrs(netns: str | None = None) -> dict[str, set[str]]:
    base = ["ip", *(["-n", netns] if netns else [])]
    cmd = [*base, "-j", "addr", "show"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True)
        return parse_ip_addr_json(r.stdout)
    except ValueError:  # no JSON support: the one-line text form
        cmd = [*base, "-o", "addr", "show"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True)
            return parse_ip_addr(r.stdout)
        except (OSError, subprocess.SubprocessError) as e:
            err = e
    except (OSError, subprocess.SubprocessError) as e:
        err = e
    log.warning("cannot read interface addresses for host endpoints (%s): %s", " ".join(cmd), err)
    return {}
