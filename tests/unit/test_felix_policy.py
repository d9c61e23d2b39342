"""felix.calc.policy: tier ordering, next-tier, selector ipsets, through the real Calculator.

The chains the calculator emits are walked by a tiny interpreter of the
subset of iptables they use (marks, match-set, jumps), so these tests check
the verdicts, not just the text; the integration tests prove the same with
real packets.
"""

from __future__ import annotations

import re

import pytest

from felix import names as N
from felix.calc.policy import MARK_NEXT_TIER, policy_chain, tier_layout
from libcalico.selectors import parse_selector
from tests.lib.calcfeed import CalcFeed

H = "h1"


class Feed(CalcFeed):
    def __init__(self):
        super().__init__(H, ipv6=False)

    def ep(self, n, labels, profiles=("open",), host=H):
        self.put(f"/calico/v1/host/{host}/workload/o/w{n}/endpoint/e{n}",
                 {"state": "active", "name": f"cali{n}", "profile_ids": list(profiles),
                  "ipv4_nets": [f"10.0.0.{n}/32"], "labels": labels})

    def tier(self, name, order):
        self.put(f"/calico/v1/policy/tier/{name}/metadata", {"order": order})

    def policy(self, tier, name, selector, order=None, inbound=(), outbound=()):
        doc = {"selector": selector, "inbound_rules": list(inbound), "outbound_rules": list(outbound)}
        if order is not None:
            doc["order"] = order
        self.put(f"/calico/v1/policy/tier/{tier}/policy/{name}", doc)


_LINE = re.compile(r"(?P<m>.*?)\s*-([jg]) (?P<t>\S+)(?P<rest>.*)")


def walk(desired, chain: str, src: str, v: int = 4) -> str:
    """Verdict of `chain` for a packet from `src`: 'ACCEPT' (returned with the accept mark),
    'DROP', 'RETURN' (no verdict).  Supports the matches the policy/profile chains use."""
    fs = desired.family(v)
    mark = [0]

    def matches(m: str) -> bool:
        for neg, val, mask in re.findall(r"-m mark (! )?--mark (0x[0-9a-f]+)/(0x[0-9a-f]+)", m):
            ok = (mark[0] & int(mask, 16)) == int(val, 16)
            if ok == bool(neg):
                return False
        for neg, name, d in re.findall(r"-m set (! )?--match-set (\S+) (src|dst)", m):
            assert d == "src", "test only models source matches"
            members = {x.split("/")[0] for x in fs.ipsets[name]}
            if (src in members) == bool(neg):
                return False
        for neg, net in re.findall(r"(! )?-s (\S+)", m):
            if (src == net.split("/")[0]) == bool(neg):
                return False
        rest = re.sub(r"-m (mark|set) (! )?--(mark|match-set) \S+( src| dst)?", "", m)
        rest = re.sub(r"(! )?-s \S+", "", rest).strip()
        assert rest == "", f"interpreter does not model {rest!r}"
        return True

    def run(name: str) -> str:
        for line in fs.chains[name]:
            mo = _LINE.match(line)
            assert mo, line
            if not matches(mo.group("m")):
                continue
            t, rest = mo.group("t"), mo.group("rest")
            if t == "MARK":
                val, mask = re.search(r"--set-xmark (0x[0-9a-f]+)/(0x[0-9a-f]+)", rest).groups()
                mark[0] = (mark[0] & ~int(mask, 16)) | int(val, 16)
            elif t in ("DROP", "ACCEPT"):
                return t
            elif t == "RETURN":
                return "RETURN"
            elif t == "LOG":
                continue
            else:
                r = run(t)
                if r in ("DROP", "ACCEPT"):
                    return r
                if mo.group(2) == "g":
                    return "RETURN"
        return "RETURN"

    r = run(chain)
    if r == "RETURN" and mark[0] & 0x1000000:
        return "ACCEPT"
    return r


def verdict(f: Feed, n: int, src_n: int, direction: str = "to") -> str:
    """Traffic to endpoint n from 10.0.0.<src_n>; direction 'from': traffic leaving n (src_n = n)."""
    return walk(f.c.desired(), N.endpoint_chain(direction, f"cali{n}"), f"10.0.0.{src_n}")


@pytest.fixture
def f():
    f = Feed()
    f.put("/calico/v1/policy/profile/open/rules",
          {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})
    return f


def test_tier_layout_text():
    lines = tier_layout((("t1", "a"), ("t1", "b"), ("t2", "c")), "i")
    assert lines[0] == f"-j MARK --set-xmark 0x0/{MARK_NEXT_TIER}"
    assert lines[1] == f"-m mark --mark 0x0/{MARK_NEXT_TIER} -j {policy_chain('t1', 'a', 'i')}"
    assert lines.count(f"-m mark --mark 0x0/{MARK_NEXT_TIER} -j DROP") == 2
    assert tier_layout((), "o") == []
    assert policy_chain("t", "p", "i").startswith("felix-pi-") and len(policy_chain("t" * 60, "p", "o")) <= 28


