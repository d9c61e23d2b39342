"""The walls between the node's programs, and inside Felix, read from the code's imports.

The programs meet only in etcd (and BIRD's socket), so one can change without
the others; Felix's calculators and writers meet only in felix.desired and
felix.names.  An import across a wall compiles and runs fine, which is why
it is checked here rather than left to review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = {"felix", "confd", "bird_control", "calicoctl", "calico_node", "calico_cni", "calico_libnetwork"}
ALLOWED = {("confd", "bird_control"), ("calicoctl", "bird_control"), ("calico_node", "bird_control")}


def _imports(top: str) -> list[tuple[str, int, str]]:
    """(file relative to the repo, line, absolute module) for every import under package `top`."""
    out = []
    for path in sorted((ROOT / top).rglob("*.py")):
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(rel))
        package = list(rel.parent.parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module] if node.module else []
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1]
                mods = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            out += [(rel.as_posix(), node.lineno, m) for m in mods]
    return out


def _head(module: str) -> str:
    return module.split(".")[0]


def test_programs_import_no_other_program():
    bad = [f"{f}:{n} imports {m}" for top in sorted(PROGRAMS) for f, n, m in _imports(top)
           if _head(m) in PROGRAMS and _head(m) != top and (top, _head(m)) not in ALLOWED]
    assert not bad, "\n".join(bad)


def test_libcalico_imports_no_program():
    bad = [f"{f}:{n} imports {m}" for f, n, m in _imports("libcalico") if _head(m) in PROGRAMS]
    assert not bad, "\n".join(bad)


def test_felix_calculators_and_writers_import_neither_side():
    bad = [f"{f}:{n} imports {m}" for f, n, m in _imports("felix")
           if (f.startswith("felix/calc/") and (m == "felix.dataplane" or m.startswith("felix.dataplane.")))
           or (f.startswith("felix/dataplane/") and (m == "felix.calc" or m.startswith("felix.calc.")))]
    assert not bad, "\n".join(bad)


def test_neutral_contract_imports_neither_side():
    bad = [f"{f}:{n} imports {m}" for f, n, m in _imports("felix")
           if f in ("felix/desired.py", "felix/names.py")
           and any(m == s or m.startswith(s + ".") for s in ("felix.calc", "felix.dataplane"))]
    assert not bad, "\n".join(bad)


def test_bench_imports_no_test_code():
    bad = [f"{f}:{n} imports {m}" for f, n, m in _imports("bench") if _head(m) == "tests"]
    assert not bad, "\n".join(bad)


def test_the_check_sees_relative_imports():
    """A relative import resolves to its absolute module, or a wall could be crossed with `..`."""
    mods = {m for f, _, m in _imports("felix") if f == "felix/calc/calculator.py"}
    assert "felix.calc.policy" in mods and "felix.desired" in mods


@pytest.mark.parametrize("top", sorted(PROGRAMS | {"libcalico", "bench"}))
def test_every_package_is_read(top):
    assert (ROOT / top).is_dir() and _imports(top)
