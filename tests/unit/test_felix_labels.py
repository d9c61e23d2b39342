"""felix.calc.labels.LabelIndex: selector matches kept incrementally (pure, no kernel).

Every check compares the index against a brute-force evaluation of the same
selectors, so an incremental shortcut that misses a case fails here.
"""

from __future__ import annotations

import random

from felix.calc.labels import IndexedEndpoint, LabelIndex
from libcalico.selectors import parse_selector


def ep(labels: dict, profiles=(), v4=(), v6=()) -> IndexedEndpoint:
    return IndexedEndpoint(tuple(sorted(labels.items())), tuple(profiles), tuple(v4), tuple(v6))


def brute(idx: LabelIndex, text: str) -> frozenset[str]:
    sel = parse_selector(text)
    return frozenset(k for k in idx._eps if sel.evaluate(idx.effective_labels(k)))


def test_effective_labels_profiles_then_own():
    idx = LabelIndex()
    idx.set_profile_labels("p1", {"role": "web", "env": "prod"})
    idx.set_profile_labels("p2", {"role": "db", "zone": "a"})
    idx.set_endpoint("e", ep({"env": "dev"}, ["p1", "p2"]))
    # first profile wins a shared key, own labels win over all profiles
    assert idx.effective_labels("e") == {"role": "web", "env": "dev", "zone": "a"}


def test_selector_matches_and_members():
    idx = LabelIndex()
    uid = idx.add_selector(parse_selector("role == 'db'"))
    idx.set_endpoint("a", ep({"role": "db"}, v4=["10.0.0.1/32"], v6=["fd00::1/128"]))
    idx.set_endpoint("b", ep({"role": "web"}, v4=["10.0.0.2/32"]))
    assert idx.matches(uid) == {"a"}
    assert idx.members(uid, 4) == {"10.0.0.1/32"}
    assert idx.members(uid, 6) == {"fd00::1/128"}
    assert uid in idx.take_changed()
    # relabel b into the selector, a out of it
    idx.set_endpoint("b", ep({"role": "db"}, v4=["10.0.0.2/32"]))
    idx.set_endpoint("a", ep({"role": "cache"}, v4=["10.0.0.1/32"], v6=["fd00::1/128"]))
    assert idx.matches(uid) == {"b"}
    assert idx.members(uid, 4) == {"10.0.0.2/32"}
    assert idx.take_changed() == {uid}
    # an address change of a matching endpoint changes the members
    idx.set_endpoint("b", ep({"role": "db"}, v4=["10.0.0.9/32"]))
    assert idx.members(uid, 4) == {"10.0.0.9/32"}
    assert idx.take_changed() == {uid}
    idx.remove_endpoint("b")
    assert idx.matches(uid) == frozenset() and idx.members(uid, 4) == frozenset()


def test_members_object_stable_until_change():
    idx = LabelIndex()
    uid = idx.add_selector(parse_selector("has(role)"))
    idx.set_endpoint("a", ep({"role": "x"}, v4=["10.0.0.1/32"]))
    m1 = idx.members(uid, 4)
    idx.set_endpoint("z", ep({"other": "x"}, v4=["10.0.0.3/32"]))
    assert idx.members(uid, 4) is m1
    idx.set_endpoint("b", ep({"role": "y"}, v4=["10.0.0.2/32"]))
    assert idx.members(uid, 4) == {"10.0.0.1/32", "10.0.0.2/32"}


def test_relabel_evaluates_only_selectors_reading_the_changed_key():
    idx = LabelIndex()
    for i in range(50):
        idx.add_selector(parse_selector(f"k{i} == 'v'"))
    role = idx.add_selector(parse_selector("role in {'db', 'cache'}"))
    for i in range(200):
        idx.set_endpoint(f"e{i}", ep({"role": "web", "k1": "v"}))
    before = idx.evaluations
    idx.set_endpoint("e7", ep({"role": "db", "k1": "v"}))
    assert idx.evaluations - before == 1          # only the role selector, only for e7
    assert "e7" in idx.matches(role)
    before = idx.evaluations
    idx.set_endpoint("e7", ep({"role": "db", "k1": "v", "k2": "v", "k3": "v"}))
    assert idx.evaluations - before == 2          # k2, k3 selectors


def test_profile_label_change_reevaluates_its_endpoints_only():
    idx = LabelIndex()
    uid = idx.add_selector(parse_selector("tier == 'front'"))
    for i in range(100):
        idx.set_endpoint(f"e{i}", ep({}, ["p" if i < 10 else "q"]))
    before = idx.evaluations
    idx.set_profile_labels("p", {"tier": "front"})
    assert idx.evaluations - before == 10
    assert idx.matches(uid) == {f"e{i}" for i in range(10)}
    # own label overrides the profile's
    idx.set_endpoint("e3", ep({"tier": "back"}, ["p"]))
    assert "e3" not in idx.matches(uid)
    idx.set_profile_labels("p", None)
    assert idx.matches(uid) == frozenset()


def test_refcounted_selectors():
    idx = LabelIndex()
    s = parse_selector("has(a)")
    uid = idx.add_selector(s)
    assert idx.add_selector(parse_selector("has( a )")) == uid   # same canonical form
    idx.set_endpoint("x", ep({"a": "1"}))
    idx.remove_selector(uid)
    assert idx.matches(uid) == {"x"}
    idx.remove_selector(uid)
    assert idx.selector(uid) is None and idx.endpoint_matches("x") == set()


def test_random_changes_agree_with_brute_force():
    rnd = random.Random(5)
    texts = ["has(role)", "!has(role)", "role == 'db'", "role != 'db'", "env in {'a','b'}",
             "env not in {'a'}", "role == 'db' && env == 'a'", "role == 'web' || has(x)",
             "!(env == 'b')", "all()"]
    idx = LabelIndex()
    uids = {t: idx.add_selector(parse_selector(t)) for t in texts}
    vals = {"role": ["db", "web", None], "env": ["a", "b", "c", None], "x": ["1", None]}

    def rand_labels():
        out = {k: rnd.choice(v) for k, v in vals.items()}
        return {k: v for k, v in out.items() if v is not None}

    for _step in range(600):
        op = rnd.random()
        key = f"e{rnd.randrange(30)}"
        if op < 0.6:
            profs = rnd.sample(["p1", "p2", "p3"], rnd.randrange(3))
            idx.set_endpoint(key, ep(rand_labels(), profs, v4=[f"10.0.0.{rnd.randrange(5)}/32"]))
        elif op < 0.8:
            idx.set_profile_labels(rnd.choice(["p1", "p2", "p3"]), rand_labels() or None)
        else:
            idx.remove_endpoint(key)
        for t, uid in uids.items():
            assert idx.matches(uid) == brute(idx, t), (t, _step)
            want = {n for k in brute(idx, t) for n in idx._eps[k].ipv4}
            assert idx.members(uid, 4) == want
