"""`calicoctl status`: is calico-node running here, and how are its BGP sessions.

"Here" is this network namespace: a node is a namespace in the tests and in
`--net=host` containers alike, so processes are matched by the namespace they
run in rather than by name alone.  The peer tables come from BIRD's control
sockets, never from birdc (whose exit code cannot be trusted).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from calicoctl.cli import Action, Context, split_options, table, usage_error

USAGE = """\
Usage:
  calicoctl status

Show whether calico-node runs in this network namespace and the state of its
IPv4 and IPv6 BGP sessions (read from BIRD's control sockets in
$CALICO_RUN_DIR, default /var/run/calico: bird.ctl and bird6.ctl).
"""

DEFAULT_RUN_DIR = "/var/run/calico"
NODE_PROGRAMS = ("calico-node", "supervisord", "calico-felix", "calico-confd", "calico-bird")
PEER_TYPES = {"Mesh_": "node-to-node mesh", "Global_": "global", "Node_": "node specific"}


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


async def status(ctx: Context) -> int:
    procs = node_processes()
    node = [p for p in procs if p.program in ("calico-node", "supervisord")]
    if not procs:
        ctx.print("calico-node is not running in this network namespace.")
    else:
        head = node[0] if node else procs[0]
        ctx.print(f"calico-node is running (pid {head.pid}).")
        ctx.print(table(["PROGRAM", "PID"], [[p.program, p.pid] for p in procs]))
    rd = run_dir()
    for version, sock in ((4, "bird.ctl"), (6, "bird6.ctl")):
        path = os.path.join(rd, sock)
        ctx.print(f"\nIPv{version} BGP status")
        if not os.path.exists(path):
            ctx.print(f"No IPv{version} BGP: {path} does not exist.")
            continue
        ctx.print(await bgp_table(path))
    return 0 if procs else 1


def parse(args: list[str]) -> Action:
    words, _ = split_options(args, usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "status")
    return status
