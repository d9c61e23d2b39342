"""docs/grafana-dashboard.json: queries only series Felix exports, under real Felix's names.

That a running Felix serves each of them is tests/integration/test_metrics_live_felix.py.
"""

from __future__ import annotations

from felix.metrics import EXPORTED, Metrics
from tests.lib import dashboard

REAL_FELIX_NAMES = {  # from Calico's Felix metric reference: the names operators' alerts use
    "felix_active_local_endpoints", "felix_active_local_policies", "felix_active_local_selectors",
    "felix_cluster_num_hosts", "felix_cluster_num_workload_endpoints", "felix_iptables_restore_errors",
    "felix_int_dataplane_apply_time_seconds", "felix_resyncs_started", "felix_ipset_errors",
}


def test_dashboard_reads_only_exported_series():
    used = {dashboard.family(s) for s in dashboard.series_names()}
    felix_used = {u for u in used if u.startswith("felix_")}
    assert felix_used and felix_used <= set(EXPORTED), felix_used - set(EXPORTED)
    assert used - felix_used == {"process_resident_memory_bytes", "process_cpu_seconds_total"}
    assert REAL_FELIX_NAMES <= felix_used


def test_every_family_the_dashboard_reads_is_declared_by_a_fresh_exporter():
    # labelled families have no samples before the first apply: their TYPE line is there from the start
    text = Metrics("127.0.0.1", 0).render()
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for series in dashboard.series_names():
        assert dashboard.family(series) in declared, series


def test_dashboard_is_grafana_shaped():
    d = dashboard.load()
    assert d["uid"] == "calico-felix" and d["schemaVersion"] >= 30
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "instance"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in d["panels"]
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"


def test_real_felix_counter_names_have_no_total_suffix():
    text = Metrics("127.0.0.1", 0).render()
    samples = dashboard.parse_exposition(text)
    for name, kind in EXPORTED.items():
        if kind == "counter":
            assert name in samples and name + "_total" not in samples, name
        if kind == "summary":
            assert {name, name + "_sum", name + "_count"} <= set(samples)
