"""Long port lists on the real kernel: the sub-chains Felix renders for a rule whose source and
destination port lists both span several multiport groups (and whose negated lists do too)
keep the rule's exact meaning, for every action, in profiles and in tiered policies.

Real calico-felix, real etcd, real TCP connections with chosen source ports
(tests/integration/felix_topology.py); tests/unit/test_felix_rule_render.py checks the same
chains exhaustively with an interpreter.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.integration.felix_topology import FelixHost, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALLOW_ALL = [{"action": "allow"}]
SERVED = (7001, 8080, 9003, 9005, 9100)

# Every list spans three or four multiport groups: the rule cannot be one iptables line.
RULE = {"protocol": "tcp",
        "src_ports": list(range(20000, 20040)) + ["30000:30010"],
        "dst_ports": list(range(7000, 7040)) + [8080, "9000:9010"],
        "!src_ports": [30005, *range(40000, 40050)],
        "!dst_ports": [*range(6000, 6040), 9005]}

# (source port, destination port) -> whether RULE matches
CASES = {(20039, 8080): True,     # last group of src, a single port in the last dst group
         (30001, 9003): True,     # both ranges
         (20000, 7001): True,     # first groups
         (30005, 8080): False,    # in !src_ports (inside the src range)
         (20001, 9005): False,    # in !dst_ports (inside the dst range)
         (21000, 8080): False,    # src outside
         (20001, 9100): False}    # dst outside

# Connects from fixed source ports in parallel; SO_LINGER 0 closes with a reset, so no
# TIME_WAIT keeps a (source port, destination) pair from being tried again.
_PROBE = r"""
import json, socket, struct, sys, threading
dst, cases = sys.argv[1], json.loads(sys.argv[2])
out = [None] * len(cases)
def one(i, sport, dport):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(1.0)
    try:
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
        s.connect((dst, dport))
        out[i] = True
    except OSError:
        out[i] = False
    finally:
        s.close()
