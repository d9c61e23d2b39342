"""`calicoctl endpoint show`: which workload endpoints the datastore holds, per host."""

from __future__ import annotations

from collections import Counter

from calicoctl.cli import Action, Context, check, split_options, table, usage_error
from libcalico.resources import WorkloadEndpoints
from libcalico.validation import validate_name

USAGE = """\
Usage:
  calicoctl endpoint show [--hostname=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>]
                          [--workload=<WORKLOAD_ID>] [--endpoint=<ENDPOINT_ID>] [--detailed]

Description:
  Without --detailed: the number of endpoints per host and orchestrator.
  With --detailed: one row per endpoint (addresses, MAC, profiles, state).
  An endpoint whose stored value is invalid is listed with state 'invalid'.

Options:
  --hostname=<HOSTNAME>            Only endpoints on this host
  --orchestrator=<ORCHESTRATOR_ID> Only endpoints of this orchestrator (e.g. docker, k8s)
  --workload=<WORKLOAD_ID>         Only endpoints of this workload
  --endpoint=<ENDPOINT_ID>         Only this endpoint
  --detailed                       One row per endpoint
"""

FILTERS = {"--hostname": ("host", "hostname"), "--orchestrator": ("orchestrator", "orchestrator id"),
           "--workload": ("workload", "workload id"), "--endpoint": ("endpoint", "endpoint id")}


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--detailed",), valued=tuple(FILTERS), usage=USAGE)
    if words != ["show"]:
        raise usage_error(USAGE, words, "endpoint")
    want = {field: check(validate_name, opts[opt], what, what=what)
            for opt, (field, what) in FILTERS.items() if opt in opts}
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
