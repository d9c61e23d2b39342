"""Felix's parameters: typed, with the datamodel's precedence and one log line each.

Precedence (shared/datamodel.md): environment `FELIX_<PARAM>` (case-insensitive)
> config file (`/etc/calico/felix.cfg`, INI `[global]`, path overridable with
`FELIX_CONFIGFILE`) > host key `/calico/v1/host/<me>/config/<Param>` > global
key `/calico/v1/config/<Param>` > default.

Felix needs the etcd parameters before it can read etcd, so `Config.bootstrap`
works from env + file alone; `Config.resolve` adds the datastore layers once
the first snapshot is in.  A bad value in one layer is reported once naming its
source and that layer is skipped (the next one down wins), so a typo in etcd
never stops Felix.  Parameters that cannot change while Felix runs are marked
`live=False`: a change to one of them after start makes Felix exit with
`EXIT_CONFIG_CHANGED` so its supervisor restarts it with the new value.
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Exit code for "a parameter that cannot apply live changed": non-zero so that
# supervisord restarts Felix whatever its autorestart setting (true or unexpected),
# and distinct from 1 (a real failure) so logs and tests can tell them apart.
EXIT_CONFIG_CHANGED = 129
DEFAULT_CONFIG_FILE = "/etc/calico/felix.cfg"


class ConfigError(ValueError):
    """A value that does not parse for its parameter; str() names the parameter and source."""


# ---- value parsers -----------------------------------------------------------

def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("true", "1", "yes", "y", "on"):
        return True
    if s in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(f"{v!r} is not a boolean (true/false)")


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v.strip(), 0)
        except ValueError:
            raise ValueError(f"{v!r} is not an integer") from None
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range {lo}..{hi}")
        return n
    return parse


def _tunnel_mtu(v: str) -> int | None:
    """A tunnel device MTU; 0 or "none" (Calico's auto) = derive it from the host's uplink."""
    if v.strip().lower() in ("", "0", "none", "auto"):
        return None
    return _int_range(576, 65535)(v)


def _secs(v: str) -> float:
    try:
        n = float(v.strip())
    except ValueError:
        raise ValueError(f"{v!r} is not a number of seconds") from None
    if not 0 <= n <= 86400 * 7 or n != n:
        raise ValueError(f"{v!r} is out of range 0..604800 seconds")
    return n


def _enum(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(v: str) -> str:
        s = v.strip().upper() if upper else v.strip().lower()
        if s not in choices:
            raise ValueError(f"{v!r} is not one of {', '.join(choices)}")
        return s
    return parse


_IFPREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,14}\Z")


def _ifprefix(v: str) -> str:
    s = v.strip()
    if not _IFPREFIX_RE.match(s):
        raise ValueError(f"{v!r} is not an interface prefix (letters, digits, '-_.', 1-14 chars)")
    return s


_HOST_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}\Z")


def _hostname(v: str) -> str:
    s = v.strip()
    if not _HOST_RE.match(s) or s in (".", ".."):
        raise ValueError(f"{v!r} is not a valid hostname")
    return s


def _str(v: str) -> str:
    s = v.strip()
    if any(ord(c) < 32 for c in s):
        raise ValueError("contains control characters")
    return s


def _opt_ipv4(v: str) -> str | None:
    s = v.strip()
    if s.lower() in ("", "none"):
        return None
    return str(ipaddress.IPv4Address(s))


def _ip_or_none(v: str) -> str | None:
    s = v.strip()
    if s.lower() in ("", "none"):
        return None
    return str(ipaddress.ip_address(s))


def _metadata_addr(v: str) -> str | None:
    """MetadataAddr: an IPv4 address, a hostname, or 'None' (no metadata DNAT)."""
    s = v.strip()
    if s.lower() in ("", "none"):
        return None
    try:
        return str(ipaddress.IPv4Address(s))
    except ValueError:
        return _hostname(s)


def _loglevel(v: str) -> str:
    s = v.strip().lower()
    s = {"warn": "warning", "fatal": "critical"}.get(s, s)
    if s not in ("debug", "info", "warning", "error", "critical", "none"):
        raise ValueError(f"{v!r} is not a log level (debug, info, warning, error, critical, none)")
    return s


def _auto_bool(v: str) -> bool | None:
    """'auto' -> None (decide from the datastore), else a boolean."""
    return None if v.strip().lower() == "auto" else _bool(v)


def _ports(v: str) -> tuple[tuple[str, int], ...]:
    """'tcp:22, udp:68' -> (('tcp', 22), ('udp', 68)); a bare port means tcp; 'none' = empty."""
    s = v.strip()
    if s.lower() in ("", "none"):
        return ()
    out = []
    for item in s.split(","):
        item = item.strip()
        proto, sep, port = item.rpartition(":")
        proto = proto.lower() if sep else "tcp"
        if proto not in ("tcp", "udp", "sctp"):
            raise ValueError(f"{item!r}: protocol must be tcp, udp or sctp")
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r}: port must be 1..65535")
        out.append((proto, int(port)))
    return tuple(out)


def _endpoints(v: str) -> tuple[str, ...]:
    out = []
    for item in v.split(","):
        item = item.strip()
        if not item:
            continue
        if not re.match(r"https?://[A-Za-z0-9_.:\[\]-]+/?\Z", item):
            raise ValueError(f"{item!r} is not an etcd endpoint URL (http[s]://host:port)")
        out.append(item.rstrip("/"))
    if len({e.split("://", 1)[0] for e in out}) > 1:
        raise ValueError("mixes https:// and http:// endpoints; list endpoints of one scheme only "
                         "(no fallback to plaintext)")
    return tuple(out)


@dataclass(frozen=True)
class Param:
    name: str
    parse: Callable[[str], object]
    default: object
    live: bool = True          # False: a change after start restarts Felix
    datastore: bool = True     # False: only env/file (e.g. how to reach the datastore)


_FAILSAFE_IN = "tcp:22, udp:68, tcp:179, tcp:2379, tcp:2380"
_FAILSAFE_OUT = "udp:53, udp:67, tcp:179, tcp:2379, tcp:2380"

PARAMS: dict[str, Param] = {p.name.lower(): p for p in [
    Param("FelixHostname", _hostname, None, live=False, datastore=False),
    Param("EtcdEndpoints", _endpoints, (), live=False, datastore=False),
    Param("EtcdAddr", _str, "127.0.0.1:2379", live=False, datastore=False),
    Param("EtcdScheme", _enum("http", "https"), "http", live=False, datastore=False),
    Param("EtcdCaFile", _str, None, live=False, datastore=False),
    Param("EtcdCertFile", _str, None, live=False, datastore=False),
    Param("EtcdKeyFile", _str, None, live=False, datastore=False),
    Param("InterfacePrefix", _ifprefix, "cali", live=False),
    Param("DefaultEndpointToHostAction", _enum("DROP", "RETURN", "ACCEPT", upper=True), "DROP"),
    Param("IptablesBackend", _enum("auto", "legacy", "nft"), "auto", live=False),
    Param("IptablesRefreshInterval", _secs, 90.0),
    # how long one iptables-restore waits for the xtables lock before failing (and being retried)
    Param("IptablesLockTimeoutSecs", _int_range(1, 3600), 10, live=False),
    Param("RouteRefreshInterval", _secs, 90.0),
    Param("IpsetsRefreshInterval", _secs, 90.0),
    # the reporters are set up once at start: a change restarts Felix rather than being ignored
    Param("ReportingIntervalSecs", _secs, 30.0, live=False),
    Param("ReportingTTLSecs", _secs, 90.0, live=False),
    Param("EndpointReportingEnabled", _bool, False, live=False),
    Param("EndpointReportingDelaySecs", _secs, 1.0, live=False),
    Param("LogSeverityScreen", _loglevel, "info"),
    # accepted for compatibility with classic configs; Felix logs to stdout only
    # (supervisord captures and rotates it), so these are logged but have no effect
    Param("LogSeverityFile", _loglevel, "none"),
    Param("LogSeveritySys", _loglevel, "none"),
    Param("LogFilePath", _str, "none"),
    Param("Ipv6Support", _bool, True, live=False),
    # health, metrics, host endpoints, overlays, NAT
    Param("HealthEnabled", _bool, False, live=False),
    Param("HealthHost", _str, "127.0.0.1", live=False),
    Param("HealthPort", _int_range(1, 65535), 9099, live=False),
    Param("PrometheusMetricsEnabled", _bool, False, live=False),
    Param("PrometheusMetricsHost", _str, "127.0.0.1", live=False),
    Param("PrometheusMetricsPort", _int_range(1, 65535), 9091, live=False),
    Param("FailsafeInboundHostPorts", _ports, _ports(_FAILSAFE_IN)),
    Param("FailsafeOutboundHostPorts", _ports, _ports(_FAILSAFE_OUT)),
    Param("VXLANEnabled", _auto_bool, None, live=False),
    Param("VXLANVNI", _int_range(1, (1 << 24) - 1), 4096, live=False),
    Param("VXLANPort", _int_range(1, 65535), 4789, live=False),
    Param("VXLANMTU", _tunnel_mtu, None, live=False),   # None: the uplink's MTU minus 50
    Param("VXLANTunnelAddr", _opt_ipv4, None),
    Param("IpInIpEnabled", _bool, False, live=False),
    Param("IpInIpMtu", _tunnel_mtu, None, live=False),  # None: the uplink's MTU minus 20
    Param("IpInIpTunnelAddr", _opt_ipv4, None),
    Param("MetadataAddr", _metadata_addr, "127.0.0.1"),
    Param("MetadataPort", _int_range(1, 65535), 8775),
    Param("NatOutgoingAddress", _ip_or_none, None),
]}

# Settings that belong to the process environment, not to Felix parameters:
# they must not trigger the unknown-parameter warning.
_ENV_IGNORED = {"configfile"}


@dataclass(frozen=True)
class Value:
    value: object
    source: str  # "env FELIX_X", "file /etc/calico/felix.cfg", "host key ...", "global key ...", "default"


class Config:
    """Resolved parameters; attribute access by parameter name (`cfg.InterfacePrefix`)."""

    def __init__(self, values: dict[str, Value], warnings: list[str]):
        self._values = values
        self.warnings = warnings
        self.errors: list[str] = []  # fatal: an env/file-only setting that does not parse

    def __getattr__(self, name: str) -> object:
        try:
            return self._values[name.lower()].value
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        return self._values[name.lower()].source

    def items(self) -> list[tuple[str, Value]]:
        return [(PARAMS[k].name, v) for k, v in self._values.items()]

    # -- etcd connection ----------------------------------------------------------

    def etcd_endpoints(self) -> list[str]:
        """Endpoints from EtcdEndpoints, else EtcdScheme://EtcdAddr (the classic pair)."""
        if self.EtcdEndpoints:
            return list(self.EtcdEndpoints)
        return [f"{self.EtcdScheme}://{self.EtcdAddr}"]

    def etcd_tls(self) -> dict[str, str | None]:
        return {"ca": self.EtcdCaFile, "cert": self.EtcdCertFile, "key": self.EtcdKeyFile}

    # -- construction ---------------------------------------------------------------

    @classmethod
    def bootstrap(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Env + file + defaults only: what Felix needs to reach the datastore."""
        return cls.resolve({}, {}, environ=environ)

    @classmethod
    def resolve(cls, host_keys: Mapping[str, str], global_keys: Mapping[str, str],
                environ: Mapping[str, str] | None = None, hostname: str | None = None) -> Config:
        """Merge every layer; host_keys/global_keys map param name -> raw string from etcd."""
        environ = os.environ if environ is None else environ
        layers, warnings = _layers(host_keys, global_keys, environ, hostname)
        warnings += _misplaced(layers)
        values: dict[str, Value] = {}
        errors: list[str] = []
        for lname, param in PARAMS.items():
            values[lname] = _choose(param, layers, warnings, errors, hostname)
        cfg = cls(values, warnings)
        cfg.errors = errors
        return cfg

    def log_all(self, logger: logging.Logger = log, already_warned: frozenset[str] | set[str] = frozenset()
                ) -> None:
        """Log every parameter once with its value and source (and warnings not yet logged)."""
        for w in self.warnings:
            if w not in already_warned:
                logger.warning("config: %s", w)
        for name, v in sorted(self.items()):
            logger.info("config: %s = %r (from %s)", name, v.value, v.source)

    def restart_needed(self, new: Config) -> list[str]:
        """Names of non-live parameters whose value differs in `new`."""
        return [p.name for lname, p in PARAMS.items()
                if not p.live and self._values[lname].value != new._values[lname].value]


Layer = dict[str, tuple[str, str]]  # lower-case name -> (raw value, where it came from)


def _layers(host_keys: Mapping[str, str], global_keys: Mapping[str, str], environ: Mapping[str, str],
            hostname: str | None) -> tuple[list[tuple[str, Layer]], list[str]]:
    """Every source of a value, highest precedence first, so the first layer that parses wins."""
    env_layer: Layer = {}
    for var, raw in environ.items():
        if var.upper().startswith("FELIX_"):
            lname = var[6:].lower()
            if lname in _ENV_IGNORED:
                continue
            env_layer[lname] = (raw, f"env {var}")
    env_layer.update(_plain_etcd_env(environ, env_layer))
    path = environ.get("FELIX_CONFIGFILE") or environ.get("FELIX_CONFIGFILE".lower()) or DEFAULT_CONFIG_FILE
    file_layer, warnings = _read_file(path)
    layers = [
        ("env", env_layer),
        ("file", file_layer),
        ("host", {k.lower(): (v, f"host key /calico/v1/host/{hostname or '<host>'}/config/{k}")
                  for k, v in host_keys.items()}),
        ("global", {k.lower(): (v, f"global key /calico/v1/config/{k}") for k, v in global_keys.items()}),
    ]
    return layers, warnings


def _misplaced(layers: list[tuple[str, Layer]]) -> list[str]:
    """Warnings for names Felix does not know and process settings written to etcd, where they cannot act."""
    warnings = []
    for kind, layer in layers:
        for lname, (_raw, source) in layer.items():
            if lname not in PARAMS:
                warnings.append(f"unknown Felix parameter from {source}: ignored")
            elif not PARAMS[lname].datastore and kind in ("host", "global"):
                warnings.append(f"{PARAMS[lname].name} can only be set in the environment or "
                                f"config file; {source} ignored")
    return warnings


def _choose(param: Param, layers: list[tuple[str, Layer]], warnings: list[str], errors: list[str],
            hostname: str | None) -> Value:
    """The value from the first layer that sets and parses it; a bad datastore value falls through."""
    lname = param.name.lower()
    for kind, layer in layers:
        if lname not in layer:
            continue
        if not param.datastore and kind in ("host", "global"):
            continue
        raw, source = layer[lname]
        try:
            return Value(param.parse(raw), source)
        except (ValueError, TypeError) as e:
            if not param.datastore:
                # Process-level settings (etcd endpoints, TLS files, hostname) have
                # no safe fallback: guessing 127.0.0.1 would hide the mistake.
                errors.append(f"invalid value for {param.name} from {source}: {e}")
                break
            warnings.append(f"invalid value for {param.name} from {source}: {e}; ignored")
    default = param.default
    if param.name == "FelixHostname":
        default = hostname or socket.gethostname()
    return Value(default, "default")


def _plain_etcd_env(environ: Mapping[str, str], have: Mapping[str, object]) -> dict[str, tuple[str, str]]:
    """The plain ETCD_* variables, used where no FELIX_ETCD* equivalent is set."""
    out: dict[str, tuple[str, str]] = {}
    pairs = [("ETCD_ENDPOINTS", "etcdendpoints"), ("ETCD_AUTHORITY", "etcdaddr"),
             ("ETCD_SCHEME", "etcdscheme"), ("ETCD_CA_CERT_FILE", "etcdcafile"),
             ("ETCD_CERT_FILE", "etcdcertfile"), ("ETCD_KEY_FILE", "etcdkeyfile")]
    for var, lname in pairs:
        if environ.get(var) and lname not in have:
            out[lname] = (environ[var], f"env {var}")
    return out


def _read_file(path: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    if not os.path.exists(path):
        return {}, []
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # keep the parameter's spelling for messages
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except (OSError, configparser.Error, UnicodeDecodeError) as e:
        return {}, [f"config file {path} unreadable: {e}; ignored"]
    warnings = []
    for section in cp.sections():
        if section.lower() != "global":
            warnings.append(f"config file {path}: section [{section}] ignored (only [global] is read)")
    if not cp.has_section("global"):
        return {}, warnings
    return {k.lower(): (v, f"file {path} {k}") for k, v in cp.items("global")}, warnings
