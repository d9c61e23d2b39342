"""`calicoctl config felix`: Felix parameters for every host or for one host."""

from __future__ import annotations

from calicoctl.cli import Action, ArgError, CliError, Context, check, split_options, usage_error
from libcalico import keys
from libcalico.validation import validate_config_param, validate_config_value, validate_name

USAGE = """\
Usage:
  calicoctl config felix <PARAM> [<VALUE> | --remove] [--hostname=<HOSTNAME>]

Description:
  Without <VALUE>: show the parameter's value. With <VALUE>: set it.
  With --remove: delete it (Felix falls back to its default).
  Without --hostname the setting applies to every host (/calico/v1/config/<PARAM>);
  with it, only to that host (/calico/v1/host/<HOSTNAME>/config/<PARAM>), which wins.

Options:
  --remove               Remove the parameter
  --hostname=<HOSTNAME>  Apply to this host only
"""


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--remove",), valued=("--hostname",), usage=USAGE)
    if len(words) < 2 or words[0] != "felix" or len(words) > 3:
        raise usage_error(USAGE, words, "config")
    param = check(validate_config_param, words[1], what="parameter name")
    value = check(validate_config_value, words[2], what=f"value for {param}") if len(words) == 3 else None
    remove = bool(opts.get("--remove"))
    if remove and value is not None:
        raise ArgError("give either a value or --remove, not both")
    host = opts.get("--hostname")
    if host is not None:
        host = check(validate_name, host, "hostname", what="hostname")
    key = keys.host_config(host, param) if host else keys.global_config(param)

    async def act(ctx: Context) -> int:
        client = await ctx.client()
        if value is not None:
            await client.put(key, value)
        elif remove:
            if not await client.delete(key):
                raise CliError(f"{param} is not set{' for host ' + host if host else ''}; nothing removed")
        else:
            current = await client.get(key)
            if current is None:
                raise CliError(f"{param} is not set{' for host ' + host if host else ''}")
            ctx.print(current)
        return 0

    return act
