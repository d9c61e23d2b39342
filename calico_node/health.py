"""`calico-node -ready` / `-live`: one answer for the container's health check;
`-felix-ready -bird-ready -bird6-ready -felix-live -bird-live -bird6-live`
(any combination): Calico's per-service probes.

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
             check: Callable[[str, str, NodeState], str | None] = service_check,
             only: tuple[str, ...] | None = None) -> list[str]:
    """Every reason the node is not ready/live, one per service (of `only`, else all); empty = healthy."""
    try:
        procs = states(state.socket)
    except (OSError, xmlrpc.client.Error) as e:
        return [f"supervisord: not answering on {state.socket}: {e}"]
    out: list[str] = []
    for name in state.services if only is None else only:
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


# Calico's per-service probe flags: (service, kind).  Liveness and readiness are split so a
# node whose BGP peer is down is not ready (-bird-ready) but is not restarted (-bird-live).
PROBES = {f"-{svc}-{kind}": (svc, kind) for svc in ("felix", "bird", "bird6") for kind in ("ready", "live")}


def probe_flags(args: list[str]) -> list[tuple[str, str]] | None:
    """`-felix-ready -bird-live ...` (or with `--`) -> [(service, kind)]; None if any arg is not one."""
    out = []
    for a in args:
        flag = a[1:] if a.startswith("--") else a
        if flag not in PROBES:
            return None
        if PROBES[flag] not in out:
            out.append(PROBES[flag])
    return out or None


def service_problems(state: NodeState, probes: list[tuple[str, str]], **checks) -> list[str]:
    """What each asked probe finds wrong; a service this node does not run fails its probe."""
    out: list[str] = []
    for svc, kind in probes:
        if svc not in state.services:
            why = (f"BGP networking is off: CALICO_NETWORKING_BACKEND={state.backend}" if not state.networking
                   else "no IPv6 address (IP6)" if svc == "bird6" else "no IPv4 address (IP=none)")
            out.append(f"{svc}: not run by this node ({why})")
            continue
        out += problems(state, kind, only=(svc,), **checks)
    return out


def _state(run_dir: str, what: str) -> NodeState | None:
    try:
        return read_state(run_dir)
    except (OSError, ValueError, TypeError) as e:
        print(f"calico/node is not {what}: no node state in {run_dir} ({e})")
        return None


def probe_main(probes: list[tuple[str, str]]) -> int:
    """`calico-node -felix-live -bird-live`: exit 0 when every asked probe holds."""
    run_dir = os.environ.get("CALICO_RUN_DIR", "").strip() or DEFAULT_RUN_DIR
    what = " and ".join(sorted({k for _, k in probes}))
    state = _state(run_dir, what)
    if state is None:
        return 1
    found = service_problems(state, probes)
    asked = ", ".join(f"{s}-{k}" for s, k in probes)
    if found:
        print(f"calico/node is not {what} ({asked}): " + "; ".join(found))
        return 1
    print(f"calico/node is {what} ({asked})")
    return 0


def main(kind: str) -> int:
    run_dir = os.environ.get("CALICO_RUN_DIR", "").strip() or DEFAULT_RUN_DIR
    state = _state(run_dir, kind)
    if state is None:
        return 1
    found = problems(state, kind)
    if found:
        print(f"calico/node is not {kind}: " + "; ".join(found))
        return 1
    print(f"calico/node is {kind}: {', '.join(state.services)}")
    return 0
