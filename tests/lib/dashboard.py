"""The metric names docs/grafana-dashboard.json queries, and a parser for Felix's /metrics text:
shared by the dashboard's unit test and the test against a running Felix."""

from __future__ import annotations

import json
import math
import os
import re

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "grafana-dashboard.json")
_NAME = re.compile(r"\b((?:felix|process)_[a-z0-9_]+)\b")
_FUNCS = {"rate", "increase", "sum", "max", "min", "by"}


def load() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def exprs(dash: dict | None = None) -> list[str]:
    dash = dash or load()
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def series_names(dash: dict | None = None) -> set[str]:
    """Every series name a panel's query reads (summary parts like `_sum` kept as written)."""
    return {m for e in exprs(dash) for m in _NAME.findall(e) if m not in _FUNCS}


def family(series: str) -> str:
    """`felix_x_sum` -> `felix_x` for a summary's parts; other names unchanged."""
    return re.sub(r"_(sum|count)$", "", series)


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from the Prometheus text format."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)', line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        value = float(m.group(3))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def finite(samples: list[tuple[dict[str, str], float]]) -> bool:
    return any(not math.isnan(v) for _, v in samples)
