"""The contract every dataplane writer keeps, and the skeleton they share.

Map:
- `Writer`: the protocol Felix's wiring (driver, facade, metrics, health)
  programs against.  Model calls (`set_*`, `remove*`) are synchronous and
  cheap; the coroutines touch the kernel.
- `StagedWriter`: a Writer whose apply has to be split around another
  writer's (ipsets: see below).
- `WriterBase`: the lock, the "read the kernel before the first apply" rule,
  timing and counting of every apply, and retry backoff.  Subclasses supply
  `loaded`, `dirty`, `load()` and `_apply()`.
- `WriterStats`: typed counters (one dataclass per writer, extending this
  one).  They also read as a `Mapping`, because metrics and older callers
  look them up by name (`stats["restores"]`, `stats.get("deferred")`).
- `failed_line` / `log_restore_failure`: a failed `iptables-restore` or
  `ipset restore` is logged with the offending input line and its
  neighbours; stderr alone ("line 1042 failed") does not tell an operator
  which rule or member the kernel refused.

Who follows it: `IptablesTable`, `IpsetWriter`, `RouteWriter`,
`OverlayDataplane`.  `SysctlWriter` does not: it keeps no model to diff (each
call writes and reports at once), so there is nothing to load, mark dirty or
retry.  `InterfaceMonitor` reads the kernel and writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(eq=False)
class WriterStats(Mapping):
    """Counters every writer keeps; subclasses add their own fields.

    `applies` counts runs of the apply skeleton (apply, refresh, cleanup),
    `failures` those that raised; `last_apply_seconds` is the duration of the
    latest one, kernel read included when the apply had to do it.
    """

    applies: int = 0
    failures: int = 0
    last_apply_seconds: float = 0.0

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


@runtime_checkable
class Writer(Protocol):
    """What the rest of Felix may rely on from a dataplane writer.

    - `load()`: read the kernel's view of what this writer owns (the only
      kernel read); `prefetch()` does it ahead of the first apply, read-only,
      so start-up overlaps it with the datastore snapshot.
    - `apply()`: bring the kernel to the model; True when the kernel changed.
      Raises `DataplaneError` after its retries and stays `dirty`, so the
      next apply tries again.
    - `refresh()`: re-read the kernel and repair drift (someone else's hand).
    - `cleanup_stale()`: remove what this writer owns in the kernel but no
      longer desires; only once in sync, so a restart keeps a working
      dataplane until Felix knows the whole picture.
    All coroutines of one writer are serialised by its lock: Felix may
    schedule a refresh while an apply is in flight.
    """

    stats: WriterStats

    @property
    def loaded(self) -> bool: ...

    @property
    def dirty(self) -> bool: ...

    async def load(self) -> object: ...

    async def prefetch(self) -> None: ...

    async def apply(self) -> bool: ...

    async def refresh(self) -> bool: ...

    async def cleanup_stale(self) -> bool: ...


@runtime_checkable
class StagedWriter(Writer, Protocol):
    """A Writer whose additions must land before another writer's apply and removals after it.

    ipsets: an iptables rule naming a set fails to load while the set does not
    exist, and a set cannot be destroyed while a rule still names it.  So the
    caller runs `apply_updates()` (create and fill, destroy nothing), then the
    iptables writers, then `apply()` (everything, destroys included).  One
    apply doing both would need the iptables restore in the middle of it.
    """

    async def apply_updates(self) -> bool: ...


class WriterBase:
    """Lock, load-before-first-apply, timing and retry backoff for a `Writer`.

    Subclasses implement `loaded`, `dirty`, `load()` and `_apply()` (called
    with the lock held and the kernel read), and override `refresh()` /
    `cleanup_stale()` when re-reading the kernel should queue more than the
    model's own changes.  Every kernel-writing path goes through `_run`, so
    `stats` time and count them all the same way.
    """

    def __init__(self, stats: WriterStats, retries: int = 3, backoff: float = 0.1):
        self.stats = stats
        self.retries = retries
        self.backoff = backoff
        self._lock = asyncio.Lock()  # apply/refresh/cleanup may be scheduled concurrently by Felix

    # ---- for subclasses ----
    @property
    def loaded(self) -> bool:
        raise NotImplementedError

    @property
    def dirty(self) -> bool:
        raise NotImplementedError

    async def load(self) -> object:
        raise NotImplementedError

    async def _apply(self) -> bool:
        raise NotImplementedError

    def _loaded_by_apply(self) -> None:
        """Hook: an apply found the kernel unread and read it (not called after `prefetch`)."""

    async def _run(self, fn: Callable[..., Awaitable[bool]], *args: Any) -> bool:
        """Run one apply step with the lock held: read the kernel if still unread, time, count."""
        t0 = time.monotonic()
        ok = False
        try:
            if not self.loaded:
                await self.load()
                self._loaded_by_apply()
            result = await fn(*args)
            ok = True
            return result
        finally:
            self.stats.applies += 1
            if not ok:
                self.stats.failures += 1
            self.stats.last_apply_seconds = time.monotonic() - t0

    async def _backoff(self, attempt: int) -> None:
        """Exponential pause between retries (attempt 0 waits `backoff`)."""
        await asyncio.sleep(self.backoff * (2 ** attempt))

    # ---- the protocol ----
    async def prefetch(self) -> None:
        async with self._lock:
            if not self.loaded:
                await self.load()

    async def apply(self) -> bool:
        async with self._lock:
            return await self._run(self._apply)

    async def refresh(self) -> bool:
        async with self._lock:
            await self.load()
            return await self._run(self._apply)


# ---- failed restores ----

_LINE_RE = re.compile(r"\bline:?\s+(\d+)", re.IGNORECASE)
CONTEXT_LINES = 3


def failed_line(stderr: str) -> int | None:
    """The 1-based input line a restore tool blamed, or None.

    iptables-restore says "line N failed" (legacy deletes, nft) or "Error
    occurred at line: N"; ipset restore says "Error in line N:".  With nft the
    blamed line can be the COMMIT after the culprit, hence the neighbours.
    """
    m = _LINE_RE.search(stderr)
    return int(m.group(1)) if m else None


def restore_context(text: str, lineno: int, around: int = CONTEXT_LINES) -> str:
    """Lines `lineno` +- `around` of `text`, numbered, the blamed one marked with `>`."""
    lines = text.splitlines()
    lo, hi = max(1, lineno - around), min(len(lines), lineno + around)
    return "\n".join(f"{'>' if n == lineno else ' '} {n:6d}  {lines[n - 1]}" for n in range(lo, hi + 1))


def offending_line(text: str, stderr: str) -> str | None:
    """The input line stderr blames, as `line N: <text>`, for error messages; None if unknown."""
    n = failed_line(stderr)
    lines = text.splitlines()
    if n is None or not 1 <= n <= len(lines):
        return None
    return f"line {n}: {lines[n - 1]}"


def log_restore_failure(logger: logging.Logger, what: str, attempt: int, text: str, stderr: str) -> None:
    """One warning per failed restore: the tool's complaint and the input around the line it blames."""
    err = stderr.strip()
    n = failed_line(err)
    if n is None or not 1 <= n <= len(text.splitlines()):
        logger.warning("%s failed (attempt %d): %s", what, attempt, err)
        return
    logger.warning("%s failed (attempt %d) at input line %d: %s\n%s", what, attempt, n, err,
                   restore_context(text, n))
