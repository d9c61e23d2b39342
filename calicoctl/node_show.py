"""List the nodes registered in the datastore with their BGP addresses and AS."""

from __future__ import annotations

from calicoctl.cli import Action, Context, split_options, table, usage_error
from libcalico import keys

USAGE = """\
Usage:
  calicoctl node show

Show every node registered under /calico/bgp/v1/host with its IPv4 and IPv6
peering addresses and AS number (a node without its own AS uses the global
one, shown in parentheses).
"""


async def node_rows(client) -> list[list[str]]:
    from libcalico.resources import Nodes

    global_as = (await client.get(keys.bgp_global_as()) or "64511").strip()
    # The stored text, so an invalid registration shows as written (node show is where it is seen).
    return [[n.name, n.raw.get("v4", ""), n.raw.get("v6", ""), n.raw.get("as") or f"({global_as})"]
            for n in await Nodes(client).list()]


def parse(args: list[str]) -> Action:
    words, _ = split_options(args, usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "node show")

    async def show(ctx: Context) -> int:
        ctx.print(table(["Hostname", "Bird IPv4", "Bird IPv6", "AS Num"], await node_rows(await ctx.client())))
        return 0

    return show
