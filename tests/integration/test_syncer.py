"""Syncer against a real etcd: snapshot+watch, etcd restarted mid-stream, compaction, invalid values."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from libcalico.datastore import DatastoreClient
from libcalico.syncer import Syncer

P = "/calico/v1/policy/profile/"


def tags_key(name: str) -> str:
    return f"{P}{name}/tags"


class Consumer:
    """Applies batches like Felix would: a dict of key -> value; records every batch."""

    def __init__(self, syncer: Syncer):
        self.syncer = syncer
        self.state: dict[str, object] = {}
        self.batches: list[list] = []
        self.deletes: list[str] = []
        self.in_syncs = 0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        async for batch in self.syncer.batches():
            self.batches.append(batch)
            for u in batch:
                if u.kind == "put":
                    self.state[u.key] = u.value
                elif u.kind in ("delete", "invalid"):
                    self.state.pop(u.key, None)
                    if u.kind == "delete":
                        self.deletes.append(u.key)
                elif u.kind == "in_sync":
                    self.in_syncs += 1
            self.changed.set()

    async def wait(self, pred, timeout=20.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; state={self.state} "
                                     f"status={self.syncer.status} batches={self.batches[-3:]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def etcd_state(etcd, prefix):
    out = etcd.etcdctl("get", "--prefix", prefix, "-w", "json")
    kvs = json.loads(out).get("kvs", [])
    import base64
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in kvs}


@pytest.fixture
async def client(etcd_env):
    c = DatastoreClient.from_env(timeout=2)
    yield c
    await c.close()


async def test_snapshot_then_watch_with_real_models(client, etcd):
    etcd.put(tags_key("a"), '["t1"]')
    etcd.put(tags_key("bad"), '["has space"]')
    etcd.put(f"{P}a/nonsense", "x")
    etcd.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", '{"cidr": "10.65.0.0/16", "masquerade": true}')
    s = Syncer(client, [P, "/calico/v1/ipam/"], wait_for_ready=True)
    c = Consumer(s)
    await asyncio.sleep(0.5)
    assert s.status == "wait-for-ready" and not c.batches
    etcd.put("/calico/v1/Ready", "true")
    await c.wait(lambda: c.in_syncs == 1, what="first in_sync")
    first = c.batches[0]
    assert [(u.kind, u.key) for u in first] == [
        ("put", "/calico/v1/ipam/v4/pool/10.65.0.0-16"), ("unknown", f"{P}a/nonsense"),
        ("put", tags_key("a")), ("invalid", tags_key("bad")), ("in_sync", None)]  # sorted by key
    assert first[0].value.masquerade is True and first[0].parsed_key.cidr == "10.65.0.0/16"
    assert first[3].error.startswith(tags_key("bad") + ": ")
    assert s.status == "in-sync"
    etcd.put(tags_key("bad"), '["fixed"]')
    etcd.delete(tags_key("a"))
    etcd.put("/calico/v1/config/Outside", "not watched")
    await c.wait(lambda: tags_key("bad") in c.state and tags_key("a") not in c.state, what="watch")
    assert c.state[tags_key("bad")] == ["fixed"]
    assert "/calico/v1/config/Outside" not in c.state
    await c.close()


class GatedClient(DatastoreClient):
    """A real client whose snapshot reads can be held back, so "while the syncer was away" is certain."""

    gate: asyncio.Event | None = None
    snapshot_attempts = 0

    async def get_prefix(self, prefix, revision=0):
        if self.gate is not None:
            await self.gate.wait()
        self.snapshot_attempts += 1
        return await super().get_prefix(prefix, revision)


async def test_etcd_restart_mid_stream_changes_while_away(etcd_env, etcd):
    """etcd stops mid-stream, comes back (same data dir), data changes before the syncer reconnects.

    The changes must reach the consumer through the resync diff, with no
    delete for the keys that stayed, then in_sync, then live watching again.
    """
    for name in "abc":
        etcd.put(tags_key(name), f'["{name}"]')
    client = GatedClient.from_env(timeout=2)
    s = Syncer(client, [P], min_backoff=0.1, max_backoff=0.5)
    c = Consumer(s)
    await c.wait(lambda: c.in_syncs == 1, what="first in_sync")
    etcd.put(tags_key("live"), '["l"]')  # via the watch
    await c.wait(lambda: tags_key("live") in c.state, what="live watch event")
    client.gate = asyncio.Event()  # the syncer's next snapshot waits until the changes are made
    await asyncio.to_thread(etcd.stop)
    await c.wait(lambda: s.status == "resyncing", timeout=5, what="outage noticed")
    attempts = client.snapshot_attempts
    client.gate.set()
    await asyncio.sleep(1.5)  # etcd still down: the syncer retries with backoff, and fails
    assert client.snapshot_attempts > attempts and s.status == "resyncing"
    client.gate = asyncio.Event()
    await asyncio.sleep(0.6)  # a retry is now parked at the gate
    await asyncio.to_thread(etcd.start)
    etcd.put(tags_key("a"), '["a2"]')
    etcd.delete(tags_key("b"))
    etcd.put(tags_key("d"), '["d"]')
    etcd.put(tags_key("c"), '["c"]')  # same value: no update expected
    batches_before = len(c.batches)
    assert c.in_syncs == 1
    client.gate.set()
    await c.wait(lambda: c.in_syncs == 2, what="in_sync after restart")
    resync = c.batches[batches_before]
    assert sorted((u.kind, u.key) for u in resync) == sorted([
        ("put", tags_key("a")), ("put", tags_key("d")), ("delete", tags_key("b")), ("in_sync", None)])
    assert c.deletes == [tags_key("b")], "no spurious deletes"
    assert s.resyncs == 1 and s.status == "in-sync"
    assert c.state == etcd_state(etcd, P)
    etcd.put(tags_key("e"), '["e"]')  # the watch works again
    await c.wait(lambda: tags_key("e") in c.state, what="watch after resync")
    await c.close()
    await client.close()


async def test_etcd_killed_and_restarted_fast_reconnect(client, etcd):
    """Default (fast) backoff, SIGKILL: whichever path delivers them, every change arrives."""
    for i in range(20):
        etcd.put(tags_key(f"k{i}"), f'["v{i}"]')
    s = Syncer(client, [P])
    c = Consumer(s)
    await c.wait(lambda: c.in_syncs == 1, what="first in_sync")
    for round_ in range(2):
        await asyncio.to_thread(etcd.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(etcd.start)
        for i in range(0, 20, 3):
            etcd.put(tags_key(f"k{i}"), f'["r{round_}x{i}"]')
        etcd.delete(tags_key(f"k{round_ + 1}"))
        want = etcd_state(etcd, P)
        await c.wait(lambda w=want: c.state == w and s.status == "in-sync", what=f"round {round_}")
    assert sorted(c.deletes) == [tags_key("k1"), tags_key("k2")]
    await c.close()


class CompactingClient(DatastoreClient):
    """A real client that, once, changes data and compacts etcd right before the syncer's watch starts.

    That is the window a compaction must not lose updates in: snapshot read at
    R, history up to past R+1 compacted, the watch from R+1 refused.
    """

    armed = False

    async def watch_batches(self, prefix, start_revision=0):
        if self.armed:
            self.armed = False
            await self.put(tags_key("x"), '["x2"]')
            await self.delete(tags_key("y"))
            await self.put(tags_key("z"), '["z"]')
            await self.compact(await self.current_revision())
        async for b in super().watch_batches(prefix, start_revision):
            yield b


async def test_compaction_past_watch_revision_resyncs(etcd_env, etcd):
    etcd.put(tags_key("x"), '["x"]')
    etcd.put(tags_key("y"), '["y"]')
    client = CompactingClient.from_env(timeout=2)
    client.armed = True
    s = Syncer(client, [P], min_backoff=30)  # compaction must resync at once, not after a backoff
    c = Consumer(s)
    await c.wait(lambda: c.in_syncs == 2, timeout=10, what="resync after compaction")
    assert s.resyncs == 1
    assert [(u.kind, u.key) for u in c.batches[0]] == [
        ("put", tags_key("x")), ("put", tags_key("y")), ("in_sync", None)]
    assert sorted((u.kind, u.key) for u in c.batches[1]) == sorted([
        ("put", tags_key("x")), ("put", tags_key("z")), ("delete", tags_key("y")), ("in_sync", None)])
    assert c.state == etcd_state(etcd, P) == {tags_key("x"): ["x2"], tags_key("z"): ["z"]}
    etcd.put(tags_key("w"), '["w"]')
    await c.wait(lambda: tags_key("w") in c.state, what="watch after compaction resync")
    # etcdctl compaction while watching at the head does not disturb a live watch.
    etcd.etcdctl("compact", str(json.loads(etcd.etcdctl("get", "/", "-w", "json"))["header"]["revision"]))
    etcd.put(tags_key("v"), '["v"]')
    await c.wait(lambda: tags_key("v") in c.state, what="watch after etcdctl compact")
    assert c.deletes == [tags_key("y")]
    await c.close()
    await client.close()


async def test_many_writes_arrive_batched_in_order(client, etcd):
    s = Syncer(client, [P], max_batch=50)
    c = Consumer(s)
    await c.wait(lambda: c.in_syncs == 1, what="first in_sync")
    writer = DatastoreClient([etcd.endpoint])
    for i in range(200):
        await writer.put(tags_key(f"n{i:03d}"), f'["{i}"]')
    await writer.close()
    await c.wait(lambda: len(c.state) == 200, what="200 keys")
    watched = [u for b in c.batches[1:] for u in b]
    assert [u.key for u in watched] == [tags_key(f"n{i:03d}") for i in range(200)]
    assert all(len(b) <= 50 for b in c.batches)
    await c.close()


async def test_undecodable_keys_are_skipped_in_snapshot_and_watch(client, etcd, caplog):
    """A key that is not UTF-8 is one writer's garbage: it is reported escaped and skipped,
    and every other key still arrives, in the snapshot and in the watch."""
    bad = f"{P}\udcff\udcfe/tags"            # bytes 0xff 0xfe on the wire (argv is fs-encoded)
    etcd.put(bad, '["x"]')
    etcd.put(tags_key("a"), '["t1"]')
    s = Syncer(client, [P])
    c = Consumer(s)
    await c.wait(lambda: c.in_syncs == 1, what="first in_sync")
    assert list(c.state) == [tags_key("a")]
    etcd.put(f"{P}bad\udcc3\n/tags", '["y"]')  # a lone continuation byte, and a newline
    etcd.put(tags_key("b"), '["t2"]')
    await c.wait(lambda: tags_key("b") in c.state, what="watch after an undecodable key")
    assert sorted(c.state) == [tags_key("a"), tags_key("b")]
    assert s.status == "in-sync"
    lines = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert lines and all("\n" not in m for m in lines)
    assert any("\\xff\\xfe" in m for m in lines)
    await c.close()


async def test_create_revision_is_stable_across_rewrites_and_resnapshots(client, etcd):
    """Ownership rules order claimants by when their key was created: a rewrite keeps that
    revision, a delete and re-create takes a new one."""
    etcd.put(tags_key("a"), '["t1"]')
    s = Syncer(client, [P])
    c = Consumer(s)
    await c.wait(lambda: c.in_syncs == 1, what="first in_sync")
    first = [u for u in c.batches[0] if u.kind == "put"][0].create_revision
    assert first > 0
    etcd.put(tags_key("a"), '["t2"]')
    await c.wait(lambda: c.state.get(tags_key("a")) == ["t2"], what="rewrite")
    assert c.batches[-1][-1].create_revision == first
    etcd.delete(tags_key("a"))
    etcd.put(tags_key("a"), '["t2"]')
    await c.wait(lambda: c.deletes, what="re-create")  # the delete and the put may share a batch
    await c.wait(lambda: c.batches[-1][-1].kind == "put", what="re-create")
    assert c.batches[-1][-1].create_revision > first
    await c.close()
