"""Build and parse every key of the datastore contract (shared/datamodel.md).

Builders refuse ids that could not be parsed back (a `/` would shift the key's
shape), so a key written by one program always parses in another.  Parsers
return a :class:`Key` naming the kind and its fields, or ``None`` for a key
outside the contract (callers log those as unknown, never crash on them).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

ROOT = "/calico"
READY = "/calico/v1/Ready"
CONFIG_DIR = "/calico/v1/config/"
HOST_DIR = "/calico/v1/host/"
POLICY_DIR = "/calico/v1/policy/"
PROFILE_DIR = "/calico/v1/policy/profile/"
TIER_DIR = "/calico/v1/policy/tier/"
POOL_DIR_V4 = "/calico/v1/ipam/v4/pool/"
POOL_DIR_V6 = "/calico/v1/ipam/v6/pool/"
IPAM_V1_DIR = "/calico/v1/ipam/"
BGP_DIR = "/calico/bgp/v1/"
BGP_GLOBAL_DIR = "/calico/bgp/v1/global/"
BGP_HOST_DIR = "/calico/bgp/v1/host/"
IPAM_V2_DIR = "/calico/ipam/v2/"
IPAM_HOST_DIR = "/calico/ipam/v2/host/"
IPAM_ASSIGN_DIR = "/calico/ipam/v2/assignment/"
IPAM_HANDLE_DIR = "/calico/ipam/v2/handle/"
FELIX_STATUS_DIR = "/calico/felix/v1/host/"
LIBNETWORK_DIR = "/calico/libnetwork/v1/"  # the Docker driver's own state (Docker networks, profiles it made)


class KeyError_(ValueError):
    """A key segment that cannot be used (empty, or containing '/')."""


def _seg(value: str, what: str) -> str:
    value = str(value)
    if not value or "/" in value or value in (".", ".."):
        raise KeyError_(f"{what} {value!r} cannot be a key segment")
    return value


def cidr_to_key(cidr: str) -> str:
    """`10.65.0.0/26` -> `10.65.0.0-26` (the datamodel's <cidr-key>)."""
    net = ipaddress.ip_network(cidr, strict=False)
    return f"{net.network_address}-{net.prefixlen}"


def key_to_cidr(seg: str) -> str:
    """`10.65.0.0-26` -> `10.65.0.0/26`; raises ValueError when it is not a CIDR key."""
    addr, sep, plen = seg.rpartition("-")
    if not sep:
        raise ValueError(f"{seg!r} is not a CIDR key")
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=True))


def ip_version(cidr_or_ip: str) -> int:
    return ipaddress.ip_network(cidr_or_ip, strict=False).version


# ---- builders ---------------------------------------------------------------

def global_config(param: str) -> str:
    return f"{CONFIG_DIR}{_seg(param, 'parameter')}"


def host_dir(host: str) -> str:
    return f"{HOST_DIR}{_seg(host, 'hostname')}/"


def host_config(host: str, param: str) -> str:
    return f"{host_dir(host)}config/{_seg(param, 'parameter')}"


def host_bird_ip(host: str) -> str:
    return f"{host_dir(host)}bird_ip"


def host_vxlan_mac(host: str) -> str:
    return f"{host_dir(host)}vxlan_tunnel_mac"


def workload_endpoint(host: str, orchestrator: str, workload: str, endpoint: str) -> str:
    return (f"{host_dir(host)}workload/{_seg(orchestrator, 'orchestrator')}/"
            f"{_seg(workload, 'workload')}/endpoint/{_seg(endpoint, 'endpoint id')}")


def libnetwork_networks() -> str:
    return f"{LIBNETWORK_DIR}host/"


def libnetwork_network(host: str, network_id: str) -> str:
    return f"{LIBNETWORK_DIR}host/{_seg(host, 'hostname')}/network/{_seg(network_id, 'network id')}"


def libnetwork_profile(profile: str) -> str:
    return f"{LIBNETWORK_DIR}profile/{_seg(profile, 'profile')}"


def workload_dir(host: str) -> str:
    return f"{host_dir(host)}workload/"


def host_endpoint(host: str, endpoint: str) -> str:
    return f"{host_dir(host)}endpoint/{_seg(endpoint, 'endpoint id')}"


def profile_dir(profile: str) -> str:
    return f"{PROFILE_DIR}{_seg(profile, 'profile')}/"


def profile_rules(profile: str) -> str:
    return f"{profile_dir(profile)}rules"


def profile_tags(profile: str) -> str:
    return f"{profile_dir(profile)}tags"


