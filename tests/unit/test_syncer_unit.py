"""Syncer logic (diff on resync, invalid keys, batching, outage logging) over an in-memory client.

The real-etcd behaviour is in tests/integration/test_syncer.py; this pins the
bookkeeping precisely, including failure sequences that are hard to time on a
real server.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from libcalico.datastore import KV, CompactedError, DatastoreUnavailable, WatchEvent
from libcalico.syncer import Syncer, Update


def parser(path: str, raw: str | None):
    """Tiny stand-in for models.parse_key_value: JSON objects under /v/, unknown elsewhere."""
    if not path.startswith("/t/v/"):
        return None, None
    if raw is None:
        return path, None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path}: not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not an object")  # the syncer prefixes the key
    return path, value


class FakeClient:
    """Just enough of DatastoreClient: a dict, a revision counter, watch queues, injected failures."""

    def __init__(self):
        self.data: dict[str, str] = {}
        self.rev = 1
        self.watchers: list[asyncio.Queue] = []
        self.snapshot_failures = 0
        self.snapshots = 0
        self.ready = "true"

    async def get(self, key):
        return self.ready if key == "/calico/v1/Ready" else self.data.get(key)

    async def get_prefix(self, prefix, revision=0):
        if self.snapshot_failures:
            self.snapshot_failures -= 1
            raise DatastoreUnavailable("fake: down")
        self.snapshots += 1
        return self.rev, [KV(k, v, 1, 1) for k, v in sorted(self.data.items()) if k.startswith(prefix)]

    async def watch_batches(self, prefix, start_revision=0):
        q: asyncio.Queue = asyncio.Queue()
        self.watchers.append(q)
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                evs = [e for e in item if e.key.startswith(prefix)]
                if evs:
                    yield evs
        finally:
            self.watchers.remove(q)

    def write(self, key, value=None, quiet=False):
        """Change the data; unless quiet (i.e. "while the client was away"), tell the watchers."""
        self.rev += 1
        if value is None:
            self.data.pop(key, None)
            ev = WatchEvent("delete", key, None, self.rev)
        else:
            self.data[key] = value
            ev = WatchEvent("put", key, value, self.rev)
        if not quiet:
            for q in self.watchers:
                q.put_nowait([ev])

    def break_watches(self, exc):
        for q in list(self.watchers):
            q.put_nowait(exc)


class Pull:
    """Consume syncer.batches() in the background, as Felix does (the watch starts when pulled)."""

    def __init__(self, syncer):
        self.gen = syncer.batches()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        async for b in self.gen:
            await self.queue.put(b)

    async def __anext__(self):
        return await self.queue.get()

    async def aclose(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.gen.aclose()


async def next_batch(it, timeout=2.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


def kinds(batch):
    return [(u.kind, u.key) for u in batch]


async def wait_watching(fake, n=1):
    for _ in range(200):
        if len(fake.watchers) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("syncer never started watching")


async def test_first_snapshot_then_watch():
    fake = FakeClient()
    fake.write("/t/v/a", '{"x": 1}')
    fake.write("/t/other", "whatever")
    s = Syncer(fake, ["/t/"], parser=parser)
    assert s.status == "resyncing"
    it = Pull(s)
    b = await next_batch(it)
    assert kinds(b) == [("unknown", "/t/other"), ("put", "/t/v/a"), ("in_sync", None)]
    assert b[1].value == {"x": 1} and b[1].parsed_key == "/t/v/a"
    assert s.status == "in-sync" and s.resyncs == 0
    await wait_watching(fake)
    fake.write("/t/v/b", "{}")
    fake.write("/t/v/a", None)
    b = await next_batch(it)
    assert kinds(b) == [("put", "/t/v/b"), ("delete", "/t/v/a")]  # coalesced into one batch
    await it.aclose()
    assert fake.watchers == []  # closing the iterator stops the watch


async def test_empty_first_snapshot_still_in_sync():
    fake = FakeClient()
    it = Pull(Syncer(fake, ["/t/"], parser=parser))
    assert kinds(await next_batch(it)) == [("in_sync", None)]
    await it.aclose()


async def test_resync_emits_only_the_difference(caplog):
    fake = FakeClient()
    for k in "abcd":
        fake.write(f"/t/v/{k}", f'{{"k": "{k}"}}')
    s = Syncer(fake, ["/t/"], parser=parser, min_backoff=0.01, max_backoff=0.05)
    it = Pull(s)
    await next_batch(it)
    await wait_watching(fake)
    # The connection drops; while away: a changed, b deleted, e added, c rewritten identically.
    fake.snapshot_failures = 5
    fake.break_watches(DatastoreUnavailable("fake: connection lost"))
    fake.write("/t/v/a", '{"k": "A"}', quiet=True)
    fake.write("/t/v/b", None, quiet=True)
    fake.write("/t/v/e", '{"k": "e"}', quiet=True)
    fake.write("/t/v/c", '{"k": "c"}', quiet=True)
    with caplog.at_level(logging.INFO, logger="libcalico.syncer"):
        b = await next_batch(it)
    assert kinds(b) == [("put", "/t/v/a"), ("put", "/t/v/e"), ("delete", "/t/v/b"), ("in_sync", None)]
    assert b[0].value == {"k": "A"}
    assert s.resyncs == 1 and s.status == "in-sync"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "an outage is logged once, not once per retry"
    assert fake.snapshots == 2  # 5 failed attempts in between
    # A resync that finds nothing new sends nothing at all.
    await wait_watching(fake)
    fake.break_watches(DatastoreUnavailable("again"))
    await asyncio.sleep(0.2)
    fake.write("/t/v/f", "{}")
    await wait_watching(fake)
    b = await next_batch(it)
    assert s.resyncs == 2
    assert kinds(b) in ([("put", "/t/v/f")], [("put", "/t/v/f"), ("in_sync", None)])
    await it.aclose()


async def test_compaction_resnapshots_without_backoff():
    fake = FakeClient()
    fake.write("/t/v/a", "{}")
    s = Syncer(fake, ["/t/"], parser=parser, min_backoff=30)  # a backoff would time the test out
    it = Pull(s)
    await next_batch(it)
    await wait_watching(fake)
    fake.write("/t/v/b", "{}", quiet=True)  # missed by the watch, as if compacted away
    fake.break_watches(CompactedError("fake: compacted", 5))
    b = await next_batch(it)
    assert kinds(b) == [("put", "/t/v/b"), ("in_sync", None)]
    assert s.resyncs == 1
    await it.aclose()


async def test_invalid_values(caplog):
    fake = FakeClient()
    fake.write("/t/v/good", "{}")
    fake.write("/t/v/bad", "not json")
    fake.write("/t/v/list", "[1]")
    s = Syncer(fake, ["/t/"], parser=parser, min_backoff=0.01)
    it = Pull(s)
    with caplog.at_level(logging.WARNING, logger="libcalico.syncer"):
        b = await next_batch(it)
        assert kinds(b) == [("invalid", "/t/v/bad"), ("put", "/t/v/good"), ("invalid", "/t/v/list"),
                            ("in_sync", None)]
        assert b[0].error == "/t/v/bad: not JSON"
        assert b[2].error == "/t/v/list: not an object"
        await wait_watching(fake)
        fake.write("/t/v/good", "garbage")  # valid -> invalid: consumers drop it
        b = await next_batch(it)
        assert kinds(b) == [("invalid", "/t/v/good")]
        fake.write("/t/v/good", "garbage")  # same bytes again: nothing new to say
        fake.write("/t/v/bad", "{}")  # fixed
        b = await next_batch(it)
        assert kinds(b) == [("put", "/t/v/bad")]
        # A resync with the same invalid raw values does not log them again.
        fake.break_watches(DatastoreUnavailable("x"))
        fake.write("/t/v/list", None, quiet=True)
        b = await next_batch(it)
        assert kinds(b) == [("delete", "/t/v/list"), ("in_sync", None)]
    logged = [r.getMessage() for r in caplog.records if "invalid value" in r.getMessage()]
    assert len(logged) == 3, logged  # bad, list, good->garbage: once each
    await it.aclose()


async def test_batches_are_bounded():
    fake = FakeClient()
    for i in range(25):
        fake.write(f"/t/v/{i:02d}", "{}")
    s = Syncer(fake, ["/t/"], parser=parser, max_batch=10, batch_window=0.05)
    it = Pull(s)
    sizes = [len(await next_batch(it)) for _ in range(3)]
    assert sizes == [10, 10, 6]  # the last snapshot chunk carries in_sync
    await wait_watching(fake)
    for i in range(25):
        fake.write(f"/t/v/w{i:02d}", "{}")
    got = []
    while len(got) < 25:
        b = await next_batch(it)
        assert len(b) <= 10
        got += b
    assert [u.key for u in got] == [f"/t/v/w{i:02d}" for i in range(25)]
    await it.aclose()


async def test_wait_for_ready():
    fake = FakeClient()
    fake.ready = "false"
    fake.write("/t/v/a", "{}")
    s = Syncer(fake, ["/t/"], parser=parser, wait_for_ready=True, ready_poll=0.02)
    it = Pull(s)
    task = asyncio.ensure_future(next_batch(it, 5))
    await asyncio.sleep(0.2)
    assert not task.done() and s.status == "wait-for-ready"
    fake.ready = "true"
    assert kinds(await task) == [("put", "/t/v/a"), ("in_sync", None)]
    await it.aclose()


def test_overlapping_prefixes_are_merged():
    s = Syncer(FakeClient(), ["/calico/v1/host/a/", "/calico/v1/", "/calico/bgp/v1/"], parser=parser)
    assert s.prefixes == ["/calico/bgp/v1/", "/calico/v1/"]
    with pytest.raises(ValueError):
        Syncer(FakeClient(), [], parser=parser)


def test_update_defaults():
    assert Update("in_sync") == Update("in_sync", None, None, None, None)


async def test_parsing_a_big_snapshot_gives_the_loop_turns():
    """Every value is parsed and validated on the event loop: with many (or large) values the
    syncer must hand the loop back every parse slice, or health checks and timers stall.
    The clock is a counter (one tick per parse), so the slicing is exact, not timed."""
    fake = FakeClient()
    for i in range(100):
        fake.data[f"/t/v/{i:03d}"] = "{}"
    ticks = iter(range(10**6))
    s = Syncer(fake, ["/t/"], parser=parser, parse_slice=10, clock=lambda: next(ticks))
    turns = 0
    parsing = True

    async def other_task():
        nonlocal turns
        while parsing:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    it = Pull(s)
    first = await next_batch(it)
    parsing = False
    await other
    assert len(first) == 101
    assert turns >= 10  # about one turn per 10 parses, not one for the whole snapshot
    fake.write("/t/v/new", "{}")
    assert kinds(await next_batch(it)) == [("put", "/t/v/new")]
    await it.aclose()


async def test_refused_values_and_their_deletes_carry_the_parsed_key():
    """Consumers route every update by its parsed key; a refused value (and the delete that
    follows it) must carry it too, or each consumer parses the path again."""
    from libcalico.models import parse_key_value

    fake = FakeClient()
    key = "/calico/v1/policy/profile/p1/tags"
    fake.data[key] = '["has space"]'
    s = Syncer(fake, ["/calico/"], parser=parse_key_value)
    it = Pull(s)
    first = await next_batch(it)
    assert first[0].kind == "invalid" and first[0].parsed_key.kind == "profile_tags"
    fake.write(key, None)
    gone = await next_batch(it)
    assert gone[0].kind == "delete" and gone[0].parsed_key.kind == "profile_tags"
    await it.aclose()
