"""`calicoctl node ...`: per-node commands, one module per subcommand.

Later node commands (run, stop, remove, show) register one line in
``SUBCOMMANDS``; each module exposes ``USAGE`` and ``parse(args)``.
"""

from __future__ import annotations

import importlib

from calicoctl.cli import Action, ArgError, HelpRequested

SUBCOMMANDS: dict[str, str] = {
    "bgp": "calicoctl.node_bgp",
    "run": "calicoctl.node_run",
    "stop": "calicoctl.node_stop",
    "remove": "calicoctl.node_remove",
    "show": "calicoctl.node_show",
    "status": "calicoctl.status",
}

USAGE_HEAD = """\
Usage:
  calicoctl node <subcommand> [<args>...]
  calicoctl node <subcommand> --help
  calicoctl node --ip=<IP> [--as=<AS_NUM>] [<run options>...]   (the classic form of 'node run')
"""


def _usage() -> str:
    parts = [USAGE_HEAD, "Subcommands:"]
    for name, mod in SUBCOMMANDS.items():
        module = importlib.import_module(mod)
        doc = getattr(module, "SUMMARY", None) or (module.__doc__ or "").strip().splitlines()[0]
        parts.append(f"  {name:<10}{doc}")
    return "\n".join(parts) + "\n"


def __getattr__(name: str) -> str:
    if name == "USAGE":
        return _usage()
    raise AttributeError(name)


def parse(args: list[str]) -> Action:
    if not args or args[0] in ("--help", "-h"):
        raise HelpRequested(_usage())
    sub = args[0]
    if sub.startswith("--"):
        # The classic start form `calicoctl node --ip=... [--as=...]` is `node run`.
        return importlib.import_module(SUBCOMMANDS["run"]).parse(args)
    if sub not in SUBCOMMANDS:
        raise ArgError(f"unknown command 'node {sub}' (see 'calicoctl node --help')")
    return importlib.import_module(SUBCOMMANDS[sub]).parse(args[1:])
