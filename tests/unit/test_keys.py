"""Every key builder in libcalico.keys parses back to its kind and fields."""

from __future__ import annotations

import pytest

from libcalico import keys

H = "node-1.example"

CASES = [
    (keys.READY, "ready", {}),
    (keys.global_config("InterfacePrefix"), "global_config", {"param": "InterfacePrefix"}),
    (keys.host_config(H, "IpInIpTunnelAddr"), "host_config", {"host": H, "param": "IpInIpTunnelAddr"}),
    (keys.host_bird_ip(H), "host_bird_ip", {"host": H}),
    (keys.host_vxlan_mac(H), "host_vxlan_mac", {"host": H}),
    (keys.workload_endpoint(H, "k8s", "default.pod-1", "eth0"), "workload_endpoint",
     {"host": H, "orchestrator": "k8s", "workload": "default.pod-1", "endpoint": "eth0"}),
    (keys.host_endpoint(H, "eth0"), "host_endpoint", {"host": H, "endpoint": "eth0"}),
    (keys.profile_rules("prof1"), "profile_rules", {"profile": "prof1"}),
    (keys.profile_tags("prof1"), "profile_tags", {"profile": "prof1"}),
    (keys.profile_labels("prof1"), "profile_labels", {"profile": "prof1"}),
    (keys.tier_metadata("t1"), "tier_metadata", {"tier": "t1"}),
    (keys.tier_policy("t1", "pol.a"), "tier_policy", {"tier": "t1", "policy": "pol.a"}),
    (keys.pool("10.65.0.0/16"), "pool", {"version": 4, "cidr": "10.65.0.0/16"}),
    (keys.pool("fd80:24e2:f998:72d6::/64"), "pool", {"version": 6, "cidr": "fd80:24e2:f998:72d6::/64"}),
    (keys.bgp_host_ip(H), "bgp_host_ip", {"host": H, "version": 4}),
    (keys.bgp_host_ip(H, 6), "bgp_host_ip", {"host": H, "version": 6}),
    (keys.bgp_host_as(H), "bgp_host_as", {"host": H}),
    (keys.bgp_host_loglevel(H), "bgp_host_loglevel", {"host": H}),
    (keys.bgp_host_peer(H, "10.0.0.9"), "bgp_host_peer", {"host": H, "version": 4, "ip": "10.0.0.9"}),
    (keys.bgp_host_peer(H, "2001:db8::1"), "bgp_host_peer", {"host": H, "version": 6, "ip": "2001:db8::1"}),
    (keys.bgp_global_as(), "bgp_global_as", {}),
    (keys.bgp_node_mesh(), "bgp_node_mesh", {}),
    (keys.bgp_global_loglevel(), "bgp_global_loglevel", {}),
    (keys.bgp_global_peer("192.0.2.1"), "bgp_global_peer", {"version": 4, "ip": "192.0.2.1"}),
    (keys.bgp_global_peer("2001:db8::2"), "bgp_global_peer", {"version": 6, "ip": "2001:db8::2"}),
    (keys.block_affinity(H, "10.65.1.0/26"), "block_affinity", {"host": H, "version": 4, "cidr": "10.65.1.0/26"}),
    (keys.block_affinity(H, "fd00::/122"), "block_affinity", {"host": H, "version": 6, "cidr": "fd00::/122"}),
    (keys.block_allocation("10.65.1.0/26"), "block_allocation", {"version": 4, "cidr": "10.65.1.0/26"}),
    (keys.ipam_handle("h-1"), "ipam_handle", {"handle": "h-1"}),
    (keys.bgp_host_rr_cluster_id(H), "bgp_host_rr_cluster_id", {"host": H}),
    (keys.bgp_host_status(H, 6), "bgp_host_status", {"host": H, "version": 6}),
    (keys.felix_status(H), "felix_status", {"host": H}),
    (keys.felix_last_status(H), "felix_last_status", {"host": H}),
    (keys.felix_endpoint_status(H, "k8s", "w", "e"), "felix_endpoint_status",
     {"host": H, "orchestrator": "k8s", "workload": "w", "endpoint": "e"}),
]


@pytest.mark.parametrize("path,kind,fields", CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(CASES)])
def test_builder_round_trip(path: str, kind: str, fields: dict) -> None:
    key = keys.parse(path)
    assert key is not None, path
    assert key.kind == kind
    assert key.fields == fields
    assert key.path == path
    for name, value in fields.items():
        assert getattr(key, name) == value


def test_every_kind_has_a_round_trip_case() -> None:
    assert {c[1] for c in CASES} == set(keys._FIELDS)


def test_exact_paths_of_the_datamodel() -> None:
    assert keys.pool("10.65.0.0/16") == "/calico/v1/ipam/v4/pool/10.65.0.0-16"
    assert keys.block_affinity("h", "10.65.0.0/26") == "/calico/ipam/v2/host/h/ipv4/block/10.65.0.0-26"
    assert keys.workload_endpoint("h", "o", "w", "e") == "/calico/v1/host/h/workload/o/w/endpoint/e"
    assert keys.bgp_global_peer("10.0.0.1") == "/calico/bgp/v1/global/peer_v4/10.0.0.1"
    assert keys.tier_policy("t", "p") == "/calico/v1/policy/tier/t/policy/p"


def test_cidr_key_helpers() -> None:
    assert keys.cidr_to_key("10.65.0.7/26") == "10.65.0.0-26"
    assert keys.key_to_cidr("fd00::-122") == "fd00::/122"
    for bad in ("10.65.0.0", "10.65.0.1-26", "x-1", "10.0.0.0-33"):
        with pytest.raises(ValueError):
            keys.key_to_cidr(bad)


@pytest.mark.parametrize("seg", ["", "a/b", ".", ".."])
def test_builders_refuse_unparseable_segments(seg: str) -> None:
    with pytest.raises(keys.KeyError_):
        keys.profile_rules(seg)
    with pytest.raises(keys.KeyError_):
        keys.workload_endpoint("h", "o", seg, "e")


@pytest.mark.parametrize("path", [
    "/calico/v1/unknown",
    "/calico/v1/host/h/workload/o/w/endpoint",
    "/calico/v1/ipam/v4/pool/fd00::-64",          # v6 cidr under v4
    "/calico/v1/ipam/v4/pool/10.0.0.0-99",
    "/calico/v1/ipam/v4/pool/10.0.0.1-24",        # host bits set
    "/calico/bgp/v1/global/peer_v4/not-an-ip",
    "/calico/bgp/v1/global/peer_v4/2001:db8::1",  # v6 ip under peer_v4
    "/calico/v1/policy/profile/p/rules/extra",
    "/calico/v1/Ready/x",
    "/other/v1/Ready",
])
def test_unknown_or_malformed_keys_parse_to_none(path: str) -> None:
    assert keys.parse(path) is None
