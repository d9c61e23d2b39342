"""The incremental indexes Felix keeps for cluster scale agree with computing from scratch.

Each property drives one index through a random sequence of changes and, after
every step, compares it with the brute-force answer: the (key, value) selector
index in `LabelIndex` (and its counted set members) against evaluating every
selector on every endpoint; the calculator's counted tag and selector members
and cached policy matches against a fresh calculator fed only the final data; the ipset writer's delta-normalised
members against normalising the whole list.
"""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st

from felix.calc import CalcConfig, Calculator
from felix.calc.labels import CountedMembers, IndexedEndpoint, LabelIndex
from felix.dataplane.ipsets import IpsetWriter, normalize_members
from felix.desired import MemberSet
from libcalico import keys, models
from libcalico.selectors import parse_selector
from tests.lib.fakes import ScriptedRunner
from tests.reliability.profiles import examples

KEYS, VALUES = ("a", "b", "c"), ("x", "y", "z")
EPS = tuple(f"ep{i}" for i in range(6))
PROFILES = ("p0", "p1", "p2")
IPS = tuple(f"10.0.0.{i}/32" for i in range(1, 6))

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
value_set = st.lists(st.sampled_from(VALUES), min_size=0, max_size=3)


def _leaf() -> st.SearchStrategy[str]:
    k = st.sampled_from(KEYS)
    v = st.sampled_from(VALUES)
    return st.one_of(
        st.builds(lambda k, v: f"{k} == '{v}'", k, v),
        st.builds(lambda k, v: f"{k} != '{v}'", k, v),
        st.builds(lambda k, vs: f"{k} in {{{', '.join(repr(x) for x in vs)}}}", k, value_set),
        st.builds(lambda k, vs: f"{k} not in {{{', '.join(repr(x) for x in vs)}}}", k, value_set),
        st.builds(lambda k: f"has({k})", k),
        st.just("all()"))


selector_st = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) && ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) || ({b})", inner, inner),
        st.builds(lambda a: f"!({a})", inner)),
    max_leaves=4)

index_op = st.one_of(
    st.tuples(st.just("ep"), st.sampled_from(EPS), labels_st,
              st.lists(st.sampled_from(PROFILES), max_size=2, unique=True),
              st.lists(st.sampled_from(IPS), max_size=2, unique=True)),
    st.tuples(st.just("del"), st.sampled_from(EPS)),
    st.tuples(st.just("prof"), st.sampled_from(PROFILES), st.one_of(st.none(), labels_st)),
    st.tuples(st.just("sel"), selector_st),
    st.tuples(st.just("unsel"), st.integers(0, 5)),
)


@given(st.lists(index_op, max_size=30))
@examples(100)
def test_label_index_agrees_with_brute_force(ops):
    idx = LabelIndex()
    eps: dict[str, IndexedEndpoint] = {}
    prof: dict[str, dict[str, str]] = {}
    sels: list[str] = []            # uids added (with repeats: refcounted)
    texts: dict[str, str] = {}
    for step, op in enumerate(ops):
        if op[0] == "ep":
            e = IndexedEndpoint(tuple(sorted(op[2].items())), tuple(op[3]), tuple(op[4]), ())
            idx.set_endpoint(op[1], e)
            eps[op[1]] = e
        elif op[0] == "del":
            idx.remove_endpoint(op[1])
            eps.pop(op[1], None)
        elif op[0] == "prof":
            idx.set_profile_labels(op[1], op[2])
            if op[2]:
                prof[op[1]] = dict(op[2])
            else:
                prof.pop(op[1], None)
        elif op[0] == "sel":
            sel = parse_selector(op[1])
            sels.append(idx.add_selector(sel))
            texts[sel.unique_id] = op[1]
        elif sels:
            idx.remove_selector(sels.pop(op[1] % len(sels)))
        if step % 3 != 2 and step != len(ops) - 1:
            continue    # several changes between two reads: their differences must add up
        for uid in set(sels):
            sel = parse_selector(texts[uid])
            want = set()
            for k, e in eps.items():
                eff: dict[str, str] = {}
                for p in e.profile_ids:
                    for lk, lv in prof.get(p, {}).items():
                        eff.setdefault(lk, lv)
                eff.update(e.labels)
                if sel.evaluate(eff):
                    want.add(k)
            assert idx.matches(uid) == want, texts[uid]
            assert idx.members(uid, 4) == {ip for k in want for ip in eps[k].ipv4}
            for k in eps:
                assert (uid in idx.endpoint_matches(k)) == (k in want)


