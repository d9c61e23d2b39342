"""NatCalculator: pool ipsets, NAT outgoing, 1:1 NAT and metadata DNAT rules from real keys/values."""

from __future__ import annotations

import json

import pytest

from felix.calc import nat
from felix.calc.nat import NatCalculator, NatConfig
from libcalico import keys
from libcalico.models import IpNat, Pool, WorkloadEndpoint, parse_key_value

ME = "node-a"


def put(calc: NatCalculator, path: str, value: dict) -> bool:
    key, v = parse_key_value(path, json.dumps(value))
    return calc.on_update("put", key, v)


def delete(calc: NatCalculator, path: str) -> bool:
    key, _ = parse_key_value(path, None)
    return calc.on_update("delete", key, None)


def ep(host: str, name: str, nats: list[dict] | None = None) -> tuple[str, dict]:
    path = keys.workload_endpoint(host, "k8s", name, "eth0")
    return path, {"state": "active", "name": f"cali{name}", "ipv4_nets": ["10.65.0.5/32"],
                  "ipv4_nat": nats or []}


def test_pool_sets_follow_masquerade_flag():
    calc = NatCalculator(NatConfig(ME))
    assert put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": True})
    assert put(calc, keys.pool("10.70.0.0/16"), {"cidr": "10.70.0.0/16"})
    put(calc, keys.pool("fd00:1::/64"), {"cidr": "fd00:1::/64", "masquerade": True})
    s4 = calc.desired(4).ipsets
    assert s4 == {"felix-v4-i:masq-ipam-pools": frozenset({"10.65.0.0/16"}),
                  "felix-v4-i:all-ipam-pools": frozenset({"10.65.0.0/16", "10.70.0.0/16"})}
    assert calc.desired(6).ipsets["felix-v6-i:masq-ipam-pools"] == frozenset({"fd00:1::/64"})
    # turning masquerade off moves the pool out of the masq set only
    assert put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": False})
    assert calc.desired(4).ipsets["felix-v4-i:masq-ipam-pools"] == frozenset()
    assert not put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": False})
    assert delete(calc, keys.pool("10.70.0.0/16"))
    assert calc.desired(4).ipsets["felix-v4-i:all-ipam-pools"] == frozenset({"10.65.0.0/16"})


def test_nothing_to_nat_leaves_the_nat_table_alone():
    calc = NatCalculator(NatConfig(ME))
    for v in (4, 6):
        st = calc.desired(v)
        assert not st.chains and not st.hooks and not st.ipsets
    put(calc, keys.pool("fd00:1::/64"), {"cidr": "fd00:1::/64"})
    assert calc.desired(6).chains and not calc.desired(4).chains


def test_nat_outgoing_rule_excludes_pool_destinations():
    calc = NatCalculator(NatConfig(ME))
    put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": True})
    put(calc, keys.pool("fd00:1::/64"), {"cidr": "fd00:1::/64"})
    st = calc.desired(4)
    assert st.chains[nat.CH_NAT_OUTGOING] == [
        "-m set --match-set felix-v4-i:masq-ipam-pools src -m set ! --match-set felix-v4-i:all-ipam-pools dst "
        "-j MASQUERADE"]
    assert st.hooks == {"PREROUTING": ["-j felix-PREROUTING"], "OUTPUT": ["-j felix-OUTPUT"],
                        "POSTROUTING": ["-j felix-POSTROUTING"]}
    assert set(st.chains) == set(nat.ALL_CHAINS)
    calc.set_config(NatConfig(ME, nat_outgoing_address="172.31.0.1"))
    assert calc.desired(4).chains[nat.CH_NAT_OUTGOING][0].endswith("-j SNAT --to-source 172.31.0.1")
    assert calc.desired(6).chains[nat.CH_NAT_OUTGOING][0].endswith("-j MASQUERADE")


