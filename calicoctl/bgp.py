"""`calicoctl bgp`: global BGP settings (peers of every node, the mesh, the default AS)."""

from __future__ import annotations

import ipaddress
import json

from calicoctl.cli import (
    Action,
    ArgError,
    CliError,
    Context,
    check,
    dumps,
    split_options,
    table,
    usage_error,
)
from libcalico import keys
from libcalico.models import NodeMesh
from libcalico.validation import validate_asn, validate_bgp_ip, validate_ip

USAGE = """\
Usage:
  calicoctl bgp peer add <PEER_IP> as <AS_NUM>
  calicoctl bgp peer remove <PEER_IP>
  calicoctl bgp peer show [--ipv4 | --ipv6]
  calicoctl bgp node-mesh [on|off]
  calicoctl bgp default-node-as [<AS_NUM>]

Description:
  Global BGP configuration. A global peer (e.g. a ToR router) peers with every
  node; 'node-mesh' turns the full iBGP mesh between the nodes on or off (on when
  never set); 'default-node-as' is the AS of nodes that have none of their own
  (64511 when never set). Without an argument, node-mesh and default-node-as
  show the current value.

Options:
  --ipv4    Show only IPv4 peers
  --ipv6    Show only IPv6 peers

AS numbers are 1..4294967295, or the dotted form a.b.
"""

DEFAULT_AS = 64511


# ---- peers, shared with `node bgp peer` ------------------------------------------

def parse_peer_add(words: list[str], usage: str, group: str) -> tuple[str, int]:
    """`<IP> as <AS>` -> (normalized ip, as number), refusing anything else."""
    if len(words) != 3 or words[1] != "as":
        raise usage_error(usage, ["peer", "add", *words], group)
    ip = check(validate_ip, words[0], what="peer IP")
    asn = check(validate_asn, words[2], what="AS number")
    return ip, asn


def peer_actions(words: list[str], opts: dict, usage: str, group: str, host: str | None, what: str) -> Action:
    """add/remove/show for the peers of every node (host None) or of one node."""
    from libcalico.resources import BgpPeers

    if not words:
        raise usage_error(usage, ["peer"], group)
    cmd, rest = words[0], words[1:]
    if cmd in ("add", "remove") and (opts.get("--ipv4") or opts.get("--ipv6")):
        raise ArgError(f"--ipv4/--ipv6 only apply to '{group} peer show'")
    if cmd == "add":
        ip, asn = parse_peer_add(rest, usage, group)
        check(validate_bgp_ip, ip, what="peer IP")  # what BgpPeers.put would refuse

        async def add(ctx: Context) -> int:
            client = await ctx.client()
            await BgpPeers(client).put(ip, asn, host=host)
            note = await node_peer_note(client, ip, host)
            if note:
                ctx.print(note)
            return 0

        return add
    if cmd == "remove":
        if len(rest) != 1:
            raise usage_error(usage, words, group)
        ip = check(validate_ip, rest[0], what="peer IP")

        async def remove(ctx: Context) -> int:
            if not await BgpPeers(await ctx.client()).delete(ip, host=host):
                raise CliError(f"no {what} BGP peer {ip}; nothing removed")
            return 0

        return remove
    if cmd == "show":
        if rest:
            raise usage_error(usage, words, group)
        if opts.get("--ipv4") and opts.get("--ipv6"):
            raise ArgError("--ipv4 and --ipv6 cannot be used together")
        versions = (4,) if opts.get("--ipv4") else (6,) if opts.get("--ipv6") else (4, 6)

        async def show(ctx: Context) -> int:
            peers = BgpPeers(await ctx.client())
            for v in versions:
                rows = [[s.value.ip, str(s.value.as_num)] if s.valid else ["(invalid)", f"{s.path}: {s.error}"]
                        for s in await peers.list(host=host, version=v, include_invalid=True)]
                rows.sort(key=lambda r: _ip_sort(r[0]))
                ctx.print(table([f"Peer address (IPv{v})", "AS Num"], rows))
            return 0

        return show
    raise usage_error(usage, words, group)


