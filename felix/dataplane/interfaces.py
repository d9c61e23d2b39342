"""Watch links in one namespace over netlink (RTNLGRP_LINK events plus one initial dump).

Why: a workload's veth often appears after its endpoint is written to etcd;
polling would add latency and cost per interface. The monitor reports state
*transitions* only, so callers can do work on "up" without deduplicating.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable

from felix.dataplane.netlink import RTMGRP_LINK, AsyncIPRoute

log = logging.getLogger(__name__)

IFF_UP = 0x1
UP, DOWN, GONE = "up", "down", "gone"


def link_state(msg) -> str:
    """'gone' for RTM_DELLINK; 'up' when admin-up and operstate UP/UNKNOWN; else 'down'."""
    if msg["event"] == "RTM_DELLINK":
        return GONE
    oper = msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"
    return UP if msg["flags"] & IFF_UP and oper in ("UP", "UNKNOWN") else DOWN


class InterfaceMonitor:
    """Calls `callback(name, state, index)` when a `prefix`-named interface changes state.

    state is "up" | "down" | "gone". The callback may be a coroutine function.
    `netns=None` watches our own namespace; otherwise /run/netns/<netns> (never created).
    """

    def __init__(self, netns: str | None, prefix: str | tuple[str, ...],
                 callback: Callable[[str, str, int], object]):
        self.netns = netns
        self.prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        self.callback = callback
        self.states: dict[str, tuple[str, int]] = {}
        self._task: asyncio.Task | None = None
        self._socks: list[AsyncIPRoute] = []
        self.synced = asyncio.Event()
        self.resyncs = 0

    def _new(self) -> AsyncIPRoute:
        s = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        self._socks.append(s)
        return s

    async def _handle(self, msg) -> None:
        name = msg.get_attr("IFLA_IFNAME")
        if not name or not name.startswith(self.prefixes):
            return
        state = link_state(msg)
        index = msg["index"]
        if self.states.get(name, (GONE, 0)) == (state, index):
            return
        if state == GONE:
            if name not in self.states or self.states[name][1] != index:
                return  # a stale delete for an older incarnation
            self.states.pop(name)
        else:
            self.states[name] = (state, index)
        try:
            res = self.callback(name, state, index)
            if inspect.isawaitable(res):
                await res
        except Exception:  # noqa: BLE001 - a callback bug must not stop link monitoring
            log.exception("interface callback failed for %s %s", name, state)

    async def _run_once(self) -> None:
        events = self._new()
        await events.bind(groups=RTMGRP_LINK)  # subscribe first: nothing between dump and watch is lost
        dumper = self._new()
        seen = set()
        async for link in await dumper.link("dump"):
            name = link.get_attr("IFLA_IFNAME")
            seen.add(name)
            await self._handle(link)
        dumper.close()
        for name in [n for n in self.states if n not in seen]:
            idx = self.states[name][1]
            self.states.pop(name)
            res = self.callback(name, GONE, idx)
            if inspect.isawaitable(res):
                await res
        self.synced.set()
        while True:
            async for msg in events.get():
                await self._handle(msg)

    async def run(self) -> None:
        """Dump, then follow events forever; on a netlink error (e.g. buffer overrun) re-dump."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - resync on any socket trouble
                self.resyncs += 1
                log.warning("interface monitor: %s; resyncing", e)
                await asyncio.sleep(0.5)
            finally:
                for s in self._socks:
                    s.close()
                self._socks.clear()

    def start(self) -> asyncio.Task:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="interface-monitor")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