def profile_labels(profile: str) -> str:
    return f"{profile_dir(profile)}labels"


def tier_metadata(tier: str) -> str:
    return f"{TIER_DIR}{_seg(tier, 'tier')}/metadata"


def tier_policy(tier: str, name: str) -> str:
    return f"{TIER_DIR}{_seg(tier, 'tier')}/policy/{_seg(name, 'policy')}"


def pool(cidr: str) -> str:
    d = POOL_DIR_V4 if ip_version(cidr) == 4 else POOL_DIR_V6
    return f"{d}{cidr_to_key(cidr)}"


def bgp_host_dir(host: str) -> str:
    return f"{BGP_HOST_DIR}{_seg(host, 'hostname')}/"


def bgp_host_ip(host: str, version: int = 4) -> str:
    return f"{bgp_host_dir(host)}ip_addr_v{version}"


def bgp_host_as(host: str) -> str:
    return f"{bgp_host_dir(host)}as_num"


def bgp_host_loglevel(host: str) -> str:
    return f"{bgp_host_dir(host)}loglevel"


def bgp_host_peer(host: str, ip: str) -> str:
    ip = str(ipaddress.ip_address(ip))
    return f"{bgp_host_dir(host)}peer_v{ip_version(ip)}/{ip}"


def bgp_host_rr_cluster_id(host: str) -> str:
    return f"{bgp_host_dir(host)}rr_cluster_id"


def bgp_host_status(host: str, version: int = 4) -> str:
    return f"{bgp_host_dir(host)}status/v{version}"


def bgp_global_as() -> str:
    return f"{BGP_GLOBAL_DIR}as_num"


def bgp_node_mesh() -> str:
    return f"{BGP_GLOBAL_DIR}node_mesh"


def bgp_global_loglevel() -> str:
    return f"{BGP_GLOBAL_DIR}loglevel"


def bgp_global_peer(ip: str) -> str:
    ip = str(ipaddress.ip_address(ip))
    return f"{BGP_GLOBAL_DIR}peer_v{ip_version(ip)}/{ip}"


def ipam_host_dir(host: str) -> str:
    return f"{IPAM_HOST_DIR}{_seg(host, 'hostname')}/"


def block_affinity(host: str, cidr: str) -> str:
    v = ip_version(cidr)
    return f"{ipam_host_dir(host)}ipv{v}/block/{cidr_to_key(cidr)}"


def block_allocation(cidr: str) -> str:
    return f"{IPAM_ASSIGN_DIR}ipv{ip_version(cidr)}/block/{cidr_to_key(cidr)}"


def ipam_handle(handle: str) -> str:
    return f"{IPAM_HANDLE_DIR}{_seg(handle, 'handle')}"


def felix_status(host: str) -> str:
    return f"{FELIX_STATUS_DIR}{_seg(host, 'hostname')}/status"


def felix_last_status(host: str) -> str:
    return f"{FELIX_STATUS_DIR}{_seg(host, 'hostname')}/last_reported_status"


def felix_endpoint_status(host: str, orchestrator: str, workload: str, endpoint: str) -> str:
    return (f"{FELIX_STATUS_DIR}{_seg(host, 'hostname')}/workload/{_seg(orchestrator, 'orchestrator')}/"
            f"{_seg(workload, 'workload')}/endpoint/{_seg(endpoint, 'endpoint id')}")


# ---- parser -----------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """A parsed key: `kind` names the row of the datamodel, `fields` its variable parts."""

    kind: str
    path: str
    fields: dict = field(default_factory=dict, compare=False, hash=False)

    def __getattr__(self, name: str):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None


