"""Selector grammar, semantics, canonical form and error positions."""

from __future__ import annotations

import pytest

from libcalico.selectors import SelectorError, parse_selector

LABELS = {"role": "db", "env": "prod", "tier": "backend", "example.com/team": "a-1"}

SEMANTICS = [
    ("", True),
    ("all()", True),
    ("role == 'db'", True),
    ('role == "db"', True),
    ("role == 'web'", False),
    ("role != 'web'", True),
    ("missing != 'x'", True),       # an absent label is != any value
    ("missing == 'x'", False),
    ("has(role)", True),
    ("has(missing)", False),
    ("!has(missing)", True),
    ("!has(role)", False),
    ("role in {'db', 'cache'}", True),
    ("role in {'web'}", False),
    ("role in {}", False),
    ("role not in {'web', 'cache'}", True),
    ("role not in {'db'}", False),
    ("missing not in {'db'}", True),
    ("missing in {'db'}", False),
    ("role == 'db' && env == 'prod'", True),
    ("role == 'db' && env == 'dev'", False),
    ("role == 'web' || env == 'prod'", True),
    ("role == 'web' || env == 'dev'", False),
    ("!(role == 'web' || env == 'dev')", True),
    ("!role == 'db'", False),                                  # ! binds tighter than ==-expression
    ("role == 'x' || role == 'db' && env == 'dev'", False),    # && binds tighter than ||
    ("(role == 'x' || role == 'db') && env == 'prod'", True),
    ("example.com/team == 'a-1'", True),
    ("has(example.com/team) && !has(example.com/other)", True),
    ("all() && !all()", False),
    ("!!has(role)", True),
]


@pytest.mark.parametrize("text,expected", SEMANTICS)
def test_selector_semantics(text: str, expected: bool) -> None:
    sel = parse_selector(text)
    assert sel.evaluate(LABELS) is expected
    # The canonical form means the same thing and is a fixed point.
    again = parse_selector(sel.canonical)
    assert again.canonical == sel.canonical
    assert again.evaluate(LABELS) is expected
    assert again.unique_id == sel.unique_id


def test_canonical_form_normalizes_spacing_quotes_and_set_order() -> None:
    a = parse_selector("role=='db'&&env in {'b','a','b'}")
    b = parse_selector('  role == "db"  &&  env in { "a" , "b" } ')
    assert a.canonical == b.canonical == 'role == "db" && env in {"a", "b"}'
    assert a.unique_id == b.unique_id
    assert a == b and hash(a) == hash(b)
    assert parse_selector("role == 'web'").unique_id != a.unique_id


def test_unique_id_is_short_and_ipset_safe() -> None:
    uid = parse_selector("has(a)").unique_id
    assert len(uid) == 20 and uid.isalnum() and uid == uid.lower()
    # Stable across runs: a fixed hash of the canonical text.
    assert uid == parse_selector("has( a )").unique_id


def test_label_keys() -> None:
    sel = parse_selector("a == 'x' || (has(b) && c not in {'y'}) || !d in {}")
    assert sel.label_keys == frozenset({"a", "b", "c", "d"})
    assert parse_selector("all()").label_keys == frozenset()


def test_keywords_usable_as_label_keys() -> None:
    assert parse_selector("has == 'x'").evaluate({"has": "x"})
    assert parse_selector("all in {'x'}").evaluate({"all": "x"})
    assert parse_selector("in == 'x'").evaluate({"in": "x"})


def test_parse_is_cached() -> None:
    assert parse_selector("role == 'cached'") is parse_selector("role == 'cached'")


ERRORS = [
    ("role ==", 7, "a quoted string"),
    ("role = 'db'", 5, "a label key, string or operator"),
    ("role == 'db", 8, "a closing '"),
    ("has(role", 8, "')'"),
    ("has()", 4, "a label key"),
    ("(role == 'db'", 13, "')'"),
    ("role == 'db')", 12, "'&&', '||' or end of selector"),
    ("role == 'db' &&", 15, "a label key"),
    ("role 'db'", 5, "'==', '!=', 'in' or 'not in'"),
    ("role in {'a' 'b'}", 13, "'}'"),
    ("role in 'a'", 8, "'{'"),
    ("role not {'a'}", 5, "'==', '!=', 'in' or 'not in'"),
    ("role == 'a b'", 8, "a label value"),
    ("role == 'a;b'", 8, "a label value"),
    ("ro$le == 'a'", 2, "a label key, string or operator"),
    ("-role == 'a'", 0, "a label key"),
    ("all(", 4, "')'"),
    ("role == 'a' & env == 'b'", 12, "a label key, string or operator"),
    ("role == \"a\nb\"", 8, "a label value"),
    ("rôle == 'a'", 1, "a label key, string or operator"),
]


@pytest.mark.parametrize("text,pos,expected", ERRORS)
def test_syntax_errors_name_position_and_expectation(text: str, pos: int, expected: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    err = info.value
    assert err.pos == pos, str(err)
    assert err.expected.startswith(expected), str(err)
    assert f"position {pos}" in str(err) and expected in str(err)


def test_too_deep_or_too_long_is_an_error_not_a_crash() -> None:
    with pytest.raises(SelectorError):
        parse_selector("(" * 500 + "has(a)" + ")" * 500)
    with pytest.raises(SelectorError):
        parse_selector("!" * 500 + "has(a)")
    with pytest.raises(SelectorError):
        parse_selector("has(a) || " * 1000 + "has(b)")
    with pytest.raises(SelectorError):
        parse_selector(None)  # type: ignore[arg-type]
