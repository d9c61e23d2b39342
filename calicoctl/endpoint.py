"""`calicoctl endpoint show`: which workload endpoints the datastore holds, per host."""

from __future__ import annotations

from collections import Counter

from calicoctl.cli import Action, Context, check, split_options, table, usage_error
from libcalico import keys
from libcalico.models import InvalidValue, WorkloadEndpoint, parse_key_value
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
    prefix = keys.host_dir(want["host"]) if "host" in want else keys.HOST_DIR

    async def show(ctx: Context) -> int:
        client = await ctx.client()
        _, kvs = await client.get_prefix(prefix)
        rows = []
        for kv in kvs:
            key = keys.parse(kv.key)
            if key is None or key.kind != "workload_endpoint":
                continue
            if any(getattr(key, f) != v for f, v in want.items()):
                continue
            try:
                _, ep = parse_key_value(kv.key, kv.value)
            except InvalidValue as exc:
                rows.append((key, None, exc.reason))
                continue
            assert isinstance(ep, WorkloadEndpoint)
            rows.append((key, ep, ""))
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
