"""`calicoctl ipam`: how the pools are used, who holds an address, and finding and repairing leaks."""

from __future__ import annotations

import json
import os

from calicoctl.cli import Action, ArgError, CliError, Context, check, split_options, table, usage_error
from libcalico.validation import validate_ip

USAGE = """\
Usage:
  calicoctl ipam info <IP>
  calicoctl ipam release <IP>
  calicoctl ipam release --from-report=<FILE>
  calicoctl ipam show [--show-blocks] [--ip=<IP>]
  calicoctl ipam check [-o <FILE>]
  calicoctl ipam configure [--strictaffinity=<true|false>] [--release-empty-blocks=<true|false>]

Description:
  'info' shows whether <IP> is assigned and the attributes of its assignment.
  'release' frees <IP> (e.g. after a workload vanished without releasing it).
  'show' lists every pool with its size, addresses in use and free, and blocks;
  --show-blocks adds each block with its host affinity, --ip who holds one address.
  'check' compares every allocation with the workloads, tunnel addresses and nodes
  in the datastore: leaked addresses (no workload uses them), endpoint addresses
  IPAM does not hold, blocks of removed nodes, handle records that disagree with
  the blocks.  It exits 1 when it found something; -o writes the JSON report.
  'release --from-report' repairs what a report found, judging every item again
  first, so nothing a workload uses (or started using since) is released.
  'configure' sets strict affinity (no borrowing from other hosts' blocks) for all
  pools, and whether emptied blocks a host does not need go back to the pool.

Options:
  --show-blocks                 Show every block
  --ip=<IP>                     Show who holds <IP>
  -o, --output=<FILE>           Write the check's JSON report to <FILE> (- for stdout)
  --from-report=<FILE>          Release what this 'ipam check' report found
  --strictaffinity=<BOOL>       Cluster-wide strict affinity (default false)
  --release-empty-blocks=<BOOL> Give back emptied blocks their host does not need (default false)
"""


