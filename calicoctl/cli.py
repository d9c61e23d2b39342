"""Grammar, dispatch and error reporting shared by every calicoctl command group.

Each command group is one module exposing ``USAGE`` (its help text, the
classic calicoctl grammar) and ``parse(args) -> Action``.  Parsing validates
every argument before any datastore connection exists, so a bad argument can
never leave a half-written change behind: it raises :class:`ArgError`, which
becomes one line on stderr and exit code 2.  The returned action is a
coroutine function run with a :class:`Context`; failures it meets at run time
(a missing profile, an unreachable etcd) become one line and exit code 1.

Adding a command group = one module + one line in ``GROUPS``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

PROG = "calicoctl"

# name -> module path.  Imported lazily so a group's heavy dependencies never
# slow down (or break) the others.
GROUPS: dict[str, str] = {
    "pool": "calicoctl.pool",
    "bgp": "calicoctl.bgp",
    "node": "calicoctl.node",
    "profile": "calicoctl.profile",
    "endpoint": "calicoctl.endpoint",
    "ipam": "calicoctl.ipam",
    "config": "calicoctl.config",
    "version": "calicoctl.version",
    "container": "calicoctl.container",
    "status": "calicoctl.status",
    "checksystem": "calicoctl.checksystem",
    "diags": "calicoctl.diags",
    "create": "calicoctl.manifest_create",
    "apply": "calicoctl.manifest_apply",
    "replace": "calicoctl.manifest_replace",
    "delete": "calicoctl.manifest_delete",
    "get": "calicoctl.manifest_get",
}

TOP_USAGE = """\
Usage:
  calicoctl <command> [<args>...]
  calicoctl <command> --help

Datastore commands:
  pool          Configure IP pools
  bgp           Configure global BGP settings and peers
  node          Per-node settings (node bgp peer ...)
  profile       Configure endpoint profiles, their tags and rules
  endpoint      Show workload endpoints
  ipam          Inspect and release IP address assignments
  config        Get and set Felix configuration
  version       Show the calicoctl version

Resource commands (YAML/JSON documents, apiVersion v1):
  create        Create resources from a file (-f FILE, - = stdin)
  apply         Create or replace resources from a file
  replace       Replace existing resources from a file
  delete        Delete resources from a file, or one by KIND NAME
  get           Show resources of one kind (-o ps|wide|yaml|json)

Node commands:
  container     Connect network namespaces to this node (the namespace orchestrator)
  status        Show calico-node and its BGP sessions on this node
  checksystem   Check this host can run calico-node
  diags         Collect diagnostics into a tar.gz

The datastore is etcd: ETCD_ENDPOINTS (comma list, with scheme), else
ETCD_AUTHORITY (host:port, default 127.0.0.1:2379) and ETCD_SCHEME; TLS with
ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE.

See 'calicoctl <command> --help' for the commands of a group.
"""


class CliError(Exception):
    """A failure reported as one line on stderr; ``code`` is the exit code."""

    code = 1


class ArgError(CliError):
    """A bad argument or usage: exit 2, and nothing was written."""

    code = 2


class HelpRequested(Exception):
    """--help seen: print ``text`` on stdout and exit 0."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass
class Context:
    """What a running command may touch: the datastore client and its streams."""

    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stdin: IO[str] = field(default_factory=lambda: sys.stdin)
    _client: Any = None

    async def client(self) -> Any:
        """The datastore client, created on first use (``version`` never needs one)."""
        if self._client is None:
            from libcalico.datastore import DatastoreClient

            self._client = DatastoreClient.from_env()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.close()
            finally:
                self._client = None

    def print(self, text: str = "") -> None:
        print(text, file=self.stdout)


Action = Callable[[Context], Awaitable[int | None]]


# ---- argument helpers --------------------------------------------------------

def check(fn: Callable[..., Any], value: Any, *extra: Any, what: str | None = None) -> Any:
    """Run a libcalico validator, turning its ValueError into an ArgError."""
    try:
        return fn(value, *extra)
    except (ValueError, TypeError) as exc:
        reason = str(exc)
        raise ArgError(f"invalid {what}: {reason}" if what else reason) from None


def split_options(args: Sequence[str], flags: Sequence[str] = (), valued: Sequence[str] = (),
                  usage: str = "") -> tuple[list[str], dict[str, Any]]:
    """Pull ``--flag`` and ``--opt=value``/``--opt value`` out of args.

    Returns the positional words and a dict of options (flags True, valued
    options their string).  ``--help``/``-h`` anywhere raises HelpRequested;
    an unknown option is an ArgError naming it.  A lone ``--`` ends options.
    """
    words: list[str] = []
    opts: dict[str, Any] = {}
    i = 0
    args = list(args)
    while i < len(args):
        a = args[i]
        if a == "--":
            words.extend(args[i + 1:])
            break
        if a in ("--help", "-h"):
            raise HelpRequested(usage)
        if a.startswith("--"):
            name, eq, val = a.partition("=")
            if name in flags and not eq:
                opts[name] = True
            elif name in valued:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise ArgError(f"option {name} needs a value")
                    val = args[i]
                opts[name] = val
            else:
                raise ArgError(f"unknown option {a!r}")
        else:
            words.append(a)
        i += 1
    return words, opts


