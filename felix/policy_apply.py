"""What Felix does when the dataplane refuses an apply: back off, retry, and give up with an exit code.

Why an object of its own: the rule ("a writer failing MAX_APPLY_FAILURES
times in a row is an invariant lost: exit 1 so the supervisor restarts us")
is policy, and the loop that applies should not also count and time.  The
timer is the caller's (`schedule(delay)` queues a "retry" for the loop), so
the policy can be exercised without an event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from felix.config import EXIT_CONFIG_CHANGED

log = logging.getLogger(__name__)

MAX_APPLY_FAILURES = 8          # consecutive failed applies before Felix gives up (exit 1)
RETRY_BACKOFF = (0.2, 0.5, 1, 2, 4, 8, 15, 30)
EXIT_INVARIANT_LOST = 1

__all__ = ["EXIT_CONFIG_CHANGED", "EXIT_INVARIANT_LOST", "MAX_APPLY_FAILURES", "RETRY_BACKOFF",
           "ApplyPolicy", "FelixExit"]


class FelixExit(Exception):
    """Leave the loop with a process exit code (1: invariant lost, EXIT_CONFIG_CHANGED: restart me)."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


def backoff(attempt: int, steps: tuple[float, ...] = RETRY_BACKOFF) -> float:
    """Delay before retry number `attempt` (0-based); the last step repeats."""
    return steps[min(attempt, len(steps) - 1)]


class ApplyPolicy:
    """Counts consecutive failures; each failure asks for one retry, too many raise FelixExit(1)."""

    def __init__(self, schedule: Callable[[float], None], max_failures: int = MAX_APPLY_FAILURES,
                 steps: tuple[float, ...] = RETRY_BACKOFF):
        self._schedule = schedule
        self.max_failures = max_failures
        self.steps = steps
        self.failures = 0
        self._retry_queued = False      # one retry timer at a time: later failures fold into it

    def succeeded(self) -> None:
        if self.failures:
            log.info("dataplane applied again after %d failure(s)", self.failures)
        self.failures = 0

    def failed(self, e: Exception) -> None:
        """Record a failed apply: schedule a retry, or raise FelixExit once the limit is reached."""
        self.failures += 1
        if self.failures >= self.max_failures:
            raise FelixExit(EXIT_INVARIANT_LOST, f"dataplane apply failed {self.failures} times in a row: {e}")
        delay = backoff(self.failures - 1, self.steps)
        log.error("dataplane apply failed (%d in a row), retrying in %.1fs: %s", self.failures, delay, e)
        if not self._retry_queued:
            self._retry_queued = True
            self._schedule(delay)

    def retry_due(self) -> None:
        """The scheduled retry reached the loop: the next failure may schedule another."""
        self._retry_queued = False

    def first_apply_delay(self, attempt: int) -> float:
        return backoff(attempt, self.steps)
