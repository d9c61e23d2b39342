"""BGP router ids for nodes that have no IPv4 address of their own.

BIRD needs a 32-bit router id even on an IPv6-only node.  `CALICO_ROUTER_ID`
is read by both calico-node (to refuse a bad value before anything starts)
and confd (which renders it), so the one definition lives here.  `hash`
derives the id from the node name exactly as Calico does (the first four
bytes of SHA-256, moved out of the multicast/reserved range), so a node keeps
its id across restarts and a mixed cluster agrees on it.
"""

from __future__ import annotations

import hashlib

from libcalico.validation import validate_ip

HASH = "hash"


def hash_router_id(nodename: str) -> str:
    """Calico's hashToIPv4: SHA-256 of the name, first 4 bytes; a first byte above 223 loses 32."""
    b = hashlib.sha256(nodename.encode()).digest()[:4]
    first = b[0] - 32 if b[0] > 223 else b[0]
    return f"{first}.{b[1]}.{b[2]}.{b[3]}"


def parse(raw: str) -> str:
    """"" (use the node's IPv4), "hash", or a normalized IPv4; ValueError otherwise."""
    value = raw.strip()
    if not value or value.lower() == HASH:
        return value.lower()
    try:
        return validate_ip(value, 4)
    except ValueError:
        raise ValueError(f"{value[:64]!r}: expected 'hash' or an IPv4 address") from None


def resolve(raw: str, nodename: str, ip4: str | None) -> str | None:
    """The router id to render: CALICO_ROUTER_ID if set (hash -> from the name), else the IPv4."""
    value = parse(raw)
    if value == HASH:
        return hash_router_id(nodename)
    return value or ip4
