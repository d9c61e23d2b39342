"""BGP at scale on one machine: full mesh versus 2 route reflectors, 10/25/50 real calico-nodes.

Every node is a real `calico-node` (supervisord, Felix, confd, the BIRD shim and BIRD) in its own
network namespace, built by calico_testing/cluster.py; all of them share this machine's cores.

Per cluster size and mode:
- start -> all Established: every node spawned at once (one loop), then each node's BIRD is polled
  through its control socket until it has all its sessions Established (mesh: one per other node;
  reflectors: a client one per reflector, a reflector one per other node).  "ready" = that node's
  sessions all Established; reported: the slowest node (all ready) and the median node.
- propagation: a workload with an address in a block nobody owns yet is added on the LAST node
  (`calicoctl container add`, which claims the block); timed until the block's route via the last
  node is in the FIRST node's kernel (`ip route`), and until a workload on the first node gets a
  ping reply (20 ms ping).  With reflectors, first and last node are clients (the reflectors are
  nodes 2 and 3), so the route is reflected.  Reported from `container add` returning (the BGP
  path: confd render, BIRD announce, reflect, install) and from its start (what an operator sees,
  including calicoctl's own start-up).  p50/p99 by nearest rank.
- sessions per node: BGP protocols in a client's / a reflector's BIRD.
- memory: resident set (RSS) of every process in each node's namespace, summed per node (shared
  library pages count in every process, as RSS does), and PSS (shared pages divided among the
  processes that map them), both after the propagation samples, at idle.
- idle CPU: CPU time of all node processes over a 20 s idle window, per node, as % of one core.

Results are merged into docs/bench/rr_scale.json by (nodes, mode), so sizes can be run separately
(the 50-node run is heavy on a shared machine); `--section` writes the markdown section and a plot
from everything in that file.

Run as root: .venv/bin/python bench/bench_rr_scale.py [--sizes 10,25,50] [--modes mesh,rr]
             [--samples 20] [--section docs/bench/rr_scale.md]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cluster import pct, time_new_block  # noqa: E402

from calico_testing.cluster import Cluster, Node  # noqa: E402

POOL = "10.66.0.0/16"
FIRST_BLOCK = 64  # 10.66.16.0/26 onwards: clear of the blocks auto-assignment claims first
ALLOW_ALL = json.dumps({"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})
RESULTS = os.path.join(ROOT, "docs", "bench", "rr_scale.json")
IDLE_WINDOW = 20.0


def pss_kb(node: Node) -> int:
    total = 0
    for pid in node.ns.pids():
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total


def start_all(c: Cluster, want: dict[str, int], timeout: float) -> dict[str, float]:
    """Spawn every node at once; seconds from the first spawn to each node's sessions all Established."""
    t0 = time.monotonic()
    for n in c.nodes:
        c.start_node(n)
    ready: dict[str, float] = {}
    while len(ready) < len(c.nodes):
        if time.monotonic() - t0 > timeout:
            late = [n for n in c.nodes if n.name not in ready]
            detail = "; ".join(f"{n.name}: " + ", ".join(f"{k} {v}" for k, v in n.bgp_sessions().items()
                                                          if v != "Established") for n in late[:3])
            raise SystemExit(f"not all Established after {timeout}s ({len(late)} nodes): {detail}")
        for n in c.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise SystemExit(f"calico-node on {n.name} exited: {c.node_output(n)[-1500:]}")
            if n.name not in ready and n.established() >= want[n.name]:
                ready[n.name] = time.monotonic() - t0
        time.sleep(0.2)
    return ready


def propagation(c: Cluster, first: Node, last: Node, samples: int, timeout: float = 60) -> list[dict]:
    src, _ = c.add_workload(first, "ipv4", profile="open")
    blocks = list(ipaddress.ip_network(POOL).subnets(new_prefix=26))
    return [time_new_block(c, last, first, src, blocks[FIRST_BLOCK + i], timeout) for i in range(samples)]


def idle(c: Cluster, window: float) -> tuple[list[int], list[int], float]:
    """(RSS kB per node, PSS kB per node, CPU % of one core per node over `window` seconds)."""
    before = {n.name: n.usage()[1] for n in c.nodes}
    t0 = time.monotonic()
    time.sleep(window)
    after = {n.name: n.usage() for n in c.nodes}
    elapsed = time.monotonic() - t0
    hz = os.sysconf("SC_CLK_TCK")
    cpu = sum(after[n][1] - before[n] for n in before) / hz / elapsed / len(c.nodes) * 100
    return [after[n.name][0] for n in c.nodes], [pss_kb(n) for n in c.nodes], cpu


