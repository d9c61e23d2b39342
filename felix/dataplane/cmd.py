"""Thin subprocess adapter bound to a network namespace.

Writers never call subprocess directly: they get a runner, so a test can point
the same writer at a namespace it created (or at a fake that records what
would have run, kept with the tests in `tests/lib/fakes.py`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from libcalico import subproc

log = logging.getLogger(__name__)


@dataclass
class CmdResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CmdRunner:
    """Runs commands in `netns` (a name under /run/netns) or, with None, in our own namespace."""

    def __init__(self, netns: str | None = None, timeout: float = 60.0):
        self.netns = netns
        self.timeout = timeout

    def full_argv(self, argv: list[str]) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)

    async def run(self, argv: list[str], input: str | None = None, timeout: float | None = None) -> CmdResult:
        """Run to completion; never raises for a non-zero exit (callers decide), only for a missing binary/timeout."""
        full = self.full_argv(argv)
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # Killed and reaped on timeout and on cancellation alike (a stop, a superseded apply).
        out, err = await subproc.communicate(proc, input.encode() if input is not None else None,
                                             timeout or self.timeout)
        return CmdResult(full, proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

