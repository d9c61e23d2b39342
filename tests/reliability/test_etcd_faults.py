"""Datastore faults under a live syncer client: member loss, partitions, compaction, restore from backup.

The client (tests/reliability/syncer_probe.py) is one process for the whole
test: it must ride out every fault by itself.  After each fault the test
compares the client's view with what etcd holds, key for key.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time

import pytest

from libcalico.datastore import DatastoreClient
from libcalico.syncer import Syncer
from tests.reliability.probe import SyncerProbe, etcd_raw_state

P = "/calico/v1/policy/profile/"


def tags_key(name: str) -> str:
    return f"{P}{name}/tags"


@pytest.mark.slow
def test_cluster_member_loss_fails_over_without_restart(etcd_cluster, tmp_path):
    """Kill the member the client talks to, bring it back, then kill another: no update lost."""
    c = etcd_cluster
    cli = c.client_ns()
    probe = SyncerProbe(c.endpoints, [P], ns=cli, log_path=str(tmp_path / "probe.log"))
    try:
        for i in range(10):
            c.put(tags_key(f"k{i}"), f'["v{i}"]')
        probe.wait(lambda p: p.in_syncs >= 1 and len(p.state) == 10, what="first snapshot")
        pid = probe.pid
        failover_times = []
        # Member 0 is the one the client dialled first; then member 1, which it moved to.
        for round_, (victim, revived) in enumerate([(0, None), (1, 0), (2, 1)]):
            if revived is not None:
                c.restart(revived)
            c.kill(victim)
            t0 = time.monotonic()  # end to end: leader election, client failover, resync
            for i in range(0, 10, 2):
                c.put(tags_key(f"k{i}"), f'["r{round_}-{i}"]')
            c.delete(tags_key(f"k{round_ * 2 + 1}"))
            c.put(tags_key(f"new{round_}"), f'["n{round_}"]')
            want = etcd_raw_state(c.etcdctl, P)
            probe.wait_state(want, timeout=30, what=f"round {round_}: member {victim} killed")
            failover_times.append(time.monotonic() - t0)
        assert probe.pid == pid and probe.proc.poll() is None, "the client was never restarted"
        assert sorted(probe.deletes) == sorted(tags_key(f"k{r * 2 + 1}") for r in range(3)), \
            "only the deleted keys were ever deleted (no flush on failover)"
        # The outage of one member among three is logged, not a stream of retries.
        warnings = [line for line in probe.log_text().splitlines() if " WARNING " in line]
        assert len(warnings) <= 2 * 3, warnings
        print(f"failover rounds converged in {[round(t, 2) for t in failover_times]} s")
    finally:
        probe.close()


@pytest.mark.slow
def test_cluster_partitioned_member_fails_over(etcd_cluster, tmp_path):
    """The member the client uses goes silent (link down, no TCP reset): keepalives move the client on."""
    c = etcd_cluster
    cli = c.client_ns()
    probe = SyncerProbe(c.endpoints, [P], ns=cli, log_path=str(tmp_path / "probe.log"))
    try:
        c.put(tags_key("a"), '["a"]')
        probe.wait(lambda p: p.in_syncs >= 1 and len(p.state) == 1, what="first snapshot")
        c.partition(0)
        c.put(tags_key("b"), '["b"]')
        c.delete(tags_key("a"))
        want = etcd_raw_state(c.etcdctl, P)
        took = probe.wait_state(want, timeout=40, what="failover away from a silent member")
        c.heal(0)
        c.put(tags_key("c"), '["c"]')
        probe.wait_state(etcd_raw_state(c.etcdctl, P), timeout=20, what="live after heal")
        assert probe.deletes == [tags_key("a")]
        print(f"silent member: client converged after {took:.1f} s")
    finally:
        probe.close()


def _snapshot_restore(etcd, snap: str) -> None:
    """Replace etcd's data with `snap` (what an operator restoring a backup does), then start it."""
    etcd.stop()
    restored = os.path.join(etcd.data_dir, "restored")
    peer = f"http://127.0.0.1:{etcd.peer_port}"
    subprocess.run(["etcdctl", "snapshot", "restore", snap, "--data-dir", restored, "--name", etcd.name,
                    "--initial-cluster", f"{etcd.name}={peer}", "--initial-advertise-peer-urls", peer],
                   check=True, capture_output=True, env=dict(os.environ, ETCDCTL_API="3"))
    data = os.path.join(etcd.data_dir, "data")
    shutil.rmtree(data)
    os.rename(restored, data)
    etcd.start()