def test_one_to_one_nat_for_local_endpoints_only():
    calc = NatCalculator(NatConfig(ME))
    path, val = ep(ME, "w1", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    assert put(calc, path, val)
    opath, oval = ep("node-b", "w2", [{"int_ip": "10.65.0.6", "ext_ip": "172.31.0.10"}])
    assert not put(calc, opath, oval)
    st = calc.desired(4)
    assert st.chains[nat.CH_FIP_DNAT] == ["-d 172.31.0.9/32 -j DNAT --to-destination 10.65.0.5"]
    assert st.chains[nat.CH_FIP_SNAT] == [
        "-s 10.65.0.5/32 -d 10.65.0.5/32 -j SNAT --to-source 172.31.0.9",
        "-s 10.65.0.5/32 -m set ! --match-set felix-v4-i:all-ipam-pools dst -j SNAT --to-source 172.31.0.9"]
    # FIP SNAT is consulted before NAT outgoing
    assert st.chains[nat.CH_POSTROUTING] == ["-j felix-FIP-SNAT", "-j felix-NAT-OUTGOING"]
    assert calc.desired(6).chains == {}
    assert delete(calc, path)
    assert calc.desired(4).chains == {}


def test_duplicate_ext_ip_keeps_first_and_reports():
    calc = NatCalculator(NatConfig(ME))
    p1, v1 = ep(ME, "w1", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    p2, v2 = ep(ME, "w2", [{"int_ip": "10.65.0.6", "ext_ip": "172.31.0.9"}])
    put(calc, p1, v1)
    put(calc, p2, v2)
    assert calc.desired(4).chains[nat.CH_FIP_DNAT] == ["-d 172.31.0.9/32 -j DNAT --to-destination 10.65.0.5"]
    assert [k for k, _ in calc.take_errors()] == [p2]
    calc.desired(4)
    assert calc.take_errors() == []  # once while it lasts


def test_metadata_dnat_from_workload_interfaces():
    calc = NatCalculator(NatConfig(ME, iface_prefix="tap", metadata_addr="10.0.0.10", metadata_port=8775))
    pre = calc.desired(4).chains[nat.CH_PREROUTING]
    assert pre[0] == ("-d 169.254.169.254/32 -i tap+ -p tcp -m tcp --dport 80 "
                      "-j DNAT --to-destination 10.0.0.10:8775")
    assert pre[-1] == "-j felix-FIP-DNAT"
    assert calc.desired(6).chains == {}
    put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16"})
    calc.set_config(NatConfig(ME))
    assert calc.desired(4).chains[nat.CH_PREROUTING] == ["-j felix-FIP-DNAT"]


def test_bad_values_never_reach_rules():
    calc = NatCalculator(NatConfig(ME))
    path, _ = ep(ME, "w1")
    # values that slipped past the model's validation (defense in depth): unvalidated models
    bad_nat = IpNat.model_construct(int_ip="10.65.0.5 -j ACCEPT", ext_ip="1.2.3.4")
    calc.on_update("put", keys.parse(path), WorkloadEndpoint.model_construct(
        state="active", name="caliw1", ipv4_nets=["10.65.0.5/32"], ipv4_nat=[bad_nat]))
    assert calc.desired(4).chains == {}
    assert calc.take_errors()[0][0] == path
    calc.on_update("put", keys.parse(keys.pool("10.65.0.0/16")), Pool.model_construct(cidr="10.65.0.0/16 -j ACCEPT"))
    assert calc.desired(4).ipsets == {}
    assert calc.take_errors()
    with pytest.raises(ValueError):
        NatCalculator(NatConfig(ME, metadata_addr="169.254.1.1 -j ACCEPT"))
    with pytest.raises(ValueError):
        NatCalculator(NatConfig(ME, iface_prefix="cali -j ACCEPT"))


def test_plain_dicts_are_refused_on_their_key():
    """The calculator takes the syncer's models only: raw JSON never reaches a rule."""
    calc = NatCalculator(NatConfig(ME))
    pool_key = keys.parse(keys.pool("10.65.0.0/16"))
    assert not calc.on_update("put", pool_key, {"cidr": "10.65.0.0/16", "masquerade": True})
    path, val = ep(ME, "w1", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    assert not calc.on_update("put", keys.parse(path), val)
    assert calc.desired(4).chains == {}
    errors = _errors(calc)
    assert set(errors) == {pool_key.path, path} and all("libcalico model" in r for r in errors.values())


def test_chain_names_fit_iptables_and_set_names_pass_the_writer():
    from felix.dataplane.ipsets import IpsetWriter
    from felix.dataplane.iptables import check_chain
    for c in nat.ALL_CHAINS:
        check_chain(c)
    for v in (4, 6):
        for ident in (nat.MASQ_SET_ID, nat.ALL_SET_ID):
            IpsetWriter(v, runner=None).set_members(nat.set_name(v, ident), [])


def _errors(calc: NatCalculator) -> dict[str, str]:
    return dict(calc.take_errors())


def test_int_ip_must_be_the_endpoints_own_address():
    calc = NatCalculator(NatConfig(ME))
    path, val = ep(ME, "w1", [{"int_ip": "10.65.0.99", "ext_ip": "172.31.0.9"}])
    put(calc, path, val)
    assert calc.desired(4).chains == {}
    assert "not one of this endpoint's addresses" in _errors(calc)[path]


@pytest.mark.parametrize("source", ["bird_ip", "bgp_v4"])
def test_ext_ip_may_not_be_a_nodes_address(source):
    calc = NatCalculator(NatConfig(ME))
    node_key = keys.host_bird_ip("node-b") if source == "bird_ip" else keys.bgp_host_ip("node-b", 4)
    calc.on_update("put", keys.parse(node_key), "192.168.50.2")
    path, val = ep(ME, "w1", [{"int_ip": "10.65.0.5", "ext_ip": "192.168.50.2"},
                              {"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    put(calc, path, val)
    assert calc.desired(4).chains == {}, "the whole endpoint's NAT is refused"
    assert "address of node node-b" in _errors(calc)[path]
    # the node goes away: the entry stands again
    assert calc.on_update("delete", keys.parse(node_key), None)
    assert calc.desired(4).chains[nat.CH_FIP_DNAT] == [
        "-d 172.31.0.9/32 -j DNAT --to-destination 10.65.0.5",
        "-d 192.168.50.2/32 -j DNAT --to-destination 10.65.0.5"]


def test_ext_ip_may_not_be_in_a_pool_or_a_protected_or_host_address():
    calc = NatCalculator(NatConfig(ME, protected=frozenset({"10.9.9.9"})))
    put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16"})
    calc.set_host_addrs({"192.168.50.1", "fe80::1"})
    for i, (ext, why) in enumerate([("10.65.0.6", "lies in IP pool"), ("10.9.9.9", "server this host depends on"),
                                    ("192.168.50.1", "address of this host"), ("169.254.169.254", "cannot be"),
                                    ("127.0.0.1", "cannot be")]):
        path, val = ep(ME, f"w{i}", [{"int_ip": "10.65.0.5", "ext_ip": ext}])
        put(calc, path, val)
        assert calc.desired(4).chains.get(nat.CH_FIP_DNAT, []) == [], ext
        assert why in _errors(calc)[path], ext
        delete(calc, path)


def test_claimed_twice_first_created_key_wins_whatever_the_order():
    p_old, v_old = ep("node-b", "old", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    p_new, v_new = ep(ME, "new", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    # the remote endpoint was created first (revision 3), the local one later (7)
    for order in ((p_old, v_old, 3), (p_new, v_new, 7)), ((p_new, v_new, 7), (p_old, v_old, 3)):
        calc = NatCalculator(NatConfig(ME))
        for path, val, rev in order:
            key, v = parse_key_value(path, json.dumps(val))
            calc.on_update("put", key, v, create_revision=rev)
        assert calc.desired(4).chains.get(nat.CH_FIP_DNAT, []) == []
        assert "already claimed by " + p_old in _errors(calc)[p_new]
    # the first claimant gives it up: the local endpoint gets it
    assert delete(calc, p_old)
    assert calc.desired(4).chains[nat.CH_FIP_DNAT] == ["-d 172.31.0.9/32 -j DNAT --to-destination 10.65.0.5"]


def test_without_revisions_the_lower_key_wins():
    p1, v1 = ep(ME, "a", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    p2, v2 = ep(ME, "b", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    calc = NatCalculator(NatConfig(ME))
    put(calc, p2, v2)
    put(calc, p1, v1)
    assert calc.desired(4).chains[nat.CH_FIP_DNAT] == ["-d 172.31.0.9/32 -j DNAT --to-destination 10.65.0.5"]
    assert list(_errors(calc)) == [p2]


def test_an_endpoint_that_lost_its_ip_gets_no_nat_for_it():
    """A later endpoint naming an established workload's IP loses it (the endpoint calculator
    decides); its `int_ip` then is not its own, so its DNAT would deliver to the victim."""
    from felix.calc.calculator import CalcConfig, Calculator

    victim, vval = ep(ME, "w1")
    thief, tval = ep(ME, "w2", [{"int_ip": "10.65.0.5", "ext_ip": "172.31.0.9"}])
    tval["name"] = "cali0w2"
    ends = Calculator(CalcConfig(ME))
    natc = NatCalculator(NatConfig(ME))
    for rev, (path, val) in enumerate(((victim, vval), (thief, tval)), start=10):
        pk, model = parse_key_value(path, json.dumps(val))
        ends.on_update("put", pk, model, create_revision=rev)
        natc.on_update("put", pk, model, create_revision=rev)
    ends.desired()
    assert thief in ends.conflicts
    assert natc.set_losers(ends.conflicts)
    assert natc.desired(4).chains == {}
    assert "belongs to endpoint" in _errors(natc)[thief]
    # the victim goes: the thief is the owner now, and its NAT stands
    ends.on_update("delete", keys.parse(victim), None)
    ends.desired()
    assert natc.set_losers(ends.conflicts)
    assert natc.desired(4).chains[nat.CH_FIP_DNAT] == ["-d 172.31.0.9/32 -j DNAT --to-destination 10.65.0.5"]
