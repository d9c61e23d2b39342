"""`calicoctl config felix|bgp|node bgp`: Felix parameters and the BGP settings confd honours.

Operators type the names the classic calicoctl documented (`loglevel`,
`ipip`, `asNumber`, `nodeToNodeMesh`), not the keys Felix reads: a name that
lands on a key nobody reads is a silent no-op, the worst kind of error.  So
names are mapped to the parameter Felix actually reads (case-insensitive), and
an unknown name or a value the reader would not recognise is refused unless
`--force` says it is meant (a newer Felix's parameter), as the classic calicoctl
did.  BGP names are those confd renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from calicoctl.cli import Action, ArgError, CliError, Context, check, split_options, usage_error
from libcalico import keys
from libcalico.validation import validate_asn, validate_config_param, validate_config_value, validate_name

USAGE = """\
Usage:
  calicoctl config felix <NAME> [<VALUE> | --remove] [--hostname=<HOSTNAME>] [--force]
  calicoctl config bgp <NAME> [<VALUE> | --remove] [--force]
  calicoctl config node bgp <NAME> [<VALUE> | --remove] [--hostname=<HOSTNAME>] [--force]

Description:
  Without <VALUE>: show the setting. With <VALUE>: set it. With --remove:
  delete it (the default applies).

  felix: a Felix parameter, by its Felix name (LogSeverityScreen, IpInIpMtu, ...)
  or a classic calicoctl name (case-insensitive):
    loglevel -> LogSeverityScreen   logfilelevel -> LogSeverityFile
    syslogloglevel -> LogSeveritySys  ipip -> IpInIpEnabled   ipipmtu -> IpInIpMtu
    vxlan -> VXLANEnabled   vxlanmtu -> VXLANMTU   interfaceprefix -> InterfacePrefix
    reportinginterval -> ReportingIntervalSecs   metadataaddr -> MetadataAddr
    metadataport -> MetadataPort   prometheusmetricsenabled -> PrometheusMetricsEnabled
  A name Felix does not know, or a value it would not recognise, is refused unless --force.
  Without --hostname it applies to every host (/calico/v1/config/<PARAM>); with it,
  to that host only (/calico/v1/host/<HOSTNAME>/config/<PARAM>), which wins.

  bgp (every node):   logLevel (none, debug, info), asNumber (the default AS),
                      nodeToNodeMesh (on, off)
  node bgp (one node, --hostname or this host): logLevel, asNumber

Options:
  --remove               Remove the setting
  --hostname=<HOSTNAME>  felix, node bgp: this host only
  --force                Write the setting even if the name or value is not recognised
