"""`calicoctl pool`: the IP pools workloads get addresses from (and their overlay/NAT flags)."""

from __future__ import annotations

import ipaddress

from calicoctl.cli import (
    Action,
    ArgError,
    CliError,
    Context,
    check,
    split_options,
    table,
    usage_error,
)
from libcalico.models import Pool
from libcalico.resources import BLOCK_PREFIX, Conflict, PoolOverlap, Pools
from libcalico.validation import validate_cidr

USAGE = """\
Usage:
  calicoctl pool add <CIDRS>... [--ipip | --vxlan] [--nat-outgoing]
  calicoctl pool remove <CIDRS>...
  calicoctl pool show [--ipv4 | --ipv6]

Description:
  Configure IP pools: the address ranges Calico IPAM hands to workloads.
  Adding a pool that already exists replaces its options.

Options:
  --ipip            Route traffic between hosts through an IP-in-IP tunnel (tunl0), IPv4 only
  --vxlan           Route traffic between hosts through VXLAN (vxlan.calico), IPv4 only
  --nat-outgoing    Masquerade traffic from the pool to destinations outside every pool
  --ipv4            Show only IPv4 pools
  --ipv6            Show only IPv6 pools
"""

def parse_pool_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR usable as a pool: valid, not loopback/multicast, at least one IPAM block big."""
    cidr = check(validate_cidr, text, what="CIDR")
    if "/" not in text:
        raise ArgError(f"invalid CIDR {text!r}: a pool needs a prefix length (e.g. 10.65.0.0/16)")
    net = ipaddress.ip_network(cidr)
    if net.is_loopback or net.is_multicast or net.is_unspecified and net.prefixlen == 0:
        raise ArgError(f"invalid CIDR {text!r}: loopback, multicast and default ranges cannot be pools")
    block = BLOCK_PREFIX[net.version]
    if net.prefixlen > block:
        raise ArgError(f"invalid CIDR {text!r}: a pool must be /{block} or bigger (the IPAM block size)")
    return net


def _parse_add(words: list[str], opts: dict) -> Action:
    if not words:
        raise usage_error(USAGE, ["add"], "pool")
    if opts.get("--ipip") and opts.get("--vxlan"):
        raise ArgError("--ipip and --vxlan cannot be used together")
    nets = [parse_pool_cidr(w) for w in words]
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a.overlaps(b):
                raise ArgError(f"invalid CIDR: pools {a} and {b} overlap")
    pools: list[Pool] = []
    for net in nets:
        fields: dict = {"cidr": str(net)}
        if opts.get("--ipip") or opts.get("--vxlan"):
            if net.version != 4:
                flag = "--ipip" if opts.get("--ipip") else "--vxlan"
                raise ArgError(f"invalid CIDR {str(net)!r}: {flag} is only supported on IPv4 pools")
            if opts.get("--ipip"):
                fields["ipip"] = "tunl0"
            else:
                fields["vxlan"] = "vxlan.calico"
        fields.update(masquerade=bool(opts.get("--nat-outgoing")), ipam=True, disabled=False)
        pools.append(Pool.model_validate(fields))

    async def add(ctx: Context) -> int:
        try:
            await Pools(await ctx.client()).add(pools)
        except PoolOverlap as e:
            raise ArgError(f"invalid CIDR {e.new!r}: overlaps existing pool {e.other}") from None
        except Conflict:
            raise CliError("pool add: the pools kept changing while checking for overlaps; nothing written, "
                           "try again") from None
        return 0

    return add


def _parse_remove(words: list[str]) -> Action:
    if not words:
        raise usage_error(USAGE, ["remove"], "pool")
    cidrs = [str(ipaddress.ip_network(check(validate_cidr, w, what="CIDR"))) for w in words]

    async def remove(ctx: Context) -> int:
        # All or nothing, and only if every pool still exists when the deletes apply.
        ok, missing = await Pools(await ctx.client()).remove(cidrs)
        if not ok:
            raise CliError(f"{', '.join(missing) or 'a pool'} is not a configured pool; nothing removed")
        return 0

    return remove


def pool_options(pool: Pool) -> str:
    opts = []
    if pool.ipip:
        opts.append("ipip")
    if pool.vxlan:
        opts.append("vxlan")
    if pool.masquerade:
        opts.append("nat-outgoing")
    if pool.disabled:
        opts.append("disabled")
    if not pool.ipam:
        opts.append("no-ipam")
    return ",".join(opts)


def _parse_show(words: list[str], opts: dict) -> Action:
    if words:
        raise usage_error(USAGE, ["show", *words], "pool")
    if opts.get("--ipv4") and opts.get("--ipv6"):
        raise ArgError("--ipv4 and --ipv6 cannot be used together")
    versions = (4,) if opts.get("--ipv4") else (6,) if opts.get("--ipv6") else (4, 6)

    async def show(ctx: Context) -> int:
        listed = await Pools(await ctx.client()).list(include_invalid=True)
        for v in versions:
            body = [[s.value.cidr, pool_options(s.value)] if s.valid else ["(invalid)", f"{s.path}: {s.error}"]
                    for s in listed if s.key.version == v]
            body.sort(key=lambda r: (r[0] == "(invalid)", _sort_key(r[0])))
            ctx.print(table([f"IPv{v} CIDR", "Options"], body))
        return 0

    return show


def _sort_key(cidr: str) -> tuple:
    try:
        net = ipaddress.ip_network(cidr)
        return (int(net.network_address), net.prefixlen)
    except ValueError:
        return (0, 0)


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--ipip", "--vxlan", "--nat-outgoing", "--ipv4", "--ipv6"),
                                usage=USAGE)
    if not words:
        raise usage_error(USAGE, [], "pool")
    cmd, rest = words[0], words[1:]
    if cmd == "add":
        if opts.get("--ipv4") or opts.get("--ipv6"):
            raise ArgError("--ipv4/--ipv6 only apply to 'pool show'")
        return _parse_add(rest, opts)
    if any(opts.get(o) for o in ("--ipip", "--vxlan", "--nat-outgoing")):
        raise ArgError(f"--ipip/--vxlan/--nat-outgoing only apply to 'pool add', not 'pool {cmd}'")
    if cmd == "remove":
        if opts:
            raise ArgError("'pool remove' takes no options")
        return _parse_remove(rest)
    if cmd == "show":
        return _parse_show(rest, opts)
    raise usage_error(USAGE, words, "pool")
