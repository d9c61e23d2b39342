"""The gateway transport against a scripted HTTP server on loopback: chunk framing, bounds, errors, reuse.

The real etcd tests (tests/integration/test_datastore*.py) cover what etcd sends;
these cover what etcd might send on a bad day (messages split at any byte,
oversize answers, errors inside a stream, a proxy's 503) deterministically.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import pytest

from libcalico import etcd_http
from libcalico.datastore import DatastoreClient, DatastoreError, DatastoreUnavailable


class FakeGateway:
    """Answers each request on a connection with the next scripted raw reply (bytes, or a list of
    bytes written with a drain between them, so the client sees them as separate reads)."""

    def __init__(self, replies: list):
        self.replies = list(replies)
        self.connections = 0
        self.requests: list[tuple[str, dict]] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> FakeGateway:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *headers = head.decode().split("\r\n")
                length = next(int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length"))
                self.requests.append((line.split()[1], json.loads(await reader.readexactly(length))))
                reply = self.replies.pop(0)
                for part in reply if isinstance(reply, list) else [reply]:
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client hung up, or the test ended
        finally:
            writer.close()


def ok(doc: dict, extra: str = "") -> bytes:
    body = json.dumps(doc).encode()
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def chunked_head(status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


def chunk(data: bytes, ext: str = "") -> bytes:
    return f"{len(data):x}{ext}\r\n".encode() + data + b"\r\n"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_line_splitter_joins_a_message_split_at_every_byte():
    msgs = [json.dumps({"result": {"n": i, "pad": "x" * i}}).encode() + b"\n" for i in range(5)]
    data = b"".join(msgs)
    for cut in range(1, len(data)):
        sp = etcd_http.LineSplitter()
        got = sp.feed(data[:cut]) + sp.feed(data[cut:])
        assert [json.loads(line)["result"]["n"] for line in got] == list(range(5))


def test_line_splitter_refuses_an_endless_message():
    sp = etcd_http.LineSplitter(limit=100)
    sp.feed(b"x" * 100)
    with pytest.raises(etcd_http.ResponseTooLarge):
        sp.feed(b"y")


async def test_watch_stream_messages_split_across_chunks_and_joined_in_one():
    one = json.dumps({"result": {"created": True}}).encode() + b"\n"
    two = json.dumps({"result": {"events": [{"kv": {"key": b64("/a"), "mod_revision": "5"}}]}}).encode() + b"\n"
    three = json.dumps({"result": {"events": [{"type": "DELETE", "kv": {"key": b64("/b")}}]}}).encode() + b"\n"
    reply = [chunked_head(), chunk(one + two[:7], ";ext=1"), chunk(two[7:30]), chunk(two[30:] + three),
             b"0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n"]
    async with FakeGateway([reply]) as gw:
        pool = etcd_http.Pool("127.0.0.1", gw.port)
        got = []
        with pytest.raises(etcd_http.ConnectionLost, match="stream closed"):
            async for msg in pool.stream("/v3/watch", {"create_request": {"key": b64("/")}}):
                got.append(msg)
        pool.close()
    assert got == [{"created": True}, json.loads(two)["result"], json.loads(three)["result"]]
    assert gw.requests == [("/v3/watch", {"create_request": {"key": b64("/")}})]


async def test_oversize_answers_are_refused_not_read():
    big = ok({"kvs": [{"key": b64("/k"), "value": b64("v" * 5000)}]})
    chunked = [chunked_head(), chunk(b'{"kvs": [' + b" " * 3000), chunk(b" " * 3000 + b"]}"), b"0\r\n\r\n"]
    async with FakeGateway([big, chunked]) as gw:
        pool = etcd_http.Pool("127.0.0.1", gw.port, max_response=4096)
        with pytest.raises(etcd_http.ResponseTooLarge):
            await pool.post("/v3/kv/range", {"key": b64("/k")})
        with pytest.raises(etcd_http.ResponseTooLarge):
            await pool.post("/v3/kv/range", {"key": b64("/k")})
        pool.close()
    assert gw.connections == 2  # a refused answer's connection is not reused


async def test_client_reports_an_oversize_answer_as_an_error_without_retrying():
    big = ok({"kvs": [{"key": b64("/k"), "value": b64("v" * 5000)}]})
    async with FakeGateway([big, big, big]) as gw:
        c = DatastoreClient([f"http://127.0.0.1:{gw.port}"], timeout=5)
        c.max_response = 4096
        with pytest.raises(DatastoreError, match="get /k:.*4096") as info:
            await c.get("/k")
        assert not isinstance(info.value, DatastoreUnavailable)
        await c.close()
    assert len(gw.requests) == 1


async def test_gateway_errors_carry_the_grpc_code():
    compacted = {"error": "etcdserver: mvcc: required revision has been compacted",
                 "message": "etcdserver: mvcc: required revision has been compacted", "code": 11}
    body = json.dumps(compacted).encode()
    reply = [chunked_head("400 Bad Request"), chunk(body), b"0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n"]
    stream_error = [chunked_head(), chunk(json.dumps({"result": {"created": True}}).encode() + b"\n"),
                    chunk(json.dumps({"error": {"grpc_code": 14, "http_code": 503, "message": "transport closing",
                                                "http_status": "Service Unavailable"}}).encode() + b"\n")]
    async with FakeGateway([reply, ok({"header": {"revision": "7"}}), stream_error]) as gw:
        pool = etcd_http.Pool("127.0.0.1", gw.port)
        with pytest.raises(etcd_http.GatewayError) as info:
            await pool.post("/v3/kv/range", {"key": b64("/a"), "revision": "1"})
        assert info.value.code == 11 and "compacted" in info.value.message and info.value.status == 400
        assert await pool.post("/v3/kv/range", {"key": b64("/a")}) == {"header": {"revision": "7"}}
        got = []
        with pytest.raises(etcd_http.GatewayError) as info:
            async for msg in pool.stream("/v3/watch", {}):
                got.append(msg)
        assert got == [{"created": True}] and info.value.code == etcd_http.UNAVAILABLE
        pool.close()
    assert gw.connections == 2  # the error answer's connection served the next request; the stream had its own


def test_a_proxy_5xx_without_etcd_body_is_unavailable():
    assert etcd_http.gateway_error(503, b"<html>bad gateway</html>").code == etcd_http.UNAVAILABLE
    assert etcd_http.gateway_error(404, b"404 page not found").name == "UNKNOWN"


async def test_requests_reuse_keepalive_connections_unless_told_to_close():
    rev = {"header": {"revision": "3"}}
    async with FakeGateway([ok(rev), ok(rev), ok(rev, "Connection: close\r\n"), ok(rev)]) as gw:
        pool = etcd_http.Pool("127.0.0.1", gw.port)
        for _ in range(3):
            assert await pool.post("/v3/kv/range", {}) == rev
        assert gw.connections == 1
        assert await pool.post("/v3/kv/range", {}) == rev
        assert gw.connections == 2
        pool.close()


async def test_concurrent_calls_do_not_share_a_connection_and_a_burst_queues():
    rev = {"header": {"revision": "3"}}
    async with FakeGateway([ok(rev)] * 4) as gw:
        pool = etcd_http.Pool("127.0.0.1", gw.port)
        assert await asyncio.gather(*(pool.post("/v3/kv/range", {}) for _ in range(4))) == [rev] * 4
        pool.close()
    assert gw.connections == 4
    async with FakeGateway([ok(rev)] * 40) as gw:
        pool = etcd_http.Pool("127.0.0.1", gw.port, size=3)
        assert await asyncio.gather(*(pool.post("/v3/kv/range", {}) for _ in range(40))) == [rev] * 40
        pool.close()
    assert gw.connections == 3 and len(gw.requests) == 40


async def test_unavailable_endpoint_is_retried_on_the_next():
    proxy_down = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\n\r\nbad gateway"
    kv = {"header": {"revision": "9"}, "kvs": [{"key": b64("/k"), "value": b64("v"), "mod_revision": "9",
                                                "create_revision": "2"}], "count": "1"}
    async with FakeGateway([proxy_down]) as down, FakeGateway([ok(kv)]) as up:
        c = DatastoreClient([f"http://127.0.0.1:{down.port}", f"http://127.0.0.1:{up.port}"], timeout=5)
        got = await c.get_kv("/k")
        assert (got.key, got.value, got.mod_revision, got.create_revision, got.lease) == ("/k", "v", 9, 2, 0)
        await c.close()
    assert down.requests and up.requests == [("/v3/kv/range", {"key": b64("/k")})]


async def test_connections_have_tcp_keepalive():
    async with FakeGateway([]) as gw:
        conn = await etcd_http.HttpConnection.open("127.0.0.1", gw.port)
        sock = conn.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle, interval, count = etcd_http.KEEPALIVE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == count
        assert idle + interval * count <= 20  # a vanished peer is noticed within ~20 s
        conn.close()


def test_the_datastore_loads_no_grpc_or_protobuf():
    """The reason for the gateway: a process that talks to etcd must not pay for gRPC's import."""
    import subprocess
    import sys
    code = ("import sys, libcalico.datastore, libcalico.syncer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'aetcd', 'google')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
