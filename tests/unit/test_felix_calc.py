"""felix.calc: rule rendering, names, and the calculator's desired state (pure, no kernel)."""

from __future__ import annotations

import json

import pytest

from felix import names as N
from felix.calc.rules import MULTIPORT_MAX, RuleError, render_rule, rule_lines, rule_to_dict
from libcalico import keys, models
from tests.lib.calcfeed import CalcFeed

ACCEPT = "-j MARK --set-xmark 0x1000000/0x1000000"


def r(rule: dict, v: int = 4):
    return render_rule(rule, v)


# ---- rules --------------------------------------------------------------------------

def test_allow_all_and_deny():
    assert rule_lines(r({})) == [ACCEPT, "-m mark --mark 0x1000000/0x1000000 -j RETURN"]
    assert rule_lines(r({"action": "deny"})) == ["-j DROP"]
    assert rule_lines(r({"action": "log", "log_prefix": "hi:"})) == ["-j LOG --log-prefix \"hi:\""]
    assert rule_lines(r({"action": "next-tier"})) == ["-j RETURN"]


def test_nets_protocol_and_negation():
    rr = r({"protocol": "tcp", "src_net": "10.0.0.0/8", "!dst_net": "10.1.0.0/16"})
    assert rr.matches == ("-s 10.0.0.0/8 ! -d 10.1.0.0/16 -p tcp",)
    assert r({"!protocol": "udp"}).matches == ("! -p udp",)
    assert r({"protocol": 132}).matches == ("-p 132",)
    assert r({"protocol": "icmpv6"}, 6).matches == ("-p ipv6-icmp",)


def test_family_filtering():
    assert r({"src_net": "fd00::/64"}, 4).matches == ()
    assert r({"src_net": "fd00::/64"}, 6).matches == ("-s fd00::/64",)
    assert r({"ip_version": 6}, 4).matches == ()
    assert r({"protocol": "icmp"}, 6).matches == ()
    assert r({"protocol": "icmpv6"}, 4).matches == ()


def test_tags_use_family_ipsets():
    assert r({"src_tag": "web"}, 4).matches == ("-m set --match-set felix-v4-web src",)
    assert r({"!dst_tag": "web"}, 6).matches == ("-m set ! --match-set felix-v6-web dst",)


def test_ports_and_ranges_split_at_multiport_limit():
    ports = list(range(1, 21)) + ["100:200"]
    rr = r({"protocol": "tcp", "dst_ports": ports})
    assert len(rr.dst) == 2 and not rr.inline
    assert len(rr.dst[0].split(",")) == MULTIPORT_MAX
    assert rr.dst[1] == "16,17,18,19,20,100:200"
    # a few negated groups stay ANDed on the rule's one line
    neg = r({"protocol": "udp", "!src_ports": list(range(1, 31))})
    assert len(neg.matches) == 1 and neg.matches[0].count("! --sports") == 2
    # src x dst groups add up (sub-chains), they do not multiply: see test_felix_rule_lists.py
    both = r({"protocol": "tcp", "src_ports": list(range(1, 17)), "dst_ports": list(range(1, 17))})
    assert (len(both.src), len(both.dst)) == (2, 2) and not both.inline


def test_icmp_type_code():
    assert r({"protocol": "icmp", "icmp_type": 8}).matches == ("-p icmp -m icmp --icmp-type 8",)
    assert r({"protocol": "icmp", "icmp_type": 3, "icmp_code": 1}).matches == ("-p icmp -m icmp --icmp-type 3/1",)
    assert r({"protocol": "icmpv6", "!icmp_type": 128}, 6).matches == (
        "-p ipv6-icmp -m icmp6 ! --icmpv6-type 128",)


@pytest.mark.parametrize("rule", [
    {"action": "explode"}, {"protocol": "tcpp"}, {"protocol": 0}, {"protocol": 256}, {"protocol": True},
    {"src_net": "10.0.0.0/33"}, {"src_net": "10.0.0.0/8; -j ACCEPT"}, {"src_tag": "a b"},
    {"src_tag": "x\n-A INPUT -j ACCEPT"}, {"dst_ports": [80]}, {"protocol": "icmp", "dst_ports": [80]},
    {"protocol": "tcp", "dst_ports": [70000]}, {"protocol": "tcp", "dst_ports": ["9:1"]},
    {"protocol": "tcp", "dst_ports": ["1-2"]}, {"protocol": "tcp", "dst_ports": []},
    {"protocol": "tcp", "dst_ports": "80"}, {"icmp_type": 8}, {"protocol": "icmp", "icmp_code": 1},
    {"protocol": "icmp", "icmp_type": 255}, {"action": "log", "log_prefix": 'a"b'},
    {"ip_version": 5}, {"src_selector": "a == 'b'"},
])
def test_invalid_rules_raise(rule):
    with pytest.raises(RuleError):
        for v in (4, 6):
            render_rule(rule, v)