_SEG = r"([^/]+)"
_PATTERNS: list[tuple[str, re.Pattern]] = [(kind, re.compile(rx + r"\Z")) for kind, rx in [
    ("ready", r"/calico/v1/Ready"),
    ("global_config", rf"/calico/v1/config/{_SEG}"),
    ("host_config", rf"/calico/v1/host/{_SEG}/config/{_SEG}"),
    ("host_bird_ip", rf"/calico/v1/host/{_SEG}/bird_ip"),
    ("host_vxlan_mac", rf"/calico/v1/host/{_SEG}/vxlan_tunnel_mac"),
    ("workload_endpoint", rf"/calico/v1/host/{_SEG}/workload/{_SEG}/{_SEG}/endpoint/{_SEG}"),
    ("host_endpoint", rf"/calico/v1/host/{_SEG}/endpoint/{_SEG}"),
    ("profile_rules", rf"/calico/v1/policy/profile/{_SEG}/rules"),
    ("profile_tags", rf"/calico/v1/policy/profile/{_SEG}/tags"),
    ("profile_labels", rf"/calico/v1/policy/profile/{_SEG}/labels"),
    ("tier_metadata", rf"/calico/v1/policy/tier/{_SEG}/metadata"),
    ("tier_policy", rf"/calico/v1/policy/tier/{_SEG}/policy/{_SEG}"),
    ("pool", rf"/calico/v1/ipam/v([46])/pool/{_SEG}"),
    ("bgp_host_ip", rf"/calico/bgp/v1/host/{_SEG}/ip_addr_v([46])"),
    ("bgp_host_as", rf"/calico/bgp/v1/host/{_SEG}/as_num"),
    ("bgp_host_loglevel", rf"/calico/bgp/v1/host/{_SEG}/loglevel"),
    ("bgp_host_peer", rf"/calico/bgp/v1/host/{_SEG}/peer_v([46])/{_SEG}"),
    ("bgp_host_rr_cluster_id", rf"/calico/bgp/v1/host/{_SEG}/rr_cluster_id"),
    ("bgp_host_status", rf"/calico/bgp/v1/host/{_SEG}/status/v([46])"),
    ("bgp_global_as", r"/calico/bgp/v1/global/as_num"),
    ("bgp_node_mesh", r"/calico/bgp/v1/global/node_mesh"),
    ("bgp_global_loglevel", r"/calico/bgp/v1/global/loglevel"),
    ("bgp_global_peer", rf"/calico/bgp/v1/global/peer_v([46])/{_SEG}"),
    ("block_affinity", rf"/calico/ipam/v2/host/{_SEG}/ipv([46])/block/{_SEG}"),
    ("block_allocation", rf"/calico/ipam/v2/assignment/ipv([46])/block/{_SEG}"),
    ("ipam_handle", rf"/calico/ipam/v2/handle/{_SEG}"),
    ("felix_status", rf"/calico/felix/v1/host/{_SEG}/status"),
    ("felix_last_status", rf"/calico/felix/v1/host/{_SEG}/last_reported_status"),
    ("felix_endpoint_status", rf"/calico/felix/v1/host/{_SEG}/workload/{_SEG}/{_SEG}/endpoint/{_SEG}"),
]]

_FIELDS = {
    "ready": (),
    "global_config": ("param",),
    "host_config": ("host", "param"),
    "host_bird_ip": ("host",),
    "host_vxlan_mac": ("host",),
    "workload_endpoint": ("host", "orchestrator", "workload", "endpoint"),
    "host_endpoint": ("host", "endpoint"),
    "profile_rules": ("profile",),
    "profile_tags": ("profile",),
    "profile_labels": ("profile",),
    "tier_metadata": ("tier",),
    "tier_policy": ("tier", "policy"),
    "pool": ("version", "cidr"),
    "bgp_host_ip": ("host", "version"),
    "bgp_host_as": ("host",),
    "bgp_host_loglevel": ("host",),
    "bgp_host_peer": ("host", "version", "ip"),
    "bgp_host_rr_cluster_id": ("host",),
    "bgp_host_status": ("host", "version"),
    "bgp_global_as": (),
    "bgp_node_mesh": (),
    "bgp_global_loglevel": (),
    "bgp_global_peer": ("version", "ip"),
    "block_affinity": ("host", "version", "cidr"),
    "block_allocation": ("version", "cidr"),
    "ipam_handle": ("handle",),
    "felix_status": ("host",),
    "felix_last_status": ("host",),
    "felix_endpoint_status": ("host", "orchestrator", "workload", "endpoint"),
}


def parse(path: str) -> Key | None:
    """Parse a key into its kind and fields; None for keys outside the contract.

    CIDR segments come back as CIDRs (`10.65.0.0/26`) and versions as ints; a
    CIDR or IP segment that does not parse makes the whole key unknown.
    """
    for kind, rx in _PATTERNS:
        m = rx.match(path)
        if not m:
            continue
        vals: dict = dict(zip(_FIELDS[kind], m.groups(), strict=True))
        try:
            if "version" in vals:
                vals["version"] = int(vals["version"])
            if "cidr" in vals:
                vals["cidr"] = key_to_cidr(vals["cidr"])
                if ip_version(vals["cidr"]) != vals["version"]:
                    return None
            if "ip" in vals:
                vals["ip"] = str(ipaddress.ip_address(vals["ip"]))
                if ip_version(vals["ip"]) != vals["version"]:
                    return None
        except ValueError:
            return None
        return Key(kind, path, vals)
    return None
