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
from libcalico.models import DEFAULT_BLOCK_SIZE, POOL_BLOCK_SIZES, Pool
from libcalico.resources import Conflict, PoolOverlap, Pools
from libcalico.validation import validate_cidr, validate_ip

USAGE = """\
Usage:
  calicoctl pool add <CIDRS>... [--ipip | --vxlan] [--nat-outgoing] [--block-size=<N>]
                                [--strict-affinity] [--disabled]
  calicoctl pool range add <START_IP> <END_IP> [--ipip | --vxlan] [--nat-outgoing] [--block-size=<N>]
                                [--strict-affinity] [--disabled]
  calicoctl pool remove <CIDRS>...
  calicoctl pool show [--ipv4 | --ipv6]

Description:
  Configure IP pools: the address ranges Calico IPAM hands to workloads.
  Adding a pool that already exists replaces its options (its block size only
  while no block of it is allocated).  'range add' adds the pools that exactly
  cover <START_IP>..<END_IP> (pools are CIDRs, so a range off CIDR boundaries
  becomes several pools).

Options:
  --ipip              Route traffic between hosts through an IP-in-IP tunnel (tunl0), IPv4 only
  --vxlan             Route traffic between hosts through VXLAN (vxlan.calico), IPv4 only
  --nat-outgoing      Masquerade traffic from the pool to destinations outside every pool
  --block-size=<N>    Prefix length of the blocks IPAM gives hosts: 20..32 for IPv4 (default 26),
                      116..128 for IPv6 (default 122); one route per block is announced
  --strict-affinity   Hosts never borrow addresses from other hosts' blocks of this pool
  --disabled          No new addresses from this pool (existing ones stay)
  --ipv4              Show only IPv4 pools
  --ipv6              Show only IPv6 pools
"""

ADD_FLAGS = ("--ipip", "--vxlan", "--nat-outgoing", "--strict-affinity", "--disabled")

def _usable_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network, text: str) -> None:
    if net.is_loopback or net.is_multicast or net.is_unspecified and net.prefixlen == 0:
        raise ArgError(f"invalid CIDR {text!r}: loopback, multicast and default ranges cannot be pools")


def parse_block_size(opts: dict) -> int | None:
    text = opts.get("--block-size")
    if text is None:
        return None
    if not str(text).isdigit():
        raise ArgError(f"invalid --block-size {text!r}: a prefix length such as 26")
    return int(text)


def _check_block_size(net: ipaddress.IPv4Network | ipaddress.IPv6Network, size: int | None, text: str) -> None:
    lo, hi = POOL_BLOCK_SIZES[net.version]
    if size is not None and not lo <= size <= hi:
        raise ArgError(f"invalid --block-size {size}: IPv{net.version} blocks are /{lo}../{hi}")
    block = DEFAULT_BLOCK_SIZE[net.version] if size is None else size
    if net.prefixlen > block:
        raise ArgError(f"invalid CIDR {text!r}: a pool must be /{block} or bigger (its IPAM block size)")


def parse_pool_cidr(text: str, block_size: int | None = None) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR usable as a pool: valid, not loopback/multicast, at least one IPAM block big."""
    cidr = check(validate_cidr, text, what="CIDR")
    if "/" not in text:
        raise ArgError(f"invalid CIDR {text!r}: a pool needs a prefix length (e.g. 10.65.0.0/16)")
    net = ipaddress.ip_network(cidr)
    _usable_range(net, text)
    _check_block_size(net, block_size, text)
    return net


def range_cidrs(start: str, end: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The CIDRs that exactly cover start..end (both included), as calicoctl v0.20 added them."""
    a = ipaddress.ip_address(check(validate_ip, start, what="START_IP"))
    b = ipaddress.ip_address(check(validate_ip, end, what="END_IP"))
    if a.version != b.version:
        raise ArgError(f"invalid range {start} {end}: both ends must be IPv4 or both IPv6")
    if a > b:
        raise ArgError(f"invalid range {start} {end}: START_IP is after END_IP")
    nets = list(ipaddress.summarize_address_range(a, b))  # type: ignore[arg-type]
    for n in nets:
        _usable_range(n, str(n))
    return nets


