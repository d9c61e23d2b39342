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
from libcalico import keys
from libcalico.datastore import op_delete, op_put, unchanged_since, version
from libcalico.models import InvalidValue, Pool, parse_key_value, to_json
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

# IPAM carves pools into blocks of this size; a smaller pool could never be used.
BLOCK_PREFIX = {4: 26, 6: 122}


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
        client = await ctx.client()
        for _ in range(_CAS_ATTEMPTS):
            guards: list = []
            existing = await read_pools(client, guards=guards)
            for pool in pools:
                new = ipaddress.ip_network(pool.cidr)
                for old in existing:
                    if old.cidr != pool.cidr and new.overlaps(ipaddress.ip_network(old.cidr)):
                        raise ArgError(f"invalid CIDR {pool.cidr!r}: overlaps existing pool {old.cidr}")
            # One transaction: every named pool or none, and only if no pool
            # appeared or changed since the overlap check read them.
            ok, _ = await client.txn(guards, [op_put(keys.pool(p.cidr), to_json(p)) for p in pools], [],
                                     what="pool add")
            if ok:
                return 0
        raise CliError("pool add: the pools kept changing while checking for overlaps; nothing written, try again")

    return add


def _parse_remove(words: list[str]) -> Action:
    if not words:
        raise usage_error(USAGE, ["remove"], "pool")
    cidrs = [str(ipaddress.ip_network(check(validate_cidr, w, what="CIDR"))) for w in words]

    async def remove(ctx: Context) -> int:
        client = await ctx.client()
        # All or nothing, and only if every pool still exists when the deletes apply.
        ok, _ = await client.txn([version(keys.pool(c)) > 0 for c in cidrs],
                                 [op_delete(keys.pool(c)) for c in cidrs], [], what="pool remove")
        if not ok:
            missing = [c for c in cidrs if await client.get(keys.pool(c)) is None]
            raise CliError(f"{', '.join(missing) or 'a pool'} is not a configured pool; nothing removed")
        return 0

    return remove


_CAS_ATTEMPTS = 10


async def read_pools(client, versions: tuple[int, ...] = (4, 6), guards: list | None = None) -> list[Pool]:
    """Every valid pool; an invalid value is skipped (it is not a pool anyone can use).

    With `guards`, appends the transaction compares that fail if any pool
    changes after this read.
    """
    return [p for p, _ in await read_pools_with_errors(client, versions, guards) if p is not None]


async def read_pools_with_errors(client, versions: tuple[int, ...] = (4, 6),
                                 guards: list | None = None) -> list[tuple[Pool | None, str]]:
    out: list[tuple[Pool | None, str]] = []
    for v in versions:
        prefix = keys.POOL_DIR_V4 if v == 4 else keys.POOL_DIR_V6
        rev, kvs = await client.get_prefix(prefix)
        if guards is not None:
            guards.append(unchanged_since(prefix, rev))
        for kv in kvs:
            try:
                key, pool = parse_key_value(kv.key, kv.value)
            except InvalidValue as exc:
                out.append((None, str(exc)))
                continue
            if key is not None and key.kind == "pool" and isinstance(pool, Pool):
                out.append((pool, kv.key))
    return out


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
        client = await ctx.client()
        rows = await read_pools_with_errors(client, versions)
        for v in versions:
            mine = [(p, k) for p, k in rows if (p is not None and p.version == v)
                    or (p is None and f"/v{v}/" in k)]
            body = [[p.cidr, pool_options(p)] if p is not None else ["(invalid)", k] for p, k in mine]
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
