"""Label selector expressions: a small recursive-descent parser, no eval.

Selectors come from etcd (policies, rules) and decide which endpoints get
traffic, so a typo must fail loudly with the position of the mistake rather
than silently match nothing.  Parsed selectors are compiled to closures once
and cached, because the same text recurs across many policies and rules.

Grammar::

    expr    := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | primary
    primary := '(' expr ')' | 'all' '(' ')' | 'has' '(' KEY ')'
             | KEY ('==' | '!=') STRING
             | KEY ['not'] 'in' '{' [STRING (',' STRING)*] '}'

An empty selector means ``all()``.  String literals may only hold characters a
label value can hold (no label could ever match anything else), which keeps
the canonical text free of quotes and control characters.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["Selector", "SelectorError", "parse_selector", "LABEL_KEY_RE", "LABEL_VALUE_RE",
           "valid_label_key", "valid_label_value", "MAX_SELECTOR_LEN"]

MAX_SELECTOR_LEN = 4096

# Kubernetes/Calico label syntax: optional DNS-subdomain prefix and '/', then a
# name of 1..63 chars that starts and ends alphanumeric.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_RE = re.compile(rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}\Z")
LABEL_VALUE_RE = re.compile(rf"(?:{_NAME})?\Z")


def valid_label_key(k: object) -> bool:
    return isinstance(k, str) and LABEL_KEY_RE.match(k) is not None


def valid_label_value(v: object) -> bool:
    return isinstance(v, str) and LABEL_VALUE_RE.match(v) is not None


class SelectorError(ValueError):
    """A selector that does not parse; the message names the position and what was expected."""

    def __init__(self, text: str, pos: int, expected: str, found: str | None = None) -> None:
        self.text = text
        self.pos = pos
        self.expected = expected
        if found is None:
            found = "end of selector" if pos >= len(text) else repr(text[pos:pos + 10])
        self.found = found
        super().__init__(f"selector error at position {pos}: expected {expected}, found {found}")


# ---- tokenizer --------------------------------------------------------------

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<op>==|!=|&&|\|\||[!(){},])
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<word>[A-Za-z0-9_./-]+)
""", re.VERBOSE)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # 'op' | 'str' | 'word' | 'end'
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "\"'":
                raise SelectorError(text, pos, f"a closing {ch}", "unterminated string")
            raise SelectorError(text, pos, "a label key, string or operator", repr(ch))
        kind = m.lastgroup
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), pos))  # type: ignore[arg-type]
        pos = m.end()
    toks.append(_Tok("end", "", n))
    return toks


# ---- AST --------------------------------------------------------------------

Labels = Mapping[str, str]
_Fn = Callable[[Labels], bool]