def test_required_values_narrow_only_when_sound():
    assert parse_selector("a == 'x' && b != 'y'").required == ("a", frozenset({"x"}))
    assert parse_selector("a in {'x', 'y'} || a == 'z'").required == ("a", frozenset({"x", "y", "z"}))
    assert parse_selector("a == 'x' || b == 'y'").required is None
    assert parse_selector("!(a == 'x')").required is None
    assert parse_selector("has(a)").required is None
    assert parse_selector("a in {}").required == ("a", frozenset())


def test_new_endpoint_is_evaluated_only_against_selectors_it_could_match():
    idx = LabelIndex()
    for i in range(50):
        idx.add_selector(parse_selector(f"app == 'app{i}'"))
    idx.add_selector(parse_selector("env != 'dev'"))     # not narrowable: always a candidate
    before = idx.evaluations
    idx.set_endpoint("e1", IndexedEndpoint((("app", "app7"), ("env", "prod")), (), ("10.0.0.1/32",), ()))
    assert idx.evaluations - before == 2
    assert {idx.selector(u).canonical for u in idx.endpoint_matches("e1")} == {'app == "app7"', 'env != "dev"'}


# ---- the calculator: counted tag and selector members, cached policy matches ------------

H = "me"
ep_op = st.tuples(st.just("ep"), st.sampled_from(("h1", H, H)), st.integers(0, 2),
                  st.lists(st.sampled_from(PROFILES), max_size=2, unique=True),
                  st.lists(st.sampled_from(IPS), min_size=1, max_size=2, unique=True), st.integers(0, 5))
calc_op = st.one_of(
    ep_op, ep_op, ep_op,
    st.tuples(st.just("ep"), st.sampled_from(("h1", "h2", H)), st.integers(0, 5),
              st.lists(st.sampled_from(PROFILES), max_size=2, unique=True),
              st.lists(st.sampled_from(IPS), min_size=1, max_size=2, unique=True), st.integers(0, 5)),
    st.tuples(st.just("del"), st.sampled_from(("h1", "h2", H)), st.integers(0, 5)),
    st.tuples(st.just("tags"), st.sampled_from(PROFILES),
              st.one_of(st.none(), st.lists(st.sampled_from(("t1", "t2")), max_size=2, unique=True))),
    st.tuples(st.just("pol"), st.integers(0, 2), st.sampled_from(("a == 'x'", "b in {'x', 'y'}", "a != 'y'")),
              st.sampled_from(("a == 'y'", "b == 'x' && a != 'z'", "has(c)")), st.integers(0, 3)),
    st.tuples(st.just("unpol"), st.integers(0, 2)),
    st.tuples(st.just("tier"), st.one_of(st.none(), st.integers(0, 3))),
)


def _feed(c: Calculator, path: str, value, created: int = 0) -> None:
    if value is None:
        c.on_update("delete", keys.parse(path))
        return
    k, v = models.parse_key_value(path, json.dumps(value))
    c.on_update("put", k, v, create_revision=created)


