"""Felix's Prometheus metrics, served on PrometheusMetricsHost:Port at /metrics.

Names, types and labels are real Felix's (Calico's Felix metric reference)
wherever this Felix has the same concept, so dashboards and alerts written for
Calico work unchanged: `felix_active_local_endpoints`,
`felix_cluster_num_hosts`, `felix_iptables_restore_errors`,
`felix_int_dataplane_apply_time_seconds`, `felix_resyncs_started`, ...
Concepts real Felix does not have are not invented here.

Why a hand-written exposition instead of prometheus-client's: real Felix is
a Go program, whose client exports a counter under its own name
(`felix_resyncs_started`), where the Python client would say
`felix_resyncs_started_total` and add `_created` series; a summary carries
quantiles (0.5, 0.9, 0.99), which the Python client's Summary lacks.
prometheus-client still holds the values and supplies the process_* series
(the Go client exports those too, under the same names).

Why a private CollectorRegistry: several Felix instances (tests, one per
namespace) can live in one process without clashing.  The daemon records on
its own loop after each round; the exporter thread only renders.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import socket
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from felix.names import set_prefix

if TYPE_CHECKING:
    from felix.dataplane_facade import Dataplane

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.99)  # the Go client's default objectives, as Felix's summaries use
SUMMARY_WINDOW = 512          # recent observations the quantiles are computed over
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The syncer's status -> real Felix's felix_resync_state values (api.SyncStatus).
RESYNC_STATE = {"wait-for-ready": 1, "resyncing": 2, "in-sync": 3}

# Every felix_* family this Felix exports, with its Prometheus type: the contract the dashboard
# in docs/grafana-dashboard.json and its test are held to.
EXPORTED = {
    "felix_active_local_endpoints": "gauge",
    "felix_active_local_policies": "gauge",
    "felix_active_local_selectors": "gauge",
    "felix_active_local_tags": "gauge",
    "felix_cluster_num_hosts": "gauge",
    "felix_cluster_num_workload_endpoints": "gauge",
    "felix_cluster_num_host_endpoints": "gauge",
    "felix_resync_state": "gauge",
    "felix_resyncs_started": "counter",
    "felix_calc_graph_updates_processed": "counter",
    "felix_int_dataplane_apply_time_seconds": "summary",
    "felix_int_dataplane_failures": "counter",
    "felix_iptables_chains": "gauge",
    "felix_iptables_rules": "gauge",
    "felix_iptables_restore_calls": "counter",
    "felix_iptables_restore_errors": "counter",
    "felix_iptables_save_calls": "counter",
    "felix_ipsets_calico": "gauge",
    "felix_ipsets_total": "gauge",
    "felix_ipset_calls": "counter",
    "felix_ipset_errors": "counter",
}


class QuantileSummary(Collector):
    """A Go-style summary: count and sum since start, quantiles over the recent window."""

    def __init__(self, name: str, documentation: str, window: int = SUMMARY_WINDOW):
        self.name = name
        self.documentation = documentation
        self._recent: deque[float] = deque(maxlen=window)
        self._count = 0
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._recent.append(max(0.0, float(value)))
            self._count += 1
            self._sum += max(0.0, float(value))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            recent = sorted(self._recent)
            count, total = self._count, self._sum
        m = Metric(self.name, self.documentation, "summary")
        for q in QUANTILES:
            # nearest rank; NaN with no observations, as the Go client reports an empty summary
            value = recent[max(0, math.ceil(q * len(recent)) - 1)] if recent else math.nan
            m.add_sample(self.name, {"quantile": floatToGoString(q)}, value)
        m.add_sample(self.name + "_sum", {}, total)
        m.add_sample(self.name + "_count", {}, count)
        return [m]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def render_go_style(registry: CollectorRegistry) -> str:
    """The text exposition as Felix's Go client writes it: felix_* counters under their own names,
    no `_created` series; other families (process_*) as the Python client names them."""
    out: list[str] = []
    for metric in registry.collect():
        name, mtype = metric.name, metric.type
        felix_counter = mtype == "counter" and name.startswith("felix_")
        shown = name + "_total" if mtype == "counter" and not felix_counter else name
        mtype = "untyped" if mtype == "unknown" else mtype
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {shown} {doc}\n# TYPE {shown} {mtype}\n")
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            sample = name if felix_counter and s.name == name + "_total" else s.name
            out.append(f"{sample}{_labels(s.labels)} {floatToGoString(s.value)}\n")
    return "".join(out)


class _V6Server(ThreadingHTTPServer):
    """PrometheusMetricsHost may be an IPv6 address ("::" included)."""

    address_family = socket.AF_INET6


class Metrics:
    """felix_* metrics; `start()` serves them over HTTP, `render()` gives the text (tests, debugging)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9091):
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, registry=r)

        self.local_endpoints = gauge("felix_active_local_endpoints", "Number of active endpoints on this host.")
        self.local_policies = gauge("felix_active_local_policies", "Number of active policies on this host.")
        self.local_selectors = gauge("felix_active_local_selectors", "Number of active selectors on this host.")
        self.local_tags = gauge("felix_active_local_tags", "Number of active tags on this host.")
        self.cluster_hosts = gauge("felix_cluster_num_hosts", "Total number of Calico hosts in the cluster.")
        self.cluster_workload_endpoints = gauge("felix_cluster_num_workload_endpoints",
                                                "Total number of workload endpoints cluster-wide.")
        self.cluster_host_endpoints = gauge("felix_cluster_num_host_endpoints",
                                            "Total number of host endpoints cluster-wide.")
        self.resync_state = gauge("felix_resync_state", "Current datastore state.")
        self.resyncs = counter("felix_resyncs_started", "Number of times Felix has started resyncing with the "
                                                        "datastore.")
        self.updates = counter("felix_calc_graph_updates_processed",
                               "Number of datastore updates processed by the calculation graph.")
        self.apply_time = QuantileSummary("felix_int_dataplane_apply_time_seconds",
                                          "Time in seconds that it took to apply a dataplane update.")
        r.register(self.apply_time)
        self.dataplane_failures = counter("felix_int_dataplane_failures",
                                          "Number of times dataplane updates failed and will be retried.")
        self.iptables_chains = gauge("felix_iptables_chains", "Number of active iptables chains.",
                                     ("ip_version", "table"))
        self.iptables_rules = gauge("felix_iptables_rules", "Number of active iptables rules.",
                                    ("ip_version", "table"))
        self.restore_calls = counter("felix_iptables_restore_calls", "Number of iptables-restore calls.")
        self.restore_errors = counter("felix_iptables_restore_errors", "Number of iptables-restore errors.")
        self.save_calls = counter("felix_iptables_save_calls", "Number of iptables-save calls.")
        self.ipsets_calico = gauge("felix_ipsets_calico", "Number of active Calico IP sets.")
        self.ipsets_total = gauge("felix_ipsets_total", "Total number of active IP sets.")
        self.ipset_calls = counter("felix_ipset_calls", "Number of ipset commands executed.")
        self.ipset_errors = counter("felix_ipset_errors", "Number of ipset command failures.")
        self._last: dict[str, float] = {}
        self._counts_source: tuple | None = None     # (FelixStatus, its loop), see refresh_counts
        self._server: ThreadingHTTPServer | None = None

    @classmethod
    def from_config(cls, cfg: object) -> Metrics | None:
        """None when PrometheusMetricsEnabled is false."""
        if not getattr(cfg, "PrometheusMetricsEnabled", False):
            return None
        return cls(getattr(cfg, "PrometheusMetricsHost", "127.0.0.1") or "127.0.0.1",
                   int(getattr(cfg, "PrometheusMetricsPort", 9091)))

    # ---- serving ----
    def start(self) -> None:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "metrics are at /metrics")
                    return
                metrics.refresh_counts()
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
                pass  # a scrape every few seconds is not worth a log line

        server_cls = _V6Server if ":" in self.host else ThreadingHTTPServer
        server = server_cls((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        if self.port == 0:
            self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="felix-metrics", daemon=True).start()
        log.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        """Stop serving without waiting out the server's 0.5 s poll loop.

        Felix only stops metrics on its way out; blocking in shutdown() made it outlive
        a supervisor's short grace period. The serving thread is a daemon: it ends with us.
        """
        if self._server is not None:
            server, self._server = self._server, None
            threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()

    def render(self) -> str:
        return render_go_style(self.registry)

    # ---- recording ----
    def count_delta(self, counter_key: str, total: float, counter) -> None:
        """Advance a Counter to a cumulative `total` kept elsewhere (writer stats, syncer.resyncs)."""
        last = self._last.get(counter_key, 0.0)
        if total > last:
            counter.inc(total - last)
        self._last[counter_key] = max(total, last)

    def record_driver(self, dataplane: Dataplane) -> None:
        """After an apply: iptables and ipset calls, errors and sizes, from `dataplane.writers()`
        (each writer's cumulative `.stats` mapping and its desired model)."""
        writers = dataplane.writers()
        restores = restore_errors = saves = 0.0
        for tables in (writers.filter_tables, writers.nat_tables):
            for v, t in tables.items():
                restores += float(t.stats.get("restores", 0))
                restore_errors += float(t.stats.get("restore_errors", 0))
                saves += float(t.stats.get("saves", 0))
                chains = t.chains()
                self.iptables_chains.labels(str(v), t.table).set(len(chains))
                self.iptables_rules.labels(str(v), t.table).set(sum(len(rules) for rules in chains.values()))
        self.count_delta("iptables_restores", restores, self.restore_calls)
        self.count_delta("iptables_restore_errors", restore_errors, self.restore_errors)
        self.count_delta("iptables_saves", saves, self.save_calls)
        calls = errors = 0.0
        n_sets = 0
        selectors: set[str] = set()
        tags: set[str] = set()
        for v, s in writers.ipsets.items():
            calls += float(s.stats.get("restores", 0)) + float(s.stats.get("saves", 0))
            errors += float(s.stats.get("restore_errors", 0))
            desired = s.desired_sets()
            n_sets += len(desired)
            prefix = set_prefix(v)
            for name in desired:
                ident = name.removeprefix(prefix)
                if ident.startswith("s:"):
                    selectors.add(ident)     # a rule selector's set (felix.names.selector_ipset)
                elif not ident.startswith("i:"):
                    tags.add(ident)          # a tag's set; i: sets are Felix's own
        self.count_delta("ipset_calls", calls, self.ipset_calls)
        self.count_delta("ipset_errors", errors, self.ipset_errors)
        # This Felix manages only its own sets: every set it knows of is a Calico one.
        self.ipsets_calico.set(n_sets)
        self.ipsets_total.set(n_sets)
        # Active selectors and tags: those with a set, i.e. used by a rule of a local endpoint's policy.
        self.local_selectors.set(len(selectors))
        self.local_tags.set(len(tags))

    def record_felix(self, status) -> None:
        """Counters and gauges from Felix's read-only `felix.status.FelixStatus` (on the loop, after each round)."""
        self.count_delta("updates", float(status.updates), self.updates)
        self.count_delta("resyncs", float(status.resyncs), self.resyncs)
        self.count_delta("apply_errors", float(status.apply_errors), self.dataplane_failures)
        self.resync_state.set(RESYNC_STATE.get(status.datastore, 0))
        applies = float(status.applies + status.apply_errors)
        if applies > self._last.get("applies", 0.0) and status.last_apply_seconds is not None:
            self.apply_time.observe(status.last_apply_seconds)
        self._last["applies"] = max(applies, self._last.get("applies", 0.0))
        self.local_endpoints.set(status.local_endpoints)
        # Counting what the calculators hold was ~13% of a round under churn at 20,000 endpoints:
        # with a loop running it is done when scraped (on the loop, see `refresh_counts`).
        try:
            self._counts_source = (status, asyncio.get_running_loop())
        except RuntimeError:
            self._set_counts(status)

    def refresh_counts(self, timeout: float = 2.0) -> None:
        """From the server thread: the calculator counts, computed on Felix's loop (the only
        thread that may read the calculators); a loop too busy to answer leaves the last values."""
        src = self._counts_source
        if src is None:
            return
        status, loop = src
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                self._set_counts(status)
                done.set_result(None)
            except Exception as e:  # noqa: BLE001 - handed to the waiting thread
                done.set_exception(e)
        try:
            loop.call_soon_threadsafe(run)
            done.result(timeout)
        except Exception as e:  # noqa: BLE001 - a closed or busy loop: serve what we have
            log.debug("calculator counts not refreshed: %r", e)

    def _set_counts(self, status) -> None:
        counts = status.calc_counts()
        for gauge, key in ((self.local_policies, "local_policies"), (self.cluster_hosts, "hosts"),
                           (self.cluster_workload_endpoints, "workload_endpoints"),
                           (self.cluster_host_endpoints, "host_endpoints")):
            gauge.set(counts.get(key, 0))
