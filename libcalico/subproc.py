"""Child processes with a deadline that never outlive it.

`asyncio.wait_for(proc.communicate(), t)` only stops *waiting* when `t`
passes (or the caller is cancelled): the child keeps running, holding its
pipes and whatever it locked (an `iptables-restore` holding the xtables lock,
a `bird -p` stuck on a config).  The next attempt then competes with it, and
a program that retries leaks one child per retry.  So every path out of the
wait except a normal exit kills the child and reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill `proc` if it still runs and wait for it, even if our own task is cancelled meanwhile."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    # Shielded: a second cancellation must not leave a zombie (the wait goes on without us).
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(proc.wait())


async def communicate(proc: asyncio.subprocess.Process, input: bytes | None = None,
                      timeout: float | None = None) -> tuple[bytes, bytes]:
    """`proc.communicate(input)` bounded by `timeout`; on TimeoutError or cancellation the child is killed and reaped."""
    try:
        return await asyncio.wait_for(proc.communicate(input), timeout)
    except BaseException:
        await reap(proc)
        raise
