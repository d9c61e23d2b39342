"""Validators for plain values (IPs, CIDRs, AS numbers, names, MACs).

Everything that leaves etcd or the command line for iptables, ipsets, routes
or BIRD passes through one of these, so each is strict: it accepts exactly
the forms the datamodel allows, normalizes them, and raises ValueError with a
short human reason otherwise.  They take plain Python values and know nothing
of keys; `libcalico.models` adds the key to the message.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

__all__ = [
    "SAFE_ID_RE", "IFNAME_RE", "LOG_PREFIX_RE", "CONFIG_PARAM_RE",
    "validate_asn", "validate_ip", "validate_cidr", "validate_name", "validate_ifname",
    "validate_mac", "validate_loglevel", "validate_config_value", "validate_config_param",
    "validate_log_prefix", "LOGLEVELS",
]

# Profile/tag/tier/policy/host/workload ids: they end up in chain names, ipset
# comments and BIRD protocol names, so nothing but this charset.
SAFE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,253}\Z")
# Interface names: the kernel forbids '/', ':', whitespace and "."/".."; we
# also keep to a charset iptables and ip(8) print unambiguously.
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
LOG_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,27}\Z")
CONFIG_PARAM_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}\Z")
_IP_CHARS_RE = re.compile(r"[0-9A-Fa-f.:]{2,45}\Z")
_CIDR_CHARS_RE = re.compile(r"[0-9A-Fa-f.:]{2,45}(?:/[0-9]{1,3})?\Z")
# A canonical dotted quad (ASCII digits, no leading zeros: what ipaddress accepts and prints),
# bare or /32.  The common case of endpoint addresses, checked without building ipaddress
# objects: a 50,000-endpoint cluster snapshot spent ~1 s in ipaddress for these alone.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
V4_ADDR_RE = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z")
V4_HOST_RE = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/32)?\Z")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\x80-\x9f\u2028\u2029]")

LOGLEVELS = frozenset({"debug", "info", "notice", "warning", "warn", "error", "critical", "fatal", "none"})
MAX_ASN = 4294967295


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts other scripts' digits (and superscripts),
    which int() then reads as a different-looking number than the text shows."""
    return text.isascii() and text.isdigit()


def validate_asn(value: object) -> int:
    """An AS number: int or decimal string 1..4294967295, or dotted 'a.b' (asdot)."""
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not an AS number")
    if isinstance(value, int):
        asn = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value):
        asn = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}\.[0-9]{1,5}", value):
        hi, lo = (int(p) for p in value.split("."))
        if hi > 65535 or lo > 65535:
            raise ValueError(f"{_show(value)} is not an AS number (each half of a.b must be 0..65535)")
        asn = hi * 65536 + lo
    else:
        raise ValueError(f"{_show(value)} is not an AS number")
    if not 1 <= asn <= MAX_ASN:
        raise ValueError(f"AS number {_show(value)} out of range 1..{MAX_ASN}")
    return asn


def _family(version: int | None) -> str:
    return {4: "IPv4 ", 6: "IPv6 "}.get(version or 0, "")


@lru_cache(maxsize=65536)
def _ip(text: str, version: int | None) -> str:
    if not _IP_CHARS_RE.match(text):
        raise ValueError(f"{_show(text)} is not a valid {_family(version)}address")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{_show(text)} is not a valid {_family(version)}address") from None
    if version is not None and addr.version != version:
        raise ValueError(f"{_show(text)} is not a valid {_family(version)}address")
    return str(addr)


def validate_ip(value: object, version: int | None = None) -> str:
    """A bare IP address of the given family (4, 6 or either), normalized."""
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a valid {_family(version)}address")
    return _ip(value, version)


def validate_bgp_ip(value: object, version: int | None = None) -> str:
    """An address BGP can use (a peer's or a host's): unicast and specified.

    BIRD refuses `neighbor 0.0.0.0`/`::` and an IPv6 link-local neighbor without
    an interface; one such value in etcd would make every rendered config fail
    its check, so it is rejected (naming its key) before it reaches a template.
    """
    ip = validate_ip(value, version)
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified or addr.is_multicast or (addr.version == 6 and addr.is_link_local):
        raise ValueError(f"{_show(ip)} is not usable as a BGP address (unspecified, multicast or "
                         "IPv6 link-local)")
    return ip


@lru_cache(maxsize=65536)
def _cidr(text: str, version: int | None) -> str:
    if not _CIDR_CHARS_RE.match(text):
        raise ValueError(f"{_show(text)} is not a valid {_family(version)}CIDR")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{_show(text)} is not a valid {_family(version)}CIDR") from None
    if version is not None and net.version != version:
        raise ValueError(f"{_show(text)} is not a valid {_family(version)}CIDR")
    return str(net)


def validate_cidr(value: object, version: int | None = None) -> str:
    """A CIDR (a bare IP becomes /32 or /128), normalized to its network address."""
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a valid {_family(version)}CIDR")
    if version != 6 and V4_HOST_RE.match(value):
        return value if value.endswith("/32") else value + "/32"
    return _cidr(value, version)


def validate_name(value: object, what: str = "name") -> str:
    """A profile/tag/tier/policy/host id in the safe charset (letters, digits, '-_.')."""
    if not isinstance(value, str) or not SAFE_ID_RE.match(value) or value in (".", ".."):
        raise ValueError(f"{_show(value)} is not a valid {what} (letters, digits, '-_.', 1-253 chars)")
    return value


def validate_ifname(value: object) -> str:
    """An interface name the kernel accepts and that is safe in iptables rules."""
    if not isinstance(value, str) or not IFNAME_RE.match(value) or value in (".", ".."):
        raise ValueError(f"{_show(value)} is not a valid interface name "
                         "(letters, digits, '-_.', 1-15 chars)")
    return value


def validate_mac(value: object) -> str:
    """A MAC address, normalized to lower case with colons."""
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise ValueError(f"{_show(value)} is not a valid MAC address")
    return value.lower().replace("-", ":")


def validate_loglevel(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in LOGLEVELS:
        raise ValueError(f"{_show(value)} is not a log level ({', '.join(sorted(LOGLEVELS))})")
    return value.strip().lower()


def validate_config_param(value: object) -> str:
    if not isinstance(value, str) or not CONFIG_PARAM_RE.match(value):
        raise ValueError(f"{_show(value)} is not a valid config parameter name")
    return value


def validate_config_value(value: object) -> str:
    """A Felix parameter value: non-empty, no control characters (Felix checks its type)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("config value must be a non-empty string")
    if _CONTROL_RE.search(value) or len(value) > 4096:
        raise ValueError(f"{_show(value)} contains control characters or is too long")
    return value.strip()


def validate_log_prefix(value: object) -> str:
    if not isinstance(value, str) or not LOG_PREFIX_RE.match(value):
        raise ValueError(f"{_show(value)} is not a valid log prefix (letters, digits, '-_.:/', <= 27 chars)")
    return value
