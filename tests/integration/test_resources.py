"""libcalico.resources against a real etcd: one typed way to read and write each resource."""

from __future__ import annotations

import json

import pytest

from libcalico import keys
from libcalico.datastore import DatastoreClient
from libcalico.models import Pool, WorkloadEndpoint
from libcalico.resources import AddressConflict, PoolOverlap, Resources


@pytest.fixture
async def res(etcd_env):
    c = DatastoreClient.from_env(timeout=3)
    yield Resources(c)
    await c.close()


async def test_pools_one_rule_set(res, etcd):
    await res.pools.add([Pool(cidr="10.65.0.0/16", ipip="tunl0"), Pool(cidr="fd00::/64")])
    etcd.put(keys.pool("10.66.0.0/16"), json.dumps({"cidr": "10.66.0.0/16", "ipam": False}))
    etcd.put(keys.pool("10.67.0.0/16"), json.dumps({"cidr": "10.67.0.0/16", "disabled": True}))
    etcd.put(keys.pool("10.68.0.0/16"), "{not json")
    assert [s.value.cidr for s in await res.pools.list(4)] == ["10.65.0.0/16", "10.66.0.0/16", "10.67.0.0/16"]
    listed = await res.pools.list(include_invalid=True)
    assert [s.error is not None for s in listed] == [False, False, False, True, False]
    assert [p.cidr for p in await res.pools.for_ipam(4)] == ["10.65.0.0/16"]
    assert [p.cidr for p in await res.pools.for_ipam(4, overlay="ipip")] == ["10.65.0.0/16"]
    assert await res.pools.for_ipam(4, overlay="vxlan") == []
    assert (await res.pools.containing("10.66.0.1")) is None
    with pytest.raises(PoolOverlap, match="10.65.128.0/17 and 10.65.0.0/16"):
        await res.pools.add([Pool(cidr="10.65.128.0/17")])
    await res.pools.add([Pool(cidr="10.65.0.0/16", masquerade=True)])  # same cidr: replaced
    stored = await res.pools.get("10.65.0.0/16")
    assert stored.value.masquerade and stored.value.ipip is None and stored.mod_revision > 0
    assert await res.pools.remove(["10.65.0.0/16", "10.99.0.0/16"]) == (False, ["10.99.0.0/16"])
    assert await res.pools.get("10.65.0.0/16") is not None
    assert await res.pools.remove(["10.65.0.0/16"]) == (True, [])
    assert not await res.pools.create_if_none(Pool(cidr="192.168.0.0/16"))  # v4 pools exist
    assert (await res.pools.remove(["fd00::/64"]))[0]
    assert await res.pools.create_if_none(Pool(cidr="fd80::/64"))


async def test_workload_endpoints_cas_and_filters(res, etcd):
    wep = res.workload_endpoints
    ep = WorkloadEndpoint(state="active", name="cali1", profile_ids=[], ipv4_nets=["10.65.0.1/32"])
    assert await wep.create("h1", "cni", "w1", "e1", ep)
    assert not await wep.create("h1", "cni", "w1", "e1", ep)
    # Written sparsely: only what the writer set.
    assert json.loads(etcd.get(keys.workload_endpoint("h1", "cni", "w1", "e1"))) == {
        "state": "active", "name": "cali1", "profile_ids": [], "ipv4_nets": ["10.65.0.1/32"]}
    await wep.put("h1", "k8s", "ns.pod", "e2", ep.model_copy(update={"name": "cali2"}))
    await wep.put("h2", "cni", "w1", "e3", ep)
    etcd.put(keys.workload_endpoint("h1", "cni", "w9", "e9"), "{}")
    assert [s.key.endpoint for s in await wep.list()] == ["e1", "e2", "e3"]
    assert [s.key.endpoint for s in await wep.list(host="h1")] == ["e1", "e2"]
    assert [s.key.endpoint for s in await wep.list(host="h1", orchestrator="cni", include_invalid=True)] == [
        "e1", "e9"]
    assert [s.key.endpoint for s in await wep.list(host="h1", orchestrator="cni", workload="w1")] == ["e1"]
    assert [s.key.endpoint for s in await wep.list(orchestrator="cni")] == ["e1", "e3"]
    stored = await wep.get("h1", "cni", "w1", "e1")
    changed = stored.value.model_copy(update={"profile_ids": ["p1"]})
    assert await wep.cas(stored, changed)
    assert not await wep.cas(stored, changed)  # stale revision: refused
    assert (await wep.get("h1", "cni", "w1", "e1")).value.profile_ids == ["p1"]
    with pytest.raises(ValueError):
        await wep.put("h1", "cni", "w1", "e1", ep.model_copy(update={"name": "bad name!"}))
    assert await wep.delete(stored)
    assert await wep.get("h1", "cni", "w1", "e1") is None


