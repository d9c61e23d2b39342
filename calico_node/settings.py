"""The node's settings, read once from the environment.

Every knob of the container is an environment variable (that is how `docker
run -e` and Kubernetes configure it), so all parsing and validation happens
here, before anything touches etcd: a bad value is one error naming the
variable, and the node never half-starts.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from libcalico.validation import validate_asn, validate_ip, validate_name

DEFAULT_RUN_DIR = "/var/run/calico"
DEFAULT_LOG_DIR = "/var/log/calico"
DEFAULT_CONF_DIR = "/etc/calico"
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5
AUTODETECT = "autodetect"


class SettingsError(ValueError):
    """A bad environment variable; str() names the variable."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name}={env[name]!r}: expected true or false")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", raw) or int(raw) < minimum:
        raise SettingsError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return int(raw)


@dataclass
class NodeSettings:
    """What the environment asked for; `ip`/`ip6` may still say "autodetect"."""

    nodename: str
    ip: str  # IPv4, or AUTODETECT
    ip6: str  # IPv6, AUTODETECT, or "" for none
    as_num: int | None
    networking: bool = True
    disable_file_logging: bool = False
    no_default_pools: bool = False
    wait_for_datastore: bool = False
    autodetect_interface: re.Pattern[str] | None = None
    run_dir: str = DEFAULT_RUN_DIR
    log_dir: str = DEFAULT_LOG_DIR
    conf_dir: str = DEFAULT_CONF_DIR
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_backups: int = DEFAULT_LOG_BACKUPS
    env: dict[str, str] = field(default_factory=dict)


def from_env(env: Mapping[str, str] | None = None) -> NodeSettings:
    """Parse and validate the node's environment; raises SettingsError naming the variable."""
    env = dict(os.environ if env is None else env)
    ip, ip6 = _addresses(env)
    dirs = _dirs(env)
    return NodeSettings(
        nodename=_nodename(env), ip=ip, ip6=ip6, as_num=_as_num(env),
        networking=_bool(env, "CALICO_NETWORKING", True),
        disable_file_logging=_bool(env, "CALICO_DISABLE_FILE_LOGGING", False),
        no_default_pools=_bool(env, "NO_DEFAULT_POOLS", False),
        wait_for_datastore=_bool(env, "WAIT_FOR_DATASTORE", False),
        autodetect_interface=_interface_pattern(env),
        run_dir=dirs["CALICO_RUN_DIR"], log_dir=dirs["CALICO_LOG_DIR"], conf_dir=dirs["CALICO_CONF_DIR"],
        log_max_bytes=_int(env, "CALICO_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES, 1024),
        log_backups=_int(env, "CALICO_LOG_BACKUPS", DEFAULT_LOG_BACKUPS, 0),
        env=env,
    )


def _nodename(env: Mapping[str, str]) -> str:
    nodename = (env.get("NODENAME") or env.get("HOSTNAME") or socket.gethostname()).strip()
    try:
        validate_name(nodename, "node name")
    except ValueError as e:
        var = "NODENAME" if env.get("NODENAME") else "HOSTNAME"
        raise SettingsError(f"{var}: {e}") from None
    return nodename


def _addresses(env: Mapping[str, str]) -> tuple[str, str]:
    """IP and IP6: an address, or AUTODETECT; IPv4 autodetects when unset, IPv6 stays off ("")."""
    ip = env.get("IP", "").strip()
    if ip.lower() in ("", AUTODETECT):
        ip = AUTODETECT
    else:
        try:
            ip = validate_ip(ip, 4)
        except ValueError as e:
            raise SettingsError(f"IP: {e}") from None
    ip6 = env.get("IP6", "").strip()
    if ip6.lower() == AUTODETECT:
        ip6 = AUTODETECT
    elif ip6:
        try:
            ip6 = validate_ip(ip6, 6)
        except ValueError as e:
            raise SettingsError(f"IP6: {e}") from None
    return ip, ip6


def _as_num(env: Mapping[str, str]) -> int | None:
    as_raw = env.get("AS", "").strip()
    if not as_raw:
        return None
    try:
        return validate_asn(as_raw)
    except ValueError as e:
        raise SettingsError(f"AS: {e}") from None


def _interface_pattern(env: Mapping[str, str]) -> re.Pattern[str] | None:
    if not env.get("IP_AUTODETECT_INTERFACE", "").strip():
        return None
    try:
        return re.compile(env["IP_AUTODETECT_INTERFACE"].strip())
    except re.error as e:
        raise SettingsError(f"IP_AUTODETECT_INTERFACE: bad regular expression: {e}") from None


def _dirs(env: Mapping[str, str]) -> dict[str, str]:
    """The run/log/conf dirs end up in supervisord's config, where '%' and ';' mean something."""
    dirs = {}
    for var, default in (("CALICO_RUN_DIR", DEFAULT_RUN_DIR), ("CALICO_LOG_DIR", DEFAULT_LOG_DIR),
                         ("CALICO_CONF_DIR", DEFAULT_CONF_DIR)):
        value = env.get(var, "").strip() or default
        if not os.path.isabs(value) or any(c in value for c in "\n\r%;"):
            raise SettingsError(f"{var}={value!r}: expected an absolute path without '%', ';' or newlines")
        dirs[var] = os.path.normpath(value)
    return dirs