def load_now() -> str:
    """The machine's 1/5/15-minute load averages, as `uptime` shows them: the machine is shared, so
    every row says how busy it was around its run."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run_one(n: int, mode: str, samples: int) -> dict:
    c = Cluster(n_nodes=n, start=False)
    try:
        a = c.nodes[0]
        a.ctl("pool", "add", POOL)
        a.ctl("profile", "add", "open")
        a.ctl("profile", "open", "rule", "update", input=ALLOW_ALL)
        if mode == "rr":
            reflectors = c.nodes[1:3]
            want = c.use_route_reflectors(reflectors, cluster_id="1.0.0.1")
        else:
            reflectors = []
            want = {x.name: n - 1 for x in c.nodes}
        ready = start_all(c, want, timeout=300)
        first, last = c.nodes[0], c.nodes[-1]
        prop = propagation(c, first, last, samples)
        time.sleep(10)  # let start-up work (status writes, Felix resyncs) settle before the idle window
        rss, pss, cpu = idle(c, IDLE_WINDOW)
        client_sessions = len(first.bgp_sessions())
        rr_sessions = len(reflectors[0].bgp_sessions()) if reflectors else None
        times = sorted(ready.values())
        return {
            "nodes": n, "mode": mode, "samples": samples,
            "all_established_s": round(times[-1], 2), "median_ready_s": round(pct(times, 50), 2),
            "route_p50_s": round(pct([s["route"] for s in prop], 50), 3),
            "route_p99_s": round(pct([s["route"] for s in prop], 99), 3),
            "ping_p50_s": round(pct([s["ping"] for s in prop], 50), 3),
            "ping_p99_s": round(pct([s["ping"] for s in prop], 99), 3),
            "route_from_call_p50_s": round(pct([s["route_from_call"] for s in prop], 50), 3),
            "route_from_call_p99_s": round(pct([s["route_from_call"] for s in prop], 99), 3),
            "ping_from_call_p99_s": round(pct([s["ping_from_call"] for s in prop], 99), 3),
            "sessions_client": client_sessions, "sessions_reflector": rr_sessions,
            "rss_mb_per_node": round(sum(rss) / len(rss) / 1024, 1), "rss_mb_max": round(max(rss) / 1024, 1),
            "rss_mb_total": round(sum(rss) / 1024), "pss_mb_per_node": round(sum(pss) / len(pss) / 1024, 1),
            "idle_cpu_pct_per_node": round(cpu, 2),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    finally:
        c.close()


def load() -> list[dict]:
    try:
        with open(RESULTS) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def merge(results: list[dict], new: dict) -> list[dict]:
    kept = [r for r in results if (r["nodes"], r["mode"]) != (new["nodes"], new["mode"])]
    return sorted(kept + [new], key=lambda r: (r["nodes"], r["mode"]))


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for mode, label, style in (("mesh", "full mesh", "o-"), ("rr", "2 route reflectors", "s-")):
        rs = [r for r in results if r["mode"] == mode and "failed" not in r]
        xs = [r["nodes"] for r in rs]
        axes[0].plot(xs, [r["all_established_s"] for r in rs], style, label=label)
        axes[1].plot(xs, [r["route_p99_s"] for r in rs], style, label=f"{label}: route p99")
        axes[1].plot(xs, [r["ping_p99_s"] for r in rs], style.replace("-", "--"), label=f"{label}: ping p99")
        axes[2].plot(xs, [r["rss_mb_per_node"] for r in rs], style, label=label)
    axes[0].axhline(30, color="grey", lw=0.8, ls=":")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[2].axhline(120, color="grey", lw=0.8, ls=":")
    for ax, title, unit in ((axes[0], "start -> all Established", "s"),
                            (axes[1], "new block: last node -> first node", "s"),
                            (axes[2], "RSS per node (all calico processes)", "MB")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("nodes")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def section(results: list[dict], path: str) -> None:
    # The plot sits beside the section (docs/bench/) and is linked relative to it; bench/report.py
    # points the link one directory down when it copies the section into docs/benchmarks.md.
    png = os.path.splitext(path)[0] + ".png"
    plot(results, png)
    rows = []
    for r in results:
        if "load_before" in r:
            r = dict(r, when=f"{r['when']}, load {r['load_before']} before, {r['load_after']} after")
        if "failed" in r:  # a run that did not complete is shown, not dropped
            rows.append(f"| {r['nodes']} | {'2 reflectors' if r['mode'] == 'rr' else 'full mesh'} "
                        f"| did not complete: {r['failed']} | | | | | | | | | {r['when']} |")
            continue
        rr = r["sessions_reflector"]
        rows.append(f"| {r['nodes']} | {'2 reflectors' if r['mode'] == 'rr' else 'full mesh'} "
                    f"| {r['all_established_s']} | {r['median_ready_s']} "
                    f"| {r['route_p50_s']} / {r['route_p99_s']} | {r['ping_p50_s']} / {r['ping_p99_s']} "
                    f"| {r['route_from_call_p99_s']} "
                    f"| {r['sessions_client']}{f' ({rr} on a reflector)' if rr is not None else ''} "
                    f"| {r['rss_mb_per_node']} ({r['pss_mb_per_node']}) | {r['rss_mb_total']} "
                    f"| {r['idle_cpu_pct_per_node']} | {r['when']} |")
    text = f"""## BGP at scale: full mesh versus route reflectors

