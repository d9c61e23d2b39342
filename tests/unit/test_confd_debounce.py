"""confd's debounce on an injected clock: how many render passes a pattern of changes costs.

The integration test only shows that one etcd transaction costs one reload; how
changes spread over time are grouped is decided here, on a fake clock, so the
answer does not depend on how busy the machine is.  `make bench` (bench_confd)
times the same burst against a real etcd and BIRD.
"""

from __future__ import annotations

from confd import daemon
from confd.daemon import Confd, Settings


class FakeTime:
    """A clock that moves only when confd sleeps, delivering the changes due meanwhile."""

    def __init__(self, changes: list[float]):
        self.now = 0.0
        self.changes = sorted(changes)
        self.confd: Confd | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        while self.changes and self.changes[0] <= until:
            self.now = self.changes.pop(0)
            self.confd._poke()
        self.now = until


async def render_passes(changes: list[float]) -> list[float]:
    """The fake times at which confd's render loop would render, for changes at these times."""
    t = FakeTime(changes)
    c = Confd(Settings("h", "10.0.0.1", None, "/nonexistent/run", "/nonexistent/conf"), clock=t.clock, sleep=t.sleep)
    t.confd = c
    passes = []
    while t.changes:
        t.now = t.changes.pop(0)
        c._poke()
        await c._settle()
        passes.append(round(t.now, 6))
    return passes


async def test_a_burst_of_100_changes_in_40_ms_is_one_render():
    burst = [i * 0.0004 for i in range(100)]
    assert await render_passes(burst) == [round(burst[-1] + daemon.QUIET, 6)]


async def test_changes_further_apart_than_the_quiet_gap_render_separately():
    spaced = [0.0, 0.05, 0.1]
    assert await render_passes(spaced) == [round(t + daemon.QUIET, 6) for t in spaced]


async def test_a_steady_stream_renders_every_max_delay():
    """A change every 10 ms for 300 ms never leaves a quiet gap: MAX_DELAY bounds the wait."""
    stream = [i * 0.01 for i in range(30)]
    passes = await render_passes(stream)
    assert passes[:2] == [daemon.MAX_DELAY, round(0.11 + daemon.MAX_DELAY, 6)]
    assert len(passes) == 3
    assert passes[-1] == round(stream[-1] + daemon.QUIET, 6)
