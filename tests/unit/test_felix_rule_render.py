"""Long rule lists: rendering grows linearly, keeps the exact match semantics, and every bound
(list lengths, rendered lines, value size, ICMP type) is one named limit, the same in the model
and in the renderer.

The semantics checks run the rendered chains through a small interpreter of exactly the
iptables constructs the renderer emits (multiport, mark, -j/-g, RETURN/DROP/LOG) and compare
every verdict with the datamodel's meaning of the rule, over ports inside, outside and on the
edges of every group; tests/integration/test_felix_rule_lists.py proves the same chains on the
real kernel with real packets.
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from felix import names as N
from felix.calc.model import checked_rules
from felix.calc.rules import (
    MARK_ACCEPT,
    MARK_NEXT_TIER,
    MULTIPORT_MAX,
    RuleError,
    line_count,
    render_chains,
    render_rule,
)
from libcalico import keys, models
from libcalico.models import (
    ICMP_CODE_MAX,
    ICMP_TYPE_MAX,
    MAX_PORT_ENTRIES,
    MAX_RENDERED_LINES,
    MAX_RULES,
    MAX_VALUE_BYTES,
)
from tests.lib.calcfeed import CalcFeed

PROFILE_KEY = "/calico/v1/policy/profile/p/rules"
CHAIN = "felix-p-p-i"
IPTABLES_MAX_ARGS = 255    # iptables-restore's per-line argument limit


def _lines(chains: dict[str, list[str]]) -> int:
    return sum(len(v) for v in chains.values())


# ---- linear growth ----------------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(16, 16), (600, 600), (6000, 6000), (MAX_PORT_ENTRIES, 30), (30, MAX_PORT_ENTRIES)])
def test_src_times_dst_ports_render_linearly(n, m):
    rule = {"protocol": "tcp", "src_ports": list(range(1, n + 1)), "dst_ports": list(range(1, m + 1))}
    chains = render_chains(CHAIN, [rule], 4)
    groups = math.ceil(n / MULTIPORT_MAX) + math.ceil(m / MULTIPORT_MAX)
    assert _lines(chains) <= groups + 2          # one line per group, plus the jump and its check
    assert _lines(chains) == line_count(render_rule(rule, 4))
    assert len(chains) <= 3                      # the rule's chain and at most two sub-chains


def test_6000_by_6000_is_hundreds_of_lines_not_160000():
    ports = list(range(1, 6001))
    chains = render_chains(CHAIN, [{"protocol": "tcp", "src_ports": ports, "dst_ports": ports}], 4)
    assert _lines(chains) == 400 + 400 + 2


def test_negated_lists_of_any_length_stay_within_iptables_argument_limit():
    ports = list(range(1, MAX_PORT_ENTRIES + 1))
    rule = {"protocol": "udp", "src_tag": "a", "!dst_tag": "b", "src_net": "10.0.0.0/8", "!dst_net": "10.1.0.0/16",
            "!src_ports": ports, "!dst_ports": ports, "src_ports": ports, "dst_ports": ["1:2"] * 20}
    for policy in (False, True):
        for action in ("allow", "deny", "log", "next-tier"):
            chains = render_chains(CHAIN, [{**rule, "action": action}], 4, policy=policy)
            # the writer adds `-A <chain> -m comment --comment felix:<hash>` (6 arguments)
            assert max(len(line.split()) for lines in chains.values() for line in lines) + 6 < IPTABLES_MAX_ARGS


def test_one_line_rules_are_unchanged():
    assert render_chains(CHAIN, [{"protocol": "tcp", "dst_ports": [80], "!src_ports": list(range(1, 31))}], 4) == {
        CHAIN: ["-p tcp -m multiport --dports 80 -m multiport ! --sports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 "
                "-m multiport ! --sports 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30 "
                f"-j MARK --set-xmark {MARK_ACCEPT}/{MARK_ACCEPT}",
                f"-m mark --mark {MARK_ACCEPT}/{MARK_ACCEPT} -j RETURN"]}


def test_sub_chain_names_fit_are_distinct_and_not_user_names():
    made = {N.rule_chain(parent, i, part) for parent in (CHAIN, "felix-p-q-i", "felix-pi-_X")
            for i in range(50) for part in (1, 2)}
    assert len(made) == 300
    assert all(len(n) <= 28 and n.startswith("felix-r-_") for n in made)
    # a profile can never be named into the sub-chain namespace
    assert not any(N.profile_chain(p, d).startswith("felix-r-") for p in ("r", "r-x", "_r") for d in "io")


# ---- exact semantics (interpreter) -------------------------------------------------------------

def _ports_match(spec: str, port: int) -> bool:
    for item in spec.split(","):
        lo, _, hi = item.partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


_TOKEN = re.compile(r"(! )?(-p \S+|-m multiport (?:! )?--[sd]ports \S+|-m mark (?:! )?--mark \S+)")


class Packet:
    def __init__(self, sport: int, dport: int, mark: int = 0):
        self.sport, self.dport, self.mark, self.logged = sport, dport, mark, 0


def _matches(line: str, pkt: Packet) -> bool:
    for m in _TOKEN.finditer(line):
        tok = m.group(2)
        if tok.startswith("-p "):
            continue                  # every test packet is tcp
        if tok.startswith("-m multiport"):
            neg = " ! " in tok
            spec = tok.rsplit(" ", 1)[1]
            port = pkt.sport if "--sports" in tok else pkt.dport
            if _ports_match(spec, port) == neg:
                return False
        else:
            neg = " ! " in tok
            value, mask = (int(x, 16) for x in tok.rsplit(" ", 1)[1].split("/"))
            if ((pkt.mark & mask) == value) == neg:
                return False
    return True


def run_chain(chains: dict[str, list[str]], chain: str, pkt: Packet, depth: int = 0) -> str | None:
    """'DROP', 'RETURN' (returned or fell off) after running `chain`; marks/logs land on `pkt`."""
    assert depth < 10
    current = chain
    while True:
        for line in chains[current]:
            if not _matches(line, pkt):
                continue
            goto = re.search(r"(?:^| )-g (\S+)$", line)
            if goto:
                current = goto.group(1)
                break
            target = re.search(r"(?:^| )-j (.*)$", line).group(1)
            if target == "DROP":
                return "DROP"
            if target == "RETURN":
                return "RETURN"
            if target.startswith("MARK --set-xmark"):
                value, mask = (int(x, 16) for x in target.split()[-1].split("/"))
                pkt.mark = (pkt.mark & ~mask) | value
            elif target.startswith("LOG"):
                pkt.logged += 1
            else:
                if run_chain(chains, target, pkt, depth + 1) == "DROP":
                    return "DROP"
        else:
            return "RETURN"


def _in(port: int, entries: list) -> bool:
    return any(_ports_match(str(e), port) for e in entries)


def expected(rule: dict, sport: int, dport: int) -> bool:
    """The datamodel meaning: every list present matches (negated lists: no entry matches)."""
    return ((("src_ports" not in rule) or _in(sport, rule["src_ports"]))
            and (("dst_ports" not in rule) or _in(dport, rule["dst_ports"]))
            and (("!src_ports" not in rule) or not _in(sport, rule["!src_ports"]))
            and (("!dst_ports" not in rule) or not _in(dport, rule["!dst_ports"])))


def _random_list(rng: random.Random) -> list:
    out: list = []
    for _ in range(rng.choice([1, 3, 14, 15, 16, 40, 200])):
        lo = rng.randrange(0, 400)
        out.append(lo if rng.random() < 0.7 else f"{lo}:{lo + rng.randrange(0, 20)}")
    return out


def _probe_ports(rule: dict) -> list[int]:
    near = {0, 1, 399, 420, 65535}
    for f in ("src_ports", "dst_ports", "!src_ports", "!dst_ports"):
        for e in rule.get(f, []):
            for p in str(e).split(":"):
                near.update({int(p) - 1, int(p), int(p) + 1})
    return sorted(p for p in near if 0 <= p <= 65535)


@pytest.mark.parametrize("seed", range(40))
def test_rendered_chains_match_exactly_the_rule(seed):
    """Every action, profile and policy chains: the verdict for (sport, dport) is the rule's."""
    rng = random.Random(seed)
    rule: dict = {"protocol": "tcp"}
    for f in rng.sample(["src_ports", "dst_ports", "!src_ports", "!dst_ports"], rng.randint(1, 4)):
        rule[f] = _random_list(rng)
    ports = _probe_ports(rule)
    pairs = [(rng.choice(ports), rng.choice(ports)) for _ in range(300)]
    for action in ("allow", "deny", "log", "next-tier"):
        for policy in (False, True):
            r = {**rule, "action": action}
            # a sentinel rule after it shows whether evaluation went on past the rule
            chains = render_chains(CHAIN, [r, {"action": "log", "log_prefix": "after:"}], 4, policy=policy)
            for sport, dport in pairs:
                hit = expected(rule, sport, dport)
                # a profile may be entered with next-tier still set by the last tier
                pkt = Packet(sport, dport, mark=int(MARK_NEXT_TIER, 16) if not policy else 0)
                verdict = run_chain(chains, CHAIN, pkt)
                accepted = bool(pkt.mark & int(MARK_ACCEPT, 16))
                next_tier = bool(pkt.mark & int(MARK_NEXT_TIER, 16))
                went_on = pkt.logged > (1 if action == "log" and hit else 0)
                where = f"{action} policy={policy} {r} sport={sport} dport={dport}"
                if action == "allow":
                    assert (accepted, verdict, went_on) == ((True, "RETURN", False) if hit else
                                                            (False, "RETURN", True)), where
                elif action == "deny":
                    assert (verdict == "DROP") == hit and went_on == (not hit), where
                elif action == "log":
                    assert pkt.logged == (2 if hit else 1) and verdict == "RETURN", where   # once, then on
                else:
                    assert not accepted and went_on == (not hit), where
                    if policy:
                        assert next_tier == hit, where