def test_restore_from_older_snapshot_resyncs_to_it(etcd, tmp_path):
    """etcd restored from a backup goes back in revision: the client must follow it, not its memory."""
    for name in "abc":
        etcd.put(tags_key(name), f'["{name}"]')
    snap = str(tmp_path / "backup.db")
    etcd.etcdctl("snapshot", "save", snap)
    old = etcd_raw_state(etcd.etcdctl, P)
    probe = SyncerProbe(etcd.endpoint, [P], log_path=str(tmp_path / "probe.log"))
    try:
        probe.wait(lambda p: p.in_syncs >= 1, what="first snapshot")
        # Life goes on after the backup: changes, deletes, new keys, many revisions.
        for i in range(30):
            etcd.put(tags_key("a"), f'["a{i}"]')
        etcd.delete(tags_key("b"))
        etcd.put(tags_key("d"), '["d"]')
        probe.wait_state(etcd_raw_state(etcd.etcdctl, P), what="changes after the backup")
        rev_before = probe.status["revision"]
        _snapshot_restore(etcd, snap)
        assert etcd_raw_state(etcd.etcdctl, P) == old
        probe.wait_state(old, timeout=30, what="the restored (older) state")
        assert probe.status["revision"] < rev_before, "the client now tracks the restored revision"
        # And it keeps watching from the restored revision on.
        etcd.put(tags_key("e"), '["e"]')
        etcd.delete(tags_key("c"))
        probe.wait_state(etcd_raw_state(etcd.etcdctl, P), what="live updates after the restore")
    finally:
        probe.close()


async def test_compaction_past_a_lagging_watcher(etcd_env, etcd):
    """A consumer stalls while thousands of changes and a compaction go by: it catches up exactly.

    The syncer's watch backs up (its queue, gRPC flow control, etcd's send
    buffer) and etcd moves the watcher to its slow path; compacting past its
    revision then forces the compacted-watch error, which must end in a resync.
    """
    client = DatastoreClient.from_env(timeout=3)
    writer = DatastoreClient.from_env(timeout=3)
    s = Syncer(client, [P])
    state: dict[str, object] = {}
    it = s.batches().__aiter__()

    async def pull_until(pred, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not pred():
            batch = await asyncio.wait_for(it.__anext__(), max(0.1, deadline - time.monotonic()))
            for u in batch:
                if u.kind == "put":
                    state[u.key] = u.value
                elif u.kind in ("delete", "invalid"):
                    state.pop(u.key, None)

    try:
        for i in range(50):
            await writer.put(tags_key(f"k{i}"), f'["v{i}"]')
        await pull_until(lambda: len(state) == 50)
        await asyncio.sleep(0)  # the watch is now running; the consumer stops pulling
        def tags(tag: str) -> str:  # ~1 kB of valid tags, so the stream fills its buffers fast
            return json.dumps([f"{tag}-{j}" for j in range(120)])

        for round_ in range(3):
            for i in range(50):
                await writer.put(tags_key(f"k{i}"), tags(f"r{round_}k{i}"))
            for i in range(300):  # filler traffic on the watched prefix
                await writer.put(tags_key(f"f{i % 20}"), tags(f"r{round_}f{i}"))
        for i in range(0, 50, 5):
            await writer.delete(tags_key(f"k{i}"))
        await writer.compact(await writer.current_revision())
        final_rev, kvs = await writer.get_prefix(P)
        want = {kv.key: json.loads(kv.value) for kv in kvs}
        await pull_until(lambda: state == want)
        # Then the watch works again.
        await writer.put(tags_key("after"), '["after"]')
        await pull_until(lambda: tags_key("after") in state, timeout=20)
        assert s.resyncs >= 1, "the watcher really fell behind the compaction (else this tested nothing)"
        print(f"lagging watcher: resyncs={s.resyncs}, final revision {final_rev}")
    finally:
        await it.aclose()
        await client.close()
        await writer.close()
