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


async def test_metrics_served_and_counted_under_real_felix_names():
    m = Metrics("127.0.0.1", 0)
    m.start()
    try:
        board, status = _status(types.SimpleNamespace(status="in-sync", resyncs=1), local=2)
        status._calc_counts = lambda: {"local_policies": 3, "hosts": 4, "workload_endpoints": 9,
                                       "host_endpoints": 1}
        board.state = FelixState.IN_SYNC
        board.counts.update(updates=7, batches=2)
        board.applied(True, 0, 0.02)
        m.record_felix(status)
        board.counts["updates"] = 10
        board.applied(False, 1, 0.5)
        m.record_felix(status)  # cumulative stats become counter deltas, never double-counted
        m.record_felix(status)  # no new apply: no new observation
        table = types.SimpleNamespace(table="filter", stats={"restores": 3, "restore_errors": 1, "saves": 2},
                                      chains=lambda: {"felix-a": ["x", "y"], "felix-b": ["z"]})
        ipsets = types.SimpleNamespace(stats={"restores": 2, "saves": 1, "restore_errors": 0},
                                       desired_sets=lambda: {"felix-v4-a": frozenset({"1.1.1.1"}),
                                                             "felix-v4-s:abc": frozenset(),
                                                             "felix-v4-i:masq-ipam-pools": frozenset()})
        writers = Writers(filter_tables={4: table}, nat_tables={}, ipsets={4: ipsets}, routes=None, overlay=None)
        m.record_driver(types.SimpleNamespace(writers=lambda: writers))
        m.record_driver(types.SimpleNamespace(writers=lambda: writers))
        code, text = await get(f"http://127.0.0.1:{m.port}/metrics")
        assert code == 200
        lines = text.splitlines()
        for line in ("felix_calc_graph_updates_processed 10.0", "felix_active_local_endpoints 2.0",
                     "felix_resyncs_started 1.0", "felix_resync_state 3.0", "felix_int_dataplane_failures 1.0",
                     "felix_active_local_policies 3.0", "felix_cluster_num_hosts 4.0",
                     "felix_cluster_num_workload_endpoints 9.0", "felix_cluster_num_host_endpoints 1.0",
                     "felix_active_local_selectors 1.0", "felix_active_local_tags 1.0",
                     "felix_ipsets_calico 3.0", "felix_ipset_calls 3.0", "felix_ipset_errors 0.0",
                     "felix_iptables_restore_calls 3.0", "felix_iptables_restore_errors 1.0",
                     "felix_iptables_save_calls 2.0",
                     'felix_iptables_chains{ip_version="4",table="filter"} 2.0',
                     'felix_iptables_rules{ip_version="4",table="filter"} 3.0',
                     "felix_int_dataplane_apply_time_seconds_count 2.0",
                     'felix_int_dataplane_apply_time_seconds{quantile="0.5"} 0.02',
                     'felix_int_dataplane_apply_time_seconds{quantile="0.99"} 0.5',
                     "# TYPE felix_iptables_restore_errors counter",
                     "# TYPE felix_int_dataplane_apply_time_seconds summary"):
            assert line in lines, line
        # Go-style: counters under their own names, no _total/_created twins; process_* as Go's client has them
        from felix.metrics import EXPORTED
        counters = [n for n, t in EXPORTED.items() if t == "counter"]
        assert not any("_created" in line or line.split()[0] in [c + "_total" for c in counters] for line in lines)
        assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
        assert (await get(f"http://127.0.0.1:{m.port}/other"))[0] == 404
    finally:
        m.stop()


def test_every_exported_family_is_declared_with_its_type():
    m = Metrics("127.0.0.1", 0)
    types_seen = {line.split()[2]: line.split()[3] for line in m.render().splitlines()
                  if line.startswith("# TYPE felix_")}
    from felix.metrics import EXPORTED
    assert types_seen == EXPORTED


async def test_metrics_listen_on_ipv6_loopback_too():
    m = Metrics("::1", 0)
    m.start()
    try:
        code, text = await get(f"http://[::1]:{m.port}/metrics")
        assert code == 200 and "felix_resyncs_started 0.0" in text.splitlines()
    finally:
        m.stop()