# ---- caps: one named limit each ---------------------------------------------------------------

def _parse_error(value: dict | str) -> str:
    raw = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(models.InvalidValue) as e:
        models.parse_key_value(PROFILE_KEY, raw)
    return str(e.value)


def test_too_many_port_entries_names_field_and_limit():
    bad = list(range(MAX_PORT_ENTRIES + 1))
    msg = _parse_error({"inbound_rules": [{"protocol": "tcp", "dst_ports": [1], "src_ports": bad}]})
    assert msg.startswith(PROFILE_KEY) and "inbound_rules[0].src_ports" in msg and str(MAX_PORT_ENTRIES) in msg
    models.parse_key_value(PROFILE_KEY, json.dumps(
        {"inbound_rules": [{"protocol": "tcp", "src_ports": bad[:MAX_PORT_ENTRIES]}]}))
    with pytest.raises(RuleError, match=f"!dst_ports.*{MAX_PORT_ENTRIES}"):
        render_rule({"protocol": "tcp", "!dst_ports": bad}, 4)


def test_too_many_rules_names_field_and_limit():
    msg = _parse_error({"outbound_rules": [{}] * (MAX_RULES + 1)})
    assert "outbound_rules" in msg and str(MAX_RULES) in msg
    models.parse_key_value(PROFILE_KEY, json.dumps({"outbound_rules": [{}] * MAX_RULES}))
    with pytest.raises(ValueError, match=f"inbound_rules.*{MAX_RULES}"):
        checked_rules(models.ProfileRules.model_construct(inbound_rules=[models.Rule()] * (MAX_RULES + 1)))


