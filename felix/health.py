"""Felix's health endpoints: /liveness and /readiness over a tiny asyncio HTTP server.

Why a hand-rolled server: it must run on Felix's own event loop, so a stalled
loop really does stop answering (and the heartbeat goes stale), and it should
not pull a web framework into the node image for two GET routes.

- /liveness: 200 while the loop's heartbeat is recent and the optional
  `live_check` reports nothing; 503 otherwise.
- /readiness: 200 only when `readiness()` returns no reasons
  (`felix_readiness(status)`: in sync with the datastore, and the last apply of
  every writer succeeded; IPIP requested on a kernel without ipip is a reason
  too); 503 otherwise, with the reasons in the body.

Binds to HealthHost (default 127.0.0.1) : HealthPort (9099) when HealthEnabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from felix.status import FelixState, FelixStatus

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_STALE = 10.0
MAX_REQUEST_LINE = 4096

Reasons = Callable[[], list[str]]


class HealthServer:
    """`await start()`, `await stop()`. `readiness()` / `live_check()` return reasons for NOT being ready/live."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9099, readiness: Reasons | None = None,
                 live_check: Reasons | None = None, stale_after: float = HEARTBEAT_STALE):
        self.host = host
        self.port = port
        self.readiness = readiness or (lambda: [])
        self.live_check = live_check or (lambda: [])
        self.stale_after = stale_after
        self.last_beat = time.monotonic()
        self._server: asyncio.base_events.Server | None = None
        self._beat_task: asyncio.Task | None = None

    @classmethod
    def from_config(cls, cfg: object, readiness: Reasons, live_check: Reasons | None = None) -> HealthServer | None:
        """None when HealthEnabled is false (nothing listens)."""
        if not getattr(cfg, "HealthEnabled", False):
            return None
        return cls(getattr(cfg, "HealthHost", "127.0.0.1") or "127.0.0.1", int(getattr(cfg, "HealthPort", 9099)),
                   readiness, live_check)

    # ---- lifecycle ----
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        self._beat_task = asyncio.create_task(self._heartbeat(), name="health-heartbeat")
        log.info("health endpoints on http://%s:%d/{liveness,readiness}", self.host, self.port)

    async def stop(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _heartbeat(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    # ---- checks ----
    def liveness_reasons(self) -> list[str]:
        age = time.monotonic() - self.last_beat
        reasons = [f"event loop heartbeat is {age:.1f}s old"] if age > self.stale_after else []
        return reasons + _safe(self.live_check, "liveness check")

    def readiness_reasons(self) -> list[str]:
        return self.liveness_reasons() + _safe(self.readiness, "readiness check")

    # ---- HTTP ----
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            if len(line) > MAX_REQUEST_LINE:
                await _reply(writer, 414, "request line too long\n")
                return
            # Drain headers (bounded) so clients do not see a reset before the reply.
            for _ in range(100):
                h = await asyncio.wait_for(reader.readline(), 5)
                if h in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                await _reply(writer, 405, "only GET is supported\n")
                return
            path = parts[1].split("?", 1)[0]
            if path == "/liveness":
                reasons = self.liveness_reasons()
            elif path == "/readiness":
                reasons = self.readiness_reasons()
            else:
                await _reply(writer, 404, "not found: try /liveness or /readiness\n")
                return
            body = "ok\n" if not reasons else "".join(f"{r}\n" for r in reasons)
            await _reply(writer, 200 if not reasons else 503, body, head=parts[0] == "HEAD")
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _safe(check: Reasons, what: str) -> list[str]:
    try:
        return [str(r) for r in check()]
    except Exception as e:  # noqa: BLE001 - a broken check must report, not kill the server
        return [f"{what} failed: {e!r}"]


_STATUS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 414: "URI Too Long", 503: "Service Unavailable"}


async def _reply(writer: asyncio.StreamWriter, code: int, body: str, head: bool = False) -> None:
    data = body.encode()
    hdr = (f"HTTP/1.1 {code} {_STATUS[code]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
           f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    writer.write(hdr if head else hdr + data)
    await writer.drain()


def felix_readiness(status: FelixStatus) -> list[str]:
    """Reasons a running Felix is not ready, from its read-only status."""
    reasons = []
    state, datastore = status.state, status.datastore
    if state is FelixState.STOPPING:
        reasons.append("Felix is stopping")
    elif state is FelixState.WAIT_FOR_READY:
        reasons.append(f"not in sync with the datastore (syncer: {datastore})")
    elif datastore != "in-sync":
        reasons.append(f"datastore connection lost (syncer: {datastore})")
    elif state is FelixState.PROGRAMMING:
        reasons.append("dataplane not programmed yet")
    elif state is FelixState.FAILED:
        reasons.append(f"last dataplane apply failed ({status.apply_failures} in a row)")
    return reasons + status.dataplane_reasons()
