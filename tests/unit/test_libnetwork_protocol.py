"""The plugin protocol server on a real unix socket, and the driver's settings (no Docker, no etcd)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading

import pytest

from calico_libnetwork.__main__ import SettingsError, ipam_socket_for, settings_from_env
from calico_libnetwork.docker_api import DEFAULT_SOCKET, DockerApi, socket_from_cmdline
from calico_libnetwork.protocol import MAX_BODY, DriverError, PluginServer, Request


async def _echo(req: Request) -> dict:
    if req.body.get("fail"):
        raise DriverError("refused on purpose")
    if req.body.get("crash"):
        raise RuntimeError("boom")
    return {"Method": req.method, "Pid": req.peer_pid, "Id": req.str_field("Id", required=False)}


def _raw(path: str, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes or one reply is complete."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(data)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        out += chunk
        head, _, body = out.partition(b"\r\n\r\n")
        if b"Content-Length:" in head and b"Connection: close" not in head:
            n = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
            if len(body) >= n:
                break
    s.close()
    return out


def _post(method: str, body: bytes) -> bytes:
    return (f"POST /{method} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _reply(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
def server(tmp_path):
    """The server on its own event loop thread; the test talks to it with plain blocking sockets."""
    path = str(tmp_path / "t.sock")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = PluginServer(path, {"Test.Echo": _echo}, "test")
    asyncio.run_coroutine_threadsafe(srv.start(), loop).result(10)
    yield path, lambda data: _raw(path, data)
    asyncio.run_coroutine_threadsafe(srv.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    assert not os.path.exists(path)


def test_calls_are_answered_with_json_and_the_callers_pid(server):
    _, ask = server
    status, reply = _reply(ask(_post("Test.Echo", b'{"Id": "abc"}')))
    assert status == 200 and reply == {"Method": "Test.Echo", "Pid": os.getpid(), "Id": "abc"}


def test_keep_alive_serves_several_calls_on_one_connection(server):
    path, _ = server
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    for i in range(3):
        s.sendall(_post("Test.Echo", json.dumps({"Id": str(i)}).encode()))
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += f.read(1)
        n = int(head.split(b"Content-Length:")[1].split(b"\r\n")[0])
        assert json.loads(f.read(n))["Id"] == str(i)
    s.close()


@pytest.mark.parametrize("data, status, message", [
    (_post("Test.Echo", b"{not json"), 200, "request body is not JSON"),
    (_post("Test.Echo", b"[1, 2]"), 200, "must be a JSON object"),
    (_post("Test.Echo", b'{"Id": 5}'), 200, "Id must be a string"),
    (_post("Test.Echo", json.dumps({"Id": "x" * 300}).encode()), 200, "longer than 256"),
    (_post("Test.Echo", b'{"fail": true}'), 200, "refused on purpose"),
    (_post("Test.Echo", b'{"crash": true}'), 200, "Test.Echo failed in the Calico driver: boom"),
    (_post("Nope.Call", b"{}"), 404, "test does not implement Nope.Call"),
    (b"GET /Test.Echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "plugin calls are POSTs"),
    (b"POST /Test.Echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413, "byte limit"),
    (b"POST /Test.Echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "chunked"),
    (b"POST /Test.Echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad Content-Length"),
    (b"POST /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", 414, "request line too long"),
    (b"POST /Test.Echo HTTP/1.1\r\n" + b"X: y\r\n" * 70 + b"\r\n", 431, "more than 64 headers"),
    (b"garbage\r\n\r\n", 400, "not an HTTP/1.x request"),
])
def test_bad_requests_get_one_clear_error(server, data, status, message):
    _, ask = server
    got_status, reply = _reply(ask(data))
    assert got_status == status
    assert message in reply["Err"] and reply["Error"] == reply["Err"]


def test_a_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path):
    stale = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    loop = asyncio.new_event_loop()
    try:
        srv = PluginServer(str(stale), {}, "t")
        loop.run_until_complete(srv.start())
        loop.run_until_complete(srv.close())
        regular = tmp_path / "f.sock"
        regular.write_text("keep me")
        with pytest.raises(OSError):
            loop.run_until_complete(PluginServer(str(regular), {}, "t").start())
        assert regular.read_text() == "keep me"
    finally:
        loop.close()


def test_settings_defaults_and_the_ipam_socket_beside_the_network_one():
    s = settings_from_env({"NODENAME": "node1"})
    assert (s.host, s.network_socket, s.ipam_socket) == (
        "node1", "/run/docker/plugins/calico.sock", "/run/docker/plugins/calico-ipam.sock")
    s = settings_from_env({"NODENAME": "n", "CALICO_LIBNETWORK_SOCKET": "/x/y/calico.sock"})
    assert s.ipam_socket == "/x/y/calico-ipam.sock"
    assert ipam_socket_for("/a/other.sock") == "/a/other-ipam.sock"


@pytest.mark.parametrize("env, var", [
    ({"NODENAME": "bad/name"}, "NODENAME"),
    ({"NODENAME": "n", "CALICO_LIBNETWORK_SOCKET": "relative/calico.sock"}, "CALICO_LIBNETWORK_SOCKET"),
    ({"NODENAME": "n", "CALICO_LIBNETWORK_SOCKET": "/run/docker/plugins/calico"}, "CALICO_LIBNETWORK_SOCKET"),
    ({"NODENAME": "n", "CALICO_LIBNETWORK_SOCKET": "/" + "d" * 120 + "/calico.sock"}, "CALICO_LIBNETWORK_SOCKET"),
    ({"NODENAME": "n", "DOCKER_HOST": "tcp://1.2.3.4:2375"}, "DOCKER_HOST"),
])
def test_bad_settings_name_the_variable(env, var):
    with pytest.raises(SettingsError, match=var):
        settings_from_env(env)


@pytest.mark.parametrize("argv, path", [
    (["dockerd"], DEFAULT_SOCKET),
    (["dockerd", "-H", "unix:///tmp/d.sock"], "/tmp/d.sock"),
    (["dockerd", "--host=unix:///a.sock"], "/a.sock"),
    (["dockerd", "-H", "tcp://0.0.0.0:2375", "--host", "unix:///b.sock"], "/b.sock"),
    (["dockerd", "-Hunix:///c.sock"], "/c.sock"),
    (["dockerd", "-H", "tcp://0.0.0.0:2375"], DEFAULT_SOCKET),
])
def test_the_calling_dockerds_api_socket_comes_from_its_command_line(argv, path):
    assert socket_from_cmdline(argv) == path


def test_docker_api_refuses_a_non_unix_docker_host_and_a_bad_network_id():
    with pytest.raises(ValueError, match="DOCKER_HOST"):
        DockerApi("tcp://1.2.3.4:2375")
    with pytest.raises(DriverError, match="not a Docker network id"):
        asyncio.run(DockerApi("unix:///nonexistent.sock").network("a/../b", None))
    with pytest.raises(DriverError, match="cannot ask Docker"):
        asyncio.run(DockerApi("unix:///nonexistent.sock").network("abc", None))


def test_a_flood_of_bad_requests_is_logged_a_few_times_then_summarised(server, monkeypatch, caplog):
    import logging

    from calico_libnetwork import protocol
    from libcalico.ratelimit import RateLimitedLog

    now = [0.0]
    monkeypatch.setattr(protocol, "limited", RateLimitedLog(protocol.log, burst=3, interval=10, clock=lambda: now[0]))
    _, ask = server
    with caplog.at_level(logging.WARNING, logger=protocol.log.name):
        for _ in range(40):
            assert "is not JSON" in _reply(ask(_post("Test.Echo", b"{bad")))[1]["Err"]
        now[0] = 11.0
        ask(_post("Test.Echo", b'{"Id": "ok"}'))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("is not JSON" in line for line in lines) == 3
    assert any("37 more bad-body message(s) suppressed" in line for line in lines), lines
