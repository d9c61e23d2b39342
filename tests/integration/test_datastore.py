"""DatastoreClient against a real etcd: CRUD, CAS, leases, watch, failover, timeouts, env config."""

from __future__ import annotations

import asyncio
import time

import pytest

from calico_testing.etcd import free_port
from libcalico.datastore import (
    CompactedError,
    ConfigError,
    DatastoreClient,
    DatastoreError,
    DatastoreUnavailable,
    create,
    mod,
    op_delete,
    op_get,
    op_put,
    run_sync,
)


@pytest.fixture
async def client(etcd_env):
    c = DatastoreClient.from_env(timeout=3)
    yield c
    await c.close()


async def test_put_get_prefix_delete(client, etcd):
    assert await client.get("/calico/v1/x") is None
    rev = await client.put("/calico/v1/x", "1")
    assert rev > 0
    assert await client.get("/calico/v1/x") == "1"
    assert etcd.get("/calico/v1/x") == "1"  # seen by another client (etcdctl)
    await client.put("/calico/v1/y/a", "ä-unicode")
    await client.put("/calico/v1/y/b", "b")
    await client.put("/calico/v1/yz", "not under /y/")
    r, kvs = await client.get_prefix("/calico/v1/y/")
    assert [(kv.key, kv.value) for kv in kvs] == [("/calico/v1/y/a", "ä-unicode"), ("/calico/v1/y/b", "b")]
    assert r >= kvs[-1].mod_revision
    kv = await client.get_kv("/calico/v1/y/a")
    assert kv.create_revision == kv.mod_revision and kv.value == "ä-unicode"
    assert await client.delete("/calico/v1/y/a") is True
    assert await client.delete("/calico/v1/y/a") is False
    assert await client.delete_prefix("/calico/v1/") == 3
    assert etcd.keys("/calico") == []


async def test_get_prefix_at_revision_and_compaction(client):
    r1 = await client.put("/p/a", "1")
    await client.put("/p/a", "2")
    await client.put("/p/b", "3")
    _, old = await client.get_prefix("/p/", revision=r1)
    assert [(kv.key, kv.value) for kv in old] == [("/p/a", "1")]
    now = await client.current_revision()
    await client.compact(now)
    with pytest.raises(CompactedError):
        await client.get_prefix("/p/", revision=r1)


async def test_cas_and_put_if_absent(client):
    assert await client.put_if_absent("/k", "a") is True
    assert await client.put_if_absent("/k", "b") is False
    kv = await client.get_kv("/k")
    assert await client.cas("/k", kv.mod_revision + 1, "x") is False
    assert await client.cas("/k", kv.mod_revision, "c") is True
    assert await client.cas("/k", kv.mod_revision, "d") is False  # stale revision
    assert await client.get("/k") == "c"
    kv = await client.get_kv("/k")
    assert await client.cas("/k", kv.mod_revision, None) is True
    assert await client.get("/k") is None
    assert await client.cas("/k", 0, "new") is True  # 0 = must be absent
    assert await client.cas("/k", 0, "again") is False
    ok, resp = await client.txn([create("/t") == 0], [op_put("/t", "1"), op_get("/k")], [op_get("/t")])
    assert ok and resp[1][0].value == "new"
    ok, resp = await client.txn([create("/t") == 0], [op_put("/t", "2")], [op_get("/t"), op_delete("/k")])
    assert not ok and resp[0][0].value == "1" and resp[1] == 1
    kv = await client.get_kv("/t")
    ok, _ = await client.txn([mod("/t") == kv.mod_revision], [op_delete("/t")])
    assert ok and await client.get("/t") is None


async def test_lease_expires_unless_refreshed(client):
    lease = await client.lease(2)
    await client.put("/leased", "v", lease=lease)
    for _ in range(3):
        await asyncio.sleep(1)
        assert await lease.refresh() > 0
    assert await client.get("/leased") == "v"
    deadline = time.monotonic() + 8
    while await client.get("/leased") is not None:
        assert time.monotonic() < deadline, "leased key did not expire"
        await asyncio.sleep(0.3)
    assert await client.refresh_lease(lease.id) == 0
    with pytest.raises(DatastoreError, match="expired"):
        await lease.refresh()
    lease2 = await client.lease(30)
    await client.put("/leased2", "v", lease=lease2)
    await lease2.revoke()
    assert await client.get("/leased2") is None


async def test_watch_prefix_events(client, etcd):
    rev = await client.put("/w/before", "0")
    events = []

    async def consume():
        async for ev in client.watch_prefix("/w/", rev + 1):
            events.append(ev)
            if len(events) == 3:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    await client.put("/w/a", "1")
    etcd.put("/w/b", "2")  # another client
    await client.put("/other", "ignored")
    await client.delete("/w/a")
    await asyncio.wait_for(task, 10)
    assert [(e.type, e.key, e.value) for e in events] == [
        ("put", "/w/a", "1"), ("put", "/w/b", "2"), ("delete", "/w/a", None)]


async def test_watch_compacted_start_revision(client):
    r = await client.put("/c/a", "1")
    await client.put("/c/a", "2")
    await client.compact(await client.current_revision())
    with pytest.raises(CompactedError) as info:
        async for _ in client.watch_prefix("/c/", r):
            pass
    assert info.value.compact_revision > r


