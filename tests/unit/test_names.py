"""felix.names: user-derived chain/ipset names never meet Felix's own, whatever the id."""

from __future__ import annotations

import pytest

from felix import names
from felix.calc import nat
from felix.calc.nodes import NodeAddresses
from felix.dataplane.ipsets import IpsetWriter
from felix.dataplane.iptables import MAX_CHAIN_LEN, check_chain
from libcalico import keys

INTERNAL_CHAINS = set(names.BASE_CHAINS) | set(nat.ALL_CHAINS)
INTERNAL_SETS = {nat.set_name(v, i) for v in (4, 6) for i in (nat.MASQ_SET_ID, nat.ALL_SET_ID)}


def _hostile_ids() -> list[str]:
    """Ids spelled like internal names, their tails, hashed-looking forms, and long ones."""
    out = {"masq-ipam-pools", "all-ipam-pools", "i:masq-ipam-pools", "s:abc", "_tmp", "_", "x" * 80}
    for name in INTERNAL_CHAINS | INTERNAL_SETS:
        for cut in range(len(name)):
            out.add(name[cut:])
    for name in [names.tag_ipset("t" * 40, 4), names.chain_name("felix-to-", "y" * 40)]:
        out.add(name.split("-", 2)[-1])
    return sorted(out)


@pytest.mark.parametrize("ident", _hostile_ids())
def test_user_ids_never_spell_an_internal_name(ident):
    user_sets = {names.tag_ipset(ident, v) for v in (4, 6)} | {names.selector_ipset(ident, v) for v in (4, 6)}
    assert not user_sets & INTERNAL_SETS
    assert not {s for s in user_sets if s.endswith("-_tmp")}, "the ipset writer's scratch set"
    user_chains = {names.endpoint_chain(d, ident) for d in ("to", "from")} \
        | {names.dispatch_chain(d, ident) for d in ("to", "from")} \
        | {names.profile_chain(ident, d) for d in ("i", "o")} \
        | {names.host_endpoint_chain(d, ident) for d in ("i", "o")} \
        | {names.policy_chain(ident, "p", d) for d in ("i", "o")}
    assert not user_chains & INTERNAL_CHAINS
    for c in user_chains:
        assert len(c) <= MAX_CHAIN_LEN
        check_chain(c)
    for s in user_sets:
        IpsetWriter(4 if "-v4-" in s else 6, runner=None).set_members(s, [])


def test_tag_and_selector_namespaces_stay_apart():
    # a tag spelled like a selector's body, and hashed forms of different namespaces
    assert names.tag_ipset("s:abc", 4) != names.selector_ipset("abc", 4)
    assert names.tag_ipset("x" * 40, 4) != names.selector_ipset("x" * 40, 4)
    assert names.tag_ipset("x" * 40, 4) != names.internal_ipset("x" * 5, 4)
    assert nat.set_name(4, nat.MASQ_SET_ID) == "felix-v4-i:masq-ipam-pools"
    assert names.tag_ipset("masq-ipam-pools", 4) == "felix-v4-masq-ipam-pools"
    with pytest.raises(ValueError):
        names.chain_name("felix-TO-", "x")   # upper case after felix- is the internal namespace
    with pytest.raises(ValueError):
        names.internal_ipset("Bad:id", 4)


def test_node_addresses_follow_every_source():
    n = NodeAddresses()
    assert n.on_update("put", keys.parse(keys.host_bird_ip("b")), "192.168.50.2")
    assert n.on_update("put", keys.parse(keys.bgp_host_ip("b", 4)), "192.168.50.2")
    assert n.on_update("put", keys.parse(keys.bgp_host_ip("c", 6)), "fd00::3")
    assert n.on_update("put", keys.parse(keys.host_config("d", "IpInIpTunnelAddr")), "10.65.3.1")
    assert not n.on_update("put", keys.parse(keys.host_config("d", "LogSeverityScreen")), "debug")
    assert n.owner("192.168.50.2") == "b" and n.owner("fd00:0::3") == "c" and n.is_node_address("10.65.3.1")
    # one of two sources gone: still b's address; both gone: nobody's
    n.on_update("delete", keys.parse(keys.host_bird_ip("b")), None)
    assert n.owner("192.168.50.2") == "b"
    n.on_update("delete", keys.parse(keys.bgp_host_ip("b", 4)), None)
    assert n.owner("192.168.50.2") is None
    n.on_update("put", keys.parse(keys.bgp_host_ip("c", 6)), "")
    assert not n.is_node_address("fd00::3")
    n.on_update("put", keys.parse(keys.host_bird_ip("e")), "not an ip")
    assert n.take_errors() and n.addresses() == frozenset({"10.65.3.1"})