def usage_error(usage: str, words: Sequence[str], group: str) -> ArgError:
    shown = " ".join([group, *words]).strip()
    return ArgError(f"invalid command '{shown}' (see '{PROG} {group} --help')")


def default_hostname() -> str:
    """The node's name as the classic tools found it: NODENAME, HOSTNAME, else the kernel's."""
    return os.environ.get("NODENAME") or os.environ.get("HOSTNAME") or socket.gethostname()


def hostname_opt(opts: dict[str, Any]) -> str:
    from libcalico.validation import validate_name

    host = opts.get("--hostname") or default_hostname()
    return check(validate_name, host, "hostname", what="hostname")


def dumps(value: Any) -> str:
    """The JSON form written to etcd: compact, as libcalico.models.to_json writes it."""
    return json.dumps(value, separators=(",", ":"))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A prettytable-style box, as the classic calicoctl printed."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(line) for row in cells for line in row[i].split("\n") or [""])
              for i in range(len(headers))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [sep]

    def emit(row: list[str]) -> None:
        parts = [c.split("\n") for c in row]
        height = max(len(p) for p in parts)
        for ln in range(height):
            out.append("| " + " | ".join((p[ln] if ln < len(p) else "").ljust(w)
                                         for p, w in zip(parts, widths, strict=True)) + " |")

    emit(cells[0])
    out.append(sep)
    for row in cells[1:]:
        emit(row)
    if len(cells) > 1:
        out.append(sep)
    return "\n".join(out)


async def read_modify_write(client: Any, key: str, change: Callable[[str | None], str | None],
                            attempts: int = 30) -> str | None:
    """Apply ``change`` to a key's value with compare-and-swap, retrying on races.

    ``change`` gets the current value (None when absent) and returns the new
    one (None = delete); it may raise CliError to abort.  Returns what was
    written.
    """
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(random.uniform(0, 0.02 * attempt))  # de-synchronize racing editors
        kv = await client.get_kv(key)
        current = kv.value if kv is not None else None
        rev = kv.mod_revision if kv is not None else 0
        new = change(current)
        if new == current:
            return new
        if await client.cas(key, rev, new):
            return new
    raise CliError(f"{key} kept changing under us; nothing written, try again")


# ---- dispatch -----------------------------------------------------------------

def load_group(name: str) -> Any:
    return importlib.import_module(GROUPS[name])


def parse(argv: Sequence[str]) -> Action:
    """argv (without the program name) -> the action to run; raises ArgError/HelpRequested."""
    argv = list(argv)
    if not argv or argv[0] in ("--help", "-h", "help"):
        if len(argv) >= 2 and argv[0] == "help" and argv[1] in GROUPS:
            raise HelpRequested(load_group(argv[1]).USAGE)
        raise HelpRequested(TOP_USAGE)
    if argv[0] in ("--version", "-v"):
        argv = ["version"]
    name = argv[0]
    if name not in GROUPS:
        raise ArgError(f"unknown command {name!r} (see '{PROG} --help')")
    return load_group(name).parse(argv[1:])


def _datastore_errors() -> tuple[type[BaseException], ...]:
    try:
        from libcalico.datastore import DatastoreError
    except ImportError:
        return ()
    return (DatastoreError,)


def _config_errors() -> tuple[type[BaseException], ...]:
    try:
        from libcalico.etcdconf import ConfigError
    except ImportError:
        return ()
    return (ConfigError,)


def _describe_datastore() -> str:
    return (os.environ.get("ETCD_ENDPOINTS")
            or f"{os.environ.get('ETCD_SCHEME', 'http')}://{os.environ.get('ETCD_AUTHORITY', '127.0.0.1:2379')}")


async def _run(action: Action, ctx: Context) -> int:
    try:
        rc = await action(ctx)
    finally:
        try:
            await ctx.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
            pass
    return int(rc or 0)


def run(argv: Sequence[str], stdout: IO[str] | None = None, stdin: IO[str] | None = None,
        stderr: IO[str] | None = None) -> int:
    """Parse and run one command; returns the exit code (never raises for user errors)."""
    err = stderr or sys.stderr
    out = stdout or sys.stdout
    try:
        action = parse(argv)
    except HelpRequested as h:
        print(h.text.rstrip("\n"), file=out)
        return 0
    except CliError as exc:
        print(f"{PROG}: {_one_line(exc)}", file=err)
        return exc.code
    ctx = Context(stdout=out, stdin=stdin or sys.stdin)
    ds_errors = _datastore_errors()
    cfg_errors = _config_errors()
    try:
        return asyncio.run(_run(action, ctx))
    except CliError as exc:
        print(f"{PROG}: {_one_line(exc)}", file=err)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line, never a traceback
        if cfg_errors and isinstance(exc, cfg_errors):
            print(f"{PROG}: bad etcd settings: {_one_line(exc)}", file=err)
        elif ds_errors and isinstance(exc, ds_errors):
            print(f"{PROG}: datastore error ({_describe_datastore()}): {_one_line(exc)}", file=err)
        else:
            print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}", file=err)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