ts = [threading.Thread(target=one, args=(i, sp, dp)) for i, (sp, dp) in enumerate(cases)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(out))
"""


def probe(src, dst_ip: str, cases: list[tuple[int, int]]) -> dict[tuple[int, int], bool]:
    r = src.ns.run(sys.executable, "-c", _PROBE, dst_ip, json.dumps(cases), timeout=30)
    return dict(zip(cases, json.loads(r.stdout), strict=True))


def wait_verdicts(fh, src, dst, want: dict[tuple[int, int], bool], what: str) -> None:
    last: dict = {}

    def ok() -> bool:
        nonlocal last
        last = {v: probe(src, dst.ip(v), list(want)) for v in (4, 6)}
        return all(last[v] == want for v in (4, 6))

    try:
        eventually(ok, 30, what)
    except AssertionError:
        wrong = {(v, k): got for v in (4, 6) for k, got in last[v].items() if got != want[k]}
        raise AssertionError(f"{what}: wrong verdicts {wrong}; felix log:\n{fh.log()[-2000:]}") from None


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=2)
    yield host
    host.close()


def test_long_src_and_dst_port_lists_keep_exact_semantics(fh):
    a, b = fh.workloads
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("pa", ALLOW_ALL, ALLOW_ALL)
    fh.put_profile("pb", [{**RULE, "action": "allow"}], ALLOW_ALL)
    fh.put_profile("pnext", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["pa"])
    fh.put_endpoint(b, ["pb"])
    fh.serve(b, *SERVED)
    fh.start_felix()
    fh.wait_programmed(b)
    matched = dict(CASES)
    unmatched = {k: not v for k, v in CASES.items()}

    wait_verdicts(fh, a, b, matched, "allow rule: exactly the matching (sport, dport) pairs connect")
    for v in (4, 6):
        save = fh.iptables_save(v)
        assert ":felix-r-_" in save, "the rule was expected to use a sub-chain"
        assert "multiport" in save and "Parser cannot handle" not in fh.log()

    fh.put_profile("pb", [{**RULE, "action": "deny"}, *ALLOW_ALL], ALLOW_ALL)
    wait_verdicts(fh, a, b, unmatched, "deny rule, then allow all: the matching pairs are dropped")

    fh.put_profile("pb", [{**RULE, "action": "log", "log_prefix": "rl:"}, {"action": "deny"}], ALLOW_ALL)
    wait_verdicts(fh, a, b, dict.fromkeys(CASES, False), "log rule goes on to the next rule (deny)")

    # next-tier in a profile: on to the endpoint's next profile (allow all); else this profile's deny
    fh.put_profile("pb", [{**RULE, "action": "next-tier"}, {"action": "deny"}], ALLOW_ALL)
    fh.put_endpoint(b, ["pb", "pnext"])
    wait_verdicts(fh, a, b, matched, "profile next-tier: matching pairs reach the next profile")

    # next-tier in a tiered policy: on to the next tier (allow all); else this policy's deny
    fh.put("/calico/v1/policy/tier/t1/metadata", {"order": 1})
    fh.put("/calico/v1/policy/tier/t2/metadata", {"order": 2})
    fh.put("/calico/v1/policy/tier/t1/policy/p", {
        "selector": "all()", "inbound_rules": [{**RULE, "action": "next-tier"}, {"action": "deny"}],
        "outbound_rules": ALLOW_ALL})
    fh.put("/calico/v1/policy/tier/t2/policy/p", {"selector": "all()", "inbound_rules": ALLOW_ALL,
                                                 "outbound_rules": ALLOW_ALL})
    fh.put_endpoint(b, ["pb"])          # pb alone would deny the matching pairs: the tiers decide
    fh.put_profile("pb", [{"action": "deny"}], ALLOW_ALL)
    wait_verdicts(fh, a, b, matched, "policy next-tier: matching pairs reach the next tier")

    # back to one-line rules: every sub-chain goes away
    fh.delete("/calico/v1/policy/tier", prefix=True)
    fh.put_profile("pb", ALLOW_ALL, ALLOW_ALL)
    wait_verdicts(fh, a, b, dict.fromkeys(CASES, True), "allow all")
    eventually(lambda: not any(c.startswith("felix-r-") for v in (4, 6) for c in fh.felix_chains(v)), 10,
               "sub-chains removed")
    assert fh.felix_alive()


def test_net_and_its_negation_in_one_rule_on_the_real_kernel(fh):
    """`src_net` with `!src_net` (and the same for dst) cannot be one iptables line: `-s A ! -s B`
    makes iptables-restore refuse the whole table, so every endpoint's policy stopped being
    programmed.  The negation is a RETURN in the rule's sub-chain, with the exact meaning."""
    a, b = fh.workloads
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("pa", ALLOW_ALL, ALLOW_ALL)
    a_net = f"{a.ip(4)}/32"
    fh.put_profile("pb", [{"action": "allow", "src_net": "10.0.0.0/8", "!src_net": a_net}], ALLOW_ALL)
    fh.put_endpoint(a, ["pa"])
    fh.put_endpoint(b, ["pb"])
    fh.serve(b, 8080)
    fh.start_felix()
    fh.wait_programmed(b)
    assert a.ip(4).startswith("10."), "the test relies on the workloads living in 10.0.0.0/8"
    eventually(lambda: probe(a, b.ip(4), [(20001, 8080)]) == {(20001, 8080): False}, 30,
               "a is inside src_net but excluded by !src_net: dropped")
    # the same shape with another excluded address: a is allowed (the table was programmed)
    fh.put_profile("pb", [{"action": "allow", "src_net": "10.0.0.0/8", "!src_net": "10.255.255.1/32",
                           "dst_net": "10.0.0.0/8", "!dst_net": "10.255.255.2/32"}], ALLOW_ALL)
    eventually(lambda: probe(a, b.ip(4), [(20002, 8080)]) == {(20002, 8080): True}, 30,
               "a is in src_net and not excluded: allowed")
    assert "multiple -s flags" not in fh.log() and "multiple -d flags" not in fh.log()
