"""HTTP/1.1 transport to etcd v3's JSON gateway (``/v3/...``) over asyncio streams.

Why not gRPC: loading grpc + aetcd + protobuf cost every process ~70 ms of
start-up and ~14 MB of RSS (``/usr/bin/time -f "%e s %M KB" python -c
"import libcalico.datastore"``: 0.19 s / 35.0 MB with them, 0.11 s / 21.4 MB
with this module).  Felix, confd and calico-node pay it on every node, and
the CNI plugin on every container ADD, where imports were ~45% of the time.
In one real node (calico_testing.cluster, idle after start) Felix went from
56.4 to 40.2 MB and confd from 54.9 to 38.0 MB.  The gateway is etcd's own,
ships in the same binary, and speaks the same v3 API (bytes base64, int64 as
JSON strings, zero-valued fields omitted).  Its cost: etcd marshals JSON
slower than protobuf, so a 20,000-key snapshot read takes ~0.34 s instead of
~0.1 s; a node reads one at start and on a resync, every process every start.

What gRPC gave for free is done here: keep-alive connections in a small pool
(several coroutines call at once), one dedicated connection per stream
(watch, lease keepalive) reading the gateway's newline-delimited JSON
messages out of chunked responses, a bound on every response, and TCP
keepalive so a peer that vanished under an idle watch is noticed.  The
gateway reads a request body to its end before it answers, so a stream
cannot carry pings: the client probes an idle watch's endpoint instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

# Responses bigger than this are refused (a snapshot of 50,000 endpoints is ~60 MB).
MAX_RESPONSE = 256 * 1024 * 1024
# The stream buffer's limit: bounds a header or chunk-size line, and is the unit reads pause at.
_READ_LIMIT = 256 * 1024
_MAX_HEADERS = 100
# A dead peer under an idle connection: first probe after 10 s, 3 probes 3 s apart (~19 s).
KEEPALIVE = (10, 3, 3)
# gRPC status codes the gateway puts in its error bodies.
CODE_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
              5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
              9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
              13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
UNAVAILABLE, DEADLINE_EXCEEDED = 14, 4


class ConnectionLost(OSError):
    """The connection broke or the peer spoke something that is not HTTP (retry elsewhere)."""


class ResponseTooLarge(Exception):
    """A response over the size bound: refused rather than read into memory."""


class GatewayError(Exception):
    """etcd answered with an error: its gRPC code and message."""

    def __init__(self, code: int, message: str, status: int = 0):
        super().__init__(f"{CODE_NAMES.get(code, code)}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @property
    def name(self) -> str:
        return CODE_NAMES.get(self.code, str(self.code))


def gateway_error(status: int, body: bytes) -> GatewayError:
    """The error an HTTP status and its body stand for; a non-etcd 5xx (a proxy) counts as UNAVAILABLE."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = {}
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):  # an error inside a stream
        doc = doc["error"]
        doc.setdefault("code", doc.get("grpc_code"))
    if not isinstance(doc, dict):
        doc = {}
    code = doc.get("code")
    msg = doc.get("message") or doc.get("error") or body[:200].decode(errors="replace") or f"HTTP {status}"
    if not isinstance(code, int):
        code = UNAVAILABLE if status >= 500 else 2
    return GatewayError(code, str(msg), status)


class LineSplitter:
    """Cuts the bytes of a stream into newline-delimited messages, whatever the chunk boundaries."""

    def __init__(self, limit: int = MAX_RESPONSE):
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            line = bytes(self._buf[:i]).strip()
            del self._buf[:i + 1]
            if line:
                lines.append(line)
        if len(self._buf) > self.limit:
            raise ResponseTooLarge(f"stream message over {self.limit} bytes")
        return lines


