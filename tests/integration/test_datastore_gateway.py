"""What the JSON-gateway transport must get right against a real etcd beyond plain CRUD:
every compare target, range compares, values that are not text, a hung etcd under an idle watch,
many callers at once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from libcalico.datastore import (
    DatastoreClient,
    DatastoreUnavailable,
    create,
    mod,
    op_delete,
    op_get,
    op_put,
    unchanged_since,
    value,
    version,
)


@pytest.fixture
async def client(etcd):
    c = DatastoreClient([etcd.endpoint], timeout=2)
    yield c
    await c.close()


async def test_every_compare_target_and_operator(client):
    rev = await client.put("/t/k", "v1")
    await client.put("/t/k", "v2")
    kv = await client.get_kv("/t/k")
    holds = [value("/t/k") == "v2", value("/t/k") != "v1", value("/t/k") > "v1", value("/t/k") < "v3",
             version("/t/k") == 2, version("/t/k") > 1, version("/t/absent") == 0,
             mod("/t/k") == kv.mod_revision, mod("/t/k") > rev, create("/t/k") == rev, create("/t/absent") == 0]
    for c in holds:
        ok, _ = await client.txn([c], [], [])
        assert ok, c
    fails = [value("/t/k") == "v1", version("/t/k") < 2, mod("/t/k") < rev, create("/t/k") != rev]
    for c in fails:
        ok, _ = await client.txn([c], [], [])
        assert not ok, c


async def test_unchanged_since_guards_a_whole_prefix(client):
    await client.put("/pool/a", "1")
    rev, _ = await client.get_prefix("/pool/")
    ok, resp = await client.txn([unchanged_since("/pool/", rev)], [op_put("/pool/b", "2"), op_get("/pool/", True)])
    assert ok and [kv.key for kv in resp[1]] == ["/pool/a", "/pool/b"]
    ok, _ = await client.txn([unchanged_since("/pool/", rev)], [op_put("/pool/c", "3")])
    assert not ok  # /pool/b was written after rev
    await client.put("/poolx", "outside")  # a key just past the prefix does not count
    rev2 = await client.current_revision() - 1
    ok, resp = await client.txn([unchanged_since("/pool/", rev2)], [op_delete("/pool/", prefix=True)])
    assert ok and resp == [2]
    assert await client.get("/poolx") == "outside"


async def test_empty_and_non_ascii_values_and_leases_round_trip(client):
    lease = await client.lease(30)
    await client.put("/v/empty", "")
    await client.put("/v/ü", "ünïcødé \u2603\n\"quoted\"", lease=lease)
    _, kvs = await client.get_prefix("/v/")
    assert [(kv.key, kv.value, kv.lease == lease.id) for kv in kvs] == [
        ("/v/empty", "", False), ("/v/ü", "ünïcødé \u2603\n\"quoted\"", True)]
    assert lease.id > 0  # an int64 sent and read back as a JSON string
    await lease.revoke()
    assert await client.get("/v/ü") is None
    await lease.revoke()  # revoking a gone lease is not an error
    assert await client.refresh_lease(lease.id) == 0


async def test_many_concurrent_callers(client):
    await asyncio.gather(*(client.put(f"/many/{i:03}", str(i)) for i in range(60)))
    got = await asyncio.gather(*(client.get(f"/many/{i:03}") for i in range(60)))
    assert got == [str(i) for i in range(60)]
    _, kvs = await client.get_prefix("/many/")
    assert len(kvs) == 60


async def test_idle_watch_survives_probes_of_a_healthy_etcd(client):
    client.watch_idle_probe = 0.1
    probes = []
    probe = client._probe

    async def counted(conn):
        probes.append(await probe(conn))
        return probes[-1]
    client._probe = counted
    rev = await client.current_revision()
    it = client.watch_batches("/idle/", rev + 1)
    first = asyncio.ensure_future(it.__anext__())
    while len(probes) < 3:  # several idle periods, each probed and answered
        await asyncio.sleep(0.05)
    assert not first.done() and probes == [True] * len(probes)
    await client.put("/idle/a", "1")
    batch = await asyncio.wait_for(first, 30)
    assert [(e.type, e.key) for e in batch] == [("put", "/idle/a")]
    await it.aclose()


async def test_idle_watch_on_a_hung_etcd_ends_unavailable(client, etcd):
    """A stopped etcd still completes TCP (the kernel answers), so only a probe notices it."""
    client.watch_idle_probe = 0.2
    rev = await client.put("/hang/a", "1")
    it = client.watch_batches("/hang/", rev + 1)
    first = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.1)
    os.kill(etcd.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(DatastoreUnavailable, match="stopped answering"):
            await asyncio.wait_for(first, 60)  # the wait only ends a hung run
    finally:
        os.kill(etcd.proc.pid, signal.SIGCONT)
    await it.aclose()
    assert await client.get("/hang/a") == "1"  # and the client recovers once etcd runs again


async def test_connections_etcd_closed_while_idle_are_not_reused(client, etcd):
    """A transaction is never retried, so it must not be sent on a keep-alive connection etcd
    closed when it restarted."""
    await client.put("/r/a", "1")
    await asyncio.to_thread(etcd.restart)
    ok, resp = await client.txn([create("/r/a") != 0], [op_get("/r/a")])
    assert ok and resp[0][0].value == "1"


async def test_unusable_tls_files_are_config_errors_naming_the_variable(tmp_path):
    from calico_testing.etcd import make_tls_certs
    from libcalico.datastore import ConfigError
    t = make_tls_certs(str(tmp_path))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [({"ca": str(garbage)}, "ETCD_CA_CERT_FILE"),
             ({"ca": str(tmp_path / "missing.pem")}, "ETCD_CA_CERT_FILE"),
             ({"ca": t["ca"], "cert": t["client_cert"], "key": t["rogue_key"]}, "ETCD_CERT_FILE/ETCD_KEY_FILE")]
    for files, var in cases:
        c = DatastoreClient(["https://127.0.0.1:1"], timeout=1, **files)
        with pytest.raises(ConfigError) as info:
            await c.get("/x")
        assert str(info.value).startswith(var)
        assert "BEGIN" not in str(info.value)  # a path may be named, file contents never
        await c.close()


async def test_prefix_read_in_pages_is_one_snapshot(client):
    """A prefix read arrives in pages, all of the first page's revision: a key written between
    two pages is not in the result, the prefix's edge keys are, and nothing outside it is."""
    for i in range(10):
        await client.put(f"/pg/k{i}", str(i))
    await client.put("/pg", "the prefix itself, without the slash")
    await client.put("/pg0", "outside")
    await client.put("/pg/", "edge")
    client.page_size = 3
    pages = 0
    real_range = client._range

    async def range_then_write(*args, **kw):
        nonlocal pages
        resp = await real_range(*args, **kw)
        pages += 1
        if pages == 1:
            await client.put("/pg/k5", "changed after the first page")
            await client.put("/pg/k99", "created after the first page")
        return resp

    client._range = range_then_write
    rev, kvs = await client.get_prefix("/pg/")
    assert pages == 4
    assert [kv.key for kv in kvs] == ["/pg/"] + [f"/pg/k{i}" for i in range(10)]
    assert dict((kv.key, kv.value) for kv in kvs)["/pg/k5"] == "5"
    client._range = real_range
    assert len((await client.get_prefix("/pg/"))[1]) == 12
    assert (await client.get_prefix("/pg/", rev))[1] == kvs
