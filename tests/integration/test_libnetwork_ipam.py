"""calico-ipam's IpamDriver calls against a real etcd (Docker's requests, no Docker)."""

from __future__ import annotations

import asyncio
import json

import pytest

from calico_libnetwork.ipam_driver import IpamDriver
from calico_libnetwork.protocol import DriverError, Request
from libcalico import keys
from libcalico.datastore import DatastoreClient
from libcalico.ipam import Ipam


@pytest.fixture
async def client(etcd_env):
    c = DatastoreClient.from_env(timeout=5)
    for cidr in ("10.68.0.0/16", "10.69.0.0/24"):
        await c.put(keys.pool(cidr), json.dumps({"cidr": cidr}))
    await c.put(keys.pool("10.70.0.0/24"), json.dumps({"cidr": "10.70.0.0/24", "disabled": True}))
    yield c
    await c.close()


def _req(method: str, **body) -> Request:
    return Request(f"IpamDriver.{method}", body, None)


async def test_pools_without_and_with_subnet(client):
    d = IpamDriver(client, "h1")
    assert await d.request_pool(_req("RequestPool", Pool="", V6=False)) == {
        "PoolID": "CalicoPoolIPv4", "Pool": "0.0.0.0/0", "Data": {"com.docker.network.gateway": "0.0.0.0/0"}}
    assert (await d.request_pool(_req("RequestPool", Pool="10.69.0.0/24")))["PoolID"] == "10.69.0.0/24"
    for pool, msg in (("10.70.0.0/24", "not an enabled Calico IP pool"), ("10.71.0.0/24", "calicoctl pool add"),
                      ("10.69.0.1/24", "not a network CIDR"), ("nonsense", "not a network CIDR")):
        with pytest.raises(DriverError, match=msg):
            await d.request_pool(_req("RequestPool", Pool=pool))
    with pytest.raises(DriverError, match="--ip-range"):
        await d.request_pool(_req("RequestPool", Pool="10.69.0.0/24", SubPool="10.69.0.0/25"))


async def test_addresses_come_from_the_chosen_pool_once_each_and_go_back(client):
    d = IpamDriver(client, "h1")
    got = await asyncio.gather(*[d.request_address(_req("RequestAddress", PoolID="10.69.0.0/24"))
                                 for _ in range(20)])
    ips = [g["Address"] for g in got]
    assert len(set(ips)) == 20 and all(ip.startswith("10.69.0.") and ip.endswith("/32") for ip in ips)
    ipam = Ipam(client)
    first = ips[0].split("/")[0]
    assert (await ipam.get_assignment(first)) is not None
    await d.release_address(_req("ReleaseAddress", PoolID="10.69.0.0/24", Address=first))
    assert (await ipam.get_assignment(first)) is None
    await d.release_address(_req("ReleaseAddress", PoolID="10.69.0.0/24", Address=first))  # twice: no-op
    await d.release_address(_req("ReleaseAddress", PoolID="10.69.0.0/24", Address="0.0.0.0"))  # Docker's gateway


async def test_specific_address_and_its_refusals(client):
    d = IpamDriver(client, "h1")
    assert (await d.request_address(_req("RequestAddress", PoolID="CalicoPoolIPv4", Address="10.68.5.5"))
            ) == {"Address": "10.68.5.5/32", "Data": {}}
    with pytest.raises(DriverError, match="address 10.68.5.5 is already in use"):
        await IpamDriver(client, "h2").request_address(_req("RequestAddress", PoolID="CalicoPoolIPv4",
                                                            Address="10.68.5.5"))
    with pytest.raises(DriverError, match="not in the network's subnet 10.69.0.0/24"):
        await d.request_address(_req("RequestAddress", PoolID="10.69.0.0/24", Address="10.68.5.6"))
    with pytest.raises(DriverError, match="--gateway is not supported"):
        await d.request_address(_req("RequestAddress", PoolID="10.69.0.0/24", Address="10.69.0.1",
                                     Options={"RequestAddressType": "com.docker.network.gateway"}))
    with pytest.raises(DriverError, match="unknown pool"):
        await d.request_address(_req("RequestAddress", PoolID="../etc"))
    with pytest.raises(DriverError, match="not an IPv4 address"):
        await d.request_address(_req("RequestAddress", PoolID="CalicoPoolIPv4", Address="fd00::1"))


async def test_an_exhausted_pool_is_a_clear_error_and_leaks_no_handle(client, etcd):
    await client.put(keys.pool("10.72.0.0/30"), json.dumps({"cidr": "10.72.0.0/30"}))
    d = IpamDriver(client, "h1")
    got = []
    with pytest.raises(DriverError, match="no free address in the Calico pool 10.72.0.0/30"):
        for _ in range(8):
            got.append(await d.request_address(_req("RequestAddress", PoolID="10.72.0.0/30")))
    assert 1 <= len(got) <= 4
    handles = [k for k in etcd.keys("/calico/ipam/v2/handle/") if k.rsplit("/", 1)[1].startswith("libnetwork.")]
    assert len(handles) == len(got)
