"""`calicoctl endpoint`: which workload endpoints the datastore holds, and their profiles.

`endpoint <ID> profile append|remove|set` edits one endpoint's profile list in a
compare-and-swap on its stored value, keeping every other field as its
orchestrator wrote it; a profile that does not exist is refused unless
`--no-check` (as the classic calicoctl did).
"""

from __future__ import annotations

import json
from collections import Counter

from calicoctl.cli import (
    Action,
    ArgError,
    CliError,
    Context,
    check,
    read_modify_write,
    split_options,
    table,
    usage_error,
)
from libcalico.resources import WorkloadEndpoints
from libcalico.validation import validate_name

USAGE = """\
Usage:
  calicoctl endpoint show [--hostname=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>]
                          [--workload=<WORKLOAD_ID>] [--endpoint=<ENDPOINT_ID>] [--detailed]
  calicoctl endpoint <ENDPOINT_ID> [--hostname=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>]
                     [--workload=<WORKLOAD_ID>] profile (append|remove|set) [--no-check] [<PROFILES>...]
  calicoctl endpoint <ENDPOINT_ID> [--hostname=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>]
                     [--workload=<WORKLOAD_ID>] profile show

Description:
  Without --detailed: the number of endpoints per host and orchestrator.
  With --detailed: one row per endpoint (addresses, MAC, profiles, state).
  'profile append' adds profiles at the end, 'remove' takes them out, 'set'
  replaces the list (no profiles: none); the ids given must pick one endpoint.
  An endpoint whose stored value is invalid is listed with state 'invalid'.

Options:
  --hostname=<HOSTNAME>            Only endpoints on this host (--host is the same)
  --orchestrator=<ORCHESTRATOR_ID> Only endpoints of this orchestrator (e.g. docker, k8s)
  --workload=<WORKLOAD_ID>         Only endpoints of this workload
  --endpoint=<ENDPOINT_ID>         Only this endpoint
  --detailed                       One row per endpoint
  --no-check                       Do not check that the profiles exist
"""

FILTERS = {"--hostname": ("host", "hostname"), "--orchestrator": ("orchestrator", "orchestrator id"),
           "--workload": ("workload", "workload id"), "--endpoint": ("endpoint", "endpoint id")}


def parse(args: list[str]) -> Action:
    args = ["--hostname" + a[len("--host"):] if a == "--host" or a.startswith("--host=") else a for a in args]
    words, opts = split_options(args, flags=("--detailed", "--no-check"), valued=tuple(FILTERS), usage=USAGE)
    want = {field: check(validate_name, opts[opt], what, what=what)
            for opt, (field, what) in FILTERS.items() if opt in opts}
    if len(words) >= 3 and words[0] != "show" and words[1] == "profile":
        if opts.get("--detailed") or "--endpoint" in opts:
            raise ArgError("--detailed and --endpoint only apply to 'endpoint show'")
        want["endpoint"] = check(validate_name, words[0], "endpoint id", what="endpoint id")
        return _parse_profile(want, words[2:], bool(opts.get("--no-check")))
    if words != ["show"]:
        raise usage_error(USAGE, words, "endpoint")
    if opts.get("--no-check"):
        raise ArgError("--no-check only applies to 'endpoint <ID> profile append|remove|set'")
    detailed = bool(opts.get("--detailed"))

    async def show(ctx: Context) -> int:
        listed = await WorkloadEndpoints(await ctx.client()).list(**want, include_invalid=True)
        rows = [(s.key, s.value, s.error or "") for s in listed]
        rows.sort(key=lambda r: r[0].path)
        if not detailed:
            counts = Counter((k.host, k.orchestrator) for k, _, _ in rows)
            ctx.print(table(["Hostname", "Orchestrator ID", "Number of Endpoints"],
                            [[h, o, n] for (h, o), n in sorted(counts.items())]))
            return 0
        body = []
        for k, ep, reason in rows:
            if ep is None:
                body.append([k.host, k.orchestrator, k.workload, k.endpoint, "", "", "", f"invalid: {reason}"])
            else:
                body.append([k.host, k.orchestrator, k.workload, k.endpoint,
                             "\n".join(ep.ipv4_nets + ep.ipv6_nets), ep.mac or "",
                             ",".join(ep.profile_ids), ep.state])
        ctx.print(table(["Hostname", "Orchestrator ID", "Workload ID", "Endpoint ID", "Addresses",
                         "MAC", "Profiles", "State"], body))
        return 0

    return show


def _parse_profile(want: dict, rest: list[str], no_check: bool) -> Action:
    op, names = rest[0], rest[1:]
    if op == "show":
        if names or no_check:
            raise ArgError("'profile show' takes no profiles or options")
    elif op not in ("append", "remove", "set"):
        raise ArgError(f"unknown profile command {op!r} (append, remove, set or show)")
    elif op != "set" and not names:
        raise ArgError(f"'profile {op}' needs at least one profile")
    profiles = [check(validate_name, n, "profile name", what="profile name") for n in names]

    async def act(ctx: Context) -> int:
        client = await ctx.client()
        found = await WorkloadEndpoints(client).list(**want)
        if not found:
            raise CliError(f"no endpoint {want['endpoint']} matches (check --hostname/--orchestrator/--workload)")
        if len(found) > 1:
            raise CliError(f"{len(found)} endpoints are named {want['endpoint']}; pick one with "
                           "--hostname, --orchestrator and --workload")
        stored = found[0]
        if op == "show":
            for pid in stored.value.profile_ids:
                ctx.print(pid)
            return 0
        if op in ("append", "set") and not no_check:
            from libcalico.resources import Profiles

            repo = Profiles(client)
            missing = [p for p in profiles if await repo.get(p) is None]
            if missing:
                raise CliError(f"profile(s) {', '.join(missing)} not found (use --no-check to use them anyway)")

        def change(raw: str | None) -> str | None:
            if raw is None:
                raise CliError(f"endpoint {stored.path} was removed meanwhile")
            data = json.loads(raw)
            legacy = data.pop("profile_id", None)  # the classic single-profile form
            current = list(data.get("profile_ids") or ([] if legacy is None else [legacy]))
            if op == "append":
                dup = [p for p in profiles if p in current]
                if dup:
                    raise CliError(f"endpoint already has profile(s) {', '.join(dup)}")
                current += profiles
            elif op == "remove":
                absent = [p for p in profiles if p not in current]
                if absent:
                    raise CliError(f"endpoint does not have profile(s) {', '.join(absent)}")
                current = [p for p in current if p not in profiles]
            else:
                current = list(dict.fromkeys(profiles))
            data["profile_ids"] = current
            text = json.dumps(data, separators=(",", ":"))
            from libcalico.models import InvalidValue, parse_key_value

            try:
                parse_key_value(stored.path, text)
            except InvalidValue as e:
                raise CliError(str(e)) from None
            return text

        await read_modify_write(client, stored.path, change)
        return 0

    return act
