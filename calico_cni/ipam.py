"""`calico-ipam`: addresses from Calico's pools under the handle of the workload.

Called as its own executable by any CNI plugin that delegates IPAM to it,
and in-process by `calico` (same code, one exec fewer per container).  ADD
assigns `assign_ipv4`/`assign_ipv6` addresses, only from `ipv4_pools` /
`ipv6_pools` when given (each must be an enabled pool: a typo is an error,
not an empty result); DEL releases the handle and is idempotent.
"""

from __future__ import annotations

import sys
from typing import Any

from calico_cni import spec
from calico_cni.config import NetConf, bad
from calico_cni.spec import CniError


async def check_pools(client: Any, conf: NetConf) -> None:
    from libcalico.resources import Pools

    wanted = [("ipam.ipv4_pools", p, 4) for p in conf.ipam.ipv4_pools]
    wanted += [("ipam.ipv6_pools", p, 6) for p in conf.ipam.ipv6_pools]
    if not wanted:
        return
    usable = {s.value.cidr for s in await Pools(client).list() if Pools.usable(s.value)}
    for key, cidr, _ in wanted:
        if cidr not in usable:
            raise bad(key, f"{cidr} is not an enabled IP pool (see 'calicoctl pool show')")


async def add(client: Any, conf: NetConf, handle: str) -> dict[str, Any]:
    """A result (newest shape) with the assigned addresses; nothing assigned on error."""
    from libcalico.workload_attach import AttachError

    await check_pools(client, conf)
    ipam = conf.ipam
    if not ipam.assign_ipv4 and not ipam.assign_ipv6:
        raise bad("ipam", "assign_ipv4 and assign_ipv6 are both false: nothing to assign")
    try:
        v4, v6 = await _per_family(client, conf, handle)
    except AttachError as e:
        raise CniError(spec.IPAM_FAILED, str(e)) from None
    ips = [{"address": f"{a}/32"} for a in v4] + [{"address": f"{a}/128"} for a in v6]
    return {"ips": ips}


async def _per_family(client: Any, conf: NetConf, handle: str) -> tuple[list[str], list[str]]:
    """Each family from its own pool list (or any pool when its list is empty); all or nothing."""
    from libcalico.workload_attach import assign_addresses

    ipam = conf.ipam
    v4: list[str] = []
    if ipam.assign_ipv4:
        v4, _ = await assign_addresses(client, conf.nodename, handle, num4=1, pools=ipam.ipv4_pools or None)
    v6: list[str] = []
    if ipam.assign_ipv6:
        try:
            _, v6 = await assign_addresses(client, conf.nodename, handle, num6=1, pools=ipam.ipv6_pools or None)
        except BaseException:
            await release(client, handle)
            raise
    return v4, v6


async def release(client: Any, handle: str) -> list[str]:
    from libcalico.ipam import Ipam

    return await Ipam(client).release_handle(handle)


def main() -> int:
    from calico_cni.plugin import exit_now, run, start

    start()
    exit_now(run("calico-ipam", sys.stdin.buffer, sys.stdout))
    return 0  # not reached
