"""Every node's own addresses, as the datastore announces them.

Why a neutral module: more than one calculator must refuse data that would
capture another node's traffic (a 1:1 NAT `ext_ip`, a workload network), and
they must agree on what "a node's address" is.  The sources are the keys node
startup writes for every host: `bird_ip`, the BGP `ip_addr_v4`/`ip_addr_v6`
and the overlay tunnel addresses (`IpInIpTunnelAddr`, `VXLANTunnelAddr` host
config).  Values are re-validated here; a bad one is recorded in
`take_errors()` and treated as absent.
"""

from __future__ import annotations

import ipaddress

from libcalico.validation import V4_ADDR_RE

TUNNEL_PARAMS = frozenset({"IpInIpTunnelAddr", "VXLANTunnelAddr"})


def _source(key: object) -> str | None:
    """Which of a host's address slots a key fills, or None for keys that hold no node address."""
    kind = getattr(key, "kind", None)
    if kind == "host_bird_ip":
        return "bird_ip"
    if kind == "bgp_host_ip":
        return f"ip_addr_v{key.version}"
    if kind == "host_config" and key.param in TUNNEL_PARAMS:
        return key.param
    return None


class NodeAddresses:
    """Feed syncer updates with `on_update(kind, key, value) -> changed`; ask `owner(ip)`."""

    KINDS = frozenset({"host_bird_ip", "bgp_host_ip", "host_config"})

    def __init__(self) -> None:
        self._by_slot: dict[tuple[str, str], str] = {}   # (host, slot) -> address
        self._owners: dict[str, set[str]] = {}           # address -> hosts announcing it
        self._errors: list[tuple[str, str]] = []

    def take_errors(self) -> list[tuple[str, str]]:
        out, self._errors = self._errors, []
        return out

    def on_update(self, kind: str, key: object, value: object = None) -> bool:
        slot = _source(key)
        if slot is None:
            return False
        new = None
        if kind == "put" and value not in (None, ""):
            try:
                new = str(ipaddress.ip_address(str(value).strip()))
            except ValueError as e:
                self._errors.append((getattr(key, "path", str(key)), str(e)))
        ident = (key.host, slot)
        old = self._by_slot.get(ident)
        if old == new:
            return False
        if new is None:
            self._by_slot.pop(ident, None)
        else:
            self._by_slot[ident] = new
            self._owners.setdefault(new, set()).add(key.host)
        if old is not None:
            # another slot (of this host or another) may still announce the old address
            still = {h for (h, _s), a in self._by_slot.items() if a == old}
            if still:
                self._owners[old] = still
            else:
                self._owners.pop(old, None)
        return True

    def owner(self, ip: str) -> str | None:
        """A host announcing `ip` as its own (the first by name when several do), else None."""
        if not self._owners:
            return None
        if not V4_ADDR_RE.match(ip):    # canonical already (every endpoint address): no ipaddress
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError:
                return None
        hosts = self._owners.get(ip)
        return min(hosts) if hosts else None

    def is_node_address(self, ip: str) -> bool:
        return self.owner(ip) is not None

    def addresses(self) -> frozenset[str]:
        return frozenset(self._owners)
