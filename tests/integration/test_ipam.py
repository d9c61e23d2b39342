"""IPAM against a real etcd: blocks, affinity, CAS under real concurrency (5 processes), releases."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from libcalico import keys
from libcalico.datastore import DatastoreClient, DatastoreUnavailable
from libcalico.ipam import Ipam, IpamError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pool_json(cidr: str, **extra) -> str:
    return json.dumps({"cidr": cidr, **extra})


def slots(rec: dict) -> dict[str, str]:
    """ordinal (as text) -> handle of a classic block record, checking its invariants on the way."""
    allocs, attrs = rec["allocations"], rec["attributes"]
    assert len(allocs) == ipaddress.ip_network(rec["cidr"]).num_addresses
    assert rec["unallocated"] == [i for i, a in enumerate(allocs) if a is None]
    assert sorted({a for a in allocs if a is not None}) == list(range(len(attrs))), "unused attribute entries"
    return {str(i): attrs[a]["handle_id"] for i, a in enumerate(allocs) if a is not None}


@pytest.fixture
async def client(etcd_env):
    c = DatastoreClient.from_env(timeout=5)
    yield c
    await c.close()


async def add_pool(client, cidr, **extra):
    await client.put(keys.pool(cidr), pool_json(cidr, **extra))


async def test_assign_from_host_block_and_release(client, etcd):
    await add_pool(client, "10.65.0.0/16")
    ipam = Ipam(client)
    v4, v6 = await ipam.auto_assign("h1", "wl1", num4=3)
    assert v6 == [] and len(v4) == 3
    blocks = await ipam.host_blocks("h1")
    assert blocks == ["10.65.0.0/26"]
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(blocks[0]) for ip in v4)
    assert "10.65.0.0" not in v4  # the pool's network address is never handed out
    assert json.loads(etcd.get(keys.block_affinity("h1", "10.65.0.0/26"))) == {"state": "confirmed"}
    rec = json.loads(etcd.get(keys.block_allocation("10.65.0.0/26")))
    assert rec["affinity"] == "host:h1" and sorted(slots(rec).values()) == ["wl1"] * 3
    assert json.loads(etcd.get(keys.ipam_handle("wl1"))) == {"id": "wl1", "block": {"10.65.0.0/26": 3}}
    assert rec["strictAffinity"] is False and rec["attributes"] == [{"handle_id": "wl1", "secondary": {}}]
    info = await ipam.get_assignment(v4[0])
    assert info == {"ip": v4[0], "handle": "wl1", "block": "10.65.0.0/26", "host": "h1", "attrs": {}}
    # a second host gets its own block
    v4b, _ = await ipam.auto_assign("h2", "wl2", num4=1)
    assert await ipam.host_blocks("h2") == ["10.65.0.64/26"]
    assert ipaddress.ip_address(v4b[0]) in ipaddress.ip_network("10.65.0.64/26")
    # release one IP, then the whole handle
    assert await ipam.release_ips([v4[0], "10.99.0.1", "junk"]) == ["10.99.0.1", "junk"]
    assert await ipam.get_assignment(v4[0]) is None
    assert await ipam.release_ips([v4[0]]) == [v4[0]]  # not assigned any more
    assert json.loads(etcd.get(keys.ipam_handle("wl1")))["block"] == {"10.65.0.0/26": 2}
    assert sorted(await ipam.release_handle("wl1")) == sorted(v4[1:])
    assert etcd.get(keys.ipam_handle("wl1")) is None
    assert await ipam.release_handle("wl1") == []
    # released addresses come back
    again, _ = await ipam.auto_assign("h1", "wl3", num4=3)
    assert sorted(again) == sorted(v4)


async def test_block_fills_then_next_block(client):
    await add_pool(client, "10.66.0.0/24")
    ipam = Ipam(client)
    v4, _ = await ipam.auto_assign("h1", "big", num4=70)
    assert len(set(v4)) == 70
    assert await ipam.host_blocks("h1") == ["10.66.0.0/26", "10.66.0.64/26"]


async def test_ipv6_blocks(client):
    await add_pool(client, "fd80:24e2:f998:72d6::/64")
    ipam = Ipam(client)
    _, v6 = await ipam.auto_assign("h1", "six", num6=2)
    assert len(v6) == 2
    assert await ipam.host_blocks("h1") == ["fd80:24e2:f998:72d6::/122"]
    assert await ipam.get_assignment(v6[1]) is not None
    _, v6b = await ipam.auto_assign("h2", "six2", num6=1)
    assert ipaddress.ip_address(v6b[0]) in ipaddress.ip_network("fd80:24e2:f998:72d6::40/122")
    assert await ipam.host_blocks("h2") == ["fd80:24e2:f998:72d6::40/122"]


async def test_disabled_and_non_ipam_pools_give_nothing(client):
    await add_pool(client, "10.67.0.0/24", disabled=True)
    await add_pool(client, "10.68.0.0/24", ipam=False)
    await client.put(keys.pool("10.69.0.0/24"), "{not json")
    ipam = Ipam(client)
    assert await ipam.auto_assign("h1", "x", num4=1, num6=1) == ([], [])
    with pytest.raises(IpamError):
        await ipam.assign("10.67.0.5", "x", "h1")
    await add_pool(client, "10.70.0.0/24")
    v4, _ = await ipam.auto_assign("h1", "x", num4=1)
    assert ipaddress.ip_address(v4[0]) in ipaddress.ip_network("10.70.0.0/24")


async def test_auto_assign_restricted_to_pools(client):
    await add_pool(client, "10.74.0.0/24")
    await add_pool(client, "10.75.0.0/24", ipip="tunl0")
    await add_pool(client, "10.76.0.0/24", disabled=True)
    ipam = Ipam(client)
    v4, _ = await ipam.auto_assign("h1", "tun", num4=1, pools=["10.75.0.0/24"])
    assert ipaddress.ip_address(v4[0]) in ipaddress.ip_network("10.75.0.0/24")
    assert await ipam.auto_assign("h1", "tun2", num4=1, pools=["10.76.0.0/24"]) == ([], [])
    v4, _ = await ipam.auto_assign("h1", "any", num4=1)  # h1's affine block comes first
    assert ipaddress.ip_address(v4[0]) in ipaddress.ip_network("10.75.0.0/24")
    v4, _ = await ipam.auto_assign("h2", "any2", num4=1)  # a fresh host: the first free block
    assert ipaddress.ip_address(v4[0]) in ipaddress.ip_network("10.74.0.0/24")


async def test_explicit_assign(client):
    await add_pool(client, "10.71.0.0/24")
    ipam = Ipam(client)
    await ipam.assign("10.71.0.77", "fixed", "h9")
    assert await ipam.host_blocks("h9") == ["10.71.0.64/26"]
    with pytest.raises(IpamError, match="already assigned to fixed"):
        await ipam.assign("10.71.0.77", "other", "h9")
    with pytest.raises(IpamError, match="not in any"):
        await ipam.assign("10.1.2.3", "other", "h9")
    v4, _ = await ipam.auto_assign("h9", "auto", num4=63)
    assert "10.71.0.77" not in v4 and len(set(v4)) == 63


async def test_borrow_only_when_no_free_block(client):
    await add_pool(client, "10.72.0.0/25")  # two blocks
    ipam = Ipam(client)
    a, _ = await ipam.auto_assign("ha", "a", num4=2)
    b, _ = await ipam.auto_assign("hb", "b", num4=1)
    assert await ipam.host_blocks("hb") == ["10.72.0.64/26"]  # a free block exists: no borrowing
    # hb fills its block (63 usable minus the broadcast), then borrows from ha's
    more, _ = await ipam.auto_assign("hb", "b2", num4=70)
    assert len(set(more)) == 70
    borrowed = [ip for ip in more if ipaddress.ip_address(ip) in ipaddress.ip_network("10.72.0.0/26")]
    assert borrowed and await ipam.host_blocks("hb") == ["10.72.0.64/26"]
    assert (await ipam.get_assignment(borrowed[0]))["host"] == "ha"  # affinity unchanged
    # exhaustion: fewer than asked, no error, no duplicates
    rest, _ = await ipam.auto_assign("hc", "c", num4=100)
    everything = a + b + more + rest
    assert len(everything) == len(set(everything)) == 126  # 128 - network - broadcast


async def test_release_host_affinities(client, etcd):
    await add_pool(client, "10.73.0.0/24")
    ipam = Ipam(client)
    v4, _ = await ipam.auto_assign("gone", "w", num4=64)  # two blocks, the 2nd has 1 address
    await ipam.release_ips(v4[-1:])
    blocks = await ipam.host_blocks("gone")
    assert len(blocks) == 2
    assert sorted(await ipam.release_host_affinities("gone")) == sorted(blocks)
    assert await ipam.host_blocks("gone") == []
    assert etcd.keys(keys.ipam_host_dir("gone")) == []
    assert etcd.get(keys.block_allocation(blocks[1])) is None  # empty block back to the pool
    kept = json.loads(etcd.get(keys.block_allocation(blocks[0])))
    assert kept["affinity"] is None and len(slots(kept)) == 63  # addresses kept
    v4n, _ = await ipam.auto_assign("new", "n", num4=1)
    assert await ipam.host_blocks("new") == [blocks[1]]


# ---- 5 processes x 200 workloads from 2 hosts, deleting some while others allocate ----------

async def _worker(host: str, tag: str, count: int) -> dict:
    """Create `count` workloads as a plugin does (address, then endpoint) and delete every fourth
    again (endpoint, then address) while the other processes keep allocating."""
    from libcalico.models import WorkloadEndpoint
    from libcalico.resources import WorkloadEndpoints

    client = DatastoreClient.from_env(timeout=10)
    ipam, eps = Ipam(client), WorkloadEndpoints(client)
    live: list[tuple[str, str]] = []
    released: list[str] = []
    for i in range(count):
        handle = f"{tag}-{i}"
        v4, _ = await ipam.auto_assign(host, handle, num4=1, partial=False, attrs={
            "host": host, "orchestrator": "conc", "workload": handle, "endpoint": "eth0"})
        ep = WorkloadEndpoint.model_validate({"state": "active", "name": f"cali{tag}x{i:04d}",
                                              "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": [],
                                              "ipv4_nets": [f"{v4[0]}/32"]})
        assert await eps.create(host, "conc", handle, "eth0", ep)
        live.append((handle, v4[0]))
        if i % 4 == 3:
            gone, ip = live.pop(0)
            await eps.delete((host, "conc", gone, "eth0"))
            assert await ipam.release_handle(gone) == [ip]
            released.append(ip)
    await client.close()
    return {"held": dict(live), "released": released}


def _run_workers(etcd, jobs: list[tuple[str, str, int]]) -> dict[str, list[str]]:
    env = dict(os.environ, ETCD_ENDPOINTS=etcd.endpoint, PYTHONPATH=ROOT)
    procs = {tag: subprocess.Popen([sys.executable, __file__, host, tag, str(n)], env=env, cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for host, tag, n in jobs}
    out = {}
    for tag, p in procs.items():
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, f"worker {tag} failed: {stderr[-2000:]}"
        out[tag] = json.loads(stdout)
    return out


def _check_consistent(etcd, expect: dict[str, str]) -> None:
    """Every block record, affinity key and handle record agrees with what the workers were given."""
    import base64
    kvs = json.loads(etcd.etcdctl("get", "--prefix", "/calico/ipam/v2/", "-w", "json")).get("kvs", [])
    data = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs}
    affinity_hosts: dict[str, list[str]] = {}
    allocated: dict[str, str] = {}
    for k, v in data.items():
        key = keys.parse(k)
        if key.kind == "block_affinity":
            affinity_hosts.setdefault(key.cidr, []).append(key.host)
        elif key.kind == "block_allocation":
            rec = json.loads(v)
            net = ipaddress.ip_network(rec["cidr"])
            for o, h in slots(rec).items():
                allocated[str(net.network_address + int(o))] = h
    for cidr, hosts in affinity_hosts.items():
        assert len(hosts) == 1, f"block {cidr} owned by {hosts}"
        rec = json.loads(data[keys.block_allocation(cidr)])
        assert rec["affinity"] == f"host:{hosts[0]}"
    assert allocated == expect
    for handle in set(expect.values()):
        assert json.loads(data[keys.ipam_handle(handle)])["block"] == {
            str(ipaddress.ip_network(f"{ip}/26", strict=False)): 1 for ip, h in expect.items() if h == handle}


def test_five_processes_two_hosts_no_duplicates_and_check_clean(etcd):
    etcd.put(keys.pool("10.80.0.0/20"), pool_json("10.80.0.0/20"))
    t = time.monotonic()
    jobs = [("hostA", "a1", 200), ("hostA", "a2", 200), ("hostA", "a3", 200), ("hostB", "b1", 200),
            ("hostB", "b2", 200)]
    res = _run_workers(etcd, jobs)
    elapsed = time.monotonic() - t
    held = {h: ip for r in res.values() for h, ip in r["held"].items()}
    assert len(held) == 750 and len(set(held.values())) == 750, "an IP was handed to two live workloads"
    assert sum(len(r["released"]) for r in res.values()) == 250
    _check_consistent(etcd, {ip: h for h, ip in held.items()})
    # each host's addresses come from its own blocks (a /20 has plenty: nobody needs to borrow)
    for host, tags in (("hostA", ("a1", "a2", "a3")), ("hostB", ("b1", "b2"))):
        owned = [ipaddress.ip_network(k.rsplit("/", 1)[-1].replace("-", "/"))
                 for k in etcd.keys(keys.ipam_host_dir(host))]
        for tag in tags:
            assert all(any(ipaddress.ip_address(ip) in n for n in owned) for ip in res[tag]["held"].values())
    # released space was reused: without reuse 1000 addresses need 17 blocks (10 + 7); 750 live
    # ones need 13, and two processes of one host may each claim a block at the same moment
    assert len(etcd.keys("/calico/ipam/v2/host/")) <= 16
    print(f"\n1000 concurrent assignments (250 released meanwhile) in {elapsed:.1f}s")

    async def ipam_check():
        from libcalico.ipam_check import check

        c = DatastoreClient([etcd.endpoint])
        try:
            return await check(c)
        finally:
            await c.close()
    report = asyncio.run(ipam_check())
    assert report.clean and report.allocations == 750, report.to_json()


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    print(json.dumps(asyncio.run(_worker(sys.argv[1], sys.argv[2], int(sys.argv[3])))))


class _LostReply:
    """A real client whose next IPAM commit loses its reply: after the commit applied
    (`applied=True`) or before it reached etcd (`applied=False`)."""

    def __init__(self, real: DatastoreClient, applied: bool, reads_fail: int = 0):
        self.real, self.applied, self.armed, self.reads_fail = real, applied, True, reads_fail

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def txn(self, compare, success=None, failure=None, what="txn"):
        if self.armed and what.startswith("ipam commit"):
            self.armed = False
            if self.applied:
                await self.real.txn(compare, success, failure, what=what)
            raise DatastoreUnavailable(f"{what}: etcd unavailable (no answer within 5s)")
        return await self.real.txn(compare, success, failure, what=what)

    async def get_kv(self, key):
        if not self.armed and self.reads_fail:
            self.reads_fail -= 1
            raise DatastoreUnavailable(f"get {key}: etcd unavailable (test)")
        return await self.real.get_kv(key)


def _allocations(etcd, cidr: str) -> dict[str, str]:
    return slots(json.loads(etcd.get(keys.block_allocation(cidr))))


@pytest.mark.parametrize("applied", [True, False])
async def test_lost_commit_reply_neither_leaks_nor_doubles(client, etcd, applied):
    await add_pool(client, "10.65.0.0/16")
    ipam = Ipam(_LostReply(client, applied))
    v4, _ = await ipam.auto_assign("h1", "wl1", num4=2)
    assert len(v4) == 2
    held = sorted(_allocations(etcd, "10.65.0.0/26"))
    assert [str(ipaddress.ip_network("10.65.0.0/26").network_address + int(o)) for o in held] == sorted(
        v4, key=ipaddress.ip_address), "the block must hold exactly the addresses returned"
    assert json.loads(etcd.get(keys.ipam_handle("wl1")))["block"] == {"10.65.0.0/26": 2}

    ipam = Ipam(_LostReply(client, applied))
    await ipam.assign("10.65.0.40", "wl2", "h1")
    assert _allocations(etcd, "10.65.0.0/26")["40"] == "wl2"

    ipam = Ipam(_LostReply(client, applied))
    assert await ipam.release_ips(v4 + ["10.65.0.40"]) == []
    assert _allocations(etcd, "10.65.0.0/26") == {}
    assert etcd.get(keys.ipam_handle("wl1")) is None and etcd.get(keys.ipam_handle("wl2")) is None


async def test_lost_reply_with_etcd_still_gone_names_the_handle(client, etcd):
    await add_pool(client, "10.65.0.0/16")
    ipam = Ipam(_LostReply(client, True, reads_fail=100))
    with pytest.raises(DatastoreUnavailable, match="outcome unknown.*wl1.*release them by handle"):
        await ipam.auto_assign("h1", "wl1", num4=1)
    released = await Ipam(client).release_handle("wl1")  # the operator's way back, once etcd answers
    assert len(released) == 1 and _allocations(etcd, "10.65.0.0/26") == {}