"""

# Felix's datastore parameters (felix/config.py PARAMS with datastore=True); a unit
# test keeps this list a subset of Felix's, so a name here is never a silent no-op.
FELIX_PARAMS = (
    "InterfacePrefix", "DefaultEndpointToHostAction", "IptablesBackend", "IptablesRefreshInterval",
    "IptablesLockTimeoutSecs", "RouteRefreshInterval", "IpsetsRefreshInterval", "ReportingIntervalSecs",
    "ReportingTTLSecs", "EndpointReportingEnabled", "EndpointReportingDelaySecs", "LogSeverityScreen",
    "LogSeverityFile", "LogSeveritySys", "LogFilePath", "Ipv6Support", "HealthEnabled", "HealthHost",
    "HealthPort", "PrometheusMetricsEnabled", "PrometheusMetricsHost", "PrometheusMetricsPort",
    "FailsafeInboundHostPorts", "FailsafeOutboundHostPorts", "VXLANEnabled", "VXLANVNI", "VXLANPort",
    "VXLANMTU", "VXLANTunnelAddr", "IpInIpEnabled", "IpInIpMtu", "IpInIpTunnelAddr", "MetadataAddr",
    "MetadataPort", "NatOutgoingAddress",
)
CLASSIC_NAMES = {
    "loglevel": "LogSeverityScreen", "logfilelevel": "LogSeverityFile", "syslogloglevel": "LogSeveritySys",
    "ipip": "IpInIpEnabled", "ipipmtu": "IpInIpMtu", "vxlan": "VXLANEnabled", "vxlanmtu": "VXLANMTU",
    "reportinginterval": "ReportingIntervalSecs",
}
_FELIX_BY_LOWER = {p.lower(): p for p in FELIX_PARAMS}
FELIX_LOGLEVELS = ("debug", "info", "warning", "error", "critical", "none")
_BOOLS = {"true": "true", "on": "true", "yes": "true", "1": "true",
          "false": "false", "off": "false", "no": "false", "0": "false"}


def felix_param(name: str, force: bool) -> str:
    """The Felix parameter `name` means; ArgError for an unknown one without `force`."""
    low = name.lower()
    if low in CLASSIC_NAMES:
        return CLASSIC_NAMES[low]
    if low in _FELIX_BY_LOWER:
        return _FELIX_BY_LOWER[low]
    param = check(validate_config_param, name, what="parameter name")
    if not force:
        raise ArgError(f"unknown Felix parameter {name!r} (Felix would ignore it; use --force to set it anyway)")
    return param


def felix_value(param: str, value: str, force: bool = False) -> str:
    """The value as Felix parses it: log levels and booleans in their canonical spelling."""
    if force:
        return check(validate_config_value, value, what=f"value for {param}")
    low = value.strip().lower()
    if param.startswith("LogSeverity"):
        low = {"warn": "warning", "fatal": "critical"}.get(low, low)
        if low not in FELIX_LOGLEVELS:
            raise ArgError(f"invalid value for {param}: {value!r} is not a log level ({', '.join(FELIX_LOGLEVELS)})")
        return low
    if param.endswith("Enabled") or param == "Ipv6Support":
        if param == "VXLANEnabled" and low == "auto":
            return "auto"
        if low not in _BOOLS:
            raise ArgError(f"invalid value for {param}: {value!r} is not on/off or true/false")
        return _BOOLS[low]
    return check(validate_config_value, value, what=f"value for {param}")


@dataclass(frozen=True)
class BgpSetting:
    """One BGP setting confd renders: its key, and how a value is written and shown."""

    key: Callable[[str | None], str]
    write: Callable[[str], str]
    show: Callable[[str], str] = lambda raw: raw.strip()


def _bgp_loglevel(value: str) -> str:
    low = value.strip().lower()
    if low not in ("none", "debug", "info"):
        raise ArgError(f"invalid logLevel {value!r} (none, debug or info)")
    return low


def _mesh(value: str) -> str:
    low = value.strip().lower()
    if low not in _BOOLS:
        raise ArgError(f"invalid nodeToNodeMesh {value!r} (on or off)")
    return f'{{"enabled":{_BOOLS[low]}}}'


def _mesh_show(raw: str) -> str:
    import json

    try:
        return "on" if json.loads(raw).get("enabled") is True else "off"
    except (ValueError, AttributeError):
        return raw


def _asn(value: str) -> str:
    return str(check(validate_asn, value, what="asNumber"))


BGP_GLOBAL = {
    "loglevel": BgpSetting(lambda h: keys.bgp_global_loglevel(), _bgp_loglevel),
    "asnumber": BgpSetting(lambda h: keys.bgp_global_as(), _asn),
    "nodetonodemesh": BgpSetting(lambda h: keys.bgp_node_mesh(), _mesh, _mesh_show),
}
BGP_NODE = {
    "loglevel": BgpSetting(lambda h: keys.bgp_host_loglevel(h), _bgp_loglevel),  # type: ignore[arg-type]
    "asnumber": BgpSetting(lambda h: keys.bgp_host_as(h), _asn),  # type: ignore[arg-type]
}


def _bgp_setting(name: str, node: bool, host: str | None, force: bool) -> BgpSetting:
    """The setting for `name`; with --force an unknown one is the raw key of that name."""
    setting = (BGP_NODE if node else BGP_GLOBAL).get(name.lower())
    if setting is not None:
        return setting
    if not force:
        known = "logLevel, asNumber" if node else "logLevel, asNumber, nodeToNodeMesh"
        raise ArgError(f"unknown BGP setting {name!r} ({known}; --force writes it anyway)")
    raw = check(validate_config_param, name, what="BGP setting name")
    return BgpSetting(lambda h: f"{keys.bgp_host_dir(h) if node else keys.BGP_GLOBAL_DIR}{raw}",  # type: ignore[arg-type]
                      lambda v: v)


def _act(key: str, what: str, value: str | None, remove: bool, show: Callable[[str], str]) -> Action:
    async def act(ctx: Context) -> int:
        client = await ctx.client()
        if value is not None:
            await client.put(key, value)
        elif remove:
            if not await client.delete(key):
                raise CliError(f"{what} is not set; nothing removed")
            ctx.print("Value removed")
        else:
            current = await client.get(key)
            if current is None:
                raise CliError(f"{what} is not set")
            ctx.print(show(current))
        return 0

    return act


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--remove", "--force"), valued=("--hostname",), usage=USAGE)
    remove = bool(opts.get("--remove"))
    host = opts.get("--hostname")
    if host is not None:
        host = check(validate_name, host, "hostname", what="hostname")
    force = bool(opts.get("--force"))
    if words[:1] == ["felix"] and len(words) in (2, 3):
        param = felix_param(words[1], force)
        value = felix_value(param, words[2], force) if len(words) == 3 else None
        if remove and value is not None:
            raise ArgError("give either a value or --remove, not both")
        key = keys.host_config(host, param) if host else keys.global_config(param)
        return _act(key, f"{param}{' for host ' + host if host else ''}", value, remove, lambda raw: raw)
    node = words[:2] == ["node", "bgp"]
    rest = words[2:] if node else words[1:]
    if (node or words[:1] == ["bgp"]) and len(rest) in (1, 2):
        if not node and host is not None:
            raise ArgError("--hostname only applies to 'config felix' and 'config node bgp'")
        if node:
            from calicoctl.cli import hostname_opt

            host = hostname_opt(opts)
        setting = _bgp_setting(rest[0], node, host, force)
        value = None
        if len(rest) == 2:
            value = check(validate_config_value, rest[1], what=f"value for {rest[0]}") if force \
                else setting.write(rest[1])
        if remove and value is not None:
            raise ArgError("give either a value or --remove, not both")
        return _act(setting.key(host), f"{rest[0]}{' for node ' + host if node else ''}", value, remove, setting.show)
    raise usage_error(USAGE, words, "config")