@dataclass(frozen=True, slots=True)
class _Node:
    op: str  # all, has, eq, ne, in, notin, not, and, or
    key: str = ""
    values: tuple[str, ...] = ()
    children: tuple[_Node, ...] = ()

    def render(self, nested: bool = False) -> str:
        op = self.op
        if op == "all":
            return "all()"
        if op == "has":
            return f"has({self.key})"
        if op == "eq":
            return f'{self.key} == "{self.values[0]}"'
        if op == "ne":
            return f'{self.key} != "{self.values[0]}"'
        if op in ("in", "notin"):
            vals = ", ".join(f'"{v}"' for v in self.values)
            return f"{self.key} {'in' if op == 'in' else 'not in'} {{{vals}}}"
        if op == "not":
            child = self.children[0]
            return "!" + child.render(nested=child.op not in ("all", "has"))
        sep = " && " if op == "and" else " || "
        body = sep.join(c.render(nested=True) for c in self.children)
        return f"({body})" if nested else body

    def compile(self) -> _Fn:
        op, key = self.op, self.key
        if op == "all":
            return lambda labels: True
        if op == "has":
            return lambda labels: key in labels
        if op == "eq":
            v = self.values[0]
            return lambda labels: labels.get(key) == v
        if op == "ne":
            v = self.values[0]
            return lambda labels: labels.get(key) != v
        if op == "in":
            vs = frozenset(self.values)
            return lambda labels: labels.get(key) in vs
        if op == "notin":
            vs = frozenset(self.values)
            return lambda labels: labels.get(key) not in vs
        fns = [c.compile() for c in self.children]
        if op == "not":
            f = fns[0]
            return lambda labels: not f(labels)
        # plain loops and two-child forms: all()/any() over a generator cost twice as much, and
        # a cluster's snapshot evaluates these tens of thousands of times
        if op == "and":
            if len(fns) == 2:
                f0, f1 = fns
                return lambda labels: f0(labels) and f1(labels)

            def and_(labels: Labels) -> bool:
                for f in fns:
                    if not f(labels):
                        return False
                return True
            return and_
        if len(fns) == 2:
            f0, f1 = fns
            return lambda labels: f0(labels) or f1(labels)

        def or_(labels: Labels) -> bool:
            for f in fns:
                if f(labels):
                    return True
            return False
        return or_

    def requirement(self) -> tuple[str, frozenset[str]] | None:
        """(key, values) such that no labels without one of `values` at `key` can match, or None.

        What an index needs to look up candidates instead of scanning: `a == "x" && b != "y"`
        needs a in {x}; `a in {x, y} || a == "z"` needs a in {x, y, z}; `!a == "x"` or
        `has(a)` need nothing that narrows (None).
        """
        op = self.op
        if op in ("eq", "in"):
            return self.key, frozenset(self.values)
        if op == "and":
            reqs = [r for r in (c.requirement() for c in self.children) if r is not None]
            return min(reqs, key=lambda r: (len(r[1]), r[0], sorted(r[1]))) if reqs else None
        if op == "or":
            reqs = [c.requirement() for c in self.children]
            if any(r is None for r in reqs) or len({r[0] for r in reqs}) != 1:
                return None
            return reqs[0][0], frozenset().union(*(r[1] for r in reqs))
        return None

    def keys(self) -> set[str]:
        out = {self.key} if self.key else set()
        for c in self.children:
            out |= c.keys()
        return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def fail(self, expected: str) -> SelectorError:
        t = self.peek()
        found = "end of selector" if t.kind == "end" else repr(t.text)
        return SelectorError(self.text, t.pos, expected, found)

    def expect_op(self, op: str) -> None:
        t = self.peek()
        if t.kind != "op" or t.text != op:
            raise self.fail(f"'{op}'")
        self.i += 1

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            return _Node("all")
        node = self.expr()
        if self.peek().kind != "end":
            raise self.fail("'&&', '||' or end of selector")
        return node

    def expr(self) -> _Node:
        self.depth += 1
        if self.depth > 100:
            raise self.fail("a less deeply nested expression")
        items = [self.and_()]
        while self.peek().kind == "op" and self.peek().text == "||":
            self.i += 1
            items.append(self.and_())
        self.depth -= 1
        return items[0] if len(items) == 1 else _Node("or", children=tuple(items))

    def and_(self) -> _Node:
        items = [self.unary()]
        while self.peek().kind == "op" and self.peek().text == "&&":
            self.i += 1
            items.append(self.unary())
        return items[0] if len(items) == 1 else _Node("and", children=tuple(items))

    def unary(self) -> _Node:
        t = self.peek()
        if t.kind == "op" and t.text == "!":
            self.i += 1
            self.depth += 1
            if self.depth > 100:
                raise self.fail("a less deeply nested expression")
            child = self.unary()
            self.depth -= 1
            return _Node("not", children=(child,))
        return self.primary()

    def primary(self) -> _Node:
        t = self.peek()
        if t.kind == "op" and t.text == "(":
            self.i += 1
            node = self.expr()
            self.expect_op(")")
            return node
        if t.kind != "word":
            raise self.fail("a label key, 'has(', 'all()', '!' or '('")
        nxt = self.peek(1)
        if t.text in ("has", "all") and nxt.kind == "op" and nxt.text == "(":
            self.i += 2
            if t.text == "all":
                self.expect_op(")")
                return _Node("all")
            key = self.key()
            self.expect_op(")")
            return _Node("has", key=key)
        key = self.key()
        t = self.peek()
        if t.kind == "op" and t.text in ("==", "!="):
            self.i += 1
            return _Node("eq" if t.text == "==" else "ne", key=key, values=(self.string(),))
        if t.kind == "word" and t.text == "in":
            self.i += 1
            return _Node("in", key=key, values=self.set_())
        if t.kind == "word" and t.text == "not" and self.peek(1).kind == "word" and self.peek(1).text == "in":
            self.i += 2
            return _Node("notin", key=key, values=self.set_())
        raise self.fail("'==', '!=', 'in' or 'not in'")

    def key(self) -> str:
        t = self.peek()
        if t.kind != "word" or not valid_label_key(t.text):
            raise self.fail("a label key")
        self.i += 1
        return t.text

    def string(self) -> str:
        t = self.peek()
        if t.kind != "str":
            raise self.fail("a quoted string")
        val = t.text[1:-1]
        if not valid_label_value(val):
            raise SelectorError(self.text, t.pos, "a label value (letters, digits, '-_.', <= 63 chars)",
                                repr(t.text))
        self.i += 1
        return val

    def set_(self) -> tuple[str, ...]:
        self.expect_op("{")
        vals: list[str] = []
        if self.peek().kind == "op" and self.peek().text == "}":
            self.i += 1
            return ()
        vals.append(self.string())
        while self.peek().kind == "op" and self.peek().text == ",":
            self.i += 1
            vals.append(self.string())
        self.expect_op("}")
        return tuple(sorted(set(vals)))


@dataclass(frozen=True, eq=False)
class Selector:
    """A parsed selector: evaluate it against an endpoint's labels."""

    canonical: str
    label_keys: frozenset[str]
    unique_id: str
    _fn: _Fn = field(repr=False)
    # (label key, values): every matching label set has one of these values at that key (None:
    # no such narrowing); lets an index evaluate only the endpoints that could match
    required: tuple[str, frozenset[str]] | None = None

    def evaluate(self, labels: Labels) -> bool:
        return self._fn(labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.canonical == self.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)

    def __str__(self) -> str:
        return self.canonical


def _unique_id(canonical: str) -> str:
    digest = hashlib.sha224(canonical.encode()).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")[:20]


@lru_cache(maxsize=8192)
def _parse_cached(text: str) -> Selector:
    node = _Parser(text).parse()
    canonical = node.render()
    return Selector(canonical, frozenset(node.keys()), _unique_id(canonical), node.compile(), node.requirement())


def parse_selector(text: str) -> Selector:
    """Parse `text`; raises SelectorError naming the position and what was expected."""
    if not isinstance(text, str):
        raise SelectorError("", 0, "a selector string", type(text).__name__)
    if len(text) > MAX_SELECTOR_LEN:
        raise SelectorError(text, MAX_SELECTOR_LEN, f"at most {MAX_SELECTOR_LEN} characters", "more")
    return _parse_cached(text)