def _bool(text: str, name: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ArgError(f"invalid {name} {text!r}: true or false")
    return text.lower() == "true"


def parse(args: list[str]) -> Action:
    args = ["--output" if a == "-o" else a for a in args]
    words, opts = split_options(args, flags=("--show-blocks",),
                                valued=("--ip", "--output", "--from-report", "--strictaffinity",
                                        "--release-empty-blocks"), usage=USAGE)
    if not words:
        raise usage_error(USAGE, words, "ipam")
    cmd, rest = words[0], words[1:]
    allowed = {"info": set(), "release": {"--from-report"}, "show": {"--show-blocks", "--ip"},
               "check": {"--output"}, "configure": {"--strictaffinity", "--release-empty-blocks"}}
    if cmd not in allowed:
        raise usage_error(USAGE, words, "ipam")
    extra = set(opts) - allowed[cmd]
    if extra:
        raise ArgError(f"{', '.join(sorted(extra))} do(es) not apply to 'ipam {cmd}'")
    if cmd in ("info", "release") and not opts:
        if len(rest) != 1:
            raise usage_error(USAGE, words, "ipam")
        return _one_ip(cmd, check(validate_ip, rest[0], what="IP address"))
    if rest:
        raise usage_error(USAGE, words, "ipam")
    if cmd == "release":
        return _release_report(opts["--from-report"])
    if cmd == "show":
        ip = opts.get("--ip")
        return _show(bool(opts.get("--show-blocks")), check(validate_ip, ip, what="--ip") if ip else None)
    if cmd == "check":
        return _check(opts.get("--output"))
    if not opts:
        raise ArgError("'ipam configure' needs --strictaffinity and/or --release-empty-blocks")
    strict = opts.get("--strictaffinity")
    release = opts.get("--release-empty-blocks")
    return _configure(None if strict is None else _bool(strict, "--strictaffinity"),
                      None if release is None else _bool(release, "--release-empty-blocks"))


def _ipam_errors(what: str, fn):
    async def act(ctx: Context) -> int:
        from libcalico.ipam import IpamError

        try:
            return await fn(ctx)
        except IpamError as exc:
            raise CliError(f"{what}: {exc}") from None
    return act


def _one_ip(cmd: str, ip: str) -> Action:
    async def act(ctx: Context) -> int:
        from libcalico.ipam import Ipam

        ipam = Ipam(await ctx.client())
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

    return _ipam_errors(f"ipam {cmd} {ip}", act)


def _pct(n: int, total: int) -> str:
    return f"{n} ({100 * n // total if total else 0}%)"


def _show(blocks: bool, ip: str | None) -> Action:
    async def act(ctx: Context) -> int:
        from libcalico.ipam import Ipam

        ipam = Ipam(await ctx.client())
        if ip is not None:
            info = await ipam.get_assignment(ip)
            if info is None:
                ctx.print(f"IP {ip} is not currently assigned")
                return 0
            ctx.print(f"IP {ip} is in use by handle {info['handle']} (block {info['block']}, "
                      f"host affinity {info['host'] or 'none'})")
            for k, v in sorted(info["attrs"].items()):
                ctx.print(f"  {k}: {v}")
            return 0
        cfg = await ipam.config()
        rows = []
        for u in await ipam.pool_usage():
            flags = [f"/{u.pool.block_prefix} blocks"]
            if u.pool.disabled or not u.pool.ipam:
                flags.append("disabled" if u.pool.disabled else "no-ipam")
            if u.pool.strict_affinity or cfg.strict_affinity:
                flags.append("strict-affinity")
            rows.append(["IP Pool", u.pool.cidr, u.size, _pct(u.in_use, u.size), _pct(u.free, u.size),
                         len(u.blocks), ", ".join(flags)])
            if blocks:
                for b in u.blocks:
                    size = b.net.num_addresses
                    rows.append(["Block", b.cidr, size, _pct(b.in_use(), size), _pct(size - b.in_use(), size),
                                 "", f"host:{b.host}" if b.host else "no affinity"])
        ctx.print(table(["Grouping", "CIDR", "IPs total", "IPs in use", "IPs free", "Blocks", "Notes"], rows))
        return 0

    return _ipam_errors("ipam show", act)


def _check(output: str | None) -> Action:
    async def act(ctx: Context) -> int:
        from libcalico.ipam_check import check as run_check

        report = await run_check(await ctx.client())
        if output == "-":
            ctx.print(report.to_json())
            return 0 if report.clean else 1
        _print_report(ctx, report)
        if output:
            tmp = f"{output}.tmp{os.getpid()}"
            try:
                with open(tmp, "w") as f:
                    f.write(report.to_json() + "\n")
                os.replace(tmp, output)
            except OSError as e:
                raise CliError(f"ipam check: cannot write the report {output}: {e.strerror}") from None
            ctx.print(f"Report written to {output}" + ("" if report.clean else
                      f"; repair with 'calicoctl ipam release --from-report={output}'"))
        return 0 if report.clean else 1

    return _ipam_errors("ipam check", act)


def _print_report(ctx: Context, r) -> None:
    ctx.print(f"Checked {r.allocations} allocation(s) in {r.blocks} block(s) at datastore revision {r.revision}"
              + (f" ({r.legacy_blocks} block(s) still in the old record shape; converted on their next change)"
                 if r.legacy_blocks else ""))
    ctx.print(f"Leaked addresses (allocated, no workload or tunnel uses them): {len(r.leaked)}")
    for x in r.leaked:
        attrs = " ".join(f"{k}={v}" for k, v in sorted(x.attrs.items()))
        ctx.print(f"  {x.ip}  handle {x.handle}  block {x.block}  host {x.host or '-'}" + (f"  {attrs}" if attrs else ""))
    ctx.print(f"Endpoint addresses IPAM does not hold (could be handed out twice): {len(r.unrecorded)}")
    for u in r.unrecorded:
        ctx.print(f"  {u.ip}  endpoint {u.endpoint}")
    ctx.print(f"Blocks affine to nodes that no longer exist: {len(r.orphan_blocks)}")
    for o in r.orphan_blocks:
        ctx.print(f"  {o.block}  host {o.host}  {o.in_use} address(es) in use")
    ctx.print(f"Handle records that disagree with the blocks: {len(r.handle_mismatches)}")
    for m in r.handle_mismatches:
        ctx.print(f"  {m.handle}  recorded {json.dumps(m.recorded, sort_keys=True)}  "
                  f"blocks hold {json.dumps(m.actual, sort_keys=True)}")
    if r.corrupt:
        ctx.print(f"Unreadable block records: {len(r.corrupt)}")
        for c in r.corrupt:
            ctx.print(f"  {c['error']}")
    ctx.print("IPAM is consistent" if r.clean else "IPAM has problems (see above)")


def _release_report(path: str) -> Action:
    async def act(ctx: Context) -> int:
        from libcalico.ipam_check import Report, repair

        try:
            with open(path) as f:
                text = f.read(64 * 1024 * 1024 + 1)
        except OSError as e:
            raise CliError(f"ipam release --from-report: cannot read {path}: {e.strerror}") from None
        try:
            report = Report.from_json(text)
        except ValueError as e:
            raise CliError(f"ipam release --from-report: {path}: {e}") from None
        res = await repair(await ctx.client(), report)
        for ip in res.released:
            ctx.print(f"Released IP {ip}")
        for cidr in res.blocks_released:
            ctx.print(f"Released block {cidr}")
        for h in res.handles_fixed:
            ctx.print(f"Rewrote handle record {h}")
        for item, why in res.skipped:
            ctx.print(f"Kept {item}: {why}")
        ctx.print(f"{len(res.released)} address(es) released, {len(res.skipped)} item(s) kept")
        return 0

    return _ipam_errors("ipam release --from-report", act)


def _configure(strict: bool | None, release: bool | None) -> Action:
    async def act(ctx: Context) -> int:
        from libcalico.ipam import Ipam

        cfg = await Ipam(await ctx.client()).set_config(strict, release)
        ctx.print(f"strictaffinity: {str(cfg.strict_affinity).lower()}")
        ctx.print(f"release-empty-blocks: {str(cfg.release_empty_blocks).lower()}")
        return 0

    return _ipam_errors("ipam configure", act)
