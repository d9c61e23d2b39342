"""Felix's state: the lifecycle enum, the read-only view health and metrics get, and the etcd reporters.

`FelixState` replaces the daemon's separate flags (in sync, programmed, last
apply ok): one value can never contradict itself.  `StatusBoard` is written by
the daemon alone; `FelixStatus` is the read-only door handed to the health
server and the metrics, so neither needs to know how the daemon is built.

In etcd, `status` carries a lease of ReportingTTLSecs so it vanishes when Felix dies
(the CLI and operators read it as "Felix alive"); `last_reported_status` has
no lease so the last sign of life survives.  Datastore failures are logged
once per outage and never stop Felix: status is advisory.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from libcalico.datastore import DatastoreError
from libcalico.resources import FelixStatuses

log = logging.getLogger(__name__)


class FelixState(enum.Enum):
    """Where Felix is in its life.  The datastore connection has its own state (the syncer's
    `wait-for-ready | resyncing | in-sync`): a resync after the first in-sync does not move
    Felix back, the dataplane it programmed stays right until the datastore says otherwise."""

    WAIT_FOR_READY = "wait-for-ready"   # no complete snapshot yet: nothing is programmed
    PROGRAMMING = "programming"         # in sync; the first full apply has not succeeded yet
    IN_SYNC = "in-sync"                 # programmed, and the last apply succeeded
    FAILED = "failed"                   # programmed, but the last apply failed (a retry is due)
    STOPPING = "stopping"


class StatusBoard:
    """The daemon's own record of its state and counters (only the daemon writes it)."""

    def __init__(self) -> None:
        self.state = FelixState.WAIT_FOR_READY
        self.apply_failures = 0
        self.counts = {"batches": 0, "updates": 0, "applies": 0, "apply_errors": 0}
        self.last_apply_seconds: float | None = None

    def applied(self, ok: bool, failures: int, seconds: float | None = None) -> None:
        """One dataplane apply ended; `seconds` is how long it took (felix_int_dataplane_apply_time_seconds)."""
        self.apply_failures = failures
        self.counts["applies" if ok else "apply_errors"] += 1
        if seconds is not None:
            self.last_apply_seconds = seconds
        if self.state in (FelixState.IN_SYNC, FelixState.FAILED):
            self.state = FelixState.IN_SYNC if ok else FelixState.FAILED


class FelixStatus:
    """What health and metrics may read of a running Felix; nothing here changes it.

    The datastore state and the local endpoint count come from callables the
    wiring passes in, so readers never reach into the syncer or the calculator.
    `dataplane_reasons` adds what the writers themselves report (a kernel without
    ipip, VXLAN waiting for its addresses).
    """

    def __init__(self, board: StatusBoard, datastore_state: Callable[[], str],
                 datastore_resyncs: Callable[[], int], local_endpoints: Callable[[], int] = lambda: 0,
                 dataplane_reasons: Callable[[], list[str]] = lambda: [],
                 calc_counts: Callable[[], Mapping[str, int]] = lambda: {}):
        self._board = board
        self._calc_counts = calc_counts
        self._datastore_state = datastore_state
        self._datastore_resyncs = datastore_resyncs
        self._local_endpoints = local_endpoints
        self._dataplane_reasons = dataplane_reasons

    @property
    def state(self) -> FelixState:
        return self._board.state

    @property
    def in_sync(self) -> bool:
        """Has seen a complete snapshot (stays true through later resyncs)."""
        return self._board.state is not FelixState.WAIT_FOR_READY

    @property
    def ready(self) -> bool:
        return self._board.state is FelixState.IN_SYNC

    @property
    def apply_failures(self) -> int:
        return self._board.apply_failures

    @property
    def datastore(self) -> str:
        return self._datastore_state()

    @property
    def resyncs(self) -> int:
        return int(self._datastore_resyncs() or 0)

    @property
    def updates(self) -> int:
        return self._board.counts["updates"]

    @property
    def batches(self) -> int:
        return self._board.counts["batches"]

    @property
    def applies(self) -> int:
        return self._board.counts["applies"]

    @property
    def apply_errors(self) -> int:
        return self._board.counts["apply_errors"]

    @property
    def last_apply_seconds(self) -> float | None:
        return self._board.last_apply_seconds

    @property
    def local_endpoints(self) -> int:
        return self._local_endpoints()

    def calc_counts(self) -> Mapping[str, int]:
        """Sizes the calculators hold (cluster hosts and endpoints, local policies), for metrics;
        computed on demand, so only a Felix with metrics enabled pays for them."""
        return self._calc_counts()

    def dataplane_reasons(self) -> list[str]:
        return list(self._dataplane_reasons())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _doc(status: str | tuple[str, str]) -> dict[str, str]:
    if isinstance(status, tuple):
        return {"status": status[0], "reason": status[1]}
    return {"status": status}