@pytest.mark.parametrize("kind,path", [("profile_rules", PROFILE_KEY),
                                       ("tier_policy", "/calico/v1/policy/tier/t/policy/p")])
def test_oversized_value_rejected_before_parsing(kind, path):
    limit = MAX_VALUE_BYTES[kind]
    raw = json.dumps({"selector": "all()", "inbound_rules": [{"action": "allow", "log_prefix": "x" * 20}] * 20000})
    assert len(raw) > limit
    with pytest.raises(models.InvalidValue, match=f"value: {len(raw)} bytes exceed the limit of {limit}"):
        models.parse_key_value(path, raw)
    # multi-byte characters count as bytes, and malformed JSON of that size never reaches the parser
    big = "{" + '"é":' * (limit // 4)
    with pytest.raises(models.InvalidValue, match="exceed the limit"):
        models.parse_key_value(path, big.encode())


def test_rendered_lines_cap_names_the_limit_and_only_that_key():
    # a log rule with 3,000 destination ports: 200 groups, two lines each (log once, return)
    rule = {"action": "log", "protocol": "tcp", "dst_ports": [1] * 3000}
    n = MAX_RENDERED_LINES // line_count(render_rule(rule, 4)) + 1
    value = {"inbound_rules": [rule] * n}
    assert len(json.dumps(value)) < MAX_VALUE_BYTES["profile_rules"]   # not the size cap
    feed = CalcFeed()
    feed.put("/calico/v1/host/h1/workload/k8s/w/endpoint/e", {
        "state": "active", "name": "cali1", "profile_ids": ["p", "ok"], "ipv4_nets": ["10.0.0.1/32"]})
    feed.put(PROFILE_KEY, value)
    feed.put("/calico/v1/policy/profile/ok/rules", {"inbound_rules": [rule] * (n - 1)})
    assert f"iptables lines (IPv4) exceed the limit of {MAX_RENDERED_LINES}" in feed.c.errors[PROFILE_KEY]
    assert "/calico/v1/policy/profile/ok/rules" not in feed.c.errors
    chains = feed.c.desired().v4.chains
    assert N.profile_chain("ok", "i") in chains and N.profile_chain("p", "i") not in chains
    assert sum(len(v) for v in chains.values()) < MAX_RENDERED_LINES + 100


# ---- ICMP: one bound ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,ok", [
    ("icmp_type", ICMP_TYPE_MAX, True), ("icmp_type", ICMP_TYPE_MAX + 1, False),
    ("!icmp_type", ICMP_TYPE_MAX + 1, False), ("icmp_code", ICMP_CODE_MAX, True),
    ("icmp_code", ICMP_CODE_MAX + 1, False), ("icmp_type", -1, False)])
