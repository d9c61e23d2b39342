"""Stop calico-node on this host (the Docker container, or the local supervisord)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from calicoctl import container, status
from calicoctl.cli import Action, CliError, Context, split_options, usage_error

USAGE = """\
Usage:
  calicoctl node stop [--force] [--hostname=<HOSTNAME>]

Stop calico-node on this host: the calico-node Docker container when there is
one, else the calico-node/supervisord running in this network namespace (found
by $CALICO_RUN_DIR/supervisord.pid).  Refuses while the node still has
workload endpoints, because they would lose their networking; --force stops it
anyway (the endpoints stay in etcd).
"""

STOP_TIMEOUT = 30.0


def _docker_running() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        r = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", "calico-node"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == "true"


def _pid_from_file(path: str) -> int | None:
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def local_node_pids() -> list[int]:
    """The top of the node's process tree here: supervisord (by pid file) and calico-node."""
    pids = []
    pid = _pid_from_file(os.path.join(container.run_dir(), "supervisord.pid"))
    mine = os.readlink("/proc/self/ns/net")
    if pid is not None:
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == mine:
                pids.append(pid)
        except OSError:
            pass
    for p in status.node_processes():
        if p.program in ("calico-node", "supervisord") and p.pid not in pids:
            pids.append(p.pid)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def stop_local(pids: list[int], timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM (supervisord then stops its programs), wait; returns the pids still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--force",), valued=("--hostname",), usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "node stop")
    force = bool(opts.get("--force"))
    explicit = opts.get("--hostname")

    async def stop(ctx: Context) -> int:
        docker = _docker_running()
        pids = [] if docker else local_node_pids()
        if not docker and not pids:
            ctx.print("calico-node is not running here")
            return 0
        if not force:
            client = await ctx.client()
            host = await container.local_hostname(client, explicit)
            eps = await container.host_endpoints(client, host)
            if eps:
                raise CliError(f"node {host} still has {len(eps)} workload endpoint(s); remove them "
                               "first or use --force")
        if docker:
            r = subprocess.run(["docker", "stop", "calico-node"], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise CliError(f"docker stop calico-node failed: {r.stderr.strip()}")
            ctx.print("Stopped the calico-node container")
            return 0
        left = stop_local(pids)
        if left:
            raise CliError(f"calico-node did not stop within {STOP_TIMEOUT:.0f}s (pids {left})")
        ctx.print(f"Stopped calico-node (pid {', '.join(map(str, pids))})")
        return 0

    return stop
