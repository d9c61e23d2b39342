"""`calico-node -ready` / `-live`: one answer for the container's health check.

Aggregates what each service can tell: Felix's own health endpoint when it is
enabled (else supervisord's view of the process),
BIRD through its shim (`calico-bird --check-ready` looks at BGP sessions) and
confd through `calico-confd --check-ready`.
Reads run-dir/node.json written at startup, so it checks exactly the services
this node runs without re-deriving them from an environment that may differ
(a `docker exec` does not see autodetected addresses).
"""

from __future__ import annotations

import http.client
import os
import subprocess
import xmlrpc.client
from collections.abc import Callable

from supervisor.xmlrpc import SupervisorTransport

from .settings import DEFAULT_RUN_DIR
from .supervisor import NodeState, bin_prefix, read_state

CHECK_TIMEOUT = 5.0


def process_states(socket_path: str) -> dict[str, str]:
    """{program name: statename} from supervisord over its unix socket."""
    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    return {p["name"]: p["statename"] for p in proxy.supervisor.getAllProcessInfo()}


def felix_http(host: str, port: int, path: str) -> str | None:
    """None when Felix's health endpoint answers 200, else the reason."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=CHECK_TIMEOUT)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
    except OSError as e:
        return f"health endpoint http://{host}:{port}{path} unreachable: {e}"
    return None if status == 200 else f"health endpoint http://{host}:{port}{path} returned {status}"


def service_check(name: str, kind: str, state: NodeState) -> str | None:
    """Ask the service itself; None when it says yes.

    BIRD: `calico-bird [--ipv6] --check-ready|--check-live` (BGP sessions /
    control socket); confd: `calico-confd --check-ready` (in sync, last render
    and reload good).  Liveness of confd is its process state alone.
    """
    if name == "confd":
        if kind != "ready":
            return None
        cmd = [bin_prefix() + "calico-confd", "--check-ready"]
    else:
        cmd = [bin_prefix() + "calico-bird"] + (["--ipv6"] if name == "bird6" else []) + [f"--check-{kind}"]
    env = dict(os.environ, CALICO_RUN_DIR=state.run_dir, CALICO_CONF_DIR=state.conf_dir,
               NODENAME=state.nodename)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{' '.join(cmd[1:])} failed: {e}"
    if r.returncode == 0:
        return None
    text = (r.stdout.strip() + " " + r.stderr.strip()).strip().splitlines()
    return text[-1] if text else f"exit {r.returncode}"


def problems(state: NodeState, kind: str,
             states: Callable[[str], dict[str, str]] = process_states,
             http_check: Callable[[str, int, str], str | None] = felix_http,
             check: Callable[[str, str, NodeState], str | None] = service_check) -> list[str]:
    """Every reason the node is not ready/live, one per service; empty = healthy."""
    try:
        procs = states(state.socket)
    except (OSError, xmlrpc.client.Error) as e:
        return [f"supervisord: not answering on {state.socket}: {e}"]
    out: list[str] = []
    for name in state.services:
        st = procs.get(name, "MISSING")
        if name == "felix" and state.felix_health_enabled:
            reason = http_check(state.felix_health_host, state.felix_health_port,
                                "/readiness" if kind == "ready" else "/liveness")
            if reason:
                out.append(f"felix: {reason}")
            continue
        own_check = name in ("bird", "bird6", "confd") and state.networking
        # STARTING is supervisord's first second after a (re)start: the process is
        # alive, and a service that can answer for itself decides its readiness.
        if st != "RUNNING" and not (st == "STARTING" and (kind == "live" or own_check)):
            out.append(f"{name}: {st}")
            continue
        if own_check:
            reason = check(name, kind, state)
            if reason:
                out.append(f"{name}: {reason}")
    return out


def main(kind: str) -> int:
    run_dir = os.environ.get("CALICO_RUN_DIR", "").strip() or DEFAULT_RUN_DIR
    try:
        state = read_state(run_dir)
    except (OSError, ValueError, TypeError) as e:
        print(f"calico/node is not {kind}: no node state in {run_dir} ({e})")
        return 1
    found = problems(state, kind)
    if found:
        print(f"calico/node is not {kind}: " + "; ".join(found))
        return 1
    print(f"calico/node is {kind}: {', '.join(state.services)}")
    return 0
