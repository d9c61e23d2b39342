"""`calicoctl status`: is calico-node running here, and how are its BGP sessions.

"Here" is this network namespace: a node is a namespace in the tests and in
`--net=host` containers alike, so processes are matched by the namespace they
run in rather than by name alone.  The peer tables come from BIRD's control
sockets, never from birdc (whose exit code cannot be trusted).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from calicoctl.cli import Action, ArgError, Context, default_hostname, split_options, table, usage_error

SUMMARY = "This host's calico-node and BGP sessions; --all: every node's sessions (node status = status)"

USAGE = """\
Usage:
  calicoctl status [--runtime=<RUNTIME>]
  calicoctl status --all
  calicoctl node status [--runtime=<RUNTIME> | --all]

Show whether calico-node runs on this host and the state of its IPv4 and IPv6
BGP sessions (read from BIRD's control sockets in $CALICO_RUN_DIR, default
/var/run/calico: bird.ctl and bird6.ctl), headed by the node's peering address
and AS number as registered in the datastore.

With --all: every node's BGP sessions as each node's BIRD last reported them
to the datastore (/calico/bgp/v1/host/<node>/status/v4|v6), in one table; no
need to log into each host.

Options:
  --runtime=<RUNTIME>  How calico-node runs here: 'process' (default: programs
                       in this network namespace, as `calico-node` starts them)
                       or 'docker' (a container named calico-node; needs the
                       docker CLI). 'none' is the same as 'process'.
  --all                Every node's sessions, from the datastore.
"""

DEFAULT_RUN_DIR = "/var/run/calico"
NODE_PROGRAMS = ("calico-node", "supervisord", "calico-felix", "calico-confd", "calico-bird")
PEER_TYPES = {"Mesh_": "node-to-node mesh", "Global_": "global", "Node_": "node specific",
              "RR_": "route reflector"}
RUNTIMES = ("process", "none", "docker")
DATASTORE_TIMEOUT = 3.0


def run_dir() -> str:
    return os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR


@dataclass(frozen=True)
class Proc:
    pid: int
    program: str
    args: str


def _netns_id(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def node_processes(proc: str = "/proc") -> list[Proc]:
    """The calico programs running in our network namespace (by argv, not by comm, since
    console scripts run as `python .../calico-felix`)."""
    mine = _netns_id("self")
    out: list[Proc] = []
    for pid in os.listdir(proc):
        if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        prog = next((p for a in argv[:3] for p in NODE_PROGRAMS if os.path.basename(a) == p), None)
        if prog is None or _netns_id(pid) != mine:
            continue
        out.append(Proc(int(pid), prog, " ".join(argv)))
    return sorted(out, key=lambda p: p.pid)


def peer_type(name: str) -> str | None:
    for prefix, kind in PEER_TYPES.items():
        if name.startswith(prefix):
            return kind
    return None


def peer_address(name: str, neighbor: str | None) -> str:
    """BIRD's `Neighbor address` when known, else decoded from the protocol name."""
    if neighbor:
        return neighbor
    raw = name.split("_", 1)[1] if "_" in name else name
    for cand in (raw.replace("_", "."), raw.replace("_", ":")):
        try:
            return str(ipaddress.ip_address(cand))
        except ValueError:
            continue
    return raw


def peer_rows(protocols: list) -> list[list[str]]:
    """Rows of the peer table from `show protocols all` results (BGP protocols only)."""
    rows = []
    for p in protocols:
        kind = peer_type(p.name)
        if kind is None or p.proto.upper() != "BGP":
            continue
        if kind == "route reflector":  # the reflector's end of a host's session: client or fellow reflector
            kind = "rr client" if "route-reflector" in p.details.get("Session", "").split() else "reflector peer"
        rows.append([peer_address(p.name, p.neighbor_address), kind, p.state, p.since, p.info])
    return rows


async def bgp_table(sock: str) -> str:
    from bird_control.protocol import BirdClient, BirdError, BirdUnavailable

    try:
        async with BirdClient(sock, timeout=5.0) as bird:
            protocols = await bird.show_protocols(all=True)
    except (BirdUnavailable, BirdError, OSError) as e:
        return f"Error reading BIRD at {sock}: {e}"
    rows = peer_rows(protocols)
    if not rows:
        return "No BGP peers configured."
    return table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows)


