"""Felix's Prometheus metrics (prometheus-client), served on PrometheusMetricsHost:Port.

Why a private CollectorRegistry: several Felix instances (tests, one per
namespace) can live in one process without clashing, and the page shows
felix_* series only (plus the client's own process metrics if asked).

The daemon calls the small recording methods below; nothing here reads the
daemon's internals from the exporter thread, so no locking is needed beyond
what prometheus-client does itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from felix.dataplane_facade import Dataplane

log = logging.getLogger(__name__)

APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """felix_* metrics; `start()` serves them over HTTP, `render()` gives the text (tests, debugging)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9091):
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.apply_duration = Histogram("felix_apply_duration_seconds", "Time to apply one batch, per writer",
                                        ["writer"], buckets=APPLY_BUCKETS, registry=r)
        self.updates = Counter("felix_updates_processed", "Datastore updates processed", registry=r)
        self.batches = Counter("felix_batches_processed", "Syncer batches processed", registry=r)
        self.active_endpoints = Gauge("felix_active_local_endpoints", "Local workload endpoints", registry=r)
        self.ipset_members = Gauge("felix_ipset_members", "Members of Felix's ipsets", ["family"], registry=r)
        self.ipsets = Gauge("felix_ipsets", "Felix's ipsets", ["family"], registry=r)
        self.resyncs = Counter("felix_resyncs", "Datastore resyncs (reconnects or compactions)", registry=r)
        self.errors = Counter("felix_writer_errors", "Failed applies, per writer", ["writer"], registry=r)
        self.restore_failures = Counter("felix_iptables_restore_failures",
                                        "Failed iptables-restore runs", ["family", "table"], registry=r)
        self.in_sync = Gauge("felix_in_sync", "1 when in sync with the datastore", registry=r)
        self.ready = Gauge("felix_ready", "1 when the dataplane is programmed without error", registry=r)
        self._last: dict[str, float] = {}
        self._server = None
        self._thread = None

    @classmethod
    def from_config(cls, cfg: object) -> Metrics | None:
        """None when PrometheusMetricsEnabled is false."""
        if not getattr(cfg, "PrometheusMetricsEnabled", False):
            return None
        return cls(getattr(cfg, "PrometheusMetricsHost", "127.0.0.1") or "127.0.0.1",
                   int(getattr(cfg, "PrometheusMetricsPort", 9091)))

    # ---- serving ----
    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        if self.port == 0:
            self.port = self._server.server_address[1]
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
        return generate_latest(self.registry).decode()

    # ---- recording ----
    @contextmanager
    def timed(self, writer: str) -> Iterator[None]:
        """Time one apply of `writer`; an exception counts as that writer's error and propagates."""
        t0 = time.monotonic()
        try:
            yield
        except Exception:
            self.errors.labels(writer).inc()
            raise
        finally:
            self.apply_duration.labels(writer).observe(time.monotonic() - t0)

    def observe_apply(self, writer: str, seconds: float, ok: bool = True) -> None:
        self.apply_duration.labels(writer).observe(max(0.0, seconds))
        if not ok:
            self.errors.labels(writer).inc()

    def count_delta(self, counter_key: str, total: float, counter) -> None:
        """Advance a Counter to a cumulative `total` kept elsewhere (writer stats, syncer.resyncs)."""
        last = self._last.get(counter_key, 0.0)
        if total > last:
            counter.inc(total - last)
        self._last[counter_key] = max(total, last)

    def record_writer_stats(self, name: str, stats: Mapping[str, float], family: int | None = None,
                            table: str | None = None) -> None:
        """Fold one writer's cumulative `.stats` into the metrics after an apply.

        Read by name (a `felix.dataplane.writer.WriterStats` is a Mapping) so one
        method serves every writer's own counters: restore_errors (restore
        writers) or errors (netlink writers).
        """
        if "last_apply_seconds" in stats:
            self.observe_apply(name, float(stats["last_apply_seconds"]))
        if table is not None and "restore_errors" in stats:
            self.count_delta(f"restore:{family}:{table}", float(stats["restore_errors"]),
                             self.restore_failures.labels(str(family), table))
        errs = stats.get("restore_errors", stats.get("errors"))
        if errs is not None:
            self.count_delta(f"errors:{name}", float(errs), self.errors.labels(name))

    def record_driver(self, dataplane: Dataplane) -> None:
        """After an apply: per-writer durations/errors and ipset sizes, from `dataplane.writers()`.

        The overlay writer is timed by the facade itself (`observe_apply`), as one stage.
        """
        writers = dataplane.writers()
        for tables in (writers.filter_tables, writers.nat_tables):
            for v, t in tables.items():
                self.record_writer_stats(f"iptables-v{v}-{t.table}", t.stats, v, t.table)
        for v, s in writers.ipsets.items():
            self.record_writer_stats(f"ipsets-v{v}", s.stats)
            desired = s.desired_sets()
            self.ipsets.labels(str(v)).set(len(desired))
            self.ipset_members.labels(str(v)).set(sum(len(m) for m in desired.values()))
        self.record_writer_stats("routes", writers.routes.stats)

    def record_felix(self, status) -> None:
        """Counters and gauges from Felix's read-only `felix.status.FelixStatus` (on the loop, after each round)."""
        self.count_delta("updates", float(status.updates), self.updates)
        self.count_delta("batches", float(status.batches), self.batches)
        self.count_delta("resyncs", float(status.resyncs), self.resyncs)
        self.in_sync.set(1 if status.in_sync else 0)
        self.ready.set(1 if status.ready else 0)
        self.active_endpoints.set(status.local_endpoints)
