"""Hypothesis strategies for hostile datastore values, shared by the fuzz tests.

Every injection attempt carries the marker INJECTED next to a character that
no validator lets through (`;`, quotes, braces, newline, space), so a test can
assert that the marker never reaches generated BIRD or iptables text: a valid
name can never contain it by accident.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

MARK = "INJECTED"

INJECTIONS = [
    f'x"; protocol static {MARK} {{ route 0.0.0.0/0 blackhole; }}',
    f"10.0.0.1; }} protocol bgp {MARK} {{",
    f"64512;\n{MARK}",
    f"1.2.3.4\n-A INPUT -j ACCEPT -m comment --comment {MARK}",
    f"80 -j ACCEPT\n-A FORWARD -j {MARK}",
    f"tcp -j {MARK}",
    f"a' -j {MARK}",
    f'a" -j {MARK}',
    f"{{{MARK}}}",
    f"$({MARK})",
    f"`{MARK}`",
    f"../../{MARK} x",
    f"{MARK}\x00",
    f"\u202e{MARK} \u00e9\u4e2d",
    f"# {MARK}",
    f"/* {MARK} */",
    "x" * 1000 + f" {MARK}",
    f"{MARK} " + "y" * 5000,
]

PLAIN_JUNK = ["", " ", "-1", "0", "4294967296", "99999999999999999999", "1e3", "0x10", "NaN", "null",
              "true", "[]", "{}", "10.0.0.256", "fe80::1%eth0", "10.0.0.0/33", "::/129", "1.2.3",
              "10.65.0.0/16 ", " 10.65.0.0/16", "\t", "a" * 254, "é", "ℌ"]


def mostly(valid: st.SearchStrategy, other: st.SearchStrategy, tenths: int = 8) -> st.SearchStrategy:
    """`valid` about tenths/10 of the time, else `other` (one_of would split evenly)."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < tenths else other)


def hostile_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(INJECTIONS),
        st.sampled_from(PLAIN_JUNK),
        st.text(max_size=40),
        st.text(alphabet=';{}"\'\n\\ #/*-$`', max_size=20).map(lambda s: s + f";{MARK}"),
    )


def deep_json(depth: int = 200) -> str:
    return "[" * depth + "]" * depth


def json_or_junk(obj: st.SearchStrategy) -> st.SearchStrategy[str]:
    """A JSON document built from `obj`, or a non-JSON / wrong-type document."""
    junk = st.one_of(
        hostile_text(),
        st.just(deep_json(200)),
        st.just(deep_json(5000)),
        st.just('{"a":' * 100 + "1" + "}" * 100),
        st.sampled_from(["[1,2", '{"ip": ', "\ufeff{}", "[]", "1", '"x"', "null"]),
    )
    # Mostly well-formed documents (with hostile fields inside), so examples get past the JSON layer.
    return mostly(obj.map(json.dumps), junk, 7)


def scalar_or_hostile(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Usually a valid value (so the other fields get exercised), else anything at all."""
    return mostly(valid, st.one_of(hostile_text(), st.integers(-2**70, 2**70), st.booleans(), st.none(),
                     st.floats(allow_nan=True), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)))


def segment() -> st.SearchStrategy[str]:
    """A key segment: a sane name, or something hostile (never containing '/': that changes the key kind)."""
    return st.one_of(st.sampled_from(["node1", "node2", "n-3.x_y", "a" * 253]),
                     hostile_text().map(lambda s: s.replace("/", "|") or "_"))


def ipv4() -> st.SearchStrategy[str]:
    return st.ip_addresses(v=4).map(str)


def ipv6() -> st.SearchStrategy[str]:
    return st.ip_addresses(v=6).map(str)