def test_rule_model_roundtrip():
    k = keys.parse("/calico/v1/policy/profile/p/rules")
    m = models.parse_value(k, json.dumps({"inbound_rules": [
        {"action": "allow", "protocol": "tcp", "!src_net": "10.0.0.0/8", "dst_ports": [80, "90:95"]}]}))
    d = rule_to_dict(m.inbound_rules[0])
    assert d["!src_net"] == "10.0.0.0/8" and d["protocol"] == "tcp"
    assert r(d).matches == ("! -s 10.0.0.0/8 -p tcp -m multiport --dports 80,90:95",)


# ---- names --------------------------------------------------------------------------

def test_names_fit_and_do_not_collide():
    long_a, long_b = "p" * 40 + "a", "p" * 40 + "b"
    names = {N.profile_chain(x, d) for x in ("a", "a-i", long_a, long_b) for d in ("i", "o")}
    assert len(names) == 8 and all(len(n) <= 28 for n in names)
    assert N.profile_chain("pbar", "i") == "felix-p-pbar-i"
    assert N.endpoint_chain("from", "cali123456789ab") == "felix-from-cali123456789ab"
    assert N.tag_ipset("t" * 40, 4) != N.tag_ipset("t" * 41, 4)
    assert all(len(N.tag_ipset(t, 6)) <= 31 for t in ("x", "t" * 100))


# ---- calculator ---------------------------------------------------------------------

class Feed(CalcFeed):
    def ep(self, host, wl, iface, ip, profiles, **kw):
        doc = {"state": "active", "name": iface, "profile_ids": profiles, "ipv4_nets": [f"{ip}/32"]}
        doc.update(kw)
        self.put(f"/calico/v1/host/{host}/workload/k8s/{wl}/endpoint/eth0", doc)

    def profile(self, pid, inbound=None, outbound=None, tags=None):
        self.put(f"/calico/v1/policy/profile/{pid}/rules",
                 {"inbound_rules": inbound or [], "outbound_rules": outbound or []})
        if tags is not None:
            self.put(f"/calico/v1/policy/profile/{pid}/tags", tags)


def test_local_endpoint_chains_routes_and_dispatch():
    f = Feed()
    f.profile("p", [{"action": "allow"}], [{"action": "allow"}])
    f.ep("h1", "w1", "cali1", "10.0.0.1", ["p"], mac="EE:EE:EE:EE:EE:01", ipv6_nets=["fd00::1/128"])
    f.ep("h2", "w2", "cali2", "10.0.0.2", ["p"])            # another host's: not programmed here
    d = f.c.desired()
    assert d.routes == {"cali1": frozenset({"10.0.0.1/32", "fd00::1/128"})}
    assert d.neighbours == {"cali1": {"10.0.0.1": "ee:ee:ee:ee:ee:01", "fd00::1": "ee:ee:ee:ee:ee:01"}}
    ch = d.v4.chains
    assert ch[N.FROM_ENDPOINT] == ["-i cali1 -g felix-from-cali1", "-j DROP"]
    assert ch[N.TO_ENDPOINT] == ["-o cali1 -g felix-to-cali1", "-j DROP"]
    frm = ch["felix-from-cali1"]
    assert "-m mac ! --mac-source ee:ee:ee:ee:ee:01 -j DROP" in frm
    assert "! -s 10.0.0.1/32 -j DROP" in frm
    assert frm[-3:] == ["-j felix-p-p-o", "-m mark --mark 0x1000000/0x1000000 -j RETURN", "-j DROP"]
    assert ch["felix-to-cali1"][-1] == "-j DROP" and "-j felix-p-p-i" in ch["felix-to-cali1"]
    assert "! -s fd00::1/128 -j DROP" in d.v6.chains["felix-from-cali1"]
    assert d.v4.hooks == {"INPUT": ["-j felix-INPUT"], "FORWARD": ["-j felix-FORWARD"],
                          "OUTPUT": ["-j felix-OUTPUT"]}
    assert not any("cali2" in c for c in ch)


def test_multiple_nets_antispoof_and_no_nets_in_family():
    f = Feed()
    f.ep("h1", "w1", "cali1", "10.0.0.1", [], ipv4_nets=["10.0.0.1/32", "10.0.1.7/32"])
    d = f.c.desired()
    frm = d.v4.chains["felix-from-cali1"]
    assert "-s 10.0.1.7/32 -j MARK --set-xmark 0x2000000/0x2000000" in frm
    assert "-m mark ! --mark 0x2000000/0x2000000 -j DROP" in frm
    assert "-j DROP" in d.v6.chains["felix-from-cali1"][:3], "no v6 nets: all v6 from it dropped"


