"""IPAM records (classic shape, the old shape, hostile values), pool block sizes, and confd announcing
blocks by each pool's own block size."""

from __future__ import annotations

import json

import pytest

from confd.state import BgpStore, Node
from libcalico.datastore import KV
from libcalico.ipam_records import Block, HandleRecord, RecordError, check_secondary
from libcalico.models import InvalidValue, Pool, parse_key_value


def kv(value: object, key: str = "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30") -> KV:
    return KV(key, value if isinstance(value, str) else json.dumps(value), 7, 1, 0)


def test_classic_round_trip_and_attribute_sharing():
    b = Block.new("10.0.0.0/30", "h1", strict=True)
    b.assign(1, "a", {"workload": "w"})
    b.assign(2, "a", {"workload": "w"})
    b.assign(3, "b")
    data = json.loads(b.to_json())
    assert data == {"cidr": "10.0.0.0/30", "affinity": "host:h1", "strictAffinity": True,
                    "allocations": [None, 0, 0, 1], "unallocated": [0],
                    "attributes": [{"handle_id": "a", "secondary": {"workload": "w"}},
                                   {"handle_id": "b", "secondary": {}}]}
    back = Block.from_kv(kv(data))
    assert not back.legacy and back.mod_revision == 7 and dict(back.handle_counts()) == {"a": 2, "b": 1}
    back.release(1)
    back.release(2)
    assert json.loads(back.to_json())["attributes"] == [{"handle_id": "b", "secondary": {}}]
    assert json.loads(back.to_json())["allocations"] == [None, None, None, 0]
    with pytest.raises(ValueError, match="already allocated"):
        back.assign(3, "c")


def test_old_shape_is_read_and_written_back_classic():
    old = {"cidr": "10.0.0.0/30", "affinity": "host:h1", "allocations": {"2": "x", "1": "y"}, "extra": 1}
    b = Block.from_kv(kv(old))
    assert b.legacy and b.handle_at(1) == "y" and b.handle_at(2) == "x" and b.handle_at(0) is None
    data = json.loads(b.to_json())
    assert data["allocations"] == [None, 0, 1, None] and data["unallocated"] == [0, 3]
    assert data["extra"] == 1  # unknown fields survive
    h = HandleRecord.from_kv("x", kv({"handle": "x", "blocks": {"10.0.0.0/30": 1}}, "/calico/ipam/v2/handle/x"))
    assert h.legacy and h.blocks == {"10.0.0.0/30": 1}
    assert json.loads(h.to_json()) == {"id": "x", "block": {"10.0.0.0/30": 1}}


@pytest.mark.parametrize("value, why", [
    ("{nope", "corrupt block record"),
    ([], "not a JSON object"),
    ({"cidr": "10.0.0.0/30", "allocations": [None] * 3, "attributes": []}, "one slot per address"),
    ({"cidr": "10.0.0.0/30", "allocations": [0, None, None, None], "attributes": []}, r"allocations\[0\]"),
    ({"cidr": "10.0.0.0/30", "allocations": [True, None, None, None], "attributes": [{"handle_id": "a"}]},
     r"allocations\[0\]"),
    ({"cidr": "10.0.0.0/30", "allocations": [None] * 4, "attributes": [{"secondary": {}}]}, "handle_id"),
    ({"cidr": "10.0.0.0/30", "allocations": [None] * 4, "strictAffinity": "yes"}, "strictAffinity"),
    ({"cidr": "10.0.0.0/30", "allocations": {"9": "a"}}, "not an ordinal"),
    ({"cidr": "10.0.0.0/16", "allocations": {}}, "more than the 4096"),
    ({"cidr": "10.0.0.0/30", "affinity": 5, "allocations": {}}, "affinity"),
])
def test_hostile_block_values_name_the_key(value, why):
    with pytest.raises(RecordError, match=f"10.0.0.0-30: .*{why}|{why}") as e:
        Block.from_kv(kv(value))
    assert str(e.value).startswith("/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30: corrupt block record")


def test_secondary_attributes_are_bounded():
    assert check_secondary({"b": "2", "a": "1"}) == {"a": "1", "b": "2"}
    for bad in ({"k": 1}, {"": "v"}, {"k": "v" * 254}, {f"k{i}": "v" for i in range(17)}, ["k"]):
        with pytest.raises(ValueError, match="attrs"):
            check_secondary(bad)  # type: ignore[arg-type]


