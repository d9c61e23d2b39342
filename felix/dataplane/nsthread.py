"""A worker thread that lives inside a network namespace (setns(2) once, at thread start).

Why: sockets and /proc/sys/net belong to the namespace of the task that opens
them. One thread per target namespace gives cheap in-namespace syscalls
(sysctl writes, if_nametoindex, a raw rtnetlink socket) without forking
`ip netns exec` per operation, and without ever moving the event loop thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def setns(netns: str) -> None:
    """Move the calling thread into /run/netns/<netns> (never creates one)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NsThread:
    """Single worker thread in `netns` (None: our own namespace); `await call(fn, *args)` runs fn there."""

    def __init__(self, netns: str | None, name: str = "ns"):
        self.netns = netns
        init = (lambda: setns(netns)) if netns else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=init)

    async def call(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call_sync(self, fn: Callable[..., T], *args) -> T:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