def _parse_range_add(words: list[str], opts: dict) -> Action:
    if len(words) != 2:
        raise usage_error(USAGE, ["range", "add", *words], "pool")
    nets = range_cidrs(words[0], words[1])
    size = parse_block_size(opts)
    if size is not None:
        _check_block_size(nets[0], size, str(nets[0]))

    def piece_size(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int | None:
        """A piece smaller than the block size is one block of its own size."""
        want = DEFAULT_BLOCK_SIZE[n.version] if size is None else size
        return n.prefixlen if n.prefixlen > want else size

    return _add_action(nets, opts, piece_size)


def _parse_add(words: list[str], opts: dict) -> Action:
    if not words:
        raise usage_error(USAGE, ["add"], "pool")
    size = parse_block_size(opts)
    nets = [parse_pool_cidr(w, size) for w in words]
    return _add_action(nets, opts, lambda n: size)


def _add_action(nets: list, opts: dict, block_size) -> Action:
    if opts.get("--ipip") and opts.get("--vxlan"):
        raise ArgError("--ipip and --vxlan cannot be used together")
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
        fields.update(masquerade=bool(opts.get("--nat-outgoing")), ipam=True, disabled=bool(opts.get("--disabled")))
        if block_size(net) is not None:
            fields["block_size"] = block_size(net)
        if opts.get("--strict-affinity"):
            fields["strict_affinity"] = True
        pools.append(Pool.model_validate(fields))

    async def add(ctx: Context) -> int:
        client = await ctx.client()
        await _refuse_block_size_change(client, pools)
        try:
            await Pools(client).add(pools)
        except PoolOverlap as e:
            raise ArgError(f"invalid CIDR {e.new!r}: overlaps existing pool {e.other}") from None
        except Conflict:
            raise CliError("pool add: the pools kept changing while checking for overlaps; nothing written, "
                           "try again") from None
        return 0

    return add


async def _refuse_block_size_change(client, pools: list[Pool]) -> None:
    """Blocks already carved from a pool keep their size: a new size would make confd and IPAM
    disagree with the blocks hosts hold (and their routes), so it waits until they are gone."""
    from libcalico.ipam import Ipam

    ipam = Ipam(client)
    existing = {p.cidr: p for p in await ipam.all_pools()}
    changing = [p for p in pools if p.cidr in existing and existing[p.cidr].block_prefix != p.block_prefix]
    if not changing:
        return
    blocks = await ipam.blocks()
    for p in changing:
        net = ipaddress.ip_network(p.cidr)
        held = [b for b in blocks if b.net.version == net.version and b.net.subnet_of(net)]
        if held:
            raise CliError(f"pool {p.cidr} has {len(held)} block(s) of /{held[0].net.prefixlen} allocated: its "
                           f"block size cannot change to /{p.block_prefix} while they exist")


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
    if pool.block_size is not None:
        opts.append(f"block-size={pool.block_size}")
    if pool.strict_affinity:
        opts.append("strict-affinity")
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
    words, opts = split_options(args, flags=(*ADD_FLAGS, "--ipv4", "--ipv6"), valued=("--block-size",),
                                usage=USAGE)
    if not words:
        raise usage_error(USAGE, [], "pool")
    cmd, rest = words[0], words[1:]
    if cmd == "add" or (cmd == "range" and rest[:1] == ["add"]):
        if opts.get("--ipv4") or opts.get("--ipv6"):
            raise ArgError("--ipv4/--ipv6 only apply to 'pool show'")
        return _parse_add(rest, opts) if cmd == "add" else _parse_range_add(rest[1:], opts)
    if any(opts.get(o) for o in (*ADD_FLAGS, "--block-size")):
        raise ArgError(f"--ipip/--vxlan/--nat-outgoing/--block-size/--strict-affinity/--disabled only apply to "
                       f"'pool add', not 'pool {cmd}'")
    if cmd == "remove":
        if opts:
            raise ArgError("'pool remove' takes no options")
        return _parse_remove(rest)
    if cmd == "show":
        return _parse_show(rest, opts)
    raise usage_error(USAGE, words, "pool")
