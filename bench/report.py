"""`make bench`: run every benchmark, then write docs/benchmarks.md and docs/benchmarks-scale.png.

Runs, each as its own process (their output streams through and is kept in a
log directory):
  bench/bench_felix.py    (`make bench-felix`, nft then legacy: 1,000 endpoints cold start, incremental, floor)
  bench/bench_confd.py    (`make bench-confd`: etcd -> BIRD latency, peers, no-op writes, a burst)
  bench/bench_policy.py   (`make bench-policy`, nft: tiered policy, relabel -> dataplane p50/p99)
  bench/bench_cluster.py  (two real nodes: BGP convergence, node start -> ready)
  bench/bench_scale.py    (Felix cold start and peak RSS at 100 / 1,000 / 5,000 endpoints with
                           nft, and 5,000 again with legacy iptables)
then turns what they printed into one table: each figure, its floor (the same
work done the cheapest way) or its anchor (the issue's target), the ratio, and
whether the target is met.  A benchmark that fails is shown as such in the
table instead of stopping the others.

Run as root: .venv/bin/python bench/report.py [--logs DIR] [--reuse felix,confd,...]
(`--reuse` takes those benchmarks' results from an earlier run's DIR instead of running them.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
PNG = os.path.join(ROOT, "docs", "benchmarks-scale.png")
MIB_TO_MB = 1.048576

BENCHES = {
    "felix": ["bench/bench_felix.py", "--backend", "nft"],
    "felix-legacy": ["bench/bench_felix.py", "--backend", "legacy"],
    "confd": ["bench/bench_confd.py"],
    "policy": ["bench/bench_policy.py", "--backend", "nft"],
    "cluster": ["bench/bench_cluster.py", "--json", "{dir}/cluster.json"],
    "scale": ["bench/bench_scale.py", "--json", "{dir}/scale.json"],
    "scale-legacy": ["bench/bench_scale.py", "--sizes", "5000", "--backend", "legacy", "--json",
                     "{dir}/scale-legacy.json"],
}

# Benchmarks that write their own section of docs/benchmarks.md: each is run as
# `python SCRIPT --section docs/bench/NAME.md` and the file it writes (its table,
# plot reference and how it measures) is appended to the document in name order.
# A run that fails leaves the previous section in place, marked as stale.
SECTION_BENCHES: dict[str, list[str]] = {
    "cni": ["bench/bench_cni.py"],
    "cluster-scale": ["bench/bench_cluster_scale.py"],
    "conntrack": ["bench/bench_conntrack.py"],
    "ipam": ["bench/bench_ipam.py"],
    "rr_scale": ["bench/bench_rr_scale.py"],
}
SECTION_DIR = os.path.join(ROOT, "docs", "bench")


def run_bench(name: str, logdir: str) -> tuple[int, float]:
    """Run one benchmark, echoing and logging its output; (exit code, seconds)."""
    argv = [sys.executable] + [a.format(dir=logdir) for a in BENCHES[name]]
    print(f"==> {name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    with open(os.path.join(logdir, f"{name}.log"), "w") as log:
        p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = p.wait()
    took = time.monotonic() - t0
    print(f"<== {name}: exit {rc} in {took:.0f} s", flush=True)
    return rc, took


# ---- parsing what the benchmarks printed ------------------------------------------

def _num(pattern: str, text: str, group: int = 1) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(group)) if m else None


def parse_felix(text: str) -> dict:
    return {
        "floor_ms": _num(r"floor \(one ipset restore.*?\): (\d+) ms", text),
        "floor_exact_ms": _num(r"floor with Felix's exact rules.*?: (\d+) ms", text),
        "cold_ms": _num(r"cold start, felix process start -> dataplane complete: (\d+) ms", text),
        "apply_ms": _num(r"felix's own first apply.*?: (\d+) ms", text),
        "inc_p50_ms": _num(r"incremental add-one-endpoint.*?p50 ([\d.]+) ms", text),
        "inc_p99_ms": _num(r"incremental add-one-endpoint.*?p99 ([\d.]+) ms", text),
        "rss_mib": _num(r"felix peak RSS: ([\d.]+) MiB", text),
        "endpoints": _num(r"etcd populated: (\d+) endpoints", text),
    }


def parse_confd(text: str) -> dict:
    out = {
        "p50_ms": _num(r"BIRD reconfigured, 200 changes: p50 ([\d.]+) ms", text),
        "p99_ms": _num(r"BIRD reconfigured, 200 changes: .*?p99 ([\d.]+) ms", text),
        "noop_reloads": _num(r"1,000 no-op writes.*?: (\d+) reloads", text),
        "burst_reloads": _num(r"burst of 100 changes written in \d+ ms: (\d+) reloads", text),
        "burst_ms": _num(r"burst of 100 changes written in (\d+) ms", text),
    }
    for n in (10, 100, 500):
        out[f"peers{n}_ms"] = _num(rf"\b{n} global peers: .*?render\+check\+install\+configure ([\d.]+) ms", text)
    return out


def parse_policy(text: str) -> dict:
    return {
        "relabel_p50_ms": _num(r"incremental relabel, etcd put -> ipset and endpoint chain.*?p50 ([\d.]+) ms", text),
        "relabel_p99_ms": _num(r"incremental relabel, etcd put -> ipset and endpoint chain.*?p99 ([\d.]+) ms", text),
    }


def load_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---- the table ------------------------------------------------------------------------

@dataclass
class Row:
    figure: str
    value: float | None
    unit: str
    ref: float | None          # the floor or the anchor, in the same unit
    ref_kind: str              # "floor", "target" or "must be"
    target_ratio: float | None = None  # ratio <= this meets the target (floors), None = value <= ref
    note: str = ""

    def cells(self) -> list[str]:
        if self.value is None:
            return [self.figure, "not measured (see log)", self._ref(), "", "no", self.note]
        ratio = self.value / self.ref if self.ref else None
        if self.ref_kind == "floor":
            ok = None if self.target_ratio is None else ratio is not None and ratio <= self.target_ratio
        elif self.ref_kind == "must be":
            ok = self.value == self.ref
        else:
            ok = None if self.ref is None else self.value <= self.ref
        return [self.figure, _fmt(self.value, self.unit), self._ref(),
                "" if ratio is None else f"{ratio:.2f}", {True: "yes", False: "**no**", None: "-"}[ok], self.note]

    def _ref(self) -> str:
        if self.ref is None:
            return "-"
        return f"{self.ref_kind} {_fmt(self.ref, self.unit)}"


def _fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "MB":
        return f"{v:.0f} MB"
    return f"{v:g}"


def rows(felix: dict, felix_legacy: dict, confd: dict, cluster: dict | None, scale: dict | None,
         scale_legacy: dict | None = None, policy: dict | None = None) -> list[Row]:
    r: list[Row] = []
    eps = int(felix.get("endpoints") or 1000)
    r.append(Row(f"Felix cold start (nft), {eps:,} endpoints / 100 profiles / 10 tags, process start -> "
                 "dataplane complete", felix.get("cold_ms"), "ms", felix.get("floor_ms"), "floor", 2.0,
                 "target <= 2x floor"))
    r.append(Row("  the same, against a floor applying Felix's exact rules (per-rule hash comments included)",
                 felix.get("cold_ms"), "ms", felix.get("floor_exact_ms"), "floor", 2.0, "target <= 2x floor"))
    r.append(Row("  of which Felix's own first apply (ipsets + iptables + routes, from its log)",
                 felix.get("apply_ms"), "ms", felix.get("floor_ms"), "floor", None))
    r.append(Row(f"Felix incremental, one endpoint added to {eps:,}, etcd put -> route present, p50",
                 felix.get("inc_p50_ms"), "ms", 100, "target"))
    r.append(Row("Felix incremental, p99", felix.get("inc_p99_ms"), "ms", 100, "target"))
    r.append(Row(f"Felix cold start (legacy iptables), {eps:,} endpoints", felix_legacy.get("cold_ms"), "ms",
                 felix_legacy.get("floor_ms"), "floor", 2.0, "target <= 2x floor"))
    r.append(Row("  the same, against the exact-rules floor (legacy)", felix_legacy.get("cold_ms"), "ms",
                 felix_legacy.get("floor_exact_ms"), "floor", 2.0, "target <= 2x floor"))
    r.append(Row("Felix incremental (legacy iptables), p99", felix_legacy.get("inc_p99_ms"), "ms", 100, "target"))
    if policy is not None:
        r.append(Row("Felix tiered policy: relabel, etcd put -> ipset and endpoint chain updated, p50",
                     policy.get("relabel_p50_ms"), "ms", 1000, "target"))
        r.append(Row("Felix tiered policy: relabel, p99", policy.get("relabel_p99_ms"), "ms", 1000, "target"))
    r.append(Row("confd: etcd change -> BIRD reconfigured, p50 of 200", confd.get("p50_ms"), "ms", 200, "target"))
    r.append(Row("confd: etcd change -> BIRD reconfigured, p99 of 200", confd.get("p99_ms"), "ms", 200, "target"))
    for n in (10, 100, 500):
        r.append(Row(f"confd: render + check + install + configure, {n} global peers", confd.get(f"peers{n}_ms"),
                     "ms", 2000 if n == 500 else None, "target"))
    r.append(Row("confd: BIRD reloads caused by 1,000 no-op writes", confd.get("noop_reloads"), "", 0, "must be"))
    burst_ms = confd.get("burst_ms")
    r.append(Row("confd: BIRD reloads caused by 100 peers put over ~40 ms (the debounce)", confd.get("burst_reloads"),
                 "", 2, "target", note="" if burst_ms is None else f"the burst took {burst_ms:.0f} ms"))
    bgp = (cluster or {}).get("bgp") or {}
    n_bgp = len(bgp.get("samples", [])) or 50
    r.append(Row(f"BGP convergence, workload added on A -> block route in B's kernel, p50 of {n_bgp}",
                 bgp.get("route_p50"), "s", 3, "target"))
    r.append(Row("BGP convergence, workload added on A -> block route in B's kernel, p99",
                 bgp.get("route_p99"), "s", 3, "target"))
    r.append(Row(f"BGP convergence, workload added on A -> first ping reply from a workload on B, p50 of {n_bgp}",
                 bgp.get("ping_p50"), "s", 3, "target"))
    r.append(Row("BGP convergence, workload added on A -> first ping reply from B, p99",
                 bgp.get("ping_p99"), "s", 3, "target", note="the headline figure"))
    ready = (cluster or {}).get("node_ready") or {}
    cold, rest = ready.get("together", []), ready.get("restart", [])
    if cold:
        r.append(Row(f"Node start -> ready, both nodes started together (worst of {len(cold)} node starts)",
                     max(s["ready"] for s in cold), "s", 10, "target",
                     note=f"median {statistics.median(s['ready'] for s in cold):.1f} s; worst: "
                          f"Felix ready {max(s['felix'] for s in cold):.1f} s, BGP Established "
                          f"{max(s['bgp'] for s in cold):.1f} s" + _official(cold)))
        if rest:
            r.append(Row(f"Node start -> ready, node restarted while its peer is up (worst of {len(rest)})",
                         max(s["ready"] for s in rest), "s", 10, "target",
                         note=f"median {statistics.median(s['ready'] for s in rest):.1f} s; worst: "
                          f"Felix ready {max(s['felix'] for s in rest):.1f} s, BGP Established "
                              f"{max(s['bgp'] for s in rest):.1f} s" + _official(rest)))
    else:
        r.append(Row("Node start -> ready", None, "s", 10, "target"))
    for s in (scale or {}).get("sizes", []):
        n = s["endpoints"]
        r.append(Row(f"Scale: Felix cold start, {n:,} endpoints (routes and chains complete)", s["cold_s"], "s",
                     s["floor_s"], "floor", None,
                     note=("target <= 10 s: " + ("met" if s["cold_s"] <= 10 else "**missed**")) if n == 5000 else ""))
    for s in (scale_legacy or {}).get("sizes", []):
        r.append(Row(f"Scale: Felix cold start, {s['endpoints']:,} endpoints, legacy iptables", s["cold_s"], "s",
                     s["floor_s"], "floor", None, note=f"peak RSS {s['hwm_mib'] * MIB_TO_MB:.0f} MB"))
    for s in (scale or {}).get("sizes", []):
        n = s["endpoints"]
        if n >= 1000:
            r.append(Row(f"Felix peak RSS (VmHWM), {n:,} endpoints", s["hwm_mib"] * MIB_TO_MB, "MB", 200, "target"))
    if not (scale or {}).get("sizes"):
        r.append(Row("Scale curve", None, "s", None, "floor"))
    return r


def _official(samples: list[dict]) -> str:
    got = [s["official"] for s in samples if s.get("official") is not None]
    return f", `calico-node -ready` first passed {max(got):.1f} s" if got else ""


def plot(scale: dict, path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = scale.get("sizes", [])
    if not sizes:
        return False
    n = [s["endpoints"] for s in sizes]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(n, [s["cold_s"] for s in sizes], "o-", label="Felix cold start (spawn -> routes + chains)")
    ax.plot(n, [s["floor_s"] for s in sizes], "s--", label="floor: ipset restore + iptables-restore + ip -batch")
    ax.axhline(10, color="grey", linestyle=":", linewidth=1)
    ax.text(n[0], 10.25, "targets at 5,000: cold start 10 s, peak RSS 200 MB (dotted)", color="grey", fontsize=8)
    ax.set_xlabel("local endpoints")
    ax.set_ylabel("seconds")
    ax.set_xticks(n)
    ax.set_xticklabels([f"{x:,}" for x in n])
    ax2 = ax.twinx()
    ax2.plot(n, [s["hwm_mib"] * MIB_TO_MB for s in sizes], "^-.", color="tab:red", label="Felix peak RSS (MB)")
    ax2.axhline(200, color="tab:red", linestyle=":", linewidth=1)
    ax2.set_ylabel("peak RSS, MB", color="tab:red")
    ax2.set_ylim(0, max(230, max(s["hwm_mib"] * MIB_TO_MB for s in sizes) * 1.1))
    ax.set_ylim(0, max(11.5, max(max(s["cold_s"], s["floor_s"]) for s in sizes) * 1.1))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    ax.set_title("Felix scale curve (100 profiles, 10 tags)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def machine() -> str:
    load = open("/proc/loadavg").read().split()[:3]
    ipt = subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, kernel {platform.release()}, "
            f"{os.cpu_count()} CPUs, load average {' '.join(load)} at the end, {ipt}, "
            f"Python {platform.python_version()}")


def write_doc(table: list[Row], status: dict, scale: dict | None, cluster: dict | None, have_png: bool,
              scale_legacy: dict | None = None) -> None:
    out = ["# Benchmarks", "",
           "Written by `make bench` (bench/report.py); do not edit by hand. Every figure comes from real",
           "processes (etcd, calico-felix, calico-confd, BIRD, calico-node) in network namespaces the",
           "benchmarks create and remove.", "",
           f"Machine: {machine()}.",
           "The machine is shared: timings carry that noise, and ratios to a floor measured",
           "in the same run are steadier than absolute figures.", "",
           "Floor = the same final state applied the cheapest way we know (one `ipset restore`, one",
           "`iptables-restore`, one `ip -batch`); ratio = measured / floor. Target = the figure the issue",
           "sets; ratio = measured / target (<= 1 meets it).", "",
           "| Figure | Measured | Floor or anchor | Ratio | Target met | Notes |", "|---|---|---|---|---|---|"]
    for row in table:
        out.append("| " + " | ".join(row.cells()) + " |")
    out += ["", "Benchmark runs: " + ", ".join(f"{k} exit {v[0]} ({v[1]:.0f} s)" for k, v in status.items()) + "."]
    if have_png:
        out += ["", "## Scale curve", "", "![Felix cold start and peak RSS by endpoint count](benchmarks-scale.png)", "",
                "| endpoints | cold start | routes complete | Felix's own apply | floor (ipset / iptables / routes) "
                "| ratio | peak RSS |", "|---|---|---|---|---|---|---|"]
        legacy = [dict(s, label=f"{s['endpoints']:,} (legacy)") for s in (scale_legacy or {}).get("sizes", [])]
        for s in [dict(s, label=f"{s['endpoints']:,} (nft)") for s in scale["sizes"]] + legacy:
            p = s["floor_parts_s"]
            apply_s = f"{s['felix_apply_s']:.2f} s" if s.get("felix_apply_s") is not None else "-"
            out.append(f"| {s['label']} | {s['cold_s']:.2f} s | {s['routes_s']:.2f} s | {apply_s} | "
                       f"{s['floor_s']:.2f} s ({p['ipset']:.2f} / {p['iptables']:.2f} / {p['routes']:.2f}) | "
                       f"{s['cold_s'] / s['floor_s']:.2f} | {s['hwm_mib'] * MIB_TO_MB:.0f} MB |")
        out += ["", "Felix's own breakdown of its first apply (from its log):", ""]
        out += [f"- {s['label']}: {s.get('felix_apply_breakdown') or 'not logged'}"
                for s in [dict(s, label=f"{s['endpoints']:,} (nft)") for s in scale["sizes"]] + legacy]
    out += ["", "## How each figure is measured", "",
            "- **Felix cold start / incremental** (`make bench-felix`, bench/bench_felix.py): etcd loaded first;",
            "  `calico-felix` spawned; dataplane complete = every endpoint route in the kernel (Felix writes",
            "  routes after ipsets and iptables). Incremental: one endpoint put into etcd -> its route present.",
            "- **confd** (`make bench-confd`, bench/bench_confd.py): etcd write -> BIRD answered `configure`",
            "  with 0003; the peer figures time render + `bird -p` + atomic install + `configure`.",
            "- **BGP convergence** (bench/bench_cluster.py): two real `calico-node` hosts (calico_testing/cluster.py).",
            "  Node B learns node A's /26 block aggregates, not /32s, so each of the workloads is added on A",
            "  (`calicoctl container add <ns> <ip>`) with an address in a block nobody owns yet: every sample",
            "  goes through IPAM block claim -> A's confd -> A's BIRD -> BGP UPDATE -> B's BIRD -> B's kernel.",
            "  Timed from `container add` returning to the block route via A in B's kernel, and to the first",
            "  reply of a 20 ms ping from a workload on B (which also needs A's Felix to program the",
            "  endpoint; its profile is set by one etcd write inside the window)."]
    if cluster and cluster.get("bgp"):
        b = cluster["bgp"]
        out.append(f"  `container add` itself took p50 {b['add_p50']:.2f} s; counted from invoking it, the first "
                   f"ping reply came p50 {b['ping_from_call_p50']:.2f} s / p99 {b['ping_from_call_p99']:.2f} s.")
    out += ["- **Node start -> ready** (bench/bench_cluster.py): `calico-node` spawned -> Felix's /readiness",
            "  answers 200 and BIRD has every mesh session Established, polled every 20 ms by a probe inside",
            "  the node's namespace. First both nodes start together (3 rounds), then node B is restarted",
            "  alone 3 times while A is up. Cold starts are dominated by BIRD bringing the BGP session up.",
            "  The official `calico-node -ready` is then polled back to back (each call spawns Pythons, so",
            "  its time is coarse) and must pass too; the Notes column gives when it first did.",
            "- **Scale curve and RSS** (bench/bench_scale.py): for each size, etcd loaded first, N veths made",
            "  with one `ip -batch`, `calico-felix` spawned; cold start = every route present and both",
            "  per-endpoint chains in the filter table; peak RSS = VmHWM after the first apply and stale",
            "  cleanup. The floor is applied to a second namespace with the same interfaces.", ""]
    out += sections(status)
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w") as f:
        f.write("\n".join(out))


def sections(status: dict) -> list[str]:
    """The per-benchmark sections in docs/bench/, in name order, each marked stale if its run failed."""
    out: list[str] = []
    if not os.path.isdir(SECTION_DIR):
        return out
    for fname in sorted(os.listdir(SECTION_DIR)):
        if not fname.endswith(".md"):
            continue
        name = fname[:-3]
        with open(os.path.join(SECTION_DIR, fname)) as f:
            body = f.read().rstrip("\n")
        # a section links its plots beside itself; the document sits one directory up
        body = re.sub(r"\]\(([^/():]+\.png)\)", r"](bench/\1)", body)
        out += ["", body]
        rc = status.get(name, (0, 0.0))[0]
        if rc != 0:
            out += ["", f"*(The last `make bench` run of {name} failed with exit {rc}: the figures above are"
                        " from an earlier run.)*"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", help="directory for the benchmarks' logs and JSON (default: a new temp dir)")
    ap.add_argument("--reuse", default="", help="comma-separated benchmarks to take from --logs instead of running")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    logdir = a.logs or tempfile.mkdtemp(prefix="calico-bench-")
    os.makedirs(logdir, exist_ok=True)
    reuse = {x for x in a.reuse.split(",") if x}
    status: dict[str, tuple[int, float]] = {}
    t0 = time.monotonic()
    for name in BENCHES:
        status[name] = (0, 0.0) if name in reuse else run_bench(name, logdir)
    for name, argv in SECTION_BENCHES.items():
        if name not in reuse:
            BENCHES[name] = argv + ["--section", os.path.join(SECTION_DIR, f"{name}.md")]
            status[name] = run_bench(name, logdir)

    def text(name: str) -> str:
        try:
            return open(os.path.join(logdir, f"{name}.log")).read()
        except OSError:
            return ""

    felix, confd = parse_felix(text("felix")), parse_confd(text("confd"))
    felix_legacy = parse_felix(text("felix-legacy"))
    policy = parse_policy(text("policy"))
    cluster = load_json(os.path.join(logdir, "cluster.json")) if status["cluster"][0] == 0 else None
    scale = load_json(os.path.join(logdir, "scale.json")) if status["scale"][0] == 0 else None
    scale_legacy = (load_json(os.path.join(logdir, "scale-legacy.json"))
                    if status["scale-legacy"][0] == 0 else None)
    have_png = bool(scale) and plot(scale, PNG)
    table = rows(felix, felix_legacy, confd, cluster, scale, scale_legacy, policy)
    write_doc(table, status, scale, cluster, have_png, scale_legacy)
    print(f"\nwrote {os.path.relpath(DOC, ROOT)}" + (f" and {os.path.relpath(PNG, ROOT)}" if have_png else "")
          + f" in {time.monotonic() - t0:.0f} s; logs in {logdir}")
    with open(DOC) as f:
        print(f.read())
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
