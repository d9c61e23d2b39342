"""Rate-limited logging per kind of message, so a flood of bad data cannot flood the logs.

Ten thousand invalid keys must not become ten thousand log lines a second:
the first few of each kind per interval are logged in full (they name their
key), the rest are counted and reported as one summary line per interval.
Nothing is lost silently: the summary says how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """`log(kind, level, msg, *args)`: at most `burst` lines per kind per `interval`, plus one summary."""

    def __init__(self, logger: logging.Logger, burst: int = 5, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.burst = max(1, burst)
        self.interval = interval
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0

    def _roll(self, kind: str, w: _Window, now: float) -> _Window:
        if now - w.start < self.interval:
            return w
        if w.suppressed:
            self.logger.warning("... and %d more %s message(s) suppressed in the last %.0fs",
                                w.suppressed, kind, now - w.start)
        w = _Window(now)
        self._windows[kind] = w
        return w

    def log(self, kind: str, level: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log or count one message; returns True when it was written."""
        now = self.clock()
        w = self._windows.get(kind) or self._windows.setdefault(kind, _Window(now))
        w = self._roll(kind, w, now)
        if w.logged < self.burst:
            w.logged += 1
            self.logger.log(level, msg, *args, exc_info=exc_info)
            return True
        w.suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self) -> bool:
        """Write the summaries of windows that are over (call after each batch).

        Returns True while some suppressed messages still wait for their summary,
        so the caller can call again later (e.g. `loop.call_later(interval, ...)`).
        """
        now = self.clock()
        pending = False
        for kind, w in list(self._windows.items()):
            if w.suppressed:
                pending |= self._roll(kind, w, now).suppressed > 0
        return pending