async def test_watch_breaks_when_etcd_stops(client, etcd):
    rev = await client.put("/s/a", "1")
    got: list = []

    async def consume():
        async for ev in client.watch_prefix("/s/", rev + 1):
            got.append(ev)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    await asyncio.to_thread(etcd.stop)
    with pytest.raises(DatastoreUnavailable):
        await asyncio.wait_for(task, 20)
    await asyncio.to_thread(etcd.start)
    assert await client.get("/s/a") == "1"  # the client reconnects on its own


def count_attempts(c: DatastoreClient) -> list[int]:
    """Counts the connections a client asks for: one per attempt of a call."""
    attempts = [0]
    connect = c._connection

    async def counted():
        attempts[0] += 1
        return await connect()
    c._connection = counted
    return attempts


async def test_unreachable_fails_fast_with_clear_error():
    """Gives up after its bounded retries (one endpoint: two attempts) with an error naming the endpoint."""
    port = free_port()
    c = DatastoreClient([f"http://127.0.0.1:{port}"], timeout=1, retries=2)
    attempts = count_attempts(c)
    with pytest.raises(DatastoreUnavailable) as info:
        await asyncio.wait_for(c.get("/x"), 60)  # the wait only ends a hung run
    assert attempts[0] == 2
    assert f"127.0.0.1:{port}" in str(info.value) and "get /x" in str(info.value)
    with pytest.raises(DatastoreUnavailable):
        async for _ in c.watch_prefix("/x"):
            pass
    await c.close()


async def test_blackhole_endpoint_times_out():
    """A peer that accepts TCP but never speaks must not hang a call."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    try:
        c = DatastoreClient([f"http://127.0.0.1:{port}"], timeout=1, retries=1)
        attempts = count_attempts(c)
        with pytest.raises(DatastoreUnavailable):
            await asyncio.wait_for(c.get("/x"), 60)  # the waits only end a hung run
        assert attempts[0] == 2  # each attempt ended by its deadline, then the call gave up

        async def watch():
            async for _ in c.watch_prefix("/x"):
                pass
        with pytest.raises(DatastoreUnavailable):
            await asyncio.wait_for(watch(), 60)
        await c.close()
    finally:
        srv.close()


async def test_failover_to_second_endpoint(etcd):
    dead = f"http://127.0.0.1:{free_port()}"
    c = DatastoreClient([dead, etcd.endpoint], timeout=2)
    await c.put("/f", "1")  # first endpoint refuses, second answers
    assert await c.get("/f") == "1"
    assert c.endpoints == [dead, etcd.endpoint]
    await c.close()


def test_run_sync_twice_reuses_client(etcd):
    c = DatastoreClient([etcd.endpoint])
    run_sync(c.put("/r", "1"))
    assert run_sync(c.get("/r")) == "1"  # a new loop each time: the channel is remade
    run_sync(c.close())


@pytest.mark.parametrize("env,var", [
    ({"ETCD_ENDPOINTS": "127.0.0.1:2379"}, "ETCD_ENDPOINTS"),
    ({"ETCD_ENDPOINTS": "ftp://127.0.0.1:2379"}, "ETCD_ENDPOINTS"),
    ({"ETCD_ENDPOINTS": "http://a:2379,http://b:99999"}, "ETCD_ENDPOINTS"),
    ({"ETCD_ENDPOINTS": "http://a:2379/path"}, "ETCD_ENDPOINTS"),
    ({"ETCD_AUTHORITY": "host:notaport"}, "ETCD_AUTHORITY"),
    ({"ETCD_AUTHORITY": "host:0"}, "ETCD_AUTHORITY"),
    ({"ETCD_AUTHORITY": "user@host:1"}, "ETCD_AUTHORITY"),
    ({"ETCD_SCHEME": "gopher"}, "ETCD_SCHEME"),
    ({"ETCD_CA_CERT_FILE": "/nonexistent/ca.pem"}, "ETCD_CA_CERT_FILE"),
    ({"ETCD_CERT_FILE": "/etc/hostname"}, "ETCD_KEY_FILE"),
])
def test_bad_env_names_the_variable(env, var):
    with pytest.raises(ConfigError) as info:
        DatastoreClient.from_env(env)
    assert str(info.value).startswith(var)


def test_env_defaults_and_forms():
    c = DatastoreClient.from_env({})
    assert c.endpoints == ["http://127.0.0.1:2379"]
    c = DatastoreClient.from_env({"ETCD_AUTHORITY": "etcd.example:4001", "ETCD_SCHEME": "https"})
    assert c.endpoints == ["https://etcd.example:4001"]
    c = DatastoreClient.from_env({"ETCD_AUTHORITY": "[fd00::1]:2379"})
    assert c.endpoints == ["http://[fd00::1]:2379"]
    c = DatastoreClient.from_env({"ETCD_ENDPOINTS": "https://a:1, https://b:2", "ETCD_AUTHORITY": "ignored:3"})
    assert c.endpoints == ["https://a:1", "https://b:2"]
