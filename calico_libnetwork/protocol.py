"""Docker's remote plugin protocol: HTTP/1.1 POSTs of JSON on a unix socket.

Docker's plugin client sends one small JSON object per call, with a
Content-Length, over kept-alive connections, and reads `{"Err": "..."}` as a
failure whose text it shows the user.  That is all this server speaks, so it
is a few dozen lines on asyncio rather than a web framework: every limit (line
length, header count, body size, idle time) is ours to choose, and anything a
caller sends that we do not understand gets one clear `Err` and a
rate-limited log line, never a traceback or a hung connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from libcalico.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

MAX_LINE = 8192
MAX_HEADERS = 64
MAX_BODY = 1 << 20  # Docker's largest request (CreateNetwork with options) is a few KiB
IDLE_SECONDS = 300.0  # Docker keeps connections open; an idle one is closed, Docker reconnects
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


class DriverError(Exception):
    """A refused call; str() is what the Docker user reads after "Error response from daemon"."""


def failure(message: str) -> dict[str, str]:
    """A failed call's reply.  Docker's network driver client reads `Err`, its IPAM client `Error`
    (libnetwork's ipams/remote API), so both carry the message."""
    return {"Err": message, "Error": message}


class Request:
    """One call: its method (`NetworkDriver.Join`), JSON body, and the calling process (dockerd)."""

    def __init__(self, method: str, body: dict[str, Any], peer_pid: int | None):
        self.method = method
        self.body = body
        self.peer_pid = peer_pid

    def str_field(self, name: str, required: bool = True, limit: int = 256) -> str:
        """A string field, bounded; a missing or wrong-typed one names itself in the error."""
        value = self.body.get(name)
        if value is None or value == "":
            if required:
                raise DriverError(f"{self.method}: missing {name}")
            return ""
        if not isinstance(value, str):
            raise DriverError(f"{self.method}: {name} must be a string, not {type(value).__name__}")
        if len(value) > limit:
            raise DriverError(f"{self.method}: {name} is longer than {limit} characters")
        return value

    def dict_field(self, name: str) -> dict[str, Any]:
        value = self.body.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise DriverError(f"{self.method}: {name} must be an object, not {type(value).__name__}")
        return value

    def list_field(self, name: str) -> list[Any]:
        value = self.body.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise DriverError(f"{self.method}: {name} must be a list, not {type(value).__name__}")
        return value


Handler = Callable[[Request], Awaitable[dict[str, Any]]]


def peer_pid(sock: socket.socket | None) -> int | None:
    """The pid at the other end of a unix socket (the dockerd calling us), from SO_PEERCRED."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", raw)[0]
    return pid if pid > 0 else None


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    """Request line and headers; None on a clean close between requests."""
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_SECONDS)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest(414, "request line too long") from None
    parts = line.decode("latin-1").strip().split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "not an HTTP/1.x request")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n"), 30)
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "header line too long") from None
        text = raw.decode("latin-1").rstrip("\r\n")
        if not text:
            return parts[0], parts[1], headers
        name, sep, value = text.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    raise _BadRequest(431, f"more than {MAX_HEADERS} headers")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequest(411, "chunked bodies are not accepted; send a Content-Length")
    raw = headers.get("content-length", "0") or "0"
    if not raw.isdigit():
        raise _BadRequest(400, f"bad Content-Length {raw[:20]!r}")
    n = int(raw)
    if n > MAX_BODY:
        raise _BadRequest(413, f"request body of {n} bytes is over the {MAX_BODY} byte limit")
    return await asyncio.wait_for(reader.readexactly(n), 30) if n else b""


def _decode(method: str, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise DriverError(f"{method}: request body is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise DriverError(f"{method}: request body must be a JSON object")
    return value


class PluginServer:
    """Serve `routes` (method name -> handler) on one unix socket."""

    def __init__(self, path: str, routes: dict[str, Handler], name: str):
        self.path = path
        self.routes = routes
        self.name = name
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind, replacing a stale socket left by a previous run (but never a non-socket file)."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o660)
        log.info("%s: listening on %s", self.name, self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def call(self, method: str, body: dict[str, Any], pid: int | None = None) -> tuple[int, dict[str, Any]]:
        """Dispatch one call (also the unit tests' way in): (HTTP status, JSON reply)."""
        handler = self.routes.get(method)
        if handler is None:
            limited.log(f"unknown:{self.name}", logging.WARNING, "%s: unknown call %s", self.name, method[:80])
            return 404, failure(f"{self.name} does not implement {method[:80]}")
        try:
            reply = await handler(Request(method, body, pid))
        except DriverError as e:
            limited.log(f"refused:{method}", logging.WARNING, "%s refused: %s", method, e)
            return 200, failure(str(e))
        except Exception as e:  # noqa: BLE001 - the user must get an answer, not a dropped connection
            limited.log(f"failed:{method}", logging.ERROR, "%s failed: %s", method, e, exc_info=True)
            return 200, failure(f"{method} failed in the Calico driver: {e}")
        log.info("%s ok", method)
        return 200, reply

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid = peer_pid(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    head = await _read_head(reader)
                    if head is None:
                        return
                    verb, path, headers = head
                    body = await _read_body(reader, headers)
                except _BadRequest as e:
                    limited.log(f"bad-http:{self.name}", logging.WARNING, "%s: bad request: %s", self.name, e)
                    await self._reply(writer, e.status, failure(str(e)), close=True)
                    return
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                method = path.lstrip("/")
                if verb != "POST":
                    status, reply = 405, failure(f"{verb[:10]} {method[:80]}: plugin calls are POSTs")
                else:
                    try:
                        status, reply = await self.call(method, _decode(method, body), pid)
                    except DriverError as e:
                        limited.log("bad-body", logging.WARNING, "%s", e)
                        status, reply = 200, failure(str(e))
                limited.flush()  # summaries of suppressed lines, once their window is over
                keep = headers.get("connection", "").lower() != "close"
                await self._reply(writer, status, reply, close=not keep)
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, reply: dict[str, Any], close: bool) -> None:
        out = json.dumps(reply).encode()
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Bad Request")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(out)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
        writer.write(head.encode() + out)
        try:
            await writer.drain()
        except ConnectionError:
            pass