def test_icmp_bound_is_the_same_in_model_and_renderer(field, value, ok):
    if field == "!icmp_type":
        rule = {"protocol": "icmp", "!icmp_type": value}
    elif field == "icmp_code":
        rule = {"protocol": "icmp", "icmp_type": 3, "icmp_code": value}
    else:
        rule = {"protocol": "icmp", "icmp_type": value}
    value_json = json.dumps({"inbound_rules": [rule]})
    if ok:
        _, v = models.parse_key_value(PROFILE_KEY, value_json)
        feed = CalcFeed()
        feed.put(PROFILE_KEY, value_json)
        assert not feed.c.errors and "p" in feed.c.rules
        assert render_rule(rule, 4).base.endswith(f"{value}")
    else:
        msg = _parse_error(value_json)
        assert f"inbound_rules[0].{field}" in msg and "is not an integer 0-" in msg
        with pytest.raises(RuleError, match=field.lstrip("!")):
            render_rule(rule, 4)


def test_icmp_type_255_profile_is_reported_not_silently_dropped():
    feed = CalcFeed()
    feed.put(PROFILE_KEY, {"inbound_rules": [{"protocol": "icmp", "icmp_type": 255}]})
    assert "icmp_type" in feed.c.errors[PROFILE_KEY] and "0-254" in feed.c.errors[PROFILE_KEY]
    assert keys.parse(PROFILE_KEY).profile not in feed.c.rules