Real calico-nodes (supervisord, Felix, confd, the BIRD shim, BIRD) in network namespaces on one
2-core machine **shared with other engineers' work while it ran** (numbers are pessimistic and
noisy); produced by `make bench-rr` (`bench/bench_rr_scale.py`).

| nodes | mode | start -> all Established (s) | median node ready (s) | route p50 / p99 (s) | ping p50 / p99 (s) | route p99 from `container add` start (s) | BGP sessions per node | RSS per node MB (PSS) | RSS total MB | idle CPU % of a core per node | measured |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![mesh vs reflectors: start time, propagation, RSS per node]({os.path.basename(png)})

How it is measured: every node is spawned at once; "ready" is a node's BIRD with all its sessions
Established (mesh: one per other node; reflectors: one per reflector on a client, one per other
node on a reflector), polled on its control socket every 0.2 s. Propagation: a workload whose
address is in a block nobody owns yet is added on the last node; timed from `calicoctl container
add` returning until the block's route via the last node is in the first node's kernel (route) and
until a workload on the first node gets a ping reply (20 ms ping); with reflectors the first and
last nodes are clients, so the route is reflected (nodes 2 and 3 reflect, cluster 1.0.0.1).
Memory is at idle after those samples: RSS of every process in the node's namespace summed (a
shared library page counts in each process) and PSS (shared pages split between processes). Idle
CPU: all node processes over a {IDLE_WINDOW:.0f} s window. "measured" gives the machine's 1/5/15-minute
load averages (as `uptime` prints them) before and after each run: other work shared the cores.
The harness raises the kernel's neighbour-table limits to fit the cluster: one ARP table serves
every namespace, and at its default 1024 entries a 50-node mesh overflowed it ("No route to host",
sessions stuck in Connect). Goals at 50 nodes: route p99 <= 1 s with reflectors, every node ready
<= 30 s after a simultaneous start, RSS <= 120 MB per node.
"""
    with open(path, "w") as f:
        f.write(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,25,50")
    ap.add_argument("--modes", default="mesh,rr")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--section", help="write the markdown section (and its PNG beside it) to this path")
    ap.add_argument("--no-run", action="store_true", help="only rewrite the section from the saved results")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    results = load()
    if not a.no_run:
        for n in (int(x) for x in a.sizes.split(",") if x):
            for mode in (m for m in a.modes.split(",") if m):
                print(f"==> {n} nodes, {mode}", flush=True)
                load_before = load_now()
                try:
                    r = run_one(n, mode, a.samples)
                except SystemExit as e:  # recorded as a failed run; the other sizes and modes still run
                    print(f"FAILED: {e}", flush=True)
                    r = {"nodes": n, "mode": mode, "failed": str(e)[:300],
                         "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
                r.update(load_before=load_before, load_after=load_now())
                print(json.dumps(r), flush=True)
                results = merge(results, r)
                os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
                with open(RESULTS, "w") as f:
                    json.dump(results, f, indent=1)
    if a.section:
        section(results, a.section)
        print(f"wrote {a.section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
