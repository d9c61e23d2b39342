"""bench/report.py turns the benchmarks' printed lines into the table: the parsing and verdicts must be right."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import report  # noqa: E402

FELIX_OUT = """\
etcd populated: 1000 endpoints, 100 profiles, 10 tags in 0.12s; backend nft, ipv6 off
floor (one ipset restore + one iptables-restore + one ip -batch): 334 ms (ipset 6, iptables 246, routes 81)
floor with Felix's exact rules (its per-rule hash comments included): 371 ms (iptables 284)
cold start, felix process start -> dataplane complete: 757 ms (ratio to floor 2.27; target <= 2)
cold start, felix's own first apply (ipsets + iptables + routes, from its log): 397 ms (ratio to floor 1.19)
incremental add-one-endpoint, etcd put -> route present (100 samples): p50 37.3 ms  p99 60.2 ms  mean 38.3 ms
felix peak RSS: 93.5 MiB
"""

CONFD_OUT = """\
etcd change -> BIRD reconfigured, 200 changes: p50 31.9 ms, p99 42.1 ms, max 50.9 ms (target p99 <= 200 ms)
  10 global peers: render 0.4 ms, bird -p 1.6 ms, render+check+install+configure 5.2 ms (2981 bytes)
 100 global peers: render 1.4 ms, bird -p 1.9 ms, render+check+install+configure 7.2 ms (10811 bytes)
 500 global peers: render 4.6 ms, bird -p 2.8 ms, render+check+install+configure 17.2 ms (46191 bytes)
1,000 no-op writes (+334 identical as_num writes): 0 reloads (must be 0), 0 file writes, 0 renders
"""


def test_parse_felix_reads_every_figure():
    f = report.parse_felix(FELIX_OUT)
    assert f == {"floor_ms": 334, "floor_exact_ms": 371, "cold_ms": 757, "apply_ms": 397, "inc_p50_ms": 37.3, "inc_p99_ms": 60.2,
                 "rss_mib": 93.5, "endpoints": 1000}


def test_parse_confd_distinguishes_10_100_500_peers():
    c = report.parse_confd(CONFD_OUT)
    assert (c["p50_ms"], c["p99_ms"], c["noop_reloads"]) == (31.9, 42.1, 0)
    assert (c["peers10_ms"], c["peers100_ms"], c["peers500_ms"]) == (5.2, 7.2, 17.2)


def test_missing_output_is_not_measured_and_not_met():
    f = report.parse_felix("Traceback (most recent call last): ...")
    assert all(v is None for v in f.values())
    cells = report.Row("x", f["cold_ms"], "ms", f["floor_ms"], "floor", 2.0).cells()
    assert cells[1].startswith("not measured") and cells[4] == "no"


def test_verdicts_against_floor_and_target():
    assert report.Row("x", 757, "ms", 334, "floor", 2.0).cells()[3:5] == ["2.27", "**no**"]
    assert report.Row("x", 600, "ms", 334, "floor", 2.0).cells()[4] == "yes"
    assert report.Row("x", 60.2, "ms", 100, "target").cells()[3:5] == ["0.60", "yes"]
    assert report.Row("x", 3.2, "s", 3, "target").cells()[4] == "**no**"
    assert report.Row("x", 1, "", 0, "must be").cells()[4] == "**no**"
    assert report.Row("x", 0, "", 0, "must be").cells()[4] == "yes"


def test_plot_writes_a_png(tmp_path):
    scale = {"sizes": [{"endpoints": n, "cold_s": n / 1000, "floor_s": n / 2000, "hwm_mib": 70 + n / 50}
                       for n in (100, 1000, 5000)]}
    out = tmp_path / "scale.png"
    assert report.plot(scale, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
