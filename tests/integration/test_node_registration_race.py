"""calico-node's check-then-write steps against a real etcd with a concurrent writer
landing between the check and the write (the window a plain read-then-put leaves open)."""

from __future__ import annotations

import asyncio
import json

import pytest

from calico_node import settings, startup
from libcalico import keys
from libcalico.datastore import DatastoreClient
from tests.lib.faults import WritesBeforeTxn


def _run(etcd, writes: dict[str, str], step):
    async def go():
        real = DatastoreClient([etcd.endpoint])
        try:
            return await step(WritesBeforeTxn(real, writes))
        finally:
            await real.close()
    return asyncio.run(go())


def _settings(**env) -> settings.NodeSettings:
    return settings.from_env({"NODENAME": "node1", "IP": "10.0.0.1", **env})


def test_same_ip_registered_meanwhile_is_refused(etcd):
    res = startup.StartupResult("10.0.0.1", "")
    with pytest.raises(startup.StartupError, match="already used by node 'other'"):
        _run(etcd, {keys.bgp_host_ip("other", 4): "10.0.0.1"},
             lambda c: startup.register_host(c, _settings(), res))
    assert etcd.get(keys.bgp_host_ip("node1", 4)) is None and etcd.get(keys.host_bird_ip("node1")) is None


def test_unrelated_registration_meanwhile_is_retried(etcd):
    res = startup.StartupResult("10.0.0.1", "fd00::1")
    _run(etcd, {keys.bgp_host_ip("other", 4): "10.0.0.2"},
         lambda c: startup.register_host(c, _settings(AS="65001"), res))
    assert etcd.get(keys.bgp_host_ip("node1", 4)) == "10.0.0.1"
    assert etcd.get(keys.bgp_host_ip("node1", 6)) == "fd00::1"
    assert etcd.get(keys.bgp_host_as("node1")) == "65001"
    assert etcd.get(keys.host_bird_ip("node1")) == "10.0.0.1"


def test_default_pool_not_created_beside_an_operator_pool_written_meanwhile(etcd):
    _run(etcd, {keys.pool("10.66.0.0/16"): json.dumps({"cidr": "10.66.0.0/16"})},
         lambda c: startup.ensure_default_pools(c, _settings()))
    assert etcd.keys("/calico/v1/ipam/v4/pool/") == ["/calico/v1/ipam/v4/pool/10.66.0.0-16"]
    assert etcd.keys("/calico/v1/ipam/v6/pool/") == ["/calico/v1/ipam/v6/pool/fd80:24e2:f998:72d6::-64"]
