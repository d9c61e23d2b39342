"""felix.calc.hostendpoints: host endpoint chains, failsafe ports, interface resolution (pure)."""

from __future__ import annotations

import pytest

from felix import names as N
from felix.calc import CalcConfig
from felix.calc.hostendpoints import failsafe_lines, host_chain
from felix.calc.policy import policy_chain
from tests.unit.test_felix_policy import Feed

HEP = "/calico/v1/host/h1/endpoint/"


@pytest.fixture
def f():
    f = Feed()
    f.put("/calico/v1/policy/profile/open/rules",
          {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})
    return f


def test_failsafe_lines_grouped_per_protocol():
    lines = failsafe_lines("-i", "eth0", (("tcp", 22), ("udp", 68), ("tcp", 179), ("tcp", 22)))
    assert lines == ["-i eth0 -p tcp -m multiport --dports 22,179 -j ACCEPT",
                     "-i eth0 -p udp -m multiport --dports 68 -j ACCEPT"]
    assert len(failsafe_lines("-o", "x", tuple(("tcp", p) for p in range(1, 20)))) == 2
    with pytest.raises(ValueError):
        failsafe_lines("-i", "x", (("icmp", 1),))


def test_no_host_endpoint_leaves_host_chains_alone(f):
    f.ep(1, {})
    d = f.c.desired()
    assert d.v4.chains[N.OUTPUT] == []
    assert not any("felix-h" in c for c in d.v4.chains)


def test_host_endpoint_deny_all_keeps_failsafe_before_policy(f):
    f.ep(1, {})
    base_input = list(f.c.desired().v4.chains[N.INPUT])
    f.tier("t", 1)
    f.policy("t", "deny", "hep == 'yes'", inbound=[{"action": "deny"}], outbound=[{"action": "deny"}])
    f.put(HEP + "eth0", {"name": "eth0", "labels": {"hep": "yes"}})
    d = f.c.desired()
    inp = d.v4.chains[N.INPUT]
    assert inp[:len(base_input)] == base_input          # workload lines first, unchanged
    extra = inp[len(base_input):]
    ssh = extra.index("-i eth0 -p tcp -m multiport --dports 22,179,2379,2380 -j ACCEPT")
    assert extra.index("-i eth0 -p udp -m multiport --dports 68 -j ACCEPT") < extra.index(
        "-i eth0 -j felix-hi-eth0")
    assert ssh < extra.index("-i eth0 -j felix-hi-eth0")
    out = d.v4.chains[N.OUTPUT]
    assert "-o eth0 -p udp -m multiport --dports 53,67 -j ACCEPT" in out
    assert out[-1] == "-o eth0 -j felix-ho-eth0"
    fwd = d.v4.chains[N.FORWARD]
    assert fwd.index("-o cali+ -j ACCEPT") < fwd.index("-i eth0 -j felix-hi-eth0")
    hi = d.v4.chains[host_chain("i", "eth0")]
    assert f"-m mark --mark 0x0/0x4000000 -j {policy_chain('t', 'deny', 'i')}" in hi
    assert hi[-1] == "-j DROP"
    assert d.v4.chains[policy_chain("t", "deny", "i")] == ["-j DROP"]
    # v6 is rendered too, with neighbour discovery kept open
    f.c.cfg = CalcConfig(hostname="h1", ipv6=True)
    d6 = f.c.desired().v6
    assert "-i eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in d6.chains[N.INPUT]
    # removal restores the core chains exactly
    f.delete(HEP + "eth0")
    f.c.cfg = CalcConfig(hostname="h1", ipv6=False)
    d = f.c.desired()
    assert d.v4.chains[N.INPUT] == base_input and d.v4.chains[N.OUTPUT] == []
    assert host_chain("i", "eth0") not in d.v4.chains


