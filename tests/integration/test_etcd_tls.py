"""TLS with client-certificate auth against a real etcd (--client-cert-auth), certs made by openssl."""

from __future__ import annotations

import asyncio
import logging

import pytest

from calico_testing.etcd import EtcdServer, make_tls_certs
from libcalico.datastore import DatastoreClient, DatastoreUnavailable
from libcalico.syncer import Syncer


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    certs = make_tls_certs(str(tmp_path_factory.mktemp("certs")))
    server = EtcdServer(tls=certs).start()
    yield server
    server.close()


def env_for(server, **files):
    env = {"ETCD_ENDPOINTS": server.endpoint}
    env.update({k: v for k, v in files.items() if v})
    return env


async def test_tls_client_cert_from_env(tls_etcd, caplog):
    t = tls_etcd.tls
    env = env_for(tls_etcd, ETCD_CA_CERT_FILE=t["ca"], ETCD_CERT_FILE=t["client_cert"],
                  ETCD_KEY_FILE=t["client_key"])
    assert tls_etcd.endpoint.startswith("https://")
    client = DatastoreClient.from_env(env, timeout=3)
    with caplog.at_level(logging.DEBUG):
        await client.put("/tls/a", "1")
        assert await client.get("/tls/a") == "1"
        assert tls_etcd.get("/tls/a") == "1"
        it = Syncer(client, ["/tls/"], parser=lambda p, r: (p, r)).batches()
        batch = await it.__anext__()
        assert [(u.kind, u.key, u.value) for u in batch] == [("put", "/tls/a", "1"), ("in_sync", None, None)]
        await it.aclose()
    key_text = open(t["client_key"]).read()
    secret = key_text.splitlines()[1]
    assert secret not in caplog.text  # key material never reaches a log
    await client.close()


async def test_tls_without_client_cert_fails_clearly(tls_etcd):
    client = DatastoreClient.from_env(env_for(tls_etcd, ETCD_CA_CERT_FILE=tls_etcd.tls["ca"]), timeout=2)
    with pytest.raises(DatastoreUnavailable) as info:
        await asyncio.wait_for(client.get("/tls/a"), 15)   # must fail, not hang (a hang: TimeoutError)
    msg = str(info.value)
    assert "get /tls/a" in msg and tls_etcd.endpoint.split("//")[1] in msg
    assert "ETCD_CERT_FILE" in msg  # tells the operator what is missing
    await client.close()


async def test_tls_cert_from_another_ca_is_refused(tls_etcd):
    t = tls_etcd.tls
    client = DatastoreClient([tls_etcd.endpoint], ca=t["ca"], cert=t["rogue_cert"], key=t["rogue_key"],
                             timeout=2)
    with pytest.raises(DatastoreUnavailable):
        await client.get("/tls/a")
    await client.close()


async def test_tls_server_not_trusted_without_ca(tls_etcd):
    t = tls_etcd.tls
    client = DatastoreClient([tls_etcd.endpoint], cert=t["client_cert"], key=t["client_key"], timeout=2)
    with pytest.raises(DatastoreUnavailable):
        await client.get("/tls/a")  # the system roots do not know our test CA
    await client.close()


async def test_plain_http_to_tls_etcd_fails_clearly(tls_etcd):
    client = DatastoreClient([tls_etcd.endpoint.replace("https://", "http://")], timeout=2)
    with pytest.raises(DatastoreUnavailable):
        await client.get("/tls/a")
    await client.close()