def test_deny_policy_overrides_allow_profile_and_relabel_lifts_it(f):
    f.ep(1, {"role": "web"})
    f.ep(2, {"role": "db"})
    assert verdict(f, 2, 1) == "ACCEPT"
    f.tier("t", 10)
    f.policy("t", "dbdeny", "role == 'db'", 1, inbound=[{"action": "deny", "src_selector": "has(role)"}],
             outbound=[{"action": "next-tier"}])
    assert verdict(f, 2, 1) == "DROP"
    assert verdict(f, 2, 9) == "DROP"           # no match in a tier with a matching policy: deny
    assert verdict(f, 2, 2, "from") == "ACCEPT"  # next-tier, then the profile
    assert verdict(f, 1, 2) == "ACCEPT"         # policy does not select role=web
    uid = parse_selector("has(role)").unique_id
    assert f.c.desired().v4.ipsets[N.selector_ipset(uid, 4)] == {"10.0.0.1/32", "10.0.0.2/32"}
    f.ep(2, {"role": "cache"})
    assert verdict(f, 2, 1) == "ACCEPT"
    # the policy no longer applies to any local endpoint: its chains and ipset go
    d = f.c.desired()
    assert policy_chain("t", "dbdeny", "i") not in d.v4.chains
    assert N.selector_ipset(uid, 4) not in d.v4.ipsets


def test_three_tiers_ordering_and_next_tier(f):
    for n, labels in ((1, {"app": "a"}), (2, {"app": "b", "env": "prod"}), (3, {"app": "c"}),
                      (4, {"app": "d", "env": "dev"})):
        f.ep(n, labels)
    f.tier("first", 1)
    f.tier("second", 2)
    f.tier("last", "default")
    # first: endpoint 4 is passed on; endpoint 2 gets allow from 1 only, else next-tier
    f.policy("first", "p1", "env == 'prod'", 1,
             inbound=[{"action": "allow", "src_selector": "app == 'a'"}, {"action": "next-tier"}])
    f.policy("first", "p2", "has(env)", 2, inbound=[{"action": "next-tier"}])
    # second: deny from app c to prod; anything else with env goes on
    f.policy("second", "s1", "has(env) && env in {'prod', 'dev'}", 1,
             inbound=[{"action": "deny", "src_selector": "app == 'c'"}, {"action": "next-tier"}])
    # last: deny everything to dev (but p1 in the first tier allowed from app a already for prod)
    f.policy("last", "l1", "env == 'dev' || app == 'zzz'", inbound=[{"action": "deny"}])
    assert verdict(f, 2, 1) == "ACCEPT"     # first tier allow
    assert verdict(f, 2, 3) == "DROP"       # p1 next-tier -> second tier deny from c
    assert verdict(f, 2, 4) == "ACCEPT"     # next-tier twice, last tier has no policy for prod -> profile
    assert verdict(f, 4, 1) == "DROP"       # last tier deny
    assert verdict(f, 1, 2) == "ACCEPT"     # no env: no policy at all
    # reorder: last becomes first; its deny now wins for endpoint 4 before anything else
    f.tier("last", 0)
    assert verdict(f, 4, 1) == "DROP"
    # a negated selector: everything except app a gets a deny-from-b tier
    f.tier("neg", 5)
    f.policy("neg", "n1", "!(app == 'a')", inbound=[{"action": "deny", "src_selector": "app == 'b'"},
                                                    {"action": "next-tier"}])
    assert verdict(f, 3, 2) == "DROP"
    assert verdict(f, 1, 2) == "ACCEPT"
    f.delete("/calico/v1/policy/tier/neg/policy/n1")
    assert verdict(f, 3, 2) == "ACCEPT"


def test_policy_order_within_tier_and_tier_without_metadata(f):
    f.ep(1, {"x": "1"})
    f.ep(2, {"x": "1"})
    f.policy("t", "b", "has(x)", 2, inbound=[{"action": "allow"}])
    f.policy("t", "a", "has(x)", 1, inbound=[{"action": "deny"}])
    assert verdict(f, 1, 2) == "ACCEPT"      # tier t has no metadata: not in force
    f.tier("t", 1)
    assert verdict(f, 1, 2) == "DROP"        # order 1 (deny) before order 2 (allow)
    f.policy("t", "a", "has(x)", 3, inbound=[{"action": "deny"}])
    assert verdict(f, 1, 2) == "ACCEPT"
    f.delete("/calico/v1/policy/tier/t/metadata")
    assert policy_chain("t", "a", "i") not in f.c.desired().v4.chains


