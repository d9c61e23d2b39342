"""Routes, static neighbours and fdb entries Felix owns, applied over netlink (pyroute2 AsyncIPRoute).

Why this shape:
- Our routes carry protocol FELIX_RT_PROTO (80), so Felix can find its own
  routes after a restart and never touches anyone else's (kernel, BIRD = 12).
- `replace`, never `add`: idempotent, and it moves a route to a recreated
  interface in one message.
- apply() works from a kernel view read once (first apply / refresh) plus the
  set of destinations changed since, so one endpoint costs one message.
- A route whose interface does not exist yet stays pending; `interface_changed`
  (wired to InterfaceMonitor) re-queues it when the interface appears.
- Routes found in the kernel that we never desired are removed only by
  `cleanup_stale()`, called once Felix is in sync (a restarting Felix keeps
  the working dataplane until it knows the full picture).
- Overlay routes (VXLAN/IPIP: gateway + onlink on a tunnel device), fdb
  entries and neighbours share the same machinery so issue 5 only adds calls.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from felix.dataplane import FELIX_RT_PROTO
from felix.dataplane.errors import DataplaneError

log = logging.getLogger(__name__)

MAIN_TABLE = 254
SCOPE_LINK = 253
SCOPE_UNIVERSE = 0
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
RTNH_F_ONLINK = 4


@dataclass(frozen=True)
class Route:
    """One desired route: `dst` out of `ifname`, direct (scope link) or via `gateway` (optionally onlink)."""

    dst: str
    ifname: str
    gateway: str | None = None
    onlink: bool = False

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.dst else socket.AF_INET


def _norm_cidr(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def _norm_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


class RouteWriter:
    """Owner of proto-80 routes, permanent neighbours and fdb entries we set, in one namespace.

    `netns=None` acts on our own namespace; a name acts inside /run/netns/<name>
    (flags=0: pyroute2 must never create a namespace by accident).
    `managed_prefixes` (e.g. ("cali",)): interfaces whose permanent neighbour
    entries we may clean up after a restart.
    """

    def __init__(self, netns: str | None = None, managed_prefixes: tuple[str, ...] = ()):
        self.netns = netns
        self.managed_prefixes = tuple(managed_prefixes)
        self._ipr: AsyncIPRoute | None = None
        # desired
        self._direct: dict[str, set[str]] = {}                          # ifname -> cidrs
        self._overlay: dict[str, dict[str, tuple[str, bool]]] = {}      # dev -> cidr -> (gw, onlink)
        self._routes: dict[str, Route] = {}                             # dst -> Route
        self._neigh: dict[tuple[str, str], str] = {}                    # (ifname, ip) -> mac
        self._fdb: dict[tuple[str, str], str] = {}                      # (dev, mac) -> dst ip
        # kernel view (None until loaded)
        self._kroutes: dict[str, tuple[int, str | None, int]] | None = None  # dst -> (oif, gw, scope)
        self._kneigh: dict[tuple[str, str], str] = {}
        self._kfdb: dict[tuple[str, str], str] = {}
        self._ifindex: dict[str, int] = {}
        self._owned: set[str] = set()  # dsts we desired at some point: safe to delete when undesired
        # pending work
        self._dirty_routes: set[str] = set()
        self._dirty_neigh: set[tuple[str, str]] = set()
        self._dirty_fdb: set[tuple[str, str]] = set()
        self.stats: dict[str, float] = {
            "route_updates": 0, "route_deletes": 0, "neigh_updates": 0, "fdb_updates": 0,
            "errors": 0, "deferred": 0, "last_apply_seconds": 0.0,
        }

    # ---- model ----
    def set_routes(self, ifname: str, cidrs: set[str] | list[str]) -> None:
        """Direct (scope link) routes to `ifname`, v4 and v6 mixed; an empty set removes them all."""
        new = {_norm_cidr(c) for c in cidrs}
        old = self._direct.get(ifname, set())
        for dst in old - new:
            if self._routes.get(dst, Route(dst, "")).ifname == ifname:
                self._routes.pop(dst, None)
            self._dirty_routes.add(dst)
        for dst in new:
            r = Route(dst, ifname)
            prev = self._routes.get(dst)
            if prev is not None and prev.ifname != ifname:
                log.warning("route %s moves from %s to %s (two endpoints claim it)", dst, prev.ifname, ifname)
            if prev != r:
                self._routes[dst] = r
                self._dirty_routes.add(dst)
        if new:
            self._direct[ifname] = new
        else:
            self._direct.pop(ifname, None)
        self._owned |= new

    def set_overlay_routes(self, dev: str, routes: dict[str, tuple[str, bool]]) -> None:
        """Routes via a gateway on a tunnel device: {cidr: (gateway, onlink)}; replaces that device's set."""
        new = {_norm_cidr(c): (_norm_ip(gw), bool(onlink)) for c, (gw, onlink) in routes.items()}
        old = self._overlay.get(dev, {})
        for dst in set(old) - set(new):
            if self._routes.get(dst, Route(dst, "")).ifname == dev:
                self._routes.pop(dst, None)
            self._dirty_routes.add(dst)
        for dst, (gw, onlink) in new.items():
            r = Route(dst, dev, gw, onlink)
            if self._routes.get(dst) != r:
                self._routes[dst] = r
                self._dirty_routes.add(dst)
        if new:
            self._overlay[dev] = new
        else:
            self._overlay.pop(dev, None)
        self._owned |= set(new)

    def set_neighbour(self, ifname: str, ip: str, mac: str | None) -> None:
        """Permanent neighbour entry (ip -> mac) on `ifname`; mac None removes it."""
        key = (ifname, _norm_ip(ip))
        if mac is None:
            if self._neigh.pop(key, None) is not None:
                self._dirty_neigh.add(key)
        elif self._neigh.get(key) != mac.lower():
            self._neigh[key] = mac.lower()
            self._dirty_neigh.add(key)

    def set_fdb(self, dev: str, entries: dict[str, str]) -> None:
        """Forwarding entries on a VXLAN device: {remote VTEP mac: remote VTEP ip}; replaces that device's set."""
        new = {(dev, m.lower()): _norm_ip(ip) for m, ip in entries.items()}
        for key in [k for k in self._fdb if k[0] == dev and k not in new]:
            self._fdb.pop(key)
            self._dirty_fdb.add(key)
        for key, ip in new.items():
            if self._fdb.get(key) != ip:
                self._fdb[key] = ip
                self._dirty_fdb.add(key)

    def remove_interface(self, ifname: str) -> None:
        """Forget everything desired on `ifname` (endpoint gone)."""
        self.set_routes(ifname, set())
        self.set_overlay_routes(ifname, {})
        for key in [k for k in self._neigh if k[0] == ifname]:
            self.set_neighbour(ifname, key[1], None)
        self.set_fdb(ifname, {})

    def interface_changed(self, ifname: str) -> None:
        """The interface appeared, went away or was recreated: forget its index, re-queue its objects."""
        self._ifindex.pop(ifname, None)
        self._dirty_routes |= {d for d, r in self._routes.items() if r.ifname == ifname}
        self._dirty_neigh |= {k for k in self._neigh if k[0] == ifname}
        self._dirty_fdb |= {k for k in self._fdb if k[0] == ifname}

    def desired_routes(self) -> dict[str, Route]:
        return dict(self._routes)

    @property
    def dirty(self) -> bool:
        return self._kroutes is None or bool(self._dirty_routes or self._dirty_neigh or self._dirty_fdb)

    # ---- kernel ----
    async def _conn(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def load(self) -> None:
        """Read links, our proto-80 routes, permanent neighbours and fdb entries from the kernel."""
        ipr = await self._conn()
        names: dict[int, str] = {}
        self._ifindex = {}
        async for link in await ipr.link("dump"):
            name = link.get("ifname")
            names[link["index"]] = name
            self._ifindex[name] = link["index"]
        kroutes: dict[str, tuple[int, str | None, int]] = {}
        for fam in (socket.AF_INET, socket.AF_INET6):
            async for r in await ipr.route("dump", family=fam):
                if r["proto"] != FELIX_RT_PROTO or r.get("table", r["table"]) != MAIN_TABLE:
                    continue
                dst = r.get("dst") or ("0.0.0.0" if fam == socket.AF_INET else "::")
                kroutes[f"{dst}/{r['dst_len']}"] = (r.get("oif"), r.get("gateway"), r["scope"])
        self._kroutes = kroutes
        self._kneigh = {}
        async for n in await ipr.neigh("dump"):
            if n["state"] & NUD_PERMANENT and n.get("lladdr") and n["ifindex"] in names:
                self._kneigh[(names[n["ifindex"]], n.get("dst"))] = n.get("lladdr")
        self._kfdb = {}
        fdb_devs = {dev for dev, _ in self._fdb}
        if fdb_devs:
            async for f in await ipr.fdb("dump"):
                name = names.get(f["ifindex"])
                if name in fdb_devs and f.get("dst"):
                    self._kfdb[(name, f.get("lladdr"))] = f.get("dst")

    async def _index(self, ifname: str) -> int | None:
        idx = self._ifindex.get(ifname)
        if idx is None:
            found = await (await self._conn()).link_lookup(ifname=ifname)
            if found:
                idx = self._ifindex[ifname] = found[0]
        return idx

    async def _apply_route(self, dst: str) -> str:
        """One destination: 'done' | 'deferred' | error text."""
        ipr = await self._conn()
        want = self._routes.get(dst)
        have = self._kroutes.get(dst)
        try:
            if want is None:
                if have is None:
                    return "done"
                if dst not in self._owned:
                    return "done"  # found at start, never ours in this run: only cleanup_stale removes it
                await ipr.route("del", dst=dst, oif=have[0], proto=FELIX_RT_PROTO, scope=have[2],
                                table=MAIN_TABLE)
                self._kroutes.pop(dst, None)
                self.stats["route_deletes"] += 1
                return "done"
            idx = await self._index(want.ifname)
            if idx is None:
                return "deferred"
            scope = SCOPE_UNIVERSE if want.gateway else SCOPE_LINK
            if have == (idx, want.gateway, scope):
                return "done"
            kw = {"gateway": want.gateway} if want.gateway else {}
            if want.onlink:
                kw["flags"] = RTNH_F_ONLINK
            await ipr.route("replace", dst=dst, oif=idx, proto=FELIX_RT_PROTO, scope=scope,
                            table=MAIN_TABLE, **kw)
            self._kroutes[dst] = (idx, want.gateway, scope)
            self.stats["route_updates"] += 1
            return "done"
        except NetlinkError as e:
            if e.code == errno.ESRCH and want is None:
                self._kroutes.pop(dst, None)
                return "done"
            if e.code == errno.ENODEV and want is not None:
                self._ifindex.pop(want.ifname, None)
                return "deferred"
            return f"route {dst}: {e}"

    async def _apply_neigh(self, key: tuple[str, str]) -> str:
        ipr = await self._conn()
        ifname, ip = key
        mac = self._neigh.get(key)
        try:
            idx = await self._index(ifname)
            if idx is None:
                if mac is None:
                    self._kneigh.pop(key, None)
                    return "done"  # interface gone: so is the entry
                return "deferred"
            if mac is None:
                if key in self._kneigh:
                    await ipr.neigh("del", dst=ip, ifindex=idx)
                    self._kneigh.pop(key, None)
                return "done"
            if self._kneigh.get(key) != mac:
                await ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state=NUD_PERMANENT)
                self._kneigh[key] = mac
                self.stats["neigh_updates"] += 1
            return "done"
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.ESRCH) and mac is None:
                self._kneigh.pop(key, None)
                return "done"
            if e.code == errno.ENODEV:
                self._ifindex.pop(ifname, None)
                return "deferred"
            return f"neighbour {ip} on {ifname}: {e}"

    async def _apply_fdb(self, key: tuple[str, str]) -> str:
        ipr = await self._conn()
        dev, mac = key
        ip = self._fdb.get(key)
        try:
            idx = await self._index(dev)
            if idx is None:
                return "done" if ip is None else "deferred"
            if ip is None:
                if key in self._kfdb:
                    await ipr.fdb("del", ifindex=idx, lladdr=mac, dst=self._kfdb[key])
                    self._kfdb.pop(key, None)
                return "done"
            if self._kfdb.get(key) != ip:
                # 'replace' gets none of pyroute2's add-time defaults: say permanent+noarp, NTF_SELF
                await ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=ip,
                              state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
                self._kfdb[key] = ip
                self.stats["fdb_updates"] += 1
            return "done"
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.ESRCH) and ip is None:
                self._kfdb.pop(key, None)
                return "done"
            return f"fdb {mac} on {dev}: {e}"

    async def apply(self) -> bool:
        """Apply pending changes; True when something was attempted. Raises DataplaneError on kernel errors.

        Pending objects whose interface is missing stay queued (not an error).
        Neighbours and fdb entries go before routes so an onlink route never
        resolves through a missing neighbour.
        """
        t0 = time.monotonic()
        try:
            if self._kroutes is None:
                await self.load()
                self._dirty_routes |= set(self._routes)
                self._dirty_neigh |= set(self._neigh)
                self._dirty_fdb |= set(self._fdb)
            if not (self._dirty_routes or self._dirty_neigh or self._dirty_fdb):
                return False
            errors: list[str] = []
            deferred = 0
            for dirty, fn in ((self._dirty_fdb, self._apply_fdb), (self._dirty_neigh, self._apply_neigh),
                              (self._dirty_routes, self._apply_route)):
                keys = list(dirty)
                results = await asyncio.gather(*(fn(k) for k in keys))
                for k, res in zip(keys, results, strict=True):
                    if res == "done":
                        dirty.discard(k)
                    elif res == "deferred":
                        deferred += 1
                    else:
                        errors.append(res)
            self.stats["deferred"] = deferred
            if errors:
                self.stats["errors"] += len(errors)
                raise DataplaneError(f"{len(errors)} netlink errors, first: {errors[0]}")
            return True
        finally:
            self.stats["last_apply_seconds"] = time.monotonic() - t0

    async def refresh(self) -> bool:
        """Re-read the kernel and re-apply everything desired (a route deleted by hand comes back)."""
        await self.load()
        self._dirty_routes |= set(self._routes) | (set(self._kroutes) & self._owned)
        self._dirty_neigh |= set(self._neigh)
        self._dirty_fdb |= set(self._fdb)
        return await self.apply()

    async def cleanup_stale(self) -> bool:
        """Once in sync: remove proto-80 routes and managed permanent neighbours nobody desires."""
        await self.load()
        stale = set(self._kroutes) - set(self._routes)
        self._owned |= stale
        self._dirty_routes |= stale
        for key in self._kneigh:
            if key not in self._neigh and key[0].startswith(self.managed_prefixes) and self.managed_prefixes:
                self._dirty_neigh.add(key)
        return await self.apply()

    def kernel_routes(self) -> dict[str, tuple[int, str | None, int]]:
        return dict(self._kroutes or {})