async def node_peer_note(client, ip: str, host: str | None) -> str | None:
    """What peering with a node's own address means: the shortcut for route reflectors.

    A peer that is another node's address needs nothing on that node: if it is a route
    reflector it renders the reverse session itself, with the peering node as its client.
    """
    _, kvs = await client.get_prefix(keys.BGP_HOST_DIR)
    owner = None
    rr: dict[str, str] = {}
    for kv in kvs:
        k = keys.parse(kv.key)
        if k is None:
            continue
        if k.kind == "bgp_host_ip" and (kv.value or "").strip() == ip:
            owner = k.host
        elif k.kind == "bgp_host_rr_cluster_id" and (kv.value or "").strip():
            rr[k.host] = kv.value.strip()
    if owner is None:
        return None
    who = "every node" if host is None else f"node {host}"
    if owner in rr:
        return (f"{ip} is node {owner}, a route reflector (cluster {rr[owner]}): {who} peers with it and it "
                f"serves {'them' if host is None else 'it'} as rr client(s); {owner} itself skips its own address.")
    return (f"{ip} is node {owner}, which is not a route reflector: without the node-to-node mesh it passes no "
            f"routes on (make it one with 'calicoctl node bgp route-reflector set <CLUSTER_ID> --hostname={owner}').")


def _ip_sort(text: str) -> tuple:
    try:
        return (0, int(ipaddress.ip_address(text)))
    except ValueError:
        return (1, 0)


# ---- the group ------------------------------------------------------------------

def _parse_node_mesh(rest: list[str]) -> Action:
    if len(rest) > 1:
        raise usage_error(USAGE, ["node-mesh", *rest], "bgp")
    if rest:
        if rest[0] not in ("on", "off"):
            raise ArgError(f"invalid node-mesh value {rest[0]!r}: use 'on' or 'off'")
        value = dumps({"enabled": rest[0] == "on"})

        async def set_mesh(ctx: Context) -> int:
            await (await ctx.client()).put(keys.bgp_node_mesh(), value)
            return 0

        return set_mesh

    async def show_mesh(ctx: Context) -> int:
        raw = await (await ctx.client()).get(keys.bgp_node_mesh())
        if raw is None:
            ctx.print("on")
            return 0
        try:
            mesh = NodeMesh.model_validate(json.loads(raw))
        except ValueError as exc:
            raise CliError(f"{keys.bgp_node_mesh()}: invalid value {raw!r} ({exc.__class__.__name__})") from None
        ctx.print("on" if mesh.enabled else "off")
        return 0

    return show_mesh


def _parse_default_as(rest: list[str]) -> Action:
    if len(rest) > 1:
        raise usage_error(USAGE, ["default-node-as", *rest], "bgp")
    if rest:
        asn = check(validate_asn, rest[0], what="AS number")

        async def set_as(ctx: Context) -> int:
            await (await ctx.client()).put(keys.bgp_global_as(), str(asn))
            return 0

        return set_as

    async def show_as(ctx: Context) -> int:
        raw = await (await ctx.client()).get(keys.bgp_global_as())
        if raw is None:
            ctx.print(str(DEFAULT_AS))
            return 0
        try:
            ctx.print(str(validate_asn(raw.strip())))
        except ValueError as exc:
            raise CliError(f"{keys.bgp_global_as()}: {exc}") from None
        return 0

    return show_as


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--ipv4", "--ipv6"), usage=USAGE)
    if not words:
        raise usage_error(USAGE, [], "bgp")
    cmd, rest = words[0], words[1:]
    if cmd == "peer":
        return peer_actions(rest, opts, USAGE, "bgp", host=None, what="global")
    if opts:
        raise ArgError(f"--ipv4/--ipv6 only apply to 'bgp peer show', not 'bgp {cmd}'")
    if cmd == "node-mesh":
        return _parse_node_mesh(rest)
    if cmd == "default-node-as":
        return _parse_default_as(rest)
    raise usage_error(USAGE, words, "bgp")