def test_profile_labels_and_log_action(f):
    f.put("/calico/v1/policy/profile/open/labels", {"team": "red"})
    f.ep(1, {})
    f.ep(2, {"team": "blue"})
    f.tier("t", 1)
    f.policy("t", "p", "team == 'red'", inbound=[{"action": "log", "log_prefix": "seen:"},
                                                {"action": "deny"}])
    assert verdict(f, 1, 2) == "DROP"
    assert verdict(f, 2, 1) == "ACCEPT"
    chain = f.c.desired().v4.chains[policy_chain("t", "p", "i")]
    assert chain[0] == '-j LOG --log-prefix "seen:"'
    f.put("/calico/v1/policy/profile/open/labels", {"team": "green"})
    assert verdict(f, 1, 2) == "ACCEPT"


def test_selector_ipset_tracks_remote_endpoints(f):
    f.ep(1, {"role": "web"})
    f.ep(7, {"role": "db"}, host="other")
    f.tier("t", 1)
    f.policy("t", "p", "role == 'web'", inbound=[{"action": "allow", "src_selector": "role == 'db'"}])
    name = N.selector_ipset(parse_selector("role == 'db'").unique_id, 4)
    assert f.c.desired().v4.ipsets[name] == {"10.0.0.7/32"}
    assert verdict(f, 1, 7) == "ACCEPT"
    f.ep(7, {"role": "web"}, host="other")
    assert f.c.desired().v4.ipsets[name] == frozenset()
    assert verdict(f, 1, 7) == "DROP"


def test_unchanged_chains_keep_identity(f):
    f.ep(1, {"role": "web"})
    f.ep(2, {"role": "db"})
    f.tier("t", 1)
    f.policy("t", "p", "role == 'db'", inbound=[{"action": "deny", "src_selector": "role == 'web'"}])
    d1 = f.c.desired()
    f.ep(3, {"role": "x"})
    d2 = f.c.desired()
    for chain in (N.endpoint_chain("to", "cali1"), N.endpoint_chain("to", "cali2"), policy_chain("t", "p", "i")):
        assert d1.v4.chains[chain] is d2.v4.chains[chain]


def test_invalid_policy_reported_and_absent(f):
    f.ep(1, {"role": "db"})
    f.tier("t", 1)
    f.policy("t", "good", "role == 'db'", inbound=[{"action": "deny"}])
    assert verdict(f, 1, 2) == "DROP"
    path = "/calico/v1/policy/tier/t/policy/good"
    f.put(path, {"selector": "role == ", "inbound_rules": []})
    assert path in f.c.errors
    assert verdict(f, 1, 2) == "ACCEPT"
    # a src_selector that does not parse: the whole policy is refused by key
    f.put(path, {"selector": "has(role)", "inbound_rules": [{"action": "deny", "src_selector": "&&"}]})
    assert path in f.c.errors and verdict(f, 1, 2) == "ACCEPT"
    f.put(path, {"selector": "has(role)", "inbound_rules": [{"action": "deny", "log_prefix": "x\ny"}]})
    assert verdict(f, 1, 2) == "ACCEPT"
    f.tier("t", 2)
    f.put("/calico/v1/policy/tier/t/metadata", '{"order": "soon"}')
    assert "/calico/v1/policy/tier/t/metadata" in f.c.errors


def test_many_policies_relabel_is_cheap(f):
    for n in range(1, 201):
        f.ep(n, {"app": f"a{n % 10}", "tier": "x"})
    f.tier("t1", 1)
    f.tier("t2", 2)
    f.tier("t3", 3)
    for i in range(50):
        f.policy(f"t{1 + i % 3}", f"p{i}", f"app == 'a{i % 10}'", i,
                 inbound=[{"action": "next-tier", "src_selector": f"app in {{'a{i % 10}', 'zz'}}"}])
    f.c.desired()
    before = f.c.policy.index.evaluations
    f.ep(5, {"app": "a6", "tier": "x"})
    # only selectors reading `app` (all 50 policy selectors + 10 distinct rule selectors at most)
    assert f.c.policy.index.evaluations - before <= 60
    f.c.desired()


def test_policy_update_keeping_its_selector_does_not_rescan(f):
    for n in range(1, 101):
        f.ep(n, {"role": "db" if n % 2 else "web"})
    f.tier("t", 1)
    f.policy("t", "p", "role == 'db'", inbound=[{"action": "deny", "src_selector": "role == 'web'"}])
    before = f.c.policy.index.evaluations
    f.policy("t", "p", "role == 'db'", inbound=[{"action": "allow", "src_selector": "role == 'web'"}])
    assert f.c.policy.index.evaluations == before
    assert verdict(f, 1, 2) == "ACCEPT"
    f.policy("t", "p", "role == 'web'", inbound=[{"action": "deny"}])
    assert verdict(f, 1, 2) == "ACCEPT" and verdict(f, 2, 1) == "DROP"
