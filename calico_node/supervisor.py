"""Render the per-run supervisord configuration and become supervisord.

The configuration lives in CALICO_RUN_DIR (not /etc) so several nodes can run
on one machine, each in its own network namespace with its own socket, logs
and services.  Templates are the top-level `supervisord.conf` and
`services/*.conf` of the project (installed to /etc/calico/supervisor in the
image); only enabled services are copied, so `supervisorctl status` lists
exactly what this node runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .settings import NodeSettings

TEMPLATE_DIRS = (
    Path(__file__).resolve().parent.parent,  # source tree / editable install
    Path("/etc/calico/supervisor"),  # the image
)
STATE_FILE = "node.json"
SOCKET_FILE = "supervisor.sock"
CONF_FILE = "supervisord.conf"
_MARKER = re.compile(r"\{\{([a-z_0-9]+)\}\}")

# Relays program output to the container's stdout, one "<service> | line" per
# line, when file logging is disabled.  It starts first and stops last.
LOG_RELAY = """\
; Relays every service's output to the container's stdout with a per-service prefix.
[eventlistener:log-relay]
command={{bin}}calico-node --log-relay
events=PROCESS_LOG
buffer_size=4096
priority=1
autorestart=true
stdout_logfile=NONE
stderr_logfile=/dev/stdout
stderr_logfile_maxbytes=0
"""


@dataclass
class NodeState:
    """What the health checks need to know about the running node (run-dir/node.json)."""

    nodename: str
    ip: str
    ip6: str
    networking: bool
    services: list[str]
    socket: str
    run_dir: str
    conf_dir: str
    felix_health_enabled: bool
    felix_health_host: str
    felix_health_port: int
    backend: str = "bird"  # CALICO_NETWORKING_BACKEND (older node.json files lack it)


def template_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    candidates = [Path(env["CALICO_SUPERVISOR_TEMPLATES"])] if env.get("CALICO_SUPERVISOR_TEMPLATES") else []
    for d in candidates + list(TEMPLATE_DIRS):
        if (d / CONF_FILE).is_file() and (d / "services" / "felix.conf").is_file():
            return d
    raise FileNotFoundError("supervisord templates not found (set CALICO_SUPERVISOR_TEMPLATES to the directory "
                            "holding supervisord.conf and services/)")


def services_for(settings: NodeSettings, ip6: str) -> list[str]:
    """felix always; confd and BIRD only with the bird backend; bird only with an IPv4 address
    (IP=none: an IPv6-only node), bird6 only with an IPv6 one."""
    extra = ["libnetwork"] if settings.libnetwork else []  # the Docker driver, with or without BGP
    if not settings.networking:
        return ["felix"] + extra
    return ["felix"] + (["bird"] if settings.ip else []) + (["bird6"] if ip6 else []) + ["confd"] + extra


def bin_prefix() -> str:
    """Directory of our console scripts (the venv's bin), so supervisord finds them whatever PATH is."""
    here = Path(sys.executable).parent
    if (here / "calico-felix").exists() or (here / "calico-node").exists():
        return f"{here}/"
    found = shutil.which("calico-node")
    return f"{Path(found).parent}/" if found else ""


def render(text: str, values: dict[str, str]) -> str:
    """Fill {{name}} markers; an unknown marker is a bug in a template, so it fails loudly."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise KeyError(f"unknown template marker {m.group(0)}")
        return values[m.group(1)]
    return _MARKER.sub(sub, text)


def felix_health(env: dict[str, str]) -> tuple[bool, str, int]:
    """Where `-ready` finds Felix's health endpoint, from the FELIX_HEALTH* variables Felix itself reads.

    A wildcard bind is probed on loopback.  When health is enabled only through
    etcd we cannot know it here, and the check falls back to the process state.
    """
    enabled = env.get("FELIX_HEALTHENABLED", "").strip().lower() in ("true", "1", "yes")
    host = env.get("FELIX_HEALTHHOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port_raw = env.get("FELIX_HEALTHPORT", "").strip()
    port = int(port_raw) if port_raw.isascii() and port_raw.isdigit() and 0 < int(port_raw) < 65536 else 9099
    return enabled, host, port


def write_config(settings: NodeSettings, ip: str, ip6: str, templates: Path | None = None) -> Path:
    """Render run-dir/supervisord.conf and run-dir/services/; returns the config path."""
    templates = templates or template_dir(settings.env)
    run, logs = Path(settings.run_dir), Path(settings.log_dir)
    services = services_for(settings, ip6)
    (run / "services").mkdir(parents=True, exist_ok=True)
    for stale in (run / "services").glob("*.conf"):
        stale.unlink()

    common = {"bin": bin_prefix(), "run_dir": str(run), "log_dir": str(logs), "nodename": settings.nodename,
              "log_backups": str(settings.log_backups), "log_max_bytes": str(settings.log_max_bytes)}
    if settings.disable_file_logging:
        top = dict(common, supervisord_logfile="/dev/null", supervisord_log_max_bytes="0")
    else:
        logs.mkdir(parents=True, exist_ok=True)
        top = dict(common, supervisord_logfile=str(logs / "supervisord.log"),
                   supervisord_log_max_bytes=str(settings.log_max_bytes))
    (run / CONF_FILE).write_text(render((templates / CONF_FILE).read_text(), top))

    for name in services:
        if settings.disable_file_logging:
            values = dict(common, stdout_logfile="NONE", events="true")
        else:
            (logs / name).mkdir(parents=True, exist_ok=True)
            values = dict(common, stdout_logfile=str(logs / name / "current"), events="false")
        text = render((templates / "services" / f"{name}.conf").read_text(), values)
        (run / "services" / f"{name}.conf").write_text(text)
    if settings.disable_file_logging:
        (run / "services" / "log-relay.conf").write_text(render(LOG_RELAY, common))

    enabled, host, port = felix_health(settings.env)
    state = NodeState(nodename=settings.nodename, ip=ip, ip6=ip6, networking=settings.networking,
                      services=services, socket=str(run / SOCKET_FILE), run_dir=settings.run_dir,
                      conf_dir=settings.conf_dir, felix_health_enabled=enabled,
                      felix_health_host=host, felix_health_port=port, backend=settings.backend)
    (run / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")
    return run / CONF_FILE


def program_env(settings: NodeSettings, ip: str, ip6: str) -> dict[str, str]:
    """The environment every service inherits: resolved addresses, paths, and Felix's own names for them."""
    env = dict(settings.env)
    env.update(NODENAME=settings.nodename, HOSTNAME=settings.nodename, IP=ip, IP6=ip6,
               CALICO_RUN_DIR=settings.run_dir, CALICO_LOG_DIR=settings.log_dir,
               CALICO_CONF_DIR=settings.conf_dir,
               CALICO_NETWORKING="true" if settings.networking else "false",
               CALICO_NETWORKING_BACKEND=settings.backend,
               PYTHONUNBUFFERED="1")
    # pydantic would otherwise scan every installed distribution's entry points in each service for
    # plugins none of them uses: ~10 ms of CPU per process start.
    env.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    env.setdefault("FELIX_FELIXHOSTNAME", settings.nodename)
    for src, dst in (("ETCD_ENDPOINTS", "FELIX_ETCDENDPOINTS"), ("ETCD_CA_CERT_FILE", "FELIX_ETCDCAFILE"),
                     ("ETCD_CERT_FILE", "FELIX_ETCDCERTFILE"), ("ETCD_KEY_FILE", "FELIX_ETCDKEYFILE")):
        if env.get(src):
            env.setdefault(dst, env[src])
    if env.get("ETCD_AUTHORITY") and not env.get("ETCD_ENDPOINTS"):
        env.setdefault("FELIX_ETCDENDPOINTS", f"{env.get('ETCD_SCHEME', 'http')}://{env['ETCD_AUTHORITY']}")
    return env


def read_state(run_dir: str) -> NodeState:
    return NodeState(**json.loads((Path(run_dir) / STATE_FILE).read_text()))


def exec_supervisord(conf: Path, env: dict[str, str]) -> None:
    """Replace this process with supervisord (PID 1 in the container: it reaps and forwards signals)."""
    prog = bin_prefix() + "supervisord"
    if not os.path.exists(prog):
        prog = shutil.which("supervisord", path=env.get("PATH")) or "supervisord"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(prog, [prog, "-n", "-c", str(conf)], env)
