"""The MTU a workload interface may use: what the path to every other workload allows.

A workload with MTU 1500 behind a VXLAN or IPIP tunnel sends packets the
tunnel cannot carry: with don't-fragment set (TCP path-MTU discovery) they
are dropped, which looks like a hung connection, not an error.  So every
program that wires a workload (calicoctl container add, the CNI plugin, the
libnetwork driver, all through `libcalico.workload_attach`) asks here.

Order, first that applies:
1. an MTU the operator configured for this workload (CNI `mtu`, ...);
2. Felix's tunnel MTU (`VXLANMTU` / `IpInIpMtu`, host key over global key),
   the MTU Felix gives `vxlan.calico` / `tunl0`, when an enabled pool uses
   that encapsulation;
3. the host's uplink MTU minus the encapsulation overhead (VXLAN 50, IPIP 20)
   of the most expensive encapsulation any enabled pool uses.

All enabled pools count, not only the workload's own: Felix picks the
encapsulation by the destination's pool, so a workload in a plain pool still
reaches a VXLAN pool's workloads through the tunnel.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from libcalico import keys

DEFAULT_MTU = 1500
OVERHEAD = {"vxlan": 50, "ipip": 20}
FELIX_KEY = {"vxlan": "VXLANMTU", "ipip": "IpInIpMtu"}
MIN_MTU, MAX_MTU = 576, 65535


def encapsulation(pool: Any) -> str | None:
    """'vxlan', 'ipip' or None for a Pool model."""
    if getattr(pool, "vxlan", None):
        return "vxlan"
    if getattr(pool, "ipip", None):
        return "ipip"
    return None


def uplink_mtu(run: Any = subprocess.run) -> int:
    """MTU of the interface holding this namespace's default route (else the largest up interface).

    Read with `ip`, not /sys/class/net: sysfs shows the namespace that mounted
    it, which under `nsenter --net` is not the one we run in.
    """
    def ip_json(*argv: str) -> list:
        r = run(["ip", "-j", *argv], capture_output=True, text=True)
        try:
            return json.loads(r.stdout or "[]") if r.returncode == 0 else []
        except ValueError:
            return []

    dev = next((r.get("dev") for r in ip_json("-4", "route", "show", "default") if r.get("dev")), None)
    if dev is None:
        dev = next((r.get("dev") for r in ip_json("-6", "route", "show", "default") if r.get("dev")), None)
    mtus: list[int] = []
    for link in ip_json("link", "show"):
        if link.get("ifname") == "lo" or not isinstance(link.get("mtu"), int):
            continue
        if dev is not None and link.get("ifname") == dev:
            return int(link["mtu"])
        if "UP" in link.get("flags", []) and not str(link.get("ifname", "")).startswith(("cali", "vxlan.", "tunl")):
            mtus.append(int(link["mtu"]))
    return max(mtus) if mtus else DEFAULT_MTU


def _param(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not MIN_MTU <= value <= MAX_MTU:
        raise ValueError(f"{where}: {value} is out of range {MIN_MTU}..{MAX_MTU}")
    return value


async def felix_mtu(client: Any, host: str, encap: str) -> int | None:
    """Felix's configured tunnel MTU for `encap`, host key over global key; None when unset.

    A malformed value is ignored here (Felix reports it and falls back too).
    """
    name = FELIX_KEY[encap]
    for path in (keys.host_config(host, name), keys.global_config(name)):
        try:
            value = _param(await client.get(path), path)
        except ValueError:
            continue
        if value is not None:
            return value
    return None


def choose(configured: int | None, encaps: set[str | None], felix: dict[str, int | None], uplink: int) -> int:
    """The pure rule (see the module docstring); `felix` maps an encapsulation to Felix's value."""
    if configured is not None:
        return configured
    best = uplink
    for encap in encaps:
        if encap is None:
            continue
        best = min(best, felix.get(encap) or uplink - OVERHEAD[encap])
    return best


async def workload_mtu(client: Any, host: str, configured: int | None = None, pools: list | None = None,
                       uplink: int | None = None) -> int:
    """The MTU for a new workload interface on `host`.

    `pools` are the enabled pools (read when not given); `uplink` the host's
    uplink MTU (read with `ip` when not given).
    """
    if configured is not None:
        return configured
    if pools is None:
        from libcalico.resources import Pools

        pools = [s.value for s in await Pools(client).list() if not s.value.disabled]
    encaps = {encapsulation(p) for p in pools}
    felix = {e: await felix_mtu(client, host, e) for e in encaps if e is not None}
    return choose(None, encaps, felix, uplink if uplink is not None else uplink_mtu())