def test_pool_block_size_bounds():
    assert Pool.model_validate({"cidr": "10.0.0.0/16"}).block_prefix == 26
    assert Pool.model_validate({"cidr": "10.0.0.0/28"}).block_prefix == 28  # never wider than the pool
    assert Pool.model_validate({"cidr": "10.0.0.0/16", "block_size": 20}).block_prefix == 20
    assert Pool.model_validate({"cidr": "fd00::/64"}).block_prefix == 122
    assert Pool.model_validate({"cidr": "fd00::/64", "block_size": 116}).block_prefix == 116
    for cidr, size in (("10.0.0.0/16", 19), ("10.0.0.0/16", 33), ("fd00::/64", 115), ("fd00::/64", 129)):
        with pytest.raises(InvalidValue, match="block_size"):
            parse_key_value(f"/calico/v1/ipam/v{4 if '.' in cidr else 6}/pool/{cidr.replace('/', '-')}",
                            json.dumps({"cidr": cidr, "block_size": size}))
    for bad in ("26", True, 26.0):
        with pytest.raises(InvalidValue, match="block_size"):
            parse_key_value("/calico/v1/ipam/v4/pool/10.0.0.0-16", json.dumps({"cidr": "10.0.0.0/16", "block_size": bad}))
    with pytest.raises(InvalidValue, match="strict_affinity"):
        parse_key_value("/calico/v1/ipam/v4/pool/10.0.0.0-16", json.dumps({"cidr": "10.0.0.0/16", "strict_affinity": 1}))


def test_confd_announces_blocks_of_each_pools_own_size():
    kvs = {
        "/calico/bgp/v1/host/a/ip_addr_v4": "10.0.0.1",
        "/calico/v1/ipam/v4/pool/10.70.0.0-24": '{"cidr": "10.70.0.0/24", "block_size": 28}',
        "/calico/v1/ipam/v4/pool/10.71.0.0-24": '{"cidr": "10.71.0.0/24"}',
        "/calico/ipam/v2/host/a/ipv4/block/10.70.0.16-28": '{"state": "confirmed"}',
        "/calico/ipam/v2/host/a/ipv4/block/10.70.0.64-26": '{"state": "confirmed"}',  # not this pool's size
        "/calico/ipam/v2/host/a/ipv4/block/10.71.0.0-26": '{"state": "confirmed"}',
        "/calico/ipam/v2/host/a/ipv4/block/10.71.0.64-28": '{"state": "confirmed"}',  # not this pool's size
    }
    ctx = BgpStore(Node("a", "10.0.0.1", None)).load_raw(kvs).context()
    assert ctx["v4"]["blocks"] == ["10.70.0.16/28", "10.71.0.0/26"]


def test_felix_routes_each_pools_own_block_size():
    """Felix routes remote blocks as their affinities name them: no block size is assumed."""
    from felix.calc.overlay import OverlayCalculator, OverlayConfig
    from libcalico import keys

    calc = OverlayCalculator(OverlayConfig("me"))

    def put(path: str, raw: str) -> None:
        key, value = parse_key_value(path, raw)
        calc.on_update("put", key, value)

    put(keys.pool("10.72.0.0/24"), json.dumps({"cidr": "10.72.0.0/24", "vxlan": "vxlan.calico", "block_size": 28}))
    put(keys.pool("10.73.0.0/24"), json.dumps({"cidr": "10.73.0.0/24", "vxlan": "vxlan.calico", "block_size": 30}))
    for name, bird, vtep, mac, blocks in (("me", "10.0.1.2", "10.72.0.1", "66:00:00:00:00:0a", ["10.72.0.0/28"]),
                                          ("peer", "10.0.2.2", "10.72.0.17", "66:00:00:00:00:0b",
                                           ["10.72.0.16/28", "10.73.0.4/30"])):
        put(keys.host_bird_ip(name), bird)
        put(keys.host_config(name, "VXLANTunnelAddr"), vtep)
        put(keys.host_vxlan_mac(name), mac)
        for b in blocks:
            put(keys.block_affinity(name, b), '{"state": "confirmed"}')
    assert dict(calc.desired().vxlan.routes) == {"10.72.0.16/28": "10.72.0.17", "10.73.0.4/30": "10.72.0.17"}