def test_host_endpoint_without_policy_drops_and_profile_allows(f):
    f.put("/calico/v1/policy/profile/onlyhost/rules",
          {"inbound_rules": [{"action": "allow", "src_tag": "friends"}], "outbound_rules": []})
    f.put(HEP + "e", {"name": "eth1"})
    d = f.c.desired()
    assert d.v4.chains[host_chain("i", "eth1")] == ["-j MARK --set-xmark 0x0/0x1000000", "-j DROP"]
    f.put(HEP + "e", {"name": "eth1", "profile_ids": ["onlyhost"]})
    d = f.c.desired()
    assert f"-j {N.profile_chain('onlyhost', 'i')}" in d.v4.chains[host_chain("i", "eth1")]
    # the profile is used by no workload: its chains and tag ipset come with the host endpoint
    assert N.profile_chain("onlyhost", "i") in d.v4.chains
    assert N.tag_ipset("friends", 4) in d.v4.ipsets


def test_custom_failsafe_ports(f):
    f.c.cfg = CalcConfig(hostname="h1", ipv6=False, failsafe_inbound=(("tcp", 2222),), failsafe_outbound=())
    f.put(HEP + "e", {"name": "eth1"})
    d = f.c.desired()
    assert "-i eth1 -p tcp -m multiport --dports 2222 -j ACCEPT" in d.v4.chains[N.INPUT]
    assert not any("--dports" in x for x in d.v4.chains[N.OUTPUT])


def test_expected_ip_resolution_and_conflicts(f):
    f.put(HEP + "byip", {"expected_ipv4_addrs": ["192.0.2.5"], "labels": {"a": "b"}})
    assert f.c.policy.hosts.needs_addrs()
    assert not any(c.startswith("felix-h") for c in f.c.desired().v4.chains)
    assert f.c.policy.hosts.set_interface_addrs({"ens3": {"192.0.2.5"}, "lo": {"127.0.0.1"}})
    assert host_chain("i", "ens3") in f.c.desired().v4.chains
    # a second endpoint on the same interface is ignored; a workload interface is refused
    f.put(HEP + "zz", {"name": "ens3"})
    f.put(HEP + "wl", {"name": "cali123"})
    d = f.c.desired()
    assert host_chain("i", "cali123") not in d.v4.chains
    assert sum(1 for x in d.v4.chains[N.INPUT] if x == "-i ens3 -j felix-hi-ens3") == 1
    # another host's endpoint: indexed for selectors, no chains here
    f.put("/calico/v1/host/other/endpoint/x", {"name": "eth9", "expected_ipv4_addrs": ["198.51.100.1"],
                                               "labels": {"role": "gw"}})
    assert host_chain("i", "eth9") not in f.c.desired().v4.chains
    f.ep(1, {})
    f.tier("t", 1)
    f.policy("t", "p", "all()", inbound=[{"action": "allow", "src_selector": "role == 'gw'"}])
    from libcalico.selectors import parse_selector
    name = N.selector_ipset(parse_selector("role == 'gw'").unique_id, 4)
    assert f.c.desired().v4.ipsets[name] == {"198.51.100.1"}


def test_invalid_host_endpoint_is_reported(f):
    f.put(HEP + "bad", {"name": "eth0; rm -rf /"})
    assert HEP + "bad" in f.c.errors
    f.put(HEP + "bad2", {"name": "eth0", "expected_ipv4_addrs": ["not-an-ip"]})
    assert HEP + "bad2" in f.c.errors
    assert not any(c.startswith("felix-h") for c in f.c.desired().v4.chains)


def test_parse_ip_addr():
    from felix.hostaddrs import parse_ip_addr
    text = ("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
            "4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\  x\n"
            "4: eth0    inet6 fe80::1/64 scope link \\  x\n"
            "5: veth1@if6    inet 10.0.0.1/24 scope global veth1\n")
    assert parse_ip_addr(text) == {"lo": {"127.0.0.1"}, "eth0": {"192.0.2.2", "fe80::1"},
                                   "veth1": {"10.0.0.1"}}