@given(st.lists(calc_op, max_size=20))
@examples(50)
def test_incremental_calculator_matches_a_fresh_one(ops):
    live = Calculator(CalcConfig(H, ipv6=False))
    data: dict[str, object] = {}
    rules = {"inbound_rules": [{"action": "allow", "src_tag": "t1"}, {"action": "allow", "src_tag": "t2"}],
             "outbound_rules": []}
    base = {"/calico/v1/policy/profile/p0/rules": rules,
            "/calico/v1/policy/tier/t/metadata": {"order": 1},
            "/calico/v1/policy/tier/t/policy/base": {"selector": "a == 'x' || a == 'y'", "inbound_rules": [
                {"action": "allow", "src_selector": "b == 'y'"}], "outbound_rules": []},
            f"/calico/v1/host/{H}/workload/o/local/endpoint/e": {
                "state": "active", "name": "cali0local", "profile_ids": ["p0"], "ipv4_nets": ["10.9.9.9/32"]}}
    created: dict[str, int] = {}       # etcd's create revision: kept by a rewrite, new after a delete
    rev = iter(range(1, 1000))
    for path, value in base.items():
        created[path] = next(rev)
        _feed(live, path, value, created[path])
        data[path] = value
    live.desired()
    for step, op in enumerate(ops):
        if op[0] == "ep":
            path = f"/calico/v1/host/{op[1]}/workload/o/w{op[2]}/endpoint/e"
            value = {"state": "active", "name": f"cali{op[1]}w{op[2]}", "profile_ids": op[3], "ipv4_nets": op[4],
                     "labels": {"a": "xyz"[op[5] % 3], "b": "yx"[op[5] % 2], **({"c": "1"} if op[5] > 3 else {})}}
        elif op[0] == "pol":
            path = f"/calico/v1/policy/tier/t/policy/p{op[1]}"
            value = {"order": op[4], "selector": op[2], "inbound_rules": [{"action": "allow", "src_selector": op[3]}],
                     "outbound_rules": [{"action": "next-tier"}]}
        elif op[0] == "unpol":
            path, value = f"/calico/v1/policy/tier/t/policy/p{op[1]}", None
        elif op[0] == "tier":
            path, value = "/calico/v1/policy/tier/t/metadata", None if op[1] is None else {"order": op[1]}
        elif op[0] == "del":
            path, value = f"/calico/v1/host/{op[1]}/workload/o/w{op[2]}/endpoint/e", None
        else:
            path, value = f"/calico/v1/policy/profile/{op[1]}/tags", op[2]
        if value is None:
            data.pop(path, None)
            created.pop(path, None)
        else:
            data[path] = value
            created.setdefault(path, next(rev))
        _feed(live, path, value, created.get(path, 0))
        if step % 3 != 2 and step != len(ops) - 1:
            continue
        got = live.desired().v4
        fresh = Calculator(CalcConfig(H, ipv6=False))
        for p, v in data.items():
            _feed(fresh, p, v, created[p])
        want = fresh.desired().v4
        assert got.ipsets == want.ipsets
        assert got.chains == want.chains
        assert set(live.endpoint_hosts()) == {ep.host for ep in live.endpoints.values()}


# ---- the ipset writer's delta normalisation ----------------------------------------------

member_st = st.sampled_from(("10.0.0.1", "10.0.0.1/32", "10.0.0.2/32", "10.0.0.3", "10.0.0.0/30",
                             "10.0.0.2/31", "0.0.0.0/0", "0.0.0.0/1", "128.0.0.0/1", "10.0.0.4/255.255.255.255"))


@given(st.lists(st.lists(member_st, max_size=6), min_size=1, max_size=10))
@examples(100)
def test_ipset_members_by_delta_equal_full_normalisation(steps):
    kernel: dict[str, set[str]] = {}

    def respond(argv, inp):
        if argv == ["ipset", "save"]:
            return 0, "", ""
        for line in (inp or "").splitlines():
            op, name, *rest = line.split()
            if op == "create":
                kernel.setdefault(name, set())
            elif op == "add":
                kernel[name].add(rest[0])
            elif op == "del":
                kernel[name].discard(rest[0])
            elif op == "flush":
                kernel[name] = set()
            elif op == "swap":
                kernel[name], kernel[rest[0]] = kernel[rest[0]], kernel[name]
            elif op == "destroy":
                kernel.pop(name, None)
        return 0, "", ""

    w = IpsetWriter(4, ScriptedRunner(responder=respond), backoff=0)
    given_before = None
    for i, members in enumerate(steps):
        members = frozenset(members)
        if given_before is not None and i % 3:      # as the calculator hands it: with its difference
            members = MemberSet.derive(given_before, members - given_before, given_before - members)
        given_before = members
        w.set_members("felix-v4-t", members)
        want = normalize_members(4, members)
        assert w.members("felix-v4-t") == want
        asyncio.run(w.apply())
        assert kernel["felix-v4-t"] == want


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(IPS), st.booleans()), max_size=40))
@examples(100)
def test_counted_members_and_their_differences(ops):
    cm = CountedMembers()
    held: dict[str, int] = {}
    last = cm.current()
    for add, ip, read in ops:
        if not add and not held.get(ip):
            continue        # only a holder can leave
        cm.change([ip], 1 if add else -1)
        held[ip] = held.get(ip, 0) + (1 if add else -1)
        if read:
            cur = cm.current()
            want = {m for m, n in held.items() if n > 0}
            assert cur == want
            if cur is not last:
                assert cur.base is last
                assert cur.added == want - last and cur.removed == last - want
            last = cur
