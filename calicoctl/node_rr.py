"""`calicoctl node bgp route-reflector ...`: make a node a BGP route reflector, or an ordinary node again."""

from __future__ import annotations

from calicoctl.cli import Action, ArgError, CliError, Context, check, usage_error
from libcalico import keys
from libcalico.validation import validate_ip

USAGE = """\
Usage:
  calicoctl node bgp route-reflector set <CLUSTER_ID> [--hostname=<HOSTNAME>]
  calicoctl node bgp route-reflector remove [--hostname=<HOSTNAME>]
  calicoctl node bgp route-reflector show [--hostname=<HOSTNAME>]

Description:
  A route reflector's BIRD treats every host that peers with it as an `rr client`
  of cluster <CLUSTER_ID> (a dotted quad, e.g. 1.0.0.1; reflectors that back each
  other up share one). Written to /calico/bgp/v1/host/<HOSTNAME>/rr_cluster_id.

  To use reflectors instead of the full mesh:
    calicoctl node bgp route-reflector set 1.0.0.1 --hostname=<rr1>   (and <rr2>)
    calicoctl bgp peer add <rr1 IP> as <AS>                            (and <rr2 IP>)
    calicoctl bgp node-mesh off
  Every node then peers only with the reflectors; a reflector never peers with itself.

Options:
  --hostname=<HOSTNAME>  The node (default: $NODENAME, $HOSTNAME, else this machine's hostname)
"""


def parse(words: list[str], host: str) -> Action:
    if not words:
        raise usage_error(USAGE, ["route-reflector"], "node bgp")
    cmd, rest = words[0], words[1:]
    path = keys.bgp_host_rr_cluster_id(host)
    if cmd == "set":
        if len(rest) != 1:
            raise usage_error(USAGE, ["route-reflector", *words], "node bgp")
        cluster = check(validate_ip, rest[0], 4, what="cluster id (a dotted quad such as 1.0.0.1)")

        async def set_rr(ctx: Context) -> int:
            client = await ctx.client()
            if await client.get(keys.bgp_host_ip(host, 4)) is None:
                raise CliError(f"node {host!r} is not registered (no {keys.bgp_host_ip(host, 4)}): "
                               "start calico-node there first")
            await client.put(path, cluster)
            ctx.print(f"Node {host} is a route reflector of cluster {cluster}.")
            return 0

        return set_rr
    if rest:
        raise usage_error(USAGE, ["route-reflector", *words], "node bgp")
    if cmd == "remove":
        async def remove_rr(ctx: Context) -> int:
            if not await (await ctx.client()).delete(path):
                raise CliError(f"node {host!r} is not a route reflector; nothing removed")
            return 0

        return remove_rr
    if cmd == "show":
        async def show_rr(ctx: Context) -> int:
            raw = await (await ctx.client()).get(path)
            ctx.print((raw or "").strip() or "not a route reflector")
            return 0

        return show_rr
    raise ArgError(f"invalid command 'node bgp route-reflector {cmd}' (see 'calicoctl node bgp --help')")
