"""Keep a consumer's view of some etcd prefixes exact, across outages and compactions.

Felix and confd must never act on a half-read datastore and must never see a
"flush" (dropping everything and re-adding it would tear down working
dataplane).  So the syncer reads a consistent snapshot (every prefix at one
revision), watches from the next revision, and after any loss of the watch
(etcd down, endpoint switch, history compacted) takes a fresh snapshot and
emits only what differs from what it already emitted.

Per-key contract for consumers:
- ``put``: ``value`` is the parsed model, ``parsed_key`` the parsed key,
  ``create_revision`` the etcd revision that created the key (stable across
  rewrites and restarts: who claimed something first, whatever order updates
  arrive in).
- ``invalid``: the raw value failed validation (``error`` = "<key>: <reason>");
  the consumer must treat the key as absent, i.e. drop whatever it held for it
  (a previously valid key becoming invalid is, for the consumer, a delete).
  The syncer logs each invalid key once per distinct raw value; consumers need
  not log it again.
- ``delete``: the key is gone (also sent for a key whose last update was
  ``invalid``; harmless, since the consumer already treats it as absent).
- ``unknown``: a key outside the datamodel under a watched prefix; ignore it.
- ``in_sync``: everything before it reflects the datastore.  Always sent after
  the first snapshot, and after a resnapshot that changed anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from libcalico.datastore import (
    CompactedError,
    DatastoreClient,
    DatastoreError,
    DatastoreUnavailable,
    WatchEvent,
)
from libcalico.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

READY_KEY = "/calico/v1/Ready"

Parser = Callable[[str, str | None], tuple[Any, object]]


@dataclass(slots=True)   # one per key of a snapshot: 50,000 of them at cluster scale
class Update:
    kind: str  # "put" | "delete" | "invalid" | "in_sync" | "unknown"
    key: str | None = None
    value: object = None
    error: str | None = None
    parsed_key: Any = None
    create_revision: int = 0


@dataclass(slots=True)   # one per key held, for the lifetime of the syncer
class _Seen:
    raw: str
    state: str  # "put" | "invalid" | "unknown"
    parsed_key: Any
    created: int = 0


def _default_parser(path: str, raw: str | None) -> tuple[Any, object]:
    from libcalico.models import parse_key_value  # written alongside; imported lazily
    return parse_key_value(path, raw)


def _parse_key(path: str) -> Any:
    """The parsed key of a value that failed validation, so consumers need not parse it again."""
    from libcalico import keys
    try:
        return keys.parse(path)
    except Exception:  # noqa: BLE001 - a key outside the datamodel: no parsed key
        return None


def _kind_of(parsed: Any) -> str:
    """The kind of key (for rate-limited logging): the datamodel kind, else 'unknown key'."""
    return f"invalid {parsed.kind}" if parsed is not None else "invalid key"


def _recreated(seen: _Seen, created: int) -> bool:
    """The key was deleted and written again since it was seen (0 = revision not known)."""
    return bool(created and seen.created and created != seen.created)


def _normalise_prefixes(prefixes: list[str]) -> list[str]:
    """Drop prefixes covered by another one, so no event is seen twice."""
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not any(p.startswith(q) for q in out):
            out.append(p)
    return out


class Syncer:
    """Snapshot + watch of ``prefixes``, yielding batches of :class:`Update`."""

    def __init__(self, client: DatastoreClient, prefixes: list[str], parser: Parser | None = None,
                 wait_for_ready: bool = False, batch_window: float = 0.005, max_batch: int = 1000,
                 min_backoff: float = 0.1, max_backoff: float = 5.0, ready_poll: float = 1.0,
                 parse_slice: float = 0.02, clock: Callable[[], float] = time.monotonic):
        if not prefixes:
            raise ValueError("Syncer needs at least one prefix")
        self.client = client
        self.prefixes = _normalise_prefixes(list(prefixes))
        self.parser: Parser = parser or _default_parser
        self.wait_for_ready = wait_for_ready
        self.batch_window = batch_window
        self.max_batch = max(1, max_batch)
        self.min_backoff = min_backoff
        self.max_backoff = max(max_backoff, min_backoff)
        self.ready_poll = ready_poll
        self.parse_slice = parse_slice
        self.clock = clock
        self.status = "wait-for-ready" if wait_for_ready else "resyncing"
        self.resyncs = 0
        self.revision = 0
        self._seen: dict[str, _Seen] = {}
        self._logged_invalid: dict[str, str] = {}
        self._synced_once = False
        self._outage_since: float | None = None
        # A flood of bad keys (thousands at once) must not flood the log: a few lines
        # per key kind per second, and a count of the rest.
        self._invalid_log = RateLimitedLog(log)
        self._flush_scheduled = False

    # ---- per-key bookkeeping ---------------------------------------------

    def _on_put(self, key: str, raw: str, created: int = 0) -> Update:
        try:
            parsed_key, value = self.parser(key, raw)
        except ValueError as e:
            reason = str(e)
            error = reason if reason.startswith(key) else f"{key}: {reason}"
            return self._invalid(key, raw, created, error, logging.WARNING, "ignoring invalid value: %s")
        except Exception as e:  # a parser bug must not stop the node: treat as invalid
            error = f"{key}: cannot parse ({type(e).__name__}: {e})"
            return self._invalid(key, raw, created, error, logging.ERROR, "parser failed: %s", exc_info=True)
        self._logged_invalid.pop(key, None)
        if parsed_key is None:
            self._seen[key] = _Seen(raw, "unknown", None, created)
            return Update("unknown", key)
        self._seen[key] = _Seen(raw, "put", parsed_key, created)
        return Update("put", key, value=value, parsed_key=parsed_key, create_revision=created)

    def _invalid(self, key: str, raw: str, created: int, error: str, level: int, msg: str,
                 exc_info: bool = False) -> Update:
        parsed = _parse_key(key)
        self._seen[key] = _Seen(raw, "invalid", parsed, created)
        if self._logged_invalid.get(key) != raw:
            self._logged_invalid[key] = raw
            self._invalid_log.log(_kind_of(parsed), level, msg, error, exc_info=exc_info)
        return Update("invalid", key, error=error, parsed_key=parsed, create_revision=created)

    def _on_delete(self, key: str) -> Update | None:
        seen = self._seen.pop(key, None)
        self._logged_invalid.pop(key, None)
        if seen is None or seen.state == "unknown":
            return None
        return Update("delete", key, parsed_key=seen.parsed_key)

    def _on_event(self, ev: WatchEvent) -> Update | None:
        if ev.type == "delete":
            return self._on_delete(ev.key)
        seen = self._seen.get(ev.key)
        if seen is not None and seen.raw == ev.value and not _recreated(seen, ev.create_revision):
            return None  # rewritten with the same bytes: nothing changed for consumers
        return self._on_put(ev.key, ev.value or "", ev.create_revision)

    def diff(self, snapshot: dict[str, str], created: dict[str, int] | None = None) -> list[Update]:
        """Updates that turn what was emitted so far into ``snapshot`` (and record it).

        ``created`` holds each key's create revision: a key deleted and written
        again with the same bytes while the watch was down is a new claim.
        """
        return [u for u in self._diff(snapshot, created or {}) if u is not None]

    def _diff(self, snapshot: dict[str, str], created: dict[str, int]) -> Iterator[Update | None]:
        for key, raw in sorted(snapshot.items()):
            seen = self._seen.get(key)
            rev = created.get(key, 0)
            if seen is None or seen.raw != raw or _recreated(seen, rev):
                yield self._on_put(key, raw, rev)
        for key in sorted(k for k in self._seen if k not in snapshot):
            yield self._on_delete(key)

    async def _sliced(self, updates: Iterator[Update | None]) -> list[Update]:
        """Drain ``updates`` (each one parses and validates a value) giving the event loop a
        turn every ``parse_slice`` seconds: a snapshot of many large values must not stall
        the program's health checks, timers and other tasks while it is parsed."""
        out: list[Update] = []
        start = self.clock()
        for u in updates:
            if u is not None:
                out.append(u)
            if self.clock() - start >= self.parse_slice:
                await asyncio.sleep(0)
                start = self.clock()
        return out

    # ---- datastore side ----------------------------------------------------

    async def _wait_ready(self) -> None:
        logged = False
        while await self.client.get(READY_KEY) != "true":
            if not logged:
                log.info("waiting for %s to be \"true\"", READY_KEY)
                logged = True
            await asyncio.sleep(self.ready_poll)
        if logged:
            log.info("%s is true", READY_KEY)

    async def _snapshot(self) -> tuple[int, dict[str, str], dict[str, int]]:
        """Every prefix at one revision, so the view is consistent across prefixes."""
        rev = 0
        data: dict[str, str] = {}
        created: dict[str, int] = {}
        for prefix in self.prefixes:
            rev, kvs = await self.client.get_prefix(prefix, revision=rev)
            for kv in kvs:
                data[kv.key] = kv.value
                created[kv.key] = kv.create_revision
        return rev, data, created

    async def _pump(self, prefix: str, start: int, queue: asyncio.Queue) -> None:
        try:
            async for events in self.client.watch_batches(prefix, start):
                await queue.put(events)
            await queue.put(DatastoreUnavailable(f"watch {prefix} ended"))
        except Exception as e:  # handed to the consumer side, which decides
            await queue.put(e)

    async def _watch(self, start: int) -> AsyncIterator[list[Update]]:
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        tasks = [asyncio.create_task(self._pump(p, start, queue), name=f"syncer-watch {p}")
                 for p in self.prefixes]
        try:
            while True:
                items = [await queue.get()]
                deadline = time.monotonic() + self.batch_window
                count = len(items[0]) if isinstance(items[0], list) else 0
                while count < self.max_batch:
                    if not queue.empty():
                        item = queue.get_nowait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        try:
                            item = await asyncio.wait_for(queue.get(), remaining)
                        except TimeoutError:
                            break
                    items.append(item)
                    count += len(item) if isinstance(item, list) else 0
                events: list[WatchEvent] = []
                error: BaseException | None = None
                for item in items:
                    if isinstance(item, BaseException):
                        error = error or item
                    else:
                        events.extend(item)
                events.sort(key=lambda ev: ev.mod_revision)  # stable: per-key order kept
                updates = await self._sliced(map(self._on_event, events))
                self._flush_invalid_log()
                if events:
                    self.revision = max(self.revision, events[-1].mod_revision)
                for i in range(0, len(updates), self.max_batch):  # one etcd response may be larger
                    yield updates[i:i + self.max_batch]
                if error is not None:
                    raise error
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _flush_invalid_log(self) -> None:
        """Summaries of suppressed invalid-key lines, now or once their window is over."""
        if self._invalid_log.flush() and not self._flush_scheduled:
            self._flush_scheduled = True

            def again() -> None:
                self._flush_scheduled = False
                self._flush_invalid_log()
            asyncio.get_running_loop().call_later(self._invalid_log.interval, again)

    def _outage(self, what: str, err: BaseException, level: int = logging.WARNING) -> None:
        """Log the first failure of an outage only; retries stay quiet."""
        self.status = "resyncing"
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.log(level, "datastore %s: %s; resyncing", what, err)

    async def batches(self) -> AsyncIterator[list[Update]]:
        """Yield update batches forever; handles outages and compaction internally."""
        backoff = self.min_backoff
        while True:
            try:
                if self.wait_for_ready and not self._synced_once:
                    self.status = "wait-for-ready"
                    await self._wait_ready()
                self.status = "resyncing"
                rev, snapshot, created = await self._snapshot()
                updates = await self._sliced(self._diff(snapshot, created))
                self._flush_invalid_log()
                first = not self._synced_once
                self.revision = rev
                self._synced_once = True
                if not first:
                    self.resyncs += 1
                if self._outage_since is not None:
                    log.info("datastore back after %.1fs: resynced at revision %d, %d change(s)",
                             time.monotonic() - self._outage_since, rev, len(updates))
                    self._outage_since = None
                backoff = self.min_backoff
                self.status = "in-sync"
                if updates or first:
                    for i in range(0, len(updates), self.max_batch):
                        chunk = updates[i:i + self.max_batch]
                        if i + self.max_batch >= len(updates):
                            chunk.append(Update("in_sync"))
                        yield chunk
                    if not updates:
                        yield [Update("in_sync")]
                # the snapshot's parsed values are the consumer's now: holding them for as long
                # as the watch runs kept a whole cluster's models alive (~140 MB at 50,000 endpoints)
                del updates, snapshot, created
                async with contextlib.aclosing(self._watch(rev + 1)) as watch:
                    async for batch in watch:
                        yield batch
            except CompactedError as e:
                # History is gone: resnapshot at once, the diff recovers what was missed.
                self._outage("history compacted", e, logging.INFO)
            except (DatastoreError, OSError) as e:
                self._outage("unavailable", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
