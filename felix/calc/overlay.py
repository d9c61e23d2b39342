"""Pure calculation of the overlay (VXLAN / IPIP) state this host must program.

Why it exists apart from the main calculator: overlay state depends on
cluster-wide facts (pools, every host's block affinities, bird_ip, tunnel
addresses and VTEP MACs), none of which touch policy.  Keeping it separate
means a block moving between hosts recomputes only this small view.

Stock BIRD cannot put routes onto `vxlan.calico` or `tunl0`, so these routes
are Felix's alone (datamodel.md "VXLAN overlay"):
- VXLAN, for every other host H with a complete VTEP (bird_ip, VXLANTunnelAddr,
  vxlan_tunnel_mac): neighbour VTEP(H) lladdr MAC(H), fdb MAC(H) dst
  bird_ip(H), and `block via VTEP(H) dev vxlan.calico onlink` for each block
  affine to H that lies in a VXLAN pool.
- IPIP: `block via bird_ip(H) dev tunl0 onlink` for each block affine to H in
  an IPIP pool.

Values arrive as the syncer parsed them: `Pool` and `BlockAffinity` models,
and the plain strings libcalico parses bird_ip, the VXLAN MAC and host config
into; never raw JSON.  Every value is still re-validated here (IPs, MACs,
CIDRs) because it ends up in netlink messages; a bad one (or a structured
value that is not a model) is recorded in `take_errors()` with its key and
treated as absent.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from felix.desired import IpipState, OverlayState, VxlanState
from libcalico.validation import validate_mac

from .model import model_field

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class OverlayConfig:
    """What the overlay depends on from Felix's own parameters.

    `vxlan_enabled=None` means auto: on when any IPv4 pool uses VXLAN.
    Local tunnel addresses given here (env/file config) win over the host keys.
    """

    hostname: str
    vxlan_enabled: bool | None = None
    ipip_enabled: bool = False
    vxlan_tunnel_addr: str | None = None
    ipip_tunnel_addr: str | None = None


@dataclass
class _Host:
    bird_ip: str | None = None
    vxlan_addr: str | None = None
    ipip_addr: str | None = None
    vxlan_mac: str | None = None
    blocks: set[str] = field(default_factory=set)

    def empty(self) -> bool:
        return not (self.bird_ip or self.vxlan_addr or self.ipip_addr or self.vxlan_mac or self.blocks)


def _ipv4(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IPv4 address")
    s = value.strip()
    if s.lower() in ("", "none"):
        raise LookupError  # explicitly unset: treat as absent, not as an error
    return str(ipaddress.IPv4Address(s))


class OverlayCalculator:
    """Feed it syncer updates; ask `desired()` for the overlay this host must program.

    `on_update(kind, key, value)` takes the same arguments as the main
    calculator (kind 'put'|'delete'|'invalid', a parsed libcalico Key, the
    parsed value) and returns True when the desired overlay may have changed.
    Keys it does not care about return False cheaply.
    """

    KINDS = frozenset({"pool", "block_affinity", "host_bird_ip", "host_vxlan_mac", "host_config"})
    _TUNNEL_PARAMS = {"vxlantunneladdr": "vxlan_addr", "ipiniptunneladdr": "ipip_addr"}

    def __init__(self, cfg: OverlayConfig):
        self.cfg = cfg
        self._pools: dict[str, tuple[str, str | None]] = {}   # key path -> (cidr, 'vxlan'|'ipip'|None)
        self._hosts: dict[str, _Host] = {}
        self._errors: list[tuple[str, str]] = []
        self._cache: OverlayState | None = None
        self._conflicts: set[tuple[str, str]] = set()
        self._conflicts_now: set[tuple[str, str]] = set()

    # ---- input ----
    def on_update(self, kind: str, key: object, value: object = None) -> bool:
        k = getattr(key, "kind", None)
        if k not in self.KINDS:
            return False
        path = key.path if hasattr(key, "path") else str(key)   # no repr of every key
        try:
            changed = self._apply(k, key, path, value if kind == "put" else None)
        except (ValueError, TypeError) as e:
            self._errors.append((path, str(e)))
            changed = self._apply(k, key, path, None)
        if changed:
            self._cache = None
        return changed

    def set_config(self, cfg: OverlayConfig) -> bool:
        if cfg == self.cfg:
            return False
        self.cfg = cfg
        self._cache = None
        return True

    def take_errors(self) -> list[tuple[str, str]]:
        """(key, reason) of values rejected since the last call: the caller logs each once."""
        out, self._errors = self._errors, []
        return out

    def _host(self, name: str) -> _Host:
        return self._hosts.setdefault(name, _Host())

    def _gc(self, name: str) -> None:
        h = self._hosts.get(name)
        if h is not None and h.empty():
            del self._hosts[name]

    def _apply(self, k: str, key: object, path: str, value: object) -> bool:
        if k == "pool":
            if getattr(key, "version", 4) != 4:
                return False
            old = self._pools.get(path)
            if value is None:
                new = None
            else:
                cidr = str(ipaddress.IPv4Network(str(model_field(value, "cidr")), strict=False))
                mode = "vxlan" if model_field(value, "vxlan") else "ipip" if model_field(value, "ipip") else None
                new = (cidr, mode)
            if new is None:
                self._pools.pop(path, None)
            else:
                self._pools[path] = new
            return old != new
        host = key.host
        if k == "block_affinity":
            if key.version != 4:
                return False
            state = model_field(value, "state", "confirmed") if value is not None else None
            state = getattr(state, "value", state)
            want = value is not None and state == "confirmed"
            h = self._host(host)
            had = key.cidr in h.blocks
            if want:
                h.blocks.add(str(ipaddress.IPv4Network(key.cidr)))
            else:
                h.blocks.discard(key.cidr)
            self._gc(host)
            return had != want
        if k == "host_config":
            attr = self._TUNNEL_PARAMS.get(key.param.lower())
            if attr is None:
                return False
            return self._set_host_attr(host, attr, value, _ipv4)
        if k == "host_bird_ip":
            return self._set_host_attr(host, "bird_ip", value, _ipv4)
        if k == "host_vxlan_mac":
            return self._set_host_attr(host, "vxlan_mac", value, lambda v: validate_mac(str(v).strip()))
        return False

    def _set_host_attr(self, host: str, attr: str, value: object, check) -> bool:
        new = None
        if value is not None:
            try:
                new = check(value)
            except LookupError:
                new = None
        h = self._host(host)
        old = getattr(h, attr)
        setattr(h, attr, new)
        self._gc(host)
        return old != new

    # ---- output ----
    def vxlan_enabled(self) -> bool:
        if self.cfg.vxlan_enabled is not None:
            return self.cfg.vxlan_enabled
        return any(mode == "vxlan" for _, mode in self._pools.values())

    def desired(self) -> OverlayState:
        """The whole desired overlay (cached until the next change)."""
        if self._cache is None:
            self._conflicts_now = set()
            self._cache = OverlayState(vxlan=self._vxlan(), ipip=self._ipip())
            self._conflicts = self._conflicts_now
        return self._cache

    def host_mac(self, host: str) -> str | None:
        """The vxlan_tunnel_mac the datastore holds for `host` (to notice our own key going stale)."""
        h = self._hosts.get(host)
        return h.vxlan_mac if h else None

    def _pool_nets(self, mode: str) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(c) for c, m in self._pools.values() if m == mode]

    def _blocks_in(self, host: _Host, nets: list[ipaddress.IPv4Network]) -> list[str]:
        out = []
        for b in sorted(host.blocks):
            bn = ipaddress.IPv4Network(b)
            if any(bn.subnet_of(p) for p in nets):
                out.append(b)
        return out

    def _vxlan(self) -> VxlanState:
        if not self.vxlan_enabled():
            return VxlanState()
        me = self._hosts.get(self.cfg.hostname, _Host())
        tunnel = self.cfg.vxlan_tunnel_addr or me.vxlan_addr
        nets = self._pool_nets("vxlan")
        neigh: dict[str, str] = {}
        fdb: dict[str, str] = {}
        routes: dict[str, str] = {}
        for name in sorted(self._hosts):
            h = self._hosts[name]
            if name == self.cfg.hostname or not (h.bird_ip and h.vxlan_addr and h.vxlan_mac):
                continue
            if h.vxlan_addr in neigh or h.vxlan_mac in fdb or h.vxlan_addr == tunnel:
                self._note_conflict(name, "VTEP address or MAC already used by another host")
                continue
            neigh[h.vxlan_addr] = h.vxlan_mac
            fdb[h.vxlan_mac] = h.bird_ip
            for b in self._blocks_in(h, nets):
                if b in routes:
                    self._note_conflict(name, f"block {b} is affine to two hosts")
                    continue
                routes[b] = h.vxlan_addr
        return VxlanState(True, me.bird_ip, tunnel, neigh, fdb, routes)

    def _ipip(self) -> IpipState:
        if not self.cfg.ipip_enabled:
            return IpipState()
        me = self._hosts.get(self.cfg.hostname, _Host())
        nets = self._pool_nets("ipip")
        routes: dict[str, str] = {}
        for name in sorted(self._hosts):
            h = self._hosts[name]
            if name == self.cfg.hostname or not h.bird_ip:
                continue
            for b in self._blocks_in(h, nets):
                if b in routes:
                    self._note_conflict(name, f"block {b} is affine to two hosts")
                    continue
                routes[b] = h.bird_ip
        return IpipState(True, self.cfg.ipip_tunnel_addr or me.ipip_addr, routes)

    def _note_conflict(self, host: str, reason: str) -> None:
        """Reported once while it lasts (desired() is recomputed on every change)."""
        item = (f"/calico/v1/host/{host}", f"overlay: {reason}; skipped")
        if item not in self._conflicts:
            self._errors.append(item)
        self._conflicts_now.add(item)
