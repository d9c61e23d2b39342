"""A real calico-felix in a namespace serves every series docs/grafana-dashboard.json reads, under
real Felix's names, with the counts the cluster in etcd implies."""

from __future__ import annotations

import sys

from libcalico import keys
from tests.integration.felix_topology import FelixHost, eventually
from tests.lib import dashboard

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())"
ALLOW = [{"action": "allow"}]


def scrape(fh: FelixHost) -> dict:
    r = fh.host.run(sys.executable, "-c", FETCH, "http://127.0.0.1:9091/metrics", check=False)
    return dashboard.parse_exposition(r.stdout) if r.returncode == 0 else {}


def value(samples: dict, name: str, **labels: str) -> float | None:
    for got, v in samples.get(name, []):
        if all(got.get(k) == w for k, w in labels.items()):
            return v
    return None


def test_running_felix_exports_every_dashboard_series_with_cluster_counts(netns_factory):
    fh = FelixHost(netns_factory, n_workloads=2, hostname="metricshost")
    try:
        a, b = fh.workloads
        fh.put("/calico/v1/Ready", "true")
        # a tag rule (a tag ipset) and a tiered policy with a selector rule (a selector ipset)
        fh.put_profile("web", inbound=[{"action": "allow", "src_tag": "web"}], outbound=ALLOW, tags=["web"])
        fh.put("/calico/v1/policy/tier/sec/metadata", {"order": 1})
        fh.put("/calico/v1/policy/tier/sec/policy/db", {
            "selector": "role == 'db'", "order": 1,
            "inbound_rules": [{"action": "allow", "src_selector": "role == 'app'"}], "outbound_rules": ALLOW})
        fh.put_endpoint(a, ["web"], labels={"role": "db"})
        fh.put_endpoint(b, ["web"], labels={"role": "app"})
        # the cluster: two more hosts (one registered, one known by its endpoint), a remote workload,
        # a host endpoint here and one elsewhere
        fh.put(keys.bgp_host_ip("other1", 4), "10.99.0.11")
        fh.put(keys.host_bird_ip("other1"), "10.99.0.11")
        fh.put("/calico/v1/host/other2/workload/test/r/endpoint/e",
               {"state": "active", "name": "caliremote", "profile_ids": ["web"], "ipv4_nets": ["10.66.0.9/32"]})
        fh.put(keys.host_endpoint(fh.hostname, "hep0"), {"name": "uplink1"})
        fh.put(keys.host_endpoint("other1", "hep0"), {"name": "eth0"})
        fh.start_felix(FELIX_PROMETHEUSMETRICSENABLED="true")

        def counted():
            s = scrape(fh)
            return (value(s, "felix_cluster_num_workload_endpoints") == 3
                    and value(s, "felix_active_local_selectors") and s)
        eventually(counted, 40, f"metrics with the cluster's counts; log:\n{fh.log()[-3000:]}")
        s = scrape(fh)
        missing = [n for n in dashboard.series_names() if n not in s or not dashboard.finite(s[n])]
        assert not missing, f"the dashboard reads series a running Felix does not export: {missing}"
        assert value(s, "felix_cluster_num_hosts") == 3          # metricshost, other1, other2
        assert value(s, "felix_cluster_num_host_endpoints") == 2
        assert value(s, "felix_active_local_endpoints") == 3     # two workloads and a host endpoint
        assert value(s, "felix_active_local_policies") == 1
        assert value(s, "felix_active_local_selectors") == 1
        assert value(s, "felix_active_local_tags") == 1
        assert value(s, "felix_resync_state") == 3
        assert value(s, "felix_iptables_restore_errors") == 0
        assert value(s, "felix_iptables_restore_calls") >= 1
        assert value(s, "felix_iptables_rules", ip_version="4", table="filter") > 0
        assert value(s, "felix_int_dataplane_apply_time_seconds_count") >= 1
        assert value(s, "felix_int_dataplane_apply_time_seconds", quantile="0.5") > 0
        assert "felix_resyncs_started_total" not in s and "felix_ipset_errors" in s
        assert fh.felix_alive()
    finally:
        fh.close()
