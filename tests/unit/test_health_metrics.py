"""Health server and metrics over real loopback HTTP (ephemeral ports, 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import time
import types
import urllib.error
import urllib.request

from felix.dataplane_facade import Writers
from felix.health import HealthServer, felix_readiness
from felix.metrics import Metrics
from felix.status import FelixState, FelixStatus, StatusBoard


async def get(url: str) -> tuple[int, str]:
    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return await asyncio.to_thread(fetch)


async def test_readiness_follows_status_and_liveness_follows_heartbeat():
    state = {"reasons": ["not in sync with the datastore (syncer: resyncing)"]}
    hs = HealthServer("127.0.0.1", 0, readiness=lambda: state["reasons"])
    await hs.start()
    try:
        base = f"http://127.0.0.1:{hs.port}"
        code, body = await get(base + "/readiness")
        assert code == 503 and "not in sync" in body
        assert (await get(base + "/liveness"))[0] == 200
        state["reasons"] = []
        code, body = await get(base + "/readiness")
        assert (code, body) == (200, "ok\n")
        assert (await get(base + "/nope"))[0] == 404
        # a stalled loop: the heartbeat goes stale, liveness (and readiness) fail
        hs.last_beat = time.monotonic() - 60
        hs._beat_task.cancel()
        code, body = await get(base + "/liveness")
        assert code == 503 and "heartbeat" in body
        assert (await get(base + "/readiness"))[0] == 503
    finally:
        await hs.stop()


async def test_broken_check_reports_instead_of_crashing():
    def boom():
        raise RuntimeError("kaput")
    hs = HealthServer("127.0.0.1", 0, readiness=boom)
    await hs.start()
    try:
        code, body = await get(f"http://127.0.0.1:{hs.port}/readiness")
        assert code == 503 and "kaput" in body
        assert (await get(f"http://127.0.0.1:{hs.port}/liveness"))[0] == 200
    finally:
        await hs.stop()


def test_from_config_defaults_to_localhost_and_respects_disabled():
    from felix.config import Config
    cfg = Config.resolve({}, {}, environ={"FELIX_CONFIGFILE": "/nonexistent", "FELIX_HEALTHENABLED": "true",
                                         "FELIX_PROMETHEUSMETRICSENABLED": "true"})
    hs = HealthServer.from_config(cfg, lambda: [])
    m = Metrics.from_config(cfg)
    assert (hs.host, hs.port) == ("127.0.0.1", 9099)
    assert (m.host, m.port) == ("127.0.0.1", 9091)
    off = Config.resolve({}, {}, environ={"FELIX_CONFIGFILE": "/nonexistent"})
    assert HealthServer.from_config(off, lambda: []) is None and Metrics.from_config(off) is None


def _status(syncer: types.SimpleNamespace, local: int = 0, dataplane: list[str] | None = None):
    board = StatusBoard()
    status = FelixStatus(board, datastore_state=lambda: syncer.status, datastore_resyncs=lambda: syncer.resyncs,
                         local_endpoints=lambda: local, dataplane_reasons=lambda: list(dataplane or []))
    return board, status


def test_felix_readiness_reasons():
    syncer = types.SimpleNamespace(status="wait-for-ready", resyncs=0)
    reasons: list[str] = []
    board, status = _status(syncer, dataplane=reasons)
    assert "wait-for-ready" in felix_readiness(status)[0]
    board.state, syncer.status = FelixState.PROGRAMMING, "in-sync"
    assert felix_readiness(status) == ["dataplane not programmed yet"]
    board.state = FelixState.IN_SYNC
    board.applied(False, 2)
    assert board.state is FelixState.FAILED and "2 in a row" in felix_readiness(status)[0]
    board.applied(True, 0)
    assert felix_readiness(status) == []
    syncer.status = "resyncing"  # etcd went away after the first sync
    assert "datastore connection lost" in felix_readiness(status)[0]
    syncer.status = "in-sync"
    reasons.append("IPIP is enabled but no ipip")
    assert felix_readiness(status) == ["IPIP is enabled but no ipip"]
    board.state = FelixState.STOPPING
    assert felix_readiness(status)[0] == "Felix is stopping"


async def test_metrics_served_and_counted():
    m = Metrics("127.0.0.1", 0)
    m.start()
    try:
        board, status = _status(types.SimpleNamespace(status="in-sync", resyncs=1), local=2)
        board.state = FelixState.IN_SYNC
        board.counts.update(updates=7, batches=2)
        m.record_felix(status)
        board.counts["updates"] = 10
        m.record_felix(status)  # cumulative stats become counter deltas, never double-counted
        table = types.SimpleNamespace(table="filter", stats={"last_apply_seconds": 0.02, "restore_errors": 1})
        ipsets = types.SimpleNamespace(stats={"last_apply_seconds": 0.01, "restore_errors": 0},
                                       desired_sets=lambda: {"felix-v4-a": frozenset({"1.1.1.1", "2.2.2.2"})})
        routes = types.SimpleNamespace(stats={"last_apply_seconds": 0.005, "errors": 0})
        writers = Writers(filter_tables={4: table}, nat_tables={}, ipsets={4: ipsets}, routes=routes, overlay=None)
        m.record_driver(types.SimpleNamespace(writers=lambda: writers))
        with m.timed("overlay"):
            pass
        try:
            with m.timed("overlay"):
                raise ValueError("x")
        except ValueError:
            pass
        code, text = await get(f"http://127.0.0.1:{m.port}/metrics")
        assert code == 200
        lines = text.splitlines()
        assert "felix_updates_processed_total 10.0" in lines
        assert "felix_active_local_endpoints 2.0" in lines
        assert "felix_resyncs_total 1.0" in lines
        assert 'felix_ipset_members{family="4"} 2.0' in lines
        assert 'felix_ipsets{family="4"} 1.0' in lines
        assert 'felix_iptables_restore_failures_total{family="4",table="filter"} 1.0' in lines
        assert 'felix_writer_errors_total{writer="overlay"} 1.0' in lines
        assert 'felix_apply_duration_seconds_count{writer="overlay"} 2.0' in lines
        assert 'felix_apply_duration_seconds_count{writer="routes"} 1.0' in lines
        assert sum(1 for line in lines if line.startswith("felix")) >= 10
    finally:
        m.stop()