def test_inactive_endpoint_and_missing_profile_drop():
    f = Feed()
    f.ep("h1", "w1", "cali1", "10.0.0.1", ["nosuch"])
    f.ep("h1", "w2", "cali2", "10.0.0.2", ["nosuch"], state="inactive")
    d = f.c.desired()
    assert d.v4.chains["felix-to-cali1"] == ["-j MARK --set-xmark 0x0/0x1000000", "-j DROP"]
    assert d.v4.chains["felix-to-cali2"] == ["-j DROP"] == d.v4.chains["felix-from-cali2"]
    assert not any(c.startswith("felix-p-") for c in d.v4.chains)


def test_endpoint_to_host_action():
    for action, last in (("DROP", "-i cali+ -j DROP"), ("ACCEPT", "-i cali+ -j ACCEPT"),
                         ("RETURN", "-i cali+ -j felix-FROM-ENDPOINT")):
        d = Feed(endpoint_to_host_action=action).c.desired()
        assert d.v4.chains[N.INPUT][-1] == last


def test_live_config_change_rerenders_what_depends_on_it():
    from felix.calc import CalcConfig
    f = Feed()
    f.ep("h1", "w1", "cali1", "10.0.0.1", [])
    before = f.c.desired()
    assert not f.c.set_config(CalcConfig("h1"))
    assert f.c.desired().v4.chains[N.INPUT] == before.v4.chains[N.INPUT]
    assert f.c.set_config(CalcConfig("h1", endpoint_to_host_action="ACCEPT"))
    after = f.c.desired()
    assert after.v4.chains[N.INPUT][-1] == "-i cali+ -j ACCEPT"
    assert after.v4.chains["felix-to-cali1"] is before.v4.chains["felix-to-cali1"]


def test_tags_become_cluster_wide_ipsets():
    f = Feed()
    f.profile("web", [{"action": "allow", "src_tag": "db"}], [], tags=["web"])
    f.profile("db", [], [], tags=["db"])
    f.profile("unused", [{"src_tag": "nobody"}], [])
    f.ep("h1", "w1", "cali1", "10.0.0.1", ["web"])
    f.ep("h2", "w2", "cali2", "10.0.0.2", ["db"], ipv6_nets=["fd00::2/128"])
    f.ep("h3", "w3", "cali3", "10.0.0.3", ["db"])
    d = f.c.desired()
    assert d.v4.ipsets == {"felix-v4-db": frozenset({"10.0.0.2/32", "10.0.0.3/32"})}
    assert d.v6.ipsets == {"felix-v6-db": frozenset({"fd00::2/128"})}
    f.delete("/calico/v1/host/h3/workload/k8s/w3/endpoint/eth0")
    f.put("/calico/v1/policy/profile/web/tags", ["web", "db"])     # local endpoint now carries db too
    assert f.c.desired().v4.ipsets["felix-v4-db"] == frozenset({"10.0.0.1/32", "10.0.0.2/32"})
    f.delete("/calico/v1/policy/profile/web/rules")
    d = f.c.desired()
    assert d.v4.ipsets == {} and not any(c.startswith("felix-p-") for c in d.v4.chains)


def test_invalid_keys_are_absent_and_reported_once():
    f = Feed()
    f.profile("p", [{"action": "allow"}], [{"action": "allow"}])
    f.ep("h1", "w1", "cali1", "10.0.0.1", ["p"])
    f.ep("h1", "w2", "tap0", "10.0.0.2", ["p"])                # wrong prefix
    f.ep("h1", "w3", "cali1", "10.0.0.3", ["p"])               # interface already taken
    errs = f.c.take_errors()
    assert {k for k, _ in errs} == {"/calico/v1/host/h1/workload/k8s/w2/endpoint/eth0",
                                    "/calico/v1/host/h1/workload/k8s/w3/endpoint/eth0"}
    assert "InterfacePrefix" in dict(errs)["/calico/v1/host/h1/workload/k8s/w2/endpoint/eth0"]
    f.ep("h1", "w2", "tap0", "10.0.0.2", ["p"])                # same error again: not re-reported
    assert f.c.take_errors() == []
    d = f.c.desired()
    assert set(d.routes) == {"cali1"} and d.routes["cali1"] == frozenset({"10.0.0.1/32"})
    # a profile turning invalid drops its chain; the endpoint then drops everything
    f.put("/calico/v1/policy/profile/p/rules", '{"inbound_rules": [{"action": "nope"}]}')
    d = f.c.desired()
    assert "felix-p-p-i" not in d.v4.chains and d.v4.chains["felix-to-cali1"][-1] == "-j DROP"
    assert "-j felix-p-p-i" not in d.v4.chains["felix-to-cali1"]


