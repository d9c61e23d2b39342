"""`calicoctl ipam`: who holds an address, and giving back one that leaked."""

from __future__ import annotations

import json

from calicoctl.cli import Action, CliError, Context, check, split_options, usage_error
from libcalico.validation import validate_ip

USAGE = """\
Usage:
  calicoctl ipam info <IP>
  calicoctl ipam release <IP>

Description:
  'info' shows whether <IP> is assigned and the attributes of its assignment.
  'release' frees <IP> (e.g. after a workload vanished without releasing it).
"""


def parse(args: list[str]) -> Action:
    words, _ = split_options(args, usage=USAGE)
    if len(words) != 2 or words[0] not in ("info", "release"):
        raise usage_error(USAGE, words, "ipam")
    cmd = words[0]
    ip = check(validate_ip, words[1], what="IP address")

    async def act(ctx: Context) -> int:
        from libcalico.ipam import Ipam, IpamError

        ipam = Ipam(await ctx.client())
        try:
            return await _act(ctx, ipam)
        except IpamError as exc:
            raise CliError(f"ipam {cmd} {ip}: {exc}") from None

    async def _act(ctx: Context, ipam) -> int:
        if cmd == "info":
            info = await ipam.get_assignment(ip)
            if info is None:
                ctx.print(f"IP {ip} is not currently assigned")
                return 0
            ctx.print(f"IP {ip} is in use")
            for k, v in info.items():
                ctx.print(f"  {k}: {v if isinstance(v, str) else json.dumps(v)}")
            return 0
        unreleased = await ipam.release_ips([ip])
        if unreleased:
            raise CliError(f"IP {ip} is not assigned; nothing released")
        ctx.print(f"Released IP {ip}")
        return 0

    return act
