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

from libcalico import router_id
from libcalico.validation import validate_asn, validate_ip, validate_name

from . import autodetect, default_pools

DEFAULT_RUN_DIR = "/var/run/calico"
DEFAULT_LOG_DIR = "/var/log/calico"
DEFAULT_CONF_DIR = "/etc/calico"
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 5
AUTODETECT = "autodetect"
NONE = "none"  # IP=none: an IPv6-only node
BACKENDS = ("bird", "vxlan", "none")


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
    ip: str  # IPv4, AUTODETECT, or "" for an IPv6-only node (IP=none)
    ip6: str  # IPv6, AUTODETECT, or "" for none
    as_num: int | None
    networking: bool = True  # BGP (BIRD + confd) runs: CALICO_NETWORKING_BACKEND=bird
    backend: str = "bird"
    router_id: str = ""  # CALICO_ROUTER_ID as given: "", "hash" or an IPv4
    autodetect4: autodetect.Method = autodetect.FIRST_FOUND
    autodetect6: autodetect.Method = autodetect.FIRST_FOUND
    pools: tuple[default_pools.DefaultPool, ...] = ()
    disable_file_logging: bool = False
    no_default_pools: bool = False
    wait_for_datastore: bool = False
    run_dir: str = DEFAULT_RUN_DIR
    log_dir: str = DEFAULT_LOG_DIR
    conf_dir: str = DEFAULT_CONF_DIR
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_backups: int = DEFAULT_LOG_BACKUPS
    libnetwork: bool = False  # CALICO_LIBNETWORK_ENABLED: the Docker network + IPAM driver runs too
    env: dict[str, str] = field(default_factory=dict)


def from_env(env: Mapping[str, str] | None = None) -> NodeSettings:
    """Parse and validate the node's environment; raises SettingsError naming the variable."""
    env = dict(os.environ if env is None else env)
    ip, ip6 = _addresses(env)
    dirs = _dirs(env)
    backend = _backend(env)
    rid = _router_id(env, ip, backend)
    classic = _interface_pattern(env)
    try:
        pools = default_pools.from_env(env)
    except default_pools.PoolEnvError as e:
        raise SettingsError(str(e)) from None
    return NodeSettings(
        nodename=_nodename(env), ip=ip, ip6=ip6, as_num=_as_num(env),
        networking=backend == "bird", backend=backend, router_id=rid,
        autodetect4=_method(env, "IP_AUTODETECTION_METHOD", 4, classic),
        autodetect6=_method(env, "IP6_AUTODETECTION_METHOD", 6, classic),
        pools=pools,
        disable_file_logging=_bool(env, "CALICO_DISABLE_FILE_LOGGING", False),
        no_default_pools=_bool(env, "NO_DEFAULT_POOLS", False),
        wait_for_datastore=_bool(env, "WAIT_FOR_DATASTORE", False),
        run_dir=dirs["CALICO_RUN_DIR"], log_dir=dirs["CALICO_LOG_DIR"], conf_dir=dirs["CALICO_CONF_DIR"],
        log_max_bytes=_int(env, "CALICO_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES, 1024),
        log_backups=_int(env, "CALICO_LOG_BACKUPS", DEFAULT_LOG_BACKUPS, 0),
        libnetwork=_bool(env, "CALICO_LIBNETWORK_ENABLED", False),
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
    """IP and IP6: an address, AUTODETECT, or off (""); IPv4 autodetects when unset, IPv6 stays off."""
    ip = env.get("IP", "").strip()
    if ip.lower() in ("", AUTODETECT):
        ip = AUTODETECT
    elif ip.lower() == NONE:
        ip = ""
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
    if not ip and not ip6:
        raise SettingsError("IP=none: an IPv6-only node needs IP6 (an address or autodetect)")
    return ip, ip6


def _backend(env: Mapping[str, str]) -> str:
    """CALICO_NETWORKING_BACKEND (Calico 3.x) and the classic CALICO_NETWORKING switch, which must agree."""
    raw = env.get("CALICO_NETWORKING_BACKEND", "").strip()
    classic = _bool(env, "CALICO_NETWORKING", True)
    if not raw:
        return "bird" if classic else "none"
    backend = raw.lower()
    if backend not in BACKENDS:
        raise SettingsError(f"CALICO_NETWORKING_BACKEND={raw[:64]!r}: expected bird, vxlan or none")
    if not classic and backend == "bird":
        raise SettingsError("CALICO_NETWORKING_BACKEND=bird contradicts CALICO_NETWORKING=false")
    return backend


def _router_id(env: Mapping[str, str], ip: str, backend: str) -> str:
    """CALICO_ROUTER_ID; an IPv6-only node running BIRD cannot start without one."""
    try:
        rid = router_id.parse(env.get("CALICO_ROUTER_ID", ""))
    except ValueError as e:
        raise SettingsError(f"CALICO_ROUTER_ID: {e}") from None
    if not ip and not rid and backend == "bird":
        raise SettingsError("CALICO_ROUTER_ID: an IPv6-only node (IP=none) running BGP needs a router id: "
                            "set CALICO_ROUTER_ID=hash or an IPv4 address")
    return rid


def _method(env: Mapping[str, str], name: str, family: int,
            classic: re.Pattern[str] | None) -> autodetect.Method:
    raw = env.get(name, "").strip()
    if raw and classic is not None:
        raise SettingsError(f"{name} and IP_AUTODETECT_INTERFACE are both set: use {name}=interface=<regex> alone")
    if not raw:
        return autodetect.classic_interface(classic) if classic is not None else autodetect.FIRST_FOUND
    try:
        return autodetect.parse_method(raw, family)
    except ValueError as e:
        raise SettingsError(f"{name}: {e}") from None


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
