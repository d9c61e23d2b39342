"""Remove a stopped node from the datastore: its keys, BGP settings and IPAM blocks."""

from __future__ import annotations

import asyncio

from calicoctl import container, status
from calicoctl.cli import Action, CliError, Context, check, split_options, usage_error
from libcalico.resources import Nodes, WorkloadEndpoints
from libcalico.validation import validate_name

USAGE = """\
Usage:
  calicoctl node remove [--remove-endpoints] [--hostname=<HOSTNAME>]

Remove a node's configuration: /calico/v1/host/<HOSTNAME>, /calico/bgp/v1/host/<HOSTNAME>,
its Felix status keys, and its IPAM block affinities (so other nodes may use them,
and peers withdraw its routes).  The node must be stopped.  Refuses while the
node has workload endpoints unless --remove-endpoints, which also releases
their addresses (and deletes their veths found in this namespace).

Options:
  --hostname=<HOSTNAME>  The node to remove [default: this node].
"""


async def _maybe_await(v):
    return await v if asyncio.iscoroutine(v) else v


async def remove_node(ctx: Context, host: str, remove_endpoints: bool) -> list[str]:
    """Returns what was done, one line per step, for the report."""
    from libcalico.ipam import Ipam

    client = await ctx.client()
    ipam = Ipam(client)
    done = []
    eps = await container.host_endpoints(client, host)
    if eps and not remove_endpoints:
        raise CliError(f"node {host} still has {len(eps)} workload endpoint(s); "
                       "use --remove-endpoints to remove them too")
    for ep in eps:
        ifname = container.ifname(ep)
        if ifname.startswith(container.IFACE_PREFIX):
            # names embed the endpoint id, so a link of this name here is this endpoint's
            container.delete_veth(None, ifname)
        await _maybe_await(ipam.release_handle(ep.key.endpoint))
        nets = container.endpoint_ips(ep)
        if nets:
            await _maybe_await(ipam.release_ips(nets))
        await WorkloadEndpoints(client).delete(ep)
    if eps:
        done.append(f"removed {len(eps)} endpoint(s)")
    # Tunnel addresses the node allocated for itself.
    nodes = Nodes(client)
    node = await nodes.get(host)
    tunnel = list(node.tunnel_addrs.values()) if node is not None else []
    if tunnel:
        await _maybe_await(ipam.release_ips(tunnel))
    await _maybe_await(ipam.release_host_affinities(host))
    n_keys = await nodes.remove(host)
    done.append(f"deleted {n_keys} key(s) and released its blocks")
    return done


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--remove-endpoints",), valued=("--hostname",), usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "node remove")
    explicit = opts.get("--hostname")
    if explicit is not None:
        explicit = check(validate_name, explicit, "hostname", what="--hostname")
    remove_eps = bool(opts.get("--remove-endpoints"))

    async def remove(ctx: Context) -> int:
        client = await ctx.client()
        here = await container.local_hostname(client, None)
        host = explicit or here
        local = host == here
        if local and any(p.program in ("calico-node", "supervisord") for p in status.node_processes()):
            raise CliError("calico-node is running here; stop it first ('calicoctl node stop')")
        if not await Nodes(client).exists(host):
            raise CliError(f"node {host} is not registered")
        for line in await remove_node(ctx, host, remove_eps):
            ctx.print(f"{host}: {line}")
        ctx.print(f"Node {host} removed")
        return 0

    return remove
