"""List the nodes registered in the datastore with their BGP addresses, AS, peers and reflector role."""

from __future__ import annotations

import ipaddress
import json

from calicoctl.cli import Action, Context, split_options, table, usage_error
from libcalico import keys

USAGE = """\
Usage:
  calicoctl node show

Show every node registered under /calico/bgp/v1/host with its IPv4 and IPv6
peering addresses and AS number (a node without its own AS uses the global
one, shown in parentheses), its node-specific BGP peers ("<ip> as <AS>"), and
its route reflector cluster id when it is a route reflector.
"""


def _ip_key(text: str) -> tuple:
    try:
        a = ipaddress.ip_address(text)
        return (a.version, int(a))
    except ValueError:
        return (9, 0)


def _peer_text(raw: str) -> str:
    """A stored peer as `ip as AS`; whatever was written when it is not a valid peer document."""
    try:
        doc = json.loads(raw)
        return f"{doc['ip']} as {doc['as_num']}"
    except (ValueError, TypeError, KeyError):
        return f"(invalid: {raw[:40]!r})"


async def node_rows(client) -> list[list[str]]:
    from libcalico.resources import Nodes

    global_as = (await client.get(keys.bgp_global_as()) or "64511").strip()
    _, kvs = await client.get_prefix(keys.BGP_HOST_DIR)
    peers: dict[tuple[str, int], list[tuple[str, str]]] = {}
    rr: dict[str, str] = {}
    for kv in kvs:
        k = keys.parse(kv.key)
        if k is None:
            continue
        if k.kind == "bgp_host_peer":
            peers.setdefault((k.host, k.version), []).append((k.ip, _peer_text(kv.value)))
        elif k.kind == "bgp_host_rr_cluster_id":
            rr[k.host] = (kv.value or "").strip()

    def peer_cell(host: str, v: int) -> str:
        return "\n".join(t for _, t in sorted(peers.get((host, v), []), key=lambda p: _ip_key(p[0])))

    # The stored text, so an invalid registration shows as written (node show is where it is seen).
    return [[n.name, n.raw.get("v4", ""), n.raw.get("v6", ""), n.raw.get("as") or f"({global_as})",
             peer_cell(n.name, 4), peer_cell(n.name, 6), rr.get(n.name, "")]
            for n in await Nodes(client).list()]


def parse(args: list[str]) -> Action:
    words, _ = split_options(args, usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "node show")

    async def show(ctx: Context) -> int:
        ctx.print(table(["Hostname", "Bird IPv4", "Bird IPv6", "AS Num", "BGP Peers v4", "BGP Peers v6",
                         "RR Cluster"], await node_rows(await ctx.client())))
        return 0

    return show
