"""Find the keys whose presence makes a rendered config fail its check, so the rest can still be applied.

Validation catches what it knows of; BIRD is the judge of everything else
(a name clash, a neighbour it refuses, a value the templates print in a way
BIRD dislikes).  Without this, one such key keeps every later change on
every node from reaching BIRD.  The search is adaptive group testing with the
real checker: try the keys in chunks on top of what already passed, split a
failing chunk, and a failing single group is a culprit.  With k bad groups
among n it costs about 2·k·log2(n) checks; a budget bounds it so a flood of
bad keys cannot keep confd checking forever (then the last good file stays).

Groups are tried earliest-created first, so when two keys only clash with
each other, the older one is accepted and the newer one is left out: the same
rule confd applies to contested addresses and blocks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

Check = Callable[[frozenset[str]], Awaitable[tuple[bool, str]]]

MAX_CHECKS = 200


@dataclass
class Isolation:
    ok: bool                                   # False: not isolatable (see `error`)
    bad: dict[tuple[str, ...], str] = field(default_factory=dict)  # group -> the checker's complaint
    checks: int = 0
    error: str = ""

    @property
    def excluded(self) -> frozenset[str]:
        return frozenset(p for g in self.bad for p in g)


async def isolate(groups: Sequence[tuple[str, ...]], check: Check, full_error: str,
                  budget: int = MAX_CHECKS) -> Isolation:
    """Find the groups to leave out, given that the config with every group in it fails (`full_error`).

    `check(excluded)` renders without the keys in `excluded` and checks the
    result.  The config with all `groups` left out must pass, or the fault is
    not in them (a template, a global value): then `ok` is False.
    """
    everything = frozenset(p for g in groups for p in g)
    res = Isolation(ok=False)
    if not groups:
        res.error = "no independent keys to leave out"
        return res
    passed, err = await check(everything)
    res.checks = 1
    if not passed:
        res.error = f"fails even without any of the {len(groups)} independent keys: {err}"
        return res
    if len(groups) == 1:
        res.bad[groups[0]] = full_error  # fails with it, passes without it
        res.ok = True
        return res
    accepted: set[str] = set()
    # The whole list is known to fail (that is why we are here): start from its halves.
    queue = _halves(list(groups))
    while queue:
        chunk = queue.pop(0)
        if res.checks >= budget:
            res.error = f"gave up after {res.checks} checks ({len(res.bad)} culprits found so far)"
            return res
        trial = frozenset(p for g in chunk for p in g) | accepted
        passed, err = await check(everything - trial)
        res.checks += 1
        if passed:
            accepted |= trial
        elif len(chunk) == 1:
            res.bad[chunk[0]] = err
        else:
            queue[:0] = _halves(chunk)
    res.ok = True
    return res


def _halves(chunk: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
    mid = len(chunk) // 2
    return [chunk[:mid], chunk[mid:]]