def set_keepalive(writer: asyncio.StreamWriter, idle: int, interval: int, count: int) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; used by one request (or one stream) at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str,
                 max_response: int):
        self.reader = reader
        self.writer = writer
        self.authority = authority
        self.max_response = max_response
        self.reusable = True
        self.loop = asyncio.get_running_loop()

    @property
    def stale(self) -> bool:
        """Closed by etcd while it sat idle (etcd restarted, or dropped idle connections)."""
        return self.reader.at_eof() or self.writer.is_closing()

    @classmethod
    async def open(cls, host: str, port: int, ssl: Any = None, max_response: int = MAX_RESPONSE,
                   keepalive: tuple[int, int, int] = KEEPALIVE) -> HttpConnection:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl, server_hostname=host if ssl else None, limit=_READ_LIMIT)
        except EOFError as e:  # a TLS handshake the peer hung up on
            raise ConnectionLost(f"connection closed during TLS handshake: {e}") from None
        set_keepalive(writer, *keepalive)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(reader, writer, authority, max_response)

    def close(self) -> None:
        self.reusable = False
        if self.loop.is_closed():
            # Its loop is gone (run_sync makes one per call): the transport cannot close any more,
            # but the connection can still be ended so etcd frees it; the fd goes with the object.
            sock = self.writer.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)
            return
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def send(self, path: str, body: bytes) -> None:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.authority}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()

    async def _line(self) -> bytes:
        try:
            return await self.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as e:
            raise ConnectionLost("connection closed by etcd" if not e.partial
                                 else "connection closed mid-response") from None
        except asyncio.LimitOverrunError:
            raise ConnectionLost("HTTP header line too long (is this etcd?)") from None

    async def _exactly(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ConnectionLost("connection closed mid-response") from None

    async def read_head(self) -> tuple[int, dict[str, str]]:
        status_line = await self._line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionLost(f"not an HTTP answer: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            line = await self._line()
            if line == b"\r\n":
                break
            name, _, val = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = val.strip()
        else:
            raise ConnectionLost("too many HTTP headers")
        if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            self.reusable = False
        return int(parts[1]), headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The data of a chunked body, chunk by chunk, as it arrives (trailers are skipped)."""
        while True:
            size_line = await self._line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ConnectionLost(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                for _ in range(_MAX_HEADERS):
                    if await self._line() == b"\r\n":
                        return
                raise ConnectionLost("too many HTTP trailers")
            if size > self.max_response:
                self.reusable = False
                raise ResponseTooLarge(f"chunk of {size} bytes over the bound of {self.max_response}")
            data = await self._exactly(size + 2)
            yield data[:-2]

    async def read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = bytearray()
            async for data in self.chunks():
                out += data
                if len(out) > self.max_response:
                    self.reusable = False
                    raise ResponseTooLarge(f"response over {self.max_response} bytes")
            return bytes(out)
        length = headers.get("content-length")
        if length is None:
            self.reusable = False
            raise ConnectionLost("HTTP answer without a length")
        n = int(length) if length.isdigit() else -1
        if n < 0:
            raise ConnectionLost(f"bad Content-Length {length[:20]!r}")
        if n > self.max_response:
            self.reusable = False
            raise ResponseTooLarge(f"response of {n} bytes over the bound of {self.max_response}")
        return await self._exactly(n)

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request on this connection; the answer's JSON, or GatewayError."""
        await self.send(path, json.dumps(payload).encode())
        status, headers = await self.read_head()
        body = await self.read_body(headers)
        if status != 200:
            raise gateway_error(status, body)
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            self.reusable = False
            raise ConnectionLost(f"answer to {path} is not JSON: {body[:60]!r}") from None
        if not isinstance(doc, dict):
            raise ConnectionLost(f"answer to {path} is not a JSON object")
        return doc

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The messages of a streaming call (``{"result": ...}`` each); GatewayError for an error."""
        self.reusable = False  # a stream ends only with its connection
        await self.send(path, json.dumps(payload).encode())
        status, headers = await self.read_head()
        if status != 200 or "chunked" not in headers.get("transfer-encoding", "").lower():
            raise gateway_error(status, await self.read_body(headers))
        splitter = LineSplitter(self.max_response)
        async for data in self.chunks():
            for line in splitter.feed(data):
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise ConnectionLost(f"stream message is not JSON: {line[:60]!r}") from None
                if not isinstance(msg, dict):
                    raise ConnectionLost("stream message is not a JSON object")
                if "error" in msg:
                    raise gateway_error(500, line)
                yield msg.get("result") or {}
        raise ConnectionLost("stream closed by etcd")


class Pool:
    """Idle keep-alive connections to one endpoint, for the loop that made them."""

    def __init__(self, host: str, port: int, ssl: Any = None, size: int = 16,
                 max_response: int = MAX_RESPONSE):
        self.host = host
        self.port = port
        self.ssl = ssl
        self.size = size
        # At most `size` requests at once: a burst of callers queues here rather than opening a
        # connection (and a TLS handshake) each, which made 2000 concurrent gets 3x slower.
        self._slots = asyncio.Semaphore(size)
        self.max_response = max_response
        self.loop = asyncio.get_running_loop()
        self._idle: list[HttpConnection] = []
        self._busy: set[HttpConnection] = set()
        self.closed = False

    async def connect(self) -> HttpConnection:
        conn = await HttpConnection.open(self.host, self.port, self.ssl, self.max_response)
        if self.closed:
            conn.close()
            raise ConnectionLost("connection pool closed (endpoint given up)")
        return conn

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        async with self._slots:
            return await self._post(path, payload)

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            if conn.stale:
                conn.close()
                conn = None
        if conn is None:
            conn = await self.connect()
        self._busy.add(conn)
        try:
            result = await conn.post(path, payload)
        except GatewayError:
            self._release(conn)  # etcd's error answer was read to its end: the connection is fine
            raise
        except BaseException:
            self._busy.discard(conn)
            conn.close()  # cancelled or failed mid-request: its state is unknown
            raise
        self._release(conn)
        return result

    def _release(self, conn: HttpConnection) -> None:
        self._busy.discard(conn)
        if conn.reusable and not self.closed and len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.close()

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streaming call on a connection of its own (closed when the iteration ends)."""
        conn = await self.connect()
        self._busy.add(conn)
        try:
            async for msg in conn.stream(path, payload):
                yield msg
        finally:
            self._busy.discard(conn)
            conn.close()

    def close(self) -> None:
        """Close every connection, streams included: their callers see the stream break."""
        self.closed = True
        for conn in self._idle + list(self._busy):
            conn.close()
        self._idle.clear()