class StatusReporter:
    def __init__(self, client, hostname: str, interval: float, ttl: float):
        self.client = client
        self.statuses = FelixStatuses(client)
        self.hostname = hostname
        self.interval = interval
        self.ttl = max(int(ttl), int(interval) + 1, 2)
        self.started = time.monotonic()
        self._lease = None
        self._first = True
        self._failing = False

    async def report_once(self) -> None:
        doc = {"time": _now(), "uptime": round(time.monotonic() - self.started, 1), "first_update": self._first}
        try:
            if self._lease is not None:
                try:
                    await self._lease.refresh()
                except DatastoreError:
                    self._lease = None
            if self._lease is None:
                self._lease = await self.client.lease(self.ttl)
            await self.statuses.put_status(self.hostname, doc, lease=self._lease)
            self._first = False
            if self._failing:
                log.info("status reporting to etcd works again")
            self._failing = False
        except DatastoreError as e:
            self._lease = None
            if not self._failing:
                log.warning("cannot report status to etcd: %s (will retry)", e)
            self._failing = True

    async def run(self) -> None:
        while True:
            await self.report_once()
            await asyncio.sleep(self.interval)


class EndpointStatusReporter:
    """Per-endpoint `{"status": "up"|"down"|"error"}`, written only when it changes, stale keys removed.

    An endpoint in error carries a `reason` too: the operator who finds a workload
    without traffic learns from its own status key which claim it lost, and to whom.
    """

    def __init__(self, client, hostname: str, delay: float = 1.0):
        self.statuses = FelixStatuses(client)
        self.hostname = hostname
        self.delay = delay
        self._want: dict[tuple[str, str, str], str] = {}
        self._written: dict[tuple[str, str, str], str] = {}
        self._event = asyncio.Event()
        self._cleaned = False

    def update(self, statuses: dict[tuple[str, str, str], str | tuple[str, str]]) -> None:
        """statuses: (orchestrator, workload, endpoint) -> 'up' | 'down' | ('error', reason)."""
        want = {ident: _doc(st) for ident, st in statuses.items()}
        if want != self._want:
            self._want = want
            self._event.set()

    async def _sync(self) -> None:
        if not self._cleaned:
            # invalid ones too (value None): not ours to trust, so rewritten or deleted below
            for st in await self.statuses.endpoints(self.hostname, include_invalid=True):
                self._written[(st.key.orchestrator, st.key.workload, st.key.endpoint)] = st.value
            self._cleaned = True
        for ident, doc in list(self._want.items()):
            if self._written.get(ident) != doc:
                await self.statuses.put_endpoint(self.hostname, *ident, doc)
                self._written[ident] = doc
        for ident in [i for i in self._written if i not in self._want]:
            await self.statuses.delete_endpoint(self.hostname, *ident)
            self._written.pop(ident, None)

    async def run(self) -> None:
        failing = False
        while True:
            await self._event.wait()
            await asyncio.sleep(self.delay)
            self._event.clear()
            try:
                await self._sync()
                failing = False
            except (DatastoreError, ValueError) as e:
                if not failing:
                    log.warning("cannot write endpoint status: %s (will retry)", e)
                failing = True
                self._event.set()
                await asyncio.sleep(1)