async def test_nodes_register_conflict_and_remove(res, etcd):
    reg = await res.nodes.register("n1", "10.0.0.1", "2001:db8::1", 65010)
    assert not reg.as_removed
    with pytest.raises(AddressConflict, match="already used by node 'n1'"):
        await res.nodes.register("n2", "10.0.0.9", "2001:db8::1", None)
    await res.nodes.register("n2", "10.0.0.2", None, None)
    await res.nodes.set_tunnel_addr("n1", "IpInIpTunnelAddr", "10.65.0.1")
    nodes = await res.nodes.list()
    assert [(n.name, n.ip4, n.ip6, n.as_num) for n in nodes] == [
        ("n1", "10.0.0.1", "2001:db8::1", 65010), ("n2", "10.0.0.2", None, None)]
    n1 = await res.nodes.get("n1")
    assert n1.bird_ip == "10.0.0.1" and n1.tunnel_addrs == {"IpInIpTunnelAddr": "10.65.0.1"}
    assert (await res.nodes.register("n1", "10.0.0.1", None, None)).as_removed
    assert await res.nodes.exists("n1")
    assert await res.nodes.remove("n1") >= 4
    assert await res.nodes.get("n1") is None and not await res.nodes.exists("n1")


async def test_bgp_peers_global_and_per_node(res, etcd):
    await res.bgp_peers.put("10.0.0.254", 65000)
    await res.bgp_peers.put("2001:db8::fe", "65001", host="n1")
    assert etcd.get(keys.bgp_global_peer("10.0.0.254")) == '{"ip":"10.0.0.254","as_num":"65000"}'
    assert [s.value.ip for s in await res.bgp_peers.list()] == ["10.0.0.254"]
    assert [s.value.as_num for s in await res.bgp_peers.list(host="n1", version=6)] == [65001]
    assert await res.bgp_peers.list(host="n1", version=4) == []
    assert (await res.bgp_peers.get("2001:db8::fe", host="n1")).value.as_num == 65001
    assert await res.bgp_peers.delete("10.0.0.254")
    assert not await res.bgp_peers.delete("10.0.0.254")


async def test_felix_statuses(res, etcd):
    st = res.felix_statuses
    lease = await res.client.lease(10)
    await st.put_status("h1", {"time": "t", "uptime": 1.0, "first_update": True}, lease=lease)
    assert json.loads(etcd.get(keys.felix_status("h1"))) == {"time": "t", "uptime": 1.0, "first_update": True}
    assert etcd.get(keys.felix_last_status("h1")) == etcd.get(keys.felix_status("h1"))
    await st.put_endpoint("h1", "k8s", "w1", "eth0", {"status": "up"})
    assert etcd.get(keys.felix_endpoint_status("h1", "k8s", "w1", "eth0")) == json.dumps({"status": "up"})
    etcd.put(keys.felix_endpoint_status("h1", "k8s", "w2", "eth0"), "[not an object]")
    await st.put_endpoint("h2", "k8s", "w3", "eth0", {"status": "down"})  # another host's
    assert [(s.key.workload, s.value) for s in await st.endpoints("h1")] == [("w1", {"status": "up"})]
    listed = await st.endpoints("h1", include_invalid=True)
    assert sorted((s.key.workload, s.valid) for s in listed) == [("w1", True), ("w2", False)]
    assert await st.delete_endpoint("h1", "k8s", "w2", "eth0")
    assert [s.key.workload for s in await st.endpoints("h1", include_invalid=True)] == ["w1"]
