"""Overlay devices (`vxlan.calico`, `tunl0`) and the per-host objects on them.

Why this split: the RouteWriter already owns routes, permanent neighbours and
fdb entries with diffing, retries and restart-safety, so this module only
(1) creates and maintains the tunnel devices themselves, which the
RouteWriter never does, and (2) translates the calculator's OverlayState into
RouteWriter calls.  Pass the daemon's RouteWriter to share one netlink socket
and one apply; without one, a private writer is made.

VXLAN device: VNI, UDP port, `local` = this host's bird_ip, `nolearning` (the
fdb is programmed, never learned), MTU (VXLANMTU / IpInIpMtu; unset, the
uplink's MTU minus 50 / 20: `libcalico.mtu`'s rule, so the workload
interfaces CNI and calicoctl make fit through the tunnel), address
VXLANTunnelAddr/32.  The
kernel picks its MAC; `on_vxlan_mac(mac)` is called whenever it is new (the
daemon writes it to /calico/v1/host/<host>/vxlan_tunnel_mac).  A change of
VNI/port/local recreates the device (the kernel cannot change them live).

IPIP: kernels without `ipip` cannot create `tunl0` (EOPNOTSUPP).  That is
logged once as an error, `ipip_supported` becomes False and
`not_ready_reasons()` says so; everything else keeps working.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from felix.dataplane.errors import DataplaneError
from felix.dataplane.netlink import AsyncIPRoute, NetlinkError
from felix.dataplane.routes import NUD_PERMANENT, PRIO_OVERLAY, RouteWriter
from felix.dataplane.writer import WriterBase, WriterStats
from felix.desired import IPIP_DEV, VXLAN_DEV, OverlayState
from libcalico import mtu as libcalico_mtu

log = logging.getLogger(__name__)

IFF_UP = 1


@dataclass
class OverlayStats(WriterStats):
    device_changes: int = 0
    errors: int = 0


class OverlayDataplane(WriterBase):
    """Owner of vxlan.calico / tunl0 in one namespace; a `felix.dataplane.writer.Writer`.

    `set_state(state)` hands over the calculator's OverlayState like the other
    writers' `set_*`; `apply()` programs it.  There is no kernel view to load
    up-front: each apply reads the two devices it checks, so `load()` and
    `prefetch()` do nothing and `refresh()` is another apply of the last state.
    """

    stats: OverlayStats

    def __init__(self, netns: str | None = None, routes: RouteWriter | None = None, vni: int = 4096,
                 port: int = 4789, mtu: int | None = None, ipip_mtu: int | None = None,
                 on_vxlan_mac: Callable[[str], Awaitable[None] | None] | None = None,
                 uplink_mtu: Callable[[], int] | None = None):
        super().__init__(OverlayStats())
        self.netns = netns
        self._own_routes = routes is None
        self.routes = routes if routes is not None else RouteWriter(netns)
        self.vni, self.port = int(vni), int(port)
        # None: derived at each apply from the uplink, as libcalico.mtu derives workload MTUs
        self.mtu_setting = {"vxlan": mtu, "ipip": ipip_mtu}
        self._uplink_mtu = uplink_mtu or (lambda: libcalico_mtu.uplink_mtu(self._run_ip))
        self.mtu: int | None = mtu            # what vxlan.calico was last given
        self.ipip_mtu: int | None = ipip_mtu  # what tunl0 was last given
        self.on_vxlan_mac = on_vxlan_mac
        self.vxlan_mac: str | None = None          # MAC of our vxlan.calico, once it exists
        self._published_mac: str | None = None
        self.ipip_supported: bool | None = None    # None until IPIP is first wanted
        self._ipip_wanted = False
        self._vxlan_waiting: str | None = None     # why VXLAN is enabled but cannot be built yet
        self._neigh: dict[str, str] = {}           # what we last pushed: VTEP ip -> mac
        self._ipr: AsyncIPRoute | None = None
        self._state: OverlayState | None = None   # what set_state handed over
        self._state_dirty = False

    @classmethod
    def from_config(cls, cfg: object, netns: str | None = None, routes: RouteWriter | None = None,
                    on_vxlan_mac: Callable[[str], Awaitable[None] | None] | None = None) -> OverlayDataplane:
        return cls(netns, routes, vni=cfg.VXLANVNI, port=cfg.VXLANPort, mtu=cfg.VXLANMTU,
                   ipip_mtu=cfg.IpInIpMtu, on_vxlan_mac=on_vxlan_mac)

    def _run_ip(self, argv: list[str], **kw):
        """subprocess.run inside our namespace (libcalico.mtu reads links and routes with `ip`)."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run(prefix + list(argv), timeout=10, **kw)

    async def _tunnel_mtu(self, encap: str) -> int:
        """The configured MTU, else the uplink's MTU minus the encapsulation's overhead."""
        configured = self.mtu_setting[encap]
        if configured is not None:
            return int(configured)
        uplink = await asyncio.to_thread(self._uplink_mtu)
        return max(libcalico_mtu.MIN_MTU, uplink - libcalico_mtu.OVERHEAD[encap])

    async def _conn(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._own_routes:
            self.routes.close()

    # ---- status ----
    def not_ready_reasons(self) -> list[str]:
        out = []
        if self._ipip_wanted and self.ipip_supported is False:
            out.append("IPIP is enabled but this kernel has no ipip support (tunl0 cannot be created)")
        if self._vxlan_waiting:
            out.append(self._vxlan_waiting)
        return out

    def republish_mac(self) -> None:
        """Call `on_vxlan_mac` again at the next apply (the datastore holds a stale MAC for us)."""
        self._published_mac = None

    # ---- the Writer protocol ----
    def set_state(self, state: OverlayState) -> None:
        """Desired overlay (model only; `apply()` programs it)."""
        self._state = state
        self._state_dirty = True

    @property
    def loaded(self) -> bool:
        return True

    @property
    def dirty(self) -> bool:
        return self._state_dirty or self.routes.dirty

    async def load(self) -> None:
        """Nothing to read ahead: the devices are looked up by every apply."""

    async def _apply(self) -> bool:
        """Devices, then neighbours, fdb and routes through the RouteWriter; a netlink refusal
        is a DataplaneError so the daemon's apply policy treats it like any writer's."""
        state = self._state
        if state is None:
            return False
        devices = self.stats.device_changes
        try:
            await self.sync_devices(state)
            self.push(state)
            routes_changed = await self.routes.apply()
        except NetlinkError as e:
            self.stats.errors += 1
            raise DataplaneError(f"overlay: {e}") from e
        self._state_dirty = False
        return routes_changed or self.stats.device_changes != devices

    def push(self, state: OverlayState) -> None:
        """Model only (no I/O): hand neighbours, fdb and routes to the RouteWriter."""
        vx = state.vxlan if state.vxlan.ready else None
        neigh = dict(vx.neighbours) if vx else {}
        for ip in self._neigh.keys() - neigh.keys():
            self.routes.set_neighbour(VXLAN_DEV, ip, None)
        for ip, mac in neigh.items():
            if self._neigh.get(ip) != mac:
                self.routes.set_neighbour(VXLAN_DEV, ip, mac)
        self._neigh = neigh
        self.routes.set_fdb(VXLAN_DEV, dict(vx.fdb) if vx else {})
        # below a local workload's route: a remote block naming a local workload's own
        # address must not take its traffic (the RouteWriter keeps both and programs the workload's)
        self.routes.set_overlay_routes(VXLAN_DEV, {c: (gw, True) for c, gw in vx.routes.items()} if vx else {},
                                       priority=PRIO_OVERLAY)
        ipip = state.ipip
        ok = ipip.enabled and self.ipip_supported
        self.routes.set_overlay_routes(IPIP_DEV, {c: (gw, True) for c, gw in ipip.routes.items()} if ok else {},
                                       priority=PRIO_OVERLAY)

    # ---- devices ----
    async def sync_devices(self, state: OverlayState) -> None:
        await self._sync_vxlan(state)
        await self._sync_ipip(state)

    async def _link(self, name: str):
        ipr = await self._conn()
        idx = await ipr.link_lookup(ifname=name)
        if not idx:
            return None
        links = await ipr.link("get", index=idx[0])
        return links[0] if links else None

    async def _sync_vxlan(self, state: OverlayState) -> None:
        vx = state.vxlan
        ipr = await self._conn()
        link = await self._link(VXLAN_DEV)
        if not vx.enabled:
            self._vxlan_waiting = None
            if link is not None:
                log.info("VXLAN disabled: removing %s", VXLAN_DEV)
                await ipr.link("del", index=link["index"])
                self.routes.interface_changed(VXLAN_DEV)
                self.stats.device_changes += 1
                self.vxlan_mac = None
            return
        if not vx.ready:
            missing = "bird_ip" if vx.local_ip is None else "VXLANTunnelAddr"
            reason = f"VXLAN is enabled but this host has no {missing} yet: {VXLAN_DEV} not configured"
            if reason != self._vxlan_waiting:
                log.warning("%s", reason)
            self._vxlan_waiting = reason
            return
        self._vxlan_waiting = None
        self.mtu = await self._tunnel_mtu("vxlan")
        if link is not None and not self._vxlan_matches(link, vx.local_ip):
            log.info("%s has other VXLAN parameters than wanted (vni %d, port %d, local %s): recreating",
                     VXLAN_DEV, self.vni, self.port, vx.local_ip)
            await ipr.link("del", index=link["index"])
            link = None
        if link is None:
            await ipr.link("add", ifname=VXLAN_DEV, kind="vxlan", vxlan_id=self.vni, vxlan_local=vx.local_ip,
                           vxlan_port=self.port, vxlan_learning=0, mtu=self.mtu)
            self.routes.interface_changed(VXLAN_DEV)
            self.stats.device_changes += 1
            link = await self._link(VXLAN_DEV)
            log.info("created %s (vni %d, port %d, local %s, mtu %d)", VXLAN_DEV, self.vni, self.port,
                     vx.local_ip, self.mtu)
        idx = link["index"]
        if link.get("mtu") != self.mtu:
            await ipr.link("set", index=idx, mtu=self.mtu)
        await self._sync_addr(idx, vx.tunnel_addr)
        if not link["flags"] & IFF_UP:
            await ipr.link("set", index=idx, state="up")
        mac = link.get("address")
        self.vxlan_mac = mac
        if mac and mac != self._published_mac and self.on_vxlan_mac is not None:
            r = self.on_vxlan_mac(mac)
            if asyncio.iscoroutine(r):
                await r
            self._published_mac = mac
            log.info("%s MAC %s published", VXLAN_DEV, mac)

    def _vxlan_matches(self, link, local_ip: str) -> bool:
        if link.get(("linkinfo", "kind")) != "vxlan":
            return False
        data = ("linkinfo", "data")
        return (link.get(data + ("vxlan_id",)) == self.vni and link.get(data + ("vxlan_port",)) == self.port
                and link.get(data + ("vxlan_local",)) == local_ip and not link.get(data + ("vxlan_learning",)))

    async def _sync_addr(self, idx: int, addr: str | None) -> None:
        """Exactly `addr`/32 as the device's IPv4 address (stale ones removed)."""
        ipr = await self._conn()
        have = set()
        async for a in await ipr.addr("dump", index=idx, family=socket.AF_INET):
            have.add((a.get("address"), a["prefixlen"]))
        want = {(str(ipaddress.IPv4Address(addr)), 32)} if addr else set()
        for ip, plen in have - want:
            await ipr.addr("del", index=idx, address=ip, prefixlen=plen)
        for ip, plen in want - have:
            await ipr.addr("add", index=idx, address=ip, prefixlen=plen)

    async def _sync_ipip(self, state: OverlayState) -> None:
        ip = state.ipip
        self._ipip_wanted = ip.enabled
        if not ip.enabled or self.ipip_supported is False:
            return
        ipr = await self._conn()
        link = await self._link(IPIP_DEV)
        if link is None:
            try:
                await ipr.link("add", ifname=IPIP_DEV, kind="ipip")
            except NetlinkError as e:
                if e.code in (errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL, errno.EPROTONOSUPPORT):
                    self.ipip_supported = False
                    log.error("IPIP is enabled but this kernel has no ipip support (creating %s failed: %s); "
                              "IPIP routes are not programmed, everything else continues", IPIP_DEV, e)
                    return
                if e.code != errno.EEXIST:
                    raise
            link = await self._link(IPIP_DEV)
            if link is None:
                self.ipip_supported = False
                log.error("IPIP is enabled but %s does not exist after creating it", IPIP_DEV)
                return
            self.routes.interface_changed(IPIP_DEV)
        self.ipip_supported = True
        idx = link["index"]
        self.ipip_mtu = await self._tunnel_mtu("ipip")
        if link.get("mtu") != self.ipip_mtu:
            await ipr.link("set", index=idx, mtu=self.ipip_mtu)
        await self._sync_addr(idx, ip.tunnel_addr)
        if not link["flags"] & IFF_UP:
            await ipr.link("set", index=idx, state="up")

    # ---- restart safety ----
    async def cleanup_stale(self) -> int:
        """Once in sync: remove neighbours and fdb entries on vxlan.calico that nobody desires.

        Stale proto-80 routes are the RouteWriter's cleanup_stale's job.
        Returns the number of entries removed (truthy exactly when the kernel
        changed, as the protocol's bool; the count is what tests check).
        """
        async with self._lock:
            return await self._cleanup_stale()

    async def _cleanup_stale(self) -> int:
        ipr = await self._conn()
        link = await self._link(VXLAN_DEV)
        if link is None:
            return 0
        idx = link["index"]
        removed = 0
        async for n in await ipr.neigh("dump", ifindex=idx):
            dst = n.get("dst")
            if n["ifindex"] == idx and n["state"] & NUD_PERMANENT and dst and dst not in self._neigh:
                await ipr.neigh("del", dst=dst, ifindex=idx)
                removed += 1
        want_fdb = set(self.routes.fdb_entries(VXLAN_DEV))
        async for f in await ipr.fdb("dump"):
            mac, dst = f.get("lladdr"), f.get("dst")
            if f["ifindex"] == idx and dst and mac not in want_fdb:
                await ipr.fdb("del", ifindex=idx, lladdr=mac, dst=dst)
                removed += 1
        if removed:
            log.info("removed %d stale neighbour/fdb entries from %s", removed, VXLAN_DEV)
        return removed
