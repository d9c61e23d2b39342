"""The log limiter behind "a flood of bad keys is a few lines a second, not thousands"."""

from __future__ import annotations

import logging

from libcalico.ratelimit import RateLimitedLog
from libcalico.syncer import Syncer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_summary_per_kind(caplog):
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t"), burst=3, interval=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(1000):
            rl.log("bad-endpoint", logging.WARNING, "bad endpoint %d", i)
            rl.log("bad-profile", logging.WARNING, "bad profile %d", i)
        assert len(caplog.records) == 6, "3 per kind, the rest counted"
        assert rl.flush() is True, "summaries pending until the window ends"
        clock.t += 1.0
        assert rl.flush() is False
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[:2] == ["bad endpoint 0", "bad profile 0"]
    assert "... and 997 more bad-endpoint message(s) suppressed in the last 1s" in msgs
    assert "... and 997 more bad-profile message(s) suppressed in the last 1s" in msgs
    assert rl.suppressed_total == 1994
    # A new window logs in full again.
    with caplog.at_level(logging.INFO, logger="t"):
        caplog.clear()
        assert rl.log("bad-endpoint", logging.WARNING, "again") is True
        assert [r.getMessage() for r in caplog.records] == ["again"]


def test_syncer_flood_of_invalid_keys_logs_a_few_lines(caplog):
    """10,000 invalid values in one snapshot: every one is reported to the consumer, a handful logged."""
    s = Syncer(client=None, prefixes=["/calico/"])
    snap = {f"/calico/v1/host/h/workload/k8s/w{i}/endpoint/e": "{not json" for i in range(10_000)}
    snap.update({f"/calico/v1/policy/profile/p{i}/tags": '"nope"' for i in range(10_000)})
    with caplog.at_level(logging.INFO, logger="libcalico.syncer"):
        updates = s.diff(snap)
    assert sum(u.kind == "invalid" for u in updates) == 20_000
    assert all(u.error.startswith(u.key) for u in updates)
    lines = [r for r in caplog.records if r.name == "libcalico.syncer"]
    assert 2 <= len(lines) <= 10, len(lines)
    assert s._invalid_log.suppressed_total == 20_000 - len(lines)
