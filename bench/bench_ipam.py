"""IPAM throughput and `ipam check` cost, against a real etcd.

- single process: one process on one host calls `Ipam.auto_assign` for one
  address per handle (with workload attributes), N times in a row, into an
  empty /16 pool; allocations per second = N / wall time.
- 5 in parallel: five processes (three on host A, two on host B) started
  together behind a barrier, each doing the same; allocations per second = all
  addresses / (last finish - first start).
- `ipam check` time: the datastore is filled (by five parallel processes) to
  1,000 ... 10,000 allocations, each with its workload endpoint record (written
  in batches by the bench, not timed), and `libcalico.ipam_check.check` is
  timed in-process, and `calicoctl ipam check` as a command (interpreter
  start-up included).

Each worker is a fresh interpreter; its import time is outside the timed
region.  The machine is shared (2 cores, other work running): figures are
wall time, not CPU time.

Run as root: .venv/bin/python bench/bench_ipam.py [--single 1000] [--parallel 400] [--fill 10000]
             [--section docs/bench/ipam.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

POOL = "10.120.0.0/16"
ORCH = "bench"


# ---- worker (a separate process) -------------------------------------------------------------

async def _work(endpoint: str, host: str, tag: str, count: int) -> dict:
    from libcalico.datastore import DatastoreClient
    from libcalico.ipam import Ipam

    client = DatastoreClient([endpoint], timeout=30)
    await client.current_revision()
    ipam = Ipam(client)
    print("ready", flush=True)
    sys.stdin.readline()  # the barrier: every worker starts on the same "go"
    start = time.monotonic()
    held = {}
    for i in range(count):
        handle = f"{tag}-{i}"
        v4, _ = await ipam.auto_assign(host, handle, num4=1, partial=False, attrs={
            "host": host, "orchestrator": ORCH, "workload": handle, "endpoint": "eth0"})
        held[handle] = v4[0]
    end = time.monotonic()
    await client.close()
    return {"start": start, "end": end, "held": held}


def run_workers(endpoint: str, jobs: list[tuple[str, str, int]]) -> tuple[float, dict[str, tuple[str, str]]]:
    """Run the jobs (host, tag, count) in parallel; (seconds from first start to last end, handle -> (host, ip))."""
    procs = [(host, subprocess.Popen([sys.executable, __file__, "--worker", endpoint, host, tag, str(n)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
             for host, tag, n in jobs]
    for _, p in procs:
        assert p.stdout.readline().strip() == "ready"
    for _, p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for host, p in procs:
        out, _ = p.communicate(timeout=3600)
        assert p.returncode == 0, f"worker failed ({p.returncode})"
        results.append((host, json.loads(out.strip().splitlines()[-1])))
    wall = max(r["end"] for _, r in results) - min(r["start"] for _, r in results)
    held = {h: (host, ip) for host, r in results for h, ip in r["held"].items()}
    return wall, held


# ---- the bench -----------------------------------------------------------------------------

async def write_endpoints(endpoint: str, held: dict[str, tuple[str, str]]) -> None:
    """One endpoint record per allocation, 100 to a transaction (setup, not timed)."""
    from libcalico import keys
    from libcalico.datastore import DatastoreClient, op_put

    client = DatastoreClient([endpoint], timeout=30)
    items = sorted(held.items())
    for i in range(0, len(items), 100):
        ops = []
        for handle, (host, ip) in items[i:i + 100]:
            ep = {"state": "active", "name": f"cali{abs(hash(handle)) % 10**10:010d}", "mac": "ee:ee:ee:ee:ee:ee",
                  "profile_ids": [], "ipv4_nets": [f"{ip}/32"]}
            ops.append(op_put(keys.workload_endpoint(host, ORCH, handle, "eth0"), json.dumps(ep)))
        await client.txn([], ops, [], what="bench endpoints")
    await client.close()


async def time_check(endpoint: str) -> tuple[float, object]:
    from libcalico.datastore import DatastoreClient
    from libcalico.ipam_check import check

    client = DatastoreClient([endpoint], timeout=60)
    t = time.monotonic()
    report = await check(client)
    took = time.monotonic() - t
    await client.close()
    return took, report


def time_check_cli(endpoint: str) -> float:
    env = dict(os.environ, ETCD_ENDPOINTS=endpoint)
    t = time.monotonic()
    p = subprocess.run([os.path.join(ROOT, ".venv", "bin", "calicoctl"), "ipam", "check"], env=env,
                       capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t
    assert p.returncode == 0, f"ipam check not clean: {p.stdout[-2000:]}{p.stderr[-2000:]}"
    return took


def bench(single: int, parallel: int, fill: int) -> dict:
    from calico_testing.etcd import EtcdServer
    from libcalico import keys

    etcd = EtcdServer().start()
    res: dict = {"checks": []}
    try:
        etcd.put(keys.pool(POOL), json.dumps({"cidr": POOL}))
        ep = etcd.endpoint
        held: dict[str, tuple[str, str]] = {}

        def checkpoint() -> None:
            asyncio.run(write_endpoints(ep, {h: v for h, v in held.items() if h not in written}))
            written.update(held)
            took, report = asyncio.run(time_check(ep))
            assert report.clean and report.allocations == len(held), report.to_json()[:2000]
            cli = time_check_cli(ep)
            res["checks"].append({"allocations": len(held), "check_s": took, "cli_s": cli})
            print(f"ipam check at {len(held)} allocations: {took:.2f}s in-process, {cli:.2f}s calicoctl", flush=True)

        written: dict = {}
        wall, got = run_workers(ep, [("hostA", "s", single)])
        held.update(got)
        res["single"] = {"n": single, "s": wall, "rate": single / wall, "load": os.getloadavg()[0]}
        print(f"single process: {single} allocations in {wall:.2f}s = {single / wall:.0f}/s", flush=True)
        checkpoint()
        jobs = [("hostA", "pa", parallel), ("hostA", "pb", parallel), ("hostA", "pc", parallel),
                ("hostB", "pd", parallel), ("hostB", "pe", parallel)]
        wall, got = run_workers(ep, jobs)
        held.update(got)
        n = 5 * parallel
        res["parallel"] = {"n": n, "s": wall, "rate": n / wall, "load": os.getloadavg()[0]}
        print(f"5 processes: {n} allocations in {wall:.2f}s = {n / wall:.0f}/s", flush=True)
        assert len(set(ip for _, ip in held.values())) == len(held), "an address was handed out twice"
        checkpoint()
        step = 0
        while len(held) < fill:
            want = min(fill, (len(held) // 2500 + 1) * 2500) - len(held)
            per = [want // 5 + (1 if i < want % 5 else 0) for i in range(5)]
            jobs = [("hostA" if i < 3 else "hostB", f"f{step}{chr(97 + i)}", n) for i, n in enumerate(per) if n]
            step += 1
            _, got = run_workers(ep, jobs)
            held.update(got)
            checkpoint()
    finally:
        etcd.close()
    return res


def section(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = os.path.splitext(path)[0] + ".png"
    xs = [c["allocations"] for c in res["checks"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(xs, [c["check_s"] for c in res["checks"]], "o-", label="check() in-process")
    ax.plot(xs, [c["cli_s"] for c in res["checks"]], "s-", label="calicoctl ipam check")
    ax.set_xlabel("allocations (each with its endpoint)")
    ax.set_ylabel("seconds")
    ax.set_title("ipam check time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    last = res["checks"][-1]
    rows = [
        f"| single process | {res['single']['n']} | {res['single']['s']:.2f} s | {res['single']['rate']:.0f} /s | "
        f"{res['single']['load']:.1f} |",
        f"| 5 processes, 2 hosts | {res['parallel']['n']} | {res['parallel']['s']:.2f} s | "
        f"{res['parallel']['rate']:.0f} /s | {res['parallel']['load']:.1f} |",
    ]
    checks = [f"| {c['allocations']} | {c['check_s']:.2f} s | {c['cli_s']:.2f} s |" for c in res["checks"]]
    text = "\n".join([
        "## IPAM",
        "",
        "| allocation | addresses | wall time | allocations/s | machine load (1 min) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"`ipam check` at {last['allocations']} allocations: {last['check_s']:.2f} s "
        f"(in-process), {last['cli_s']:.2f} s (`calicoctl ipam check`, start-up included).",
        "",
        "| allocations | check() | calicoctl ipam check |",
        "|---|---|---|",
        *checks,
        "",
        f"![ipam check time]({os.path.basename(png)})",
        "",
        "Measured by `bench/bench_ipam.py` (`make bench-ipam`) against a real etcd: `Ipam.auto_assign` of one "
        "address per handle (with workload attributes) into an empty /16 pool of /26 blocks, one process, "
        "then five processes (three on one host, two on another) released together by a barrier; the rate "
        "is addresses over the time from the first start to the last finish, interpreter start-up "
        "excluded.  The check runs over a datastore filled by five parallel processes, every allocation "
        "with its endpoint record, and must come out clean.  Shared 2-core machine (other work running, see "
        "the load column): wall time, not CPU time.  Five processes on two cores contend for CPU, and the "
        "three on one host for the same block (every allocation is a compare-and-swap on its block record).",
        "",
    ])
    with open(path, "w") as f:
        f.write(text)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        endpoint, host, tag, count = sys.argv[2:6]
        print(json.dumps(asyncio.run(_work(endpoint, host, tag, int(count)))), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single", type=int, default=1000, help="allocations by the single process")
    ap.add_argument("--parallel", type=int, default=400, help="allocations by each of the 5 processes")
    ap.add_argument("--fill", type=int, default=10000, help="allocations for the last ipam check")
    ap.add_argument("--section", help="write the markdown section (and its PNG beside it) to this path")
    a = ap.parse_args()
    res = bench(a.single, a.parallel, a.fill)
    print(json.dumps(res))
    if a.section:
        section(res, a.section)
        print(f"wrote {a.section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