def test_unchanged_chains_are_the_same_objects():
    f = Feed()
    f.profile("p", [{"action": "allow"}], [{"action": "allow"}])
    for i in range(5):
        f.ep("h1", f"w{i}", f"cali{i}", f"10.0.0.{i + 1}", ["p"])
    d1 = f.c.desired()
    f.ep("h1", "w9", "cali9", "10.0.0.99", ["p"])
    d2 = f.c.desired()
    assert d2.v4.chains["felix-to-cali1"] is d1.v4.chains["felix-to-cali1"]
    assert d2.v4.chains["felix-p-p-i"] is d1.v4.chains["felix-p-p-i"]
    assert "felix-to-cali9" in d2.v4.chains and d2.v4.chains[N.TO_ENDPOINT] != d1.v4.chains[N.TO_ENDPOINT]


def test_endpoint_removal_removes_everything():
    f = Feed()
    f.profile("p", [{"action": "allow"}], [], tags=["t"])
    f.ep("h1", "w1", "cali1", "10.0.0.1", ["p"], mac="ee:ee:ee:ee:ee:01")
    f.delete("/calico/v1/host/h1/workload/k8s/w1/endpoint/eth0")
    d = f.c.desired()
    assert d.routes == {} and d.neighbours == {} and d.v4.ipsets == {}
    assert set(d.v4.chains) == set(N.BASE_CHAINS)


def test_ipv6_disabled():
    f = Feed(ipv6=False)
    f.ep("h1", "w1", "cali1", "10.0.0.1", [], ipv6_nets=["fd00::1/128"])
    d = f.c.desired()
    assert d.v6.chains == {} and d.routes["cali1"] == frozenset({"10.0.0.1/32"})


# ---- dispatch tree ------------------------------------------------------------------

def _walk(chains: dict[str, list[str]], root: str, iface: str) -> str:
    """Follow `-i name` / `-i prefix+` gotos like iptables does; returns the verdict or endpoint chain."""
    chain = root
    for _ in range(50):
        for rule in chains[chain]:
            parts = rule.split()
            if parts[0] == "-j":
                return parts[1]
            match, target = parts[1], parts[3]
            hit = iface.startswith(match[:-1]) if match.endswith("+") else iface == match
            if hit:
                if target in chains:
                    chain = target
                    break
                return target
        else:
            return "FELL-OFF"
    raise AssertionError("dispatch loop")


@pytest.mark.parametrize("n", [0, 1, 16, 17, 300, 1000])
def test_dispatch_tree_reaches_every_endpoint_and_drops_unknown(n):
    from felix.calc.calculator import DISPATCH_LEAF, dispatch_chains

    ifaces = tuple(sorted({f"cali{i:011x}" for i in range(n)} | ({"cali1", "cali10", "cali1a"} if n else set())))
    chains = dispatch_chains("from", ifaces, "cali")
    for i in ifaces:
        assert _walk(chains, N.FROM_ENDPOINT, i) == N.endpoint_chain("from", i)
    for unknown in ("cali00000000fff0", "cali2", "cali1b", "cali0000000000", "cali"):
        if unknown not in ifaces:
            assert _walk(chains, N.FROM_ENDPOINT, unknown) == "DROP", unknown
    assert all(len(r) <= DISPATCH_LEAF + 17 for r in chains.values())
    assert all(len(c) <= 28 for c in chains)


def test_dispatch_one_new_endpoint_touches_few_chains():
    from felix.calc.calculator import dispatch_chains

    before = dispatch_chains("to", tuple(f"cali{i:011x}" for i in range(1000)), "cali")
    after = dispatch_chains("to", tuple(f"cali{i:011x}" for i in range(1001)), "cali")
    changed = [c for c in after if before.get(c) != after[c]]
    assert 1 <= len(changed) <= 3 and all(len(after[c]) <= 18 for c in changed)


@pytest.mark.parametrize("net", ["0.0.0.0/0", "127.0.0.1/32", "224.0.0.5/32", "169.254.1.1/32", "0.0.0.0/32"])
def test_endpoint_nets_that_would_hijack_host_routing_are_refused(net):
    f = Feed()
    f.ep("h1", "w1", "cali1", "10.0.0.1", [], ipv4_nets=[net])
    assert f.c.desired().routes == {}
    (key, reason), = f.c.take_errors()
    assert key.endswith("/w1/endpoint/eth0") and net.split("/")[0] in reason


def test_v6_link_local_and_default_refused():
    for net in ("::/0", "fe80::1/128", "ff02::1/128", "::1/128"):
        f = Feed()
        f.ep("h1", "w1", "cali1", "10.0.0.1", [], ipv6_nets=[net])
        assert f.c.desired().routes == {} and f.c.take_errors()