async def identity(ctx: Context, host: str) -> dict[int, str]:
    """The `IP: ...    AS Number: ...` line per family, as the classic `calicoctl status` headed each table.

    From the datastore (the node's registration); "(inherited)" marks the global AS.  A datastore
    that cannot be reached within a few seconds costs this line only, never the BIRD tables.
    """
    from libcalico import keys

    async def read() -> tuple[dict[int, str | None], str | None, str | None]:
        client = await ctx.client()
        ips = {v: await client.get(keys.bgp_host_ip(host, v)) for v in (4, 6)}
        return ips, await client.get(keys.bgp_host_as(host)), await client.get(keys.bgp_global_as())

    try:
        ips, own_as, global_as = await asyncio.wait_for(read(), DATASTORE_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - any datastore failure: say so on this line, go on with BIRD
        why = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        return {v: f"IP: (unknown)    AS Number: (unknown: datastore unreachable: {why})" for v in (4, 6)}
    asn = (own_as or "").strip() or f"{(global_as or '').strip() or '64511'} (inherited)"
    return {v: f"IP: {(ips[v] or '').strip() or '(none)'}    AS Number: {asn}" for v in (4, 6)}


def _node_name() -> str:
    """The node whose registration heads the tables: the one running here, else NODENAME/HOSTNAME."""
    from calicoctl.container import _running_node_name

    return _running_node_name() or default_hostname()


def docker_state(name: str = "calico-node") -> tuple[bool, str]:
    """(running, one line) for the calico-node container, through the docker CLI."""
    if shutil.which("docker") is None:
        return False, "--runtime=docker: the docker CLI is not installed here"
    r = subprocess.run(["docker", "inspect", "--format", "{{.State.Status}} {{.State.StartedAt}}", name],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        return False, f"calico-node container is not running ({(r.stderr or r.stdout).strip()[:200]})"
    state, _, started = r.stdout.strip().partition(" ")
    return state == "running", f"calico-node container is {state} (started {started})."


def status_action(runtime: str) -> Action:
    async def status(ctx: Context) -> int:
        if runtime == "docker":
            running, line = docker_state()
            ctx.print(line)
            procs: list[Proc] = []
        else:
            procs = node_processes()
            running = bool(procs)
            node = [p for p in procs if p.program in ("calico-node", "supervisord")]
            if not procs:
                ctx.print("calico-node is not running in this network namespace.")
            else:
                head = node[0] if node else procs[0]
                ctx.print(f"calico-node is running (pid {head.pid}).")
                ctx.print(table(["PROGRAM", "PID"], [[p.program, p.pid] for p in procs]))
        rd = run_dir()
        ident = await identity(ctx, _node_name())
        for version, sock in ((4, "bird.ctl"), (6, "bird6.ctl")):
            path = os.path.join(rd, sock)
            ctx.print(f"\nIPv{version} BGP status")
            ctx.print(ident[version])
            if not os.path.exists(path):
                ctx.print(f"No IPv{version} BGP: {path} does not exist.")
                continue
            ctx.print(await bgp_table(path))
        return 0 if running else 1

    return status


def _routes(s: dict) -> str:
    imp, exp = s.get("imported"), s.get("exported")
    return f"{imp}/{exp}" if isinstance(imp, int) and isinstance(exp, int) else ""


def cluster_rows(kvs: list) -> tuple[list[list[str]], list[str]]:
    """Table rows from the nodes' published status documents, and one note per unreadable document.

    A document is whatever the node (or anyone with etcd access) wrote: every field is checked,
    and a bad document is named and skipped, never allowed to hide the other nodes.
    """
    from libcalico import keys

    rows: list[list[str]] = []
    notes: list[str] = []
    for kv in kvs:
        k = keys.parse(kv.key)
        if k is None or k.kind != "bgp_host_status":
            continue
        try:
            doc = json.loads(kv.value)
            sessions = doc["sessions"]
            if not isinstance(sessions, list):
                raise TypeError("sessions is not a list")
            reported = str(doc.get("time", ""))[:40]
            if not sessions:
                rows.append([k.host, f"IPv{k.version}", "(no BGP peers)", "", "", "", "", reported])
            for s in sessions:
                rows.append([k.host, f"IPv{k.version}", str(s.get("peer", ""))[:45], str(s.get("type", ""))[:20],
                             str(s.get("state", ""))[:20], str(s.get("since", ""))[:25], _routes(s),
                             reported])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            notes.append(f"{kv.key}: unreadable status ({e.__class__.__name__}: {str(e)[:80]})")
    return rows, notes


async def status_all(ctx: Context) -> int:
    from libcalico import keys

    client = await ctx.client()
    _, kvs = await client.get_prefix(keys.BGP_HOST_DIR)
    rows, notes = cluster_rows(kvs)
    registered = sorted({k.host for kv in kvs if (k := keys.parse(kv.key)) is not None
                         and k.kind == "bgp_host_ip" and k.version == 4})
    reported = {r[0] for r in rows}
    for host in registered:
        if host not in reported:
            rows.append([host, "", "(no status reported)", "", "", "", "", ""])
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    ctx.print(table(["NODE", "FAMILY", "PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "ROUTES IMP/EXP",
                     "REPORTED"], rows))
    for n in notes:
        ctx.print(n)
    return 0


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--all",), valued=("--runtime",), usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "status")
    if opts.get("--all"):
        if "--runtime" in opts:
            raise ArgError("--runtime does not apply to 'status --all' (it reads the datastore)")
        return status_all
    runtime = opts.get("--runtime", "process")
    if runtime not in RUNTIMES:
        raise ArgError(f"invalid --runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    return status_action(runtime)
