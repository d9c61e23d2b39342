"""Classic IPAM records, per-pool block sizes, strict affinity, disabled pools, exhaustion and the
operator's show/check/repair commands, against a real etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from libcalico import keys
from libcalico.datastore import DatastoreClient
from libcalico.ipam import Ipam, IpamError, PoolDisabled, PoolExhausted, UnknownPool
from libcalico.models import WorkloadEndpoint
from libcalico.resources import Nodes, WorkloadEndpoints
from tests.integration import ipam_legacy_writer as legacy
from tests.integration.test_calicoctl_datastore import ctl as _ctl
from tests.integration.test_calicoctl_datastore import ok as _ok
from tests.integration.test_ipam import slots


async def ctl(*argv: str):
    """calicoctl in-process, on a thread of its own (it runs its own event loop)."""
    return await asyncio.to_thread(_ctl, *argv)


async def ok(*argv: str) -> str:
    return await asyncio.to_thread(_ok, *argv)


@pytest.fixture
async def client(etcd_env):
    c = DatastoreClient.from_env(timeout=5)
    yield c
    await c.close()


async def add_pool(client, cidr, **extra):
    await client.put(keys.pool(cidr), json.dumps({"cidr": cidr, **extra}))


def block_rec(etcd, cidr: str) -> dict:
    return json.loads(etcd.get(keys.block_allocation(cidr)))


async def endpoint(client, host: str, ep_id: str, ips: list[str], workload: str | None = None) -> None:
    ep = WorkloadEndpoint.model_validate({"state": "active", "name": f"cali{ep_id[:11]}", "mac": "ee:ee:ee:ee:ee:ee",
                                          "profile_ids": [], "ipv4_nets": [f"{ip}/32" for ip in ips]})
    assert await WorkloadEndpoints(client).create(host, "test", workload or f"wl-{ep_id}", ep_id, ep)


# ---- classic records and migration -------------------------------------------------------

async def test_datastore_written_by_the_old_code_is_read_and_converted_on_first_write(client, etcd):
    await add_pool(client, "10.90.0.0/24")
    old = legacy.Ipam(client)
    a, _ = await old.auto_assign("h1", "wl1", num4=3)
    b, _ = await old.auto_assign("h2", "wl2", num4=2)
    await old.assign("10.90.0.40", "wl3", "h1")
    await old.release_ips([a[1]])
    raw = block_rec(etcd, "10.90.0.0/26")
    assert isinstance(raw["allocations"], dict) and "unallocated" not in raw  # really the old shape
    assert json.loads(etcd.get(keys.ipam_handle("wl1"))) == {"handle": "wl1", "blocks": {"10.90.0.0/26": 2}}

    ipam = Ipam(client)
    # reads understand the old shape without writing anything
    rev_before = json.loads(etcd.etcdctl("get", keys.block_allocation("10.90.0.0/26"), "-w", "json"))["kvs"][0]
    assert (await ipam.get_assignment(a[0]))["handle"] == "wl1"
    assert (await ipam.get_assignment("10.90.0.40"))["handle"] == "wl3"
    assert await ipam.get_assignment(a[1]) is None
    rev_after = json.loads(etcd.etcdctl("get", keys.block_allocation("10.90.0.0/26"), "-w", "json"))["kvs"][0]
    assert rev_before["mod_revision"] == rev_after["mod_revision"]

    # the first write converts the block, keeping every old allocation
    c, _ = await ipam.auto_assign("h1", "wl1", num4=1)
    rec = block_rec(etcd, "10.90.0.0/26")
    assert rec["affinity"] == "host:h1" and rec["strictAffinity"] is False
    held = {str(ipaddress.ip_address("10.90.0.0") + int(o)): h for o, h in slots(rec).items()}
    assert held == {a[0]: "wl1", a[2]: "wl1", "10.90.0.40": "wl3", c[0]: "wl1"}
    assert json.loads(etcd.get(keys.ipam_handle("wl1"))) == {"id": "wl1", "block": {"10.90.0.0/26": 3}}
    # h2's block is untouched until something writes it
    assert isinstance(block_rec(etcd, "10.90.0.64/26")["allocations"], dict)
    assert sorted(await ipam.release_handle("wl2")) == sorted(b)
    assert slots(block_rec(etcd, "10.90.0.64/26")) == {}
    # old code meeting a converted block refuses it rather than overwriting it
    with pytest.raises(legacy.IpamError, match="corrupt block record"):
        await old.release_ips([a[0]])
    assert (await ipam.get_assignment(a[0]))["handle"] == "wl1"
    # a legacy handle record (wl3) is released through the blocks it names
    assert await ipam.release_handle("wl3") == ["10.90.0.40"]
    assert etcd.get(keys.ipam_handle("wl3")) is None


async def test_attributes_are_kept_per_slot(client, etcd):
    await add_pool(client, "10.91.0.0/24")
    ipam = Ipam(client)
    attrs = {"orchestrator": "k8s", "workload": "default.pod-a", "endpoint": "eth0", "host": "h1"}
    v4, _ = await ipam.auto_assign("h1", "pod-a", num4=2, attrs=attrs)
    await ipam.assign("10.91.0.30", "pod-b", "h1", attrs={"workload": "default.pod-b"})
    rec = block_rec(etcd, "10.91.0.0/26")
    assert rec["attributes"] == [{"handle_id": "pod-a", "secondary": attrs},
                                 {"handle_id": "pod-b", "secondary": {"workload": "default.pod-b"}}]
    assert (await ipam.get_assignment(v4[1]))["attrs"] == attrs
    await ipam.release_handle("pod-a")
    rec = block_rec(etcd, "10.91.0.0/26")  # unused attribute entries go, indices are renumbered
    assert rec["attributes"] == [{"handle_id": "pod-b", "secondary": {"workload": "default.pod-b"}}]
    assert rec["allocations"][30] == 0 and slots(rec) == {"30": "pod-b"}
    with pytest.raises(ValueError, match="attrs"):
        await ipam.auto_assign("h1", "x", num4=1, attrs={"k": "v" * 300})


# ---- pools: block size, disabled, restriction, exhaustion, strict affinity -----------------

async def test_block_size_per_pool(client, etcd):
    await ok("pool", "add", "10.92.0.0/24", "--block-size", "28")
    await ok("pool", "add", "fd00:92::/112", "--block-size=120")
    await ok("pool", "add", "10.93.0.0/24")
    assert "block-size=28" in await ok("pool", "show", "--ipv4")
    ipam = Ipam(client)
    v4, v6 = await ipam.auto_assign("h1", "w", num4=20, num6=1, ipv4_pools=["10.92.0.0/24"])
    assert await ipam.host_blocks("h1", 4) == ["10.92.0.0/28", "10.92.0.16/28"]
    assert await ipam.host_blocks("h1", 6) == ["fd00:92::/120"]
    assert len(slots(block_rec(etcd, "10.92.0.16/28"))) == 5 and len(block_rec(etcd, "10.92.0.16/28")["allocations"]) == 16
    x, _ = await ipam.auto_assign("h2", "x", num4=1, ipv4_pools=["10.93.0.0/24"])
    assert await ipam.host_blocks("h2") == ["10.93.0.0/26"]
    assert await ipam.release_ips(v4 + v6 + x) == []
    # bad sizes, and no size change while blocks of the old size exist
    for args, msg in ((["10.94.0.0/24", "--block-size", "19"], "/20../32"),
                      (["fd00:94::/112", "--block-size", "115"], "/116../128"),
                      (["10.94.0.0/24", "--block-size", "x"], "prefix length"),
                      (["10.94.0.0/27"], "must be /26 or bigger")):
        r = await ctl("pool", "add", *args)
        assert r.rc == 2 and msg in r.err, r
    r = await ctl("pool", "add", "10.92.0.0/24", "--block-size", "26")
    assert r.rc == 1 and "block size cannot change" in r.err and "10.92.0.0/24" in r.err
    # a hostile pool value with a bad block_size is that pool's error alone
    await client.put(keys.pool("10.95.0.0/24"), json.dumps({"cidr": "10.95.0.0/24", "block_size": 40}))
    assert "outside /20../32" in await ok("pool", "show")
    assert [p.cidr for p in await ipam.all_pools(4)] == ["10.92.0.0/24", "10.93.0.0/24"]


async def test_pool_choice_disabled_and_unknown_pools(client):
    await add_pool(client, "10.96.0.0/24")
    await add_pool(client, "10.97.0.0/24", disabled=True)
    ipam = Ipam(client)
    v4, _ = await ipam.auto_assign("h1", "a", num4=1, ipv4_pools=["10.96.0.0/24"])
    await ipam.set_config()  # no change
    # existing allocations in a pool survive it being disabled
    await add_pool(client, "10.96.0.0/24", disabled=True)
    assert (await ipam.get_assignment(v4[0]))["handle"] == "a"
    with pytest.raises(PoolDisabled, match="pool 10.96.0.0/24 is disabled") as e:
        await ipam.auto_assign("h1", "b", num4=1, ipv4_pools=["10.96.0.0/24"])
    assert e.value.pool == "10.96.0.0/24"
    with pytest.raises(PoolDisabled, match="10.97.0.0/24"):
        await ipam.assign("10.97.0.9", "b", "h1")
    with pytest.raises(UnknownPool, match="10.98.0.0/24 is not configured"):
        await ipam.auto_assign("h1", "b", num4=1, ipv4_pools=["10.98.0.0/24"])
    with pytest.raises(UnknownPool, match="not an IPv6 pool"):
        await ipam.auto_assign("h1", "b", num6=1, ipv6_pools=["10.97.0.0/24"])
    assert await ipam.auto_assign("h1", "b", num4=1) == ([], [])  # legacy: nothing, no error
    with pytest.raises(UnknownPool, match="no enabled IPv4 pool"):
        await ipam.auto_assign("h1", "b", num4=1, partial=False)
    assert await ipam.release_ips(v4) == []


async def test_exhaustion_and_strict_affinity(client):
    """A /28 pool with /30 blocks on 3 hosts: 14 usable addresses (network and broadcast never)."""
    await add_pool(client, "10.99.8.0/28", block_size=30, strict_affinity=True)
    ipam = Ipam(client)
    got = {}
    for host, n in (("h1", 4), ("h2", 4), ("h3", 3)):
        got[host], _ = await ipam.auto_assign(host, f"w-{host}", num4=n, partial=False)
    assert await ipam.host_blocks("h1") == ["10.99.8.0/30", "10.99.8.4/30"]
    assert await ipam.host_blocks("h3") == ["10.99.8.12/30"]
    # every block is claimed; strict affinity refuses to borrow h1's free addresses, nothing is kept
    with pytest.raises(PoolExhausted, match=r"IPv4 pool 10\.99\.8\.0/28 exhausted.*strict affinity") as e:
        await ipam.auto_assign("h3", "more", num4=2, partial=False)
    assert e.value.pools == ["10.99.8.0/28"]
    assert await ipam.release_handle("more") == []
    # without strict affinity h3 borrows from h1's and h2's blocks, until the pool is full
    await add_pool(client, "10.99.8.0/28", block_size=30, strict_affinity=False)
    borrowed, _ = await ipam.auto_assign("h3", "more", num4=3, partial=False)
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.99.8.4/30") for ip in borrowed)
    everything = [ip for ips in got.values() for ip in ips] + borrowed
    assert len(set(everything)) == 14
    with pytest.raises(PoolExhausted, match=r"10\.99\.8\.0/28 exhausted: 0 of 1 addresses for last on host h2"):
        await ipam.auto_assign("h2", "last", num4=1, partial=False)
    # the cluster-wide switch forbids borrowing too
    await ipam.release_ips(got["h1"][-1:])
    await ipam.set_config(strict_affinity=True)
    with pytest.raises(PoolExhausted, match="strict affinity"):
        await ipam.auto_assign("h2", "last", num4=1, partial=False)
    await ipam.set_config(strict_affinity=False)
    assert (await ipam.auto_assign("h2", "last", num4=1, partial=False))[0] == got["h1"][-1:]
    # how it looks to an operator
    r = await ctl("ipam", "show")
    assert "10.99.8.0/28" in r.out and "| 16 " in r.out and "14 (87%)" in r.out and "/30 blocks" in r.out


async def test_empty_blocks_go_back_when_not_needed(client, etcd):
    await add_pool(client, "10.89.0.0/24", block_size=28)
    ipam = Ipam(client)
    a, _ = await ipam.auto_assign("h1", "a", num4=20)  # .0/28 full (15: never the pool's .0), .16/28 with 5
    await Nodes(client).register("h1", "192.0.2.1", None, None)
    # the classic default keeps an emptied affine block
    await ipam.release_ips(a[:15])
    assert await ipam.host_blocks("h1") == ["10.89.0.0/28", "10.89.0.16/28"]
    # configured: a block emptied while the host has room elsewhere goes back to the pool
    await ipam.set_config(release_empty_blocks=True)
    b, _ = await ipam.auto_assign("h1", "b", num4=1)
    assert b == ["10.89.0.1"]
    await ipam.release_ips(b)
    assert await ipam.host_blocks("h1") == ["10.89.0.16/28"]
    assert etcd.get(keys.block_allocation("10.89.0.0/28")) is None
    # the host's last block with room is still needed
    await ipam.release_ips(a[15:])
    assert await ipam.host_blocks("h1") == ["10.89.0.16/28"]
    # a block without affinity (its node removed while addresses were in use) goes back when emptied
    c, _ = await ipam.auto_assign("h9", "c", num4=1)
    await ipam.release_host_affinities("h9")
    assert block_rec(etcd, "10.89.0.0/28")["affinity"] is None
    await ipam.release_ips(c)
    assert etcd.get(keys.block_allocation("10.89.0.0/28")) is None


# ---- operator commands ------------------------------------------------------------------------

async def test_show_check_and_repair_from_report(client, etcd, tmp_path):
    await add_pool(client, "10.88.0.0/24")
    ipam = Ipam(client)
    nodes = Nodes(client)
    await nodes.register("n1", "192.0.2.1", None, None)
    live_ip, _ = await ipam.auto_assign("n1", "ep-live", num4=1)
    await endpoint(client, "n1", "ep-live", live_ip)
    by_attrs, _ = await ipam.auto_assign("n1", "k8s-abc", num4=1, attrs={
        "host": "n1", "orchestrator": "test", "workload": "pod-1", "endpoint": "eth0"})
    await endpoint(client, "n1", "eth0", [], workload="pod-1")  # the plugin writes its IP later
    tunnel, _ = await ipam.auto_assign("n1", "ipip-tunnel-addr-n1", num4=1)
    await nodes.set_tunnel_addr("n1", "IpInIpTunnelAddr", tunnel[0])
    leak1, _ = await ipam.auto_assign("n1", "crashed-1", num4=1, attrs={"workload": "gone"})
    leak2, _ = await ipam.auto_assign("n1", "crashed-2", num4=1)
    late, _ = await ipam.auto_assign("n1", "slow-workload", num4=1)
    await endpoint(client, "n1", "ep-unrecorded", ["10.88.0.200"])
    gone, _ = await ipam.auto_assign("removed-node", "old-ep", num4=1)
    await client.put(keys.ipam_handle("ep-live"), json.dumps({"id": "ep-live", "block": {"10.88.0.0/26": 5}}))

    show = await ok("ipam", "show", "--show-blocks")
    assert "10.88.0.0/24" in show and "10.88.0.0/26" in show and "host:n1" in show and "host:removed-node" in show
    assert "IP Pool" in show and "256" in show
    info = await ok("ipam", "show", "--ip", by_attrs[0])
    assert "k8s-abc" in info and "workload: pod-1" in info

    report_path = str(tmp_path / "r.json")
    r = await ctl("ipam", "check", "-o", report_path)
    assert r.rc == 1, r
    for ip in leak1 + leak2 + late + gone:
        assert f"  {ip}  handle" in r.out
    for ip in live_ip + by_attrs + tunnel:
        assert f"  {ip}  handle" not in r.out
    assert "10.88.0.200" in r.out and "removed-node" in r.out and "ep-live" in r.out
    report = json.loads(open(report_path).read())
    assert sorted(x["ip"] for x in report["leaked"]) == sorted(leak1 + leak2 + late + gone)
    assert [x["attrs"] for x in report["leaked"] if x["ip"] == leak1[0]] == [{"workload": "gone"}]
    assert [x["ip"] for x in report["unrecorded"]] == ["10.88.0.200"]
    assert [(x["block"], x["host"], x["in_use"]) for x in report["orphan_blocks"]] == [
        ("10.88.0.64/26", "removed-node", 1)]
    assert [x["handle"] for x in report["handle_mismatches"]] == ["ep-live"]
    r = await ctl("ipam", "check", "-o", "-")
    assert r.rc == 1 and json.loads(r.out)["leaked"] == report["leaked"]

    # a workload that came up since the report, holding one of the "leaked" addresses, is kept
    await endpoint(client, "n1", "slow-workload", late)
    out = await ok("ipam", "release", f"--from-report={report_path}")
    assert f"Kept {late[0]}" in out
    for ip in leak1 + leak2 + gone:
        assert f"Released IP {ip}" in out
        assert await ipam.get_assignment(ip) is None
    for ip in live_ip + by_attrs + tunnel + late:
        assert await ipam.get_assignment(ip) is not None
    assert "Released block 10.88.0.64/26" in out and "Rewrote handle record ep-live" in out
    assert json.loads(etcd.get(keys.ipam_handle("ep-live")))["block"] == {"10.88.0.0/26": 1}
    # a second run of the same report harms nothing
    again = await ok("ipam", "release", f"--from-report={report_path}")
    assert "0 address(es) released" in again
    # only the unrecorded address is left; recording it makes the check clean
    r = await ctl("ipam", "check")
    assert r.rc == 1 and "IPAM does not hold (could be handed out twice): 1" in r.out
    await ipam.assign("10.88.0.200", "ep-unrecorded", "n1")
    r = await ctl("ipam", "check")
    assert r.rc == 0 and "IPAM is consistent" in r.out, r
    # hostile report files: one clear error, nothing released
    bad = tmp_path / "bad.json"
    for text in ("{", '{"version": 1, "leaked": [{"ip": "nope"}]}', '{"version": 7}'):
        bad.write_text(text)
        r = await ctl("ipam", "release", f"--from-report={bad}")
        assert r.rc == 1 and str(bad) in r.err and r.err.count("\n") == 1, r
    r = await ctl("ipam", "release", "--from-report=/nonexistent/r.json")
    assert r.rc == 1 and "cannot read" in r.err


def test_configure_and_bad_arguments(etcd_env):
    ctl, ok = _ctl, _ok
    assert "strictaffinity: true" in ok("ipam", "configure", "--strictaffinity=true")
    out = ok("ipam", "configure", "--release-empty-blocks", "true")
    assert "strictaffinity: true" in out and "release-empty-blocks: true" in out
    assert "strict-affinity" not in ok("ipam", "show")  # no pool to show it on
    for args in (["ipam", "configure"], ["ipam", "configure", "--strictaffinity=maybe"],
                 ["ipam", "check", "--show-blocks"], ["ipam", "show", "--ip", "nope"], ["ipam", "release"],
                 ["ipam", "show", "extra"]):
        r = ctl(*args)
        assert r.rc == 2 and r.err.count("\n") == 1, (args, r)


async def test_node_remove_leaves_ipam_clean(client):
    await add_pool(client, "10.87.0.0/24")
    ipam = Ipam(client)
    await Nodes(client).register("gone-node", "192.0.2.7", None, None)
    await Nodes(client).register("stays", "192.0.2.8", None, None)
    for i in range(3):
        v4, _ = await ipam.auto_assign("gone-node", f"ep{i}", num4=1)
        await endpoint(client, "gone-node", f"ep{i}", v4)
    keep, _ = await ipam.auto_assign("stays", "keep", num4=1)
    await endpoint(client, "stays", "keep", keep)
    assert (await ok("ipam", "check")).count(": 0") == 4
    out = await ok("node", "remove", "--hostname=gone-node", "--remove-endpoints")
    assert "removed 3 endpoint(s)" in out
    r = await ctl("ipam", "check")
    assert r.rc == 0 and "Checked 1 allocation(s) in 1 block(s)" in r.out, r
    assert await ipam.host_blocks("gone-node") == []


def test_pool_range_add(etcd_env):
    ctl, ok = _ctl, _ok
    ok("pool", "range", "add", "172.24.0.0", "172.24.25.255", "--nat-outgoing")
    show = ok("pool", "show", "--ipv4")
    for cidr in ("172.24.0.0/20", "172.24.16.0/21", "172.24.24.0/23"):
        assert cidr in show
    assert show.count("nat-outgoing") == 3
    # off block boundaries: the pieces smaller than a block are one block each
    ok("pool", "range", "add", "10.86.0.1", "10.86.0.10")
    show = ok("pool", "show", "--ipv4")
    for cidr, size in (("10.86.0.1/32", 32), ("10.86.0.2/31", 31), ("10.86.0.4/30", 30), ("10.86.0.8/31", 31),
                       ("10.86.0.10/32", 32)):
        assert cidr in show and f"block-size={size}" in show
    for args, msg in ((["172.24.25.0", "172.24.30.0"], "overlaps existing pool 172.24.24.0/23"),
                      (["10.1.0.9", "10.1.0.1"], "START_IP is after END_IP"),
                      (["10.1.0.1", "fd00::1"], "both ends"),
                      (["10.1.0.1"], "invalid command")):
        r = ctl("pool", "range", "add", *args)
        assert r.rc == 2 and msg in r.err and r.err.count("\n") == 1, (args, r)
    assert "172.24.26.0" not in ok("pool", "show")  # nothing of the refused range was written


async def test_corrupt_block_record_is_its_own_error(client, etcd):
    await add_pool(client, "10.85.0.0/24")
    ipam = Ipam(client)
    await client.put(keys.block_allocation("10.85.0.0/26"), json.dumps(
        {"cidr": "10.85.0.0/26", "affinity": "host:h1", "allocations": [None] * 64, "attributes": [],
         "unallocated": []}))
    await client.put(keys.block_allocation("10.85.0.64/26"), json.dumps(
        {"cidr": "10.85.0.64/26", "affinity": "host:h2", "allocations": [5] + [None] * 63, "attributes": []}))
    with pytest.raises(IpamError, match="10.85.0.64-26: corrupt block record.*allocations\\[0\\]"):
        await ipam.get_assignment("10.85.0.65")
    await client.put(keys.block_affinity("h1", "10.85.0.0/26"), '{"state": "confirmed"}')
    v4, _ = await ipam.auto_assign("h1", "x", num4=1)  # h1's block reads fine
    assert v4 == ["10.85.0.1"]
    r = await ctl("ipam", "check")
    assert r.rc == 1 and "Unreadable block records: 1" in r.out
