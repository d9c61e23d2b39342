"""Routes, static neighbours and fdb entries Felix owns, applied over netlink.

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
  entries and neighbours share the same machinery.
- Several sources may claim one destination (a local workload's /32 and a
  remote block affinity for the same CIDR, or two interfaces during a
  hand-over).  Every claimant is kept per CIDR and the one of highest
  priority is programmed (a local workload beats an overlay route; equal
  priorities go to the smaller device name, so the result never depends on
  call order).  Withdrawing one claimant re-installs the next at once:
  keeping only the last writer meant deleting it deleted the survivor's
  route too, and `refresh()` had nothing left to repair.

Why two netlink stacks: routes go out, and routes and neighbours are dumped,
over the raw socket in `rtnl.py` (one batch from the namespace thread; pyroute2
encoding every route message cost ~10x the `ip -batch` floor, and importing it
~80 ms of CPU on the cold-start path).  Neighbour and fdb *writes* and the fdb
dump stay on pyroute2's AsyncIPRoute: fdb entries are one per remote VTEP, and
neighbours one per local endpoint that supplies a MAC, written off the
start-up critical path.  Moving those onto `rtnl.py` too would leave one stack
(the same ndmsg packing the neighbour dump already parses); it is not done
because the benchmarks (bench/bench_dataplane.py, bench_felix.py) set no MACs
and so could not show it costs nothing.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from felix.dataplane import FELIX_RT_PROTO
from felix.dataplane.errors import DataplaneError
from felix.dataplane.nsthread import NsThread
from felix.dataplane.rtnl import RouteOp, RouteSocket
from felix.dataplane.writer import WriterBase, WriterStats

log = logging.getLogger(__name__)

MAIN_TABLE = 254
SCOPE_LINK = 253
SCOPE_UNIVERSE = 0
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
RTNH_F_ONLINK = 4

PRIO_WORKLOAD = 20   # a local workload's own address: never displaced by a route to elsewhere
PRIO_OVERLAY = 10    # a remote block via a tunnel


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


def _netlink_error() -> type[Exception]:
    from felix.dataplane.netlink import NetlinkError
    return NetlinkError


def _norm_cidr(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


def _norm_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


@dataclass
class RouteStats(WriterStats):
    route_updates: int = 0
    route_deletes: int = 0
    neigh_updates: int = 0
    neigh_deletes: int = 0
    fdb_updates: int = 0
    fdb_deletes: int = 0
    errors: int = 0      # netlink errors (each failed object once per apply)
    deferred: int = 0    # objects waiting for their interface after the last apply (a gauge)


class RouteWriter(WriterBase):
    """Owner of proto-80 routes, permanent neighbours and fdb entries we set, in one namespace.

    A `felix.dataplane.writer.Writer`.

    `netns=None` acts on our own namespace; a name acts inside /run/netns/<name>
    (flags=0: pyroute2 must never create a namespace by accident).
    `managed_prefixes` (e.g. ("cali",)): interfaces whose permanent neighbour
    entries we may clean up after a restart.
    """

    stats: RouteStats

    def __init__(self, netns: str | None = None, managed_prefixes: tuple[str, ...] = ()):
        super().__init__(RouteStats())
        self.netns = netns
        self.managed_prefixes = tuple(managed_prefixes)
        self._ipr = None  # pyroute2 AsyncIPRoute, opened on first neighbour/fdb use
        self._thread: NsThread | None = None  # in-namespace worker: raw route socket, ifindex lookups
        self._rsock: RouteSocket | None = None
        self._cleaned = False  # after the first cleanup_stale, every proto-80 route is ours to judge
        # desired
        self._direct: dict[str, set[str]] = {}                          # ifname -> cidrs
        self._overlay: dict[str, dict[str, tuple[str, bool]]] = {}      # dev -> cidr -> (gw, onlink)
        self._claims: dict[str, dict[tuple[str, str], tuple[int, Route]]] = {}  # dst -> (dev, kind) -> (prio, Route)
        self._routes: dict[str, Route] = {}                             # dst -> the claimant programmed
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

    # ---- model ----
    def _claim(self, dst: str, dev: tuple[str, str], route: Route | None, priority: int = 0) -> None:
        """Set (or, with None, withdraw) the claim of `dev` ((ifname, "direct"|"overlay")) on `dst`,
        and re-pick the route to program."""
        claims = self._claims.setdefault(dst, {})
        if route is None:
            claims.pop(dev, None)
        else:
            claims[dev] = (priority, route)
        if not claims:
            del self._claims[dst]
            best = None
        else:
            best = min(claims.items(), key=lambda kv: (-kv[1][0], kv[0]))[1][1]
            if len(claims) > 1:
                log.debug("route %s claimed by %s; programming %s", dst, sorted(claims), best.ifname)
        if self._routes.get(dst) != best:
            if best is None:
                self._routes.pop(dst, None)
            else:
                self._routes[dst] = best
            self._dirty_routes.add(dst)

    def claimants(self, dst: str) -> dict[str, tuple[int, Route]]:
        """Every device claiming `dst` with its (priority, route), best first."""
        claims = sorted(self._claims.get(_norm_cidr(dst), {}).items(), key=lambda kv: (-kv[1][0], kv[0]))
        return {dev: pr for (dev, _kind), pr in claims}

    def set_routes(self, ifname: str, cidrs: set[str] | list[str], priority: int = PRIO_WORKLOAD) -> None:
        """Direct (scope link) routes to `ifname`, v4 and v6 mixed; an empty set removes them all."""
        new = {_norm_cidr(c) for c in cidrs}
        old = self._direct.get(ifname, set())
        for dst in old - new:
            self._claim(dst, (ifname, "direct"), None)
        for dst in new:
            self._claim(dst, (ifname, "direct"), Route(dst, ifname), priority)
        if new:
            self._direct[ifname] = new
        else:
            self._direct.pop(ifname, None)
        self._owned |= new

    def set_overlay_routes(self, dev: str, routes: dict[str, tuple[str, bool]],
                           priority: int = PRIO_OVERLAY) -> None:
        """Routes via a gateway on a tunnel device: {cidr: (gateway, onlink)}; replaces that device's set.

        `priority` defaults below a workload's: a remote block for a local workload's CIDR
        must not take its traffic away.
        """
        new = {_norm_cidr(c): (_norm_ip(gw), bool(onlink)) for c, (gw, onlink) in routes.items()}
        old = self._overlay.get(dev, {})
        for dst in set(old) - set(new):
            self._claim(dst, (dev, "overlay"), None)
        for dst, (gw, onlink) in new.items():
            self._claim(dst, (dev, "overlay"), Route(dst, dev, gw, onlink), priority)
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

    def fdb_entries(self, dev: str) -> dict[str, str]:
        """Desired fdb entries on `dev`: {mac: remote VTEP ip} (the overlay's stale cleanup keeps these)."""
        return {mac: ip for (d, mac), ip in self._fdb.items() if d == dev}

    @property
    def loaded(self) -> bool:
        return self._kroutes is not None

    @property
    def dirty(self) -> bool:
        return self._kroutes is None or bool(self._dirty_routes or self._dirty_neigh or self._dirty_fdb)

    # ---- kernel ----
    async def _conn(self):
        """pyroute2 for neighbour/fdb writes and the fdb dump, imported on first use (see rtnl)."""
        if self._ipr is None:
            from felix.dataplane.netlink import AsyncIPRoute
            self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        return self._ipr

    def _ns(self) -> NsThread:
        if self._thread is None:
            self._thread = NsThread(self.netns, "routes")
        return self._thread

    def _sock(self) -> RouteSocket:
        """The raw route socket, opened on first use; call only in the namespace thread."""
        if self._rsock is None:
            self._rsock = RouteSocket()
        return self._rsock

    def _route_batch(self, ops: list[RouteOp]) -> list[int]:
        """Runs in the namespace thread."""
        return self._sock().run(ops)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._thread is not None:
            if self._rsock is not None:
                self._thread.call_sync(self._rsock.close)
                self._rsock = None
            self._thread.close()
            self._thread = None

    def _dump_kernel(self) -> tuple[list[tuple[int, str]], list[dict], list[dict]]:
        """Runs in the namespace thread: links (if_nameindex is C-speed), routes, neighbours."""
        sock = self._sock()
        return socket.if_nameindex(), sock.dump_routes(), sock.dump_neighbours()

    async def load(self) -> None:
        """Read links, our proto-80 routes, permanent neighbours and fdb entries from the kernel."""
        links, routes, neighs = await self._ns().call(self._dump_kernel)
        names: dict[int, str] = dict(links)
        self._ifindex = {name: idx for idx, name in names.items()}
        kroutes: dict[str, tuple[int, str | None, int]] = {}
        for r in routes:
            if r["proto"] != FELIX_RT_PROTO or r["table"] != MAIN_TABLE:
                continue
            fam = r["family"]
            dst = r["dst"] or ("0.0.0.0" if fam == socket.AF_INET else "::")
            kroutes[f"{dst}/{r['dst_len']}"] = (r["oif"], r["gateway"], r["scope"])
        self._kroutes = kroutes
        self._kneigh = {}
        for n in neighs:
            if n["state"] & NUD_PERMANENT and n["lladdr"] and n["dst"] and n["ifindex"] in names:
                self._kneigh[(names[n["ifindex"]], n["dst"])] = n["lladdr"]
        self._kfdb = {}
        fdb_devs = {dev for dev, _ in self._fdb}
        if fdb_devs:
            ipr = await self._conn()
            async for f in await ipr.fdb("dump"):
                name = names.get(f["ifindex"])
                if name in fdb_devs and f.get("dst"):
                    self._kfdb[(name, f.get("lladdr"))] = f.get("dst")

    async def _index(self, ifname: str) -> int | None:
        idx = self._ifindex.get(ifname)
        if idx is None:
            idx = (await self._lookup([ifname])).get(ifname)
        return idx

    async def _lookup(self, names: list[str]) -> dict[str, int]:
        """ifindex of each existing name, one hop to the namespace thread; caches what it finds."""
        def look() -> dict[str, int]:
            out = {}
            for n in names:
                try:
                    out[n] = socket.if_nametoindex(n)
                except OSError:
                    pass
            return out
        found = await self._ns().call(look)
        self._ifindex.update(found)
        return found

    @staticmethod
    def _scope(r: Route) -> int:
        # IPv6 has no route scopes (the kernel reports 0), so only v4 direct routes are scope link
        return SCOPE_LINK if r.gateway is None and r.family == socket.AF_INET else SCOPE_UNIVERSE

    async def _apply_routes(self) -> tuple[int, list[str]]:
        """All dirty routes in one raw-netlink batch; returns (deferred count, error texts)."""
        keys = list(self._dirty_routes)
        missing = {self._routes[d].ifname for d in keys if d in self._routes} - set(self._ifindex)
        if missing:
            await self._lookup(sorted(missing))
        ops: list[RouteOp] = []
        op_keys: list[str] = []
        deferred = 0
        for dst in keys:
            want, have = self._routes.get(dst), self._kroutes.get(dst)
            if want is None:
                if have is None or dst not in self._owned:
                    self._dirty_routes.discard(dst)  # found at start, never ours: only cleanup_stale removes it
                    continue
                ops.append(RouteOp("delete", dst, have[0] or 0, FELIX_RT_PROTO, have[2], MAIN_TABLE))
            else:
                idx = self._ifindex.get(want.ifname)
                if idx is None:
                    deferred += 1
                    continue
                scope = self._scope(want)
                if have == (idx, want.gateway, scope):
                    self._dirty_routes.discard(dst)
                    continue
                ops.append(RouteOp("replace", dst, idx, FELIX_RT_PROTO, scope, MAIN_TABLE,
                                   want.gateway, want.onlink))
            op_keys.append(dst)
        if not ops:
            return deferred, []
        results = await self._ns().call(self._route_batch, ops)
        errors = []
        for dst, op, err in zip(op_keys, ops, results, strict=True):
            if err == 0 or (op.op == "delete" and err == errno.ESRCH):
                self._dirty_routes.discard(dst)
                if op.op == "delete":
                    self._kroutes.pop(dst, None)
                    self.stats.route_deletes += 1
                else:
                    self._kroutes[dst] = (op.oif, op.gateway, op.scope)
                    self.stats.route_updates += 1
            elif err == errno.ENODEV and op.op == "replace":
                self._ifindex.pop(self._routes[dst].ifname, None)  # interface went away: wait for it
                deferred += 1
            elif err == errno.ENETDOWN and op.op == "replace":
                deferred += 1  # interface exists but is down: stays queued until it comes up
            else:
                errors.append(f"route {op.op} {dst}: {os.strerror(err)}")
        return deferred, errors

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
                    self.stats.neigh_deletes += 1
                return "done"
            if self._kneigh.get(key) != mac:
                await ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state=NUD_PERMANENT)
                self._kneigh[key] = mac
                self.stats.neigh_updates += 1
            return "done"
        except _netlink_error() as e:
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
                    self.stats.fdb_deletes += 1
                return "done"
            if self._kfdb.get(key) != ip:
                # 'replace' gets none of pyroute2's add-time defaults: say permanent+noarp, NTF_SELF
                await ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=ip,
                              state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
                self._kfdb[key] = ip
                self.stats.fdb_updates += 1
            return "done"
        except _netlink_error() as e:
            if e.code in (errno.ENOENT, errno.ESRCH) and ip is None:
                self._kfdb.pop(key, None)
                return "done"
            return f"fdb {mac} on {dev}: {e}"

    async def prefetch(self) -> None:
        """Read the kernel ahead of the first apply (start-up: overlaps the datastore snapshot).

        Read-only.  Every object desired before the first apply is dirty from
        being set, so that apply still compares each one with what was read;
        anything that moved meanwhile is caught by the replace semantics and
        the periodic refresh.
        """
        await super().prefetch()

    def _loaded_by_apply(self) -> None:
        self._dirty_routes |= set(self._routes)
        self._dirty_neigh |= set(self._neigh)
        self._dirty_fdb |= set(self._fdb)

    async def _apply(self) -> bool:
        """Apply pending changes; True when the kernel was changed. Raises DataplaneError on kernel errors.

        Pending objects whose interface is missing stay queued (not an error).
        Neighbours and fdb entries go before routes so an onlink route never
        resolves through a missing neighbour.  No retry loop: netlink answers
        per object, so what failed stays dirty and the caller's next apply
        (with its backoff) tries exactly that again.
        """
        if not (self._dirty_routes or self._dirty_neigh or self._dirty_fdb):
            self.stats.deferred = 0
            return False
        before = self._changes()
        errors: list[str] = []
        deferred = 0
        for dirty, fn in ((self._dirty_fdb, self._apply_fdb), (self._dirty_neigh, self._apply_neigh)):
            keys = list(dirty)
            results = await asyncio.gather(*(fn(k) for k in keys))
            for k, res in zip(keys, results, strict=True):
                if res == "done":
                    dirty.discard(k)
                elif res == "deferred":
                    deferred += 1
                else:
                    errors.append(res)
        if self._dirty_routes:
            d, errs = await self._apply_routes()
            deferred += d
            errors += errs
        self.stats.deferred = deferred
        if errors:
            self.stats.errors += len(errors)
            raise DataplaneError(f"{len(errors)} netlink errors, first: {errors[0]}")
        return self._changes() != before

    def _changes(self) -> int:
        s = self.stats
        return s.route_updates + s.route_deletes + s.neigh_updates + s.neigh_deletes + s.fdb_updates + s.fdb_deletes

    async def refresh(self) -> bool:
        """Re-read the kernel and re-apply everything desired (a route deleted by hand comes back)."""
        async with self._lock:
            await self.load()
            if self._cleaned:
                self._owned |= set(self._kroutes)
            self._dirty_routes |= set(self._routes) | (set(self._kroutes) & self._owned)
            self._dirty_neigh |= set(self._neigh)
            self._dirty_fdb |= set(self._fdb)
            return await self._run(self._apply)

    async def cleanup_stale(self) -> bool:
        """Once in sync: remove proto-80 routes and managed permanent neighbours nobody desires."""
        async with self._lock:
            await self.load()
            stale = set(self._kroutes) - set(self._routes)
            self._owned |= stale
            self._cleaned = True
            self._dirty_routes |= stale
            for key in self._kneigh:
                if key not in self._neigh and self.managed_prefixes and key[0].startswith(self.managed_prefixes):
                    self._dirty_neigh.add(key)
            return await self._run(self._apply)

    def kernel_routes(self) -> dict[str, tuple[int, str | None, int]]:
        return dict(self._kroutes or {})
