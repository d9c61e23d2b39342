"""What deleting a released address's conntrack entries costs: the `conntrack` CLI vs pyroute2 netlink.

Felix deletes the entries of every address a local endpoint gave up
(felix/dataplane/conntrack.py).  Two ways were candidates:
- CLI: Felix's `ConntrackFlusher` as shipped, `conntrack -D --orig-src A` and
  `--reply-src A` per address, four processes at a time (what Felix runs);
- netlink: pyroute2's `AsyncConntrack`, one kernel-filtered dump per address and
  direction, then one delete request per matching entry.
Each case fills a fresh table with N TCP entries spread over 20
workload addresses (kernel inserts over netlink, not timed), then times the
deletion of the entries of 1 or 10 of those addresses, and checks that both
ways leave the same entries behind.  The process runs inside a namespace it
creates (setns of the main thread), so no `ip netns exec` is timed: the CLI
figures are what Felix pays on a host.  Shared 2-core machine: wall time.

Run as root: .venv/bin/python bench/bench_conntrack.py [--tables 200,2000,5000] [--addrs 1,10]
             [--section docs/bench/conntrack.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SPREAD = 20          # workload addresses the table's entries are spread over


def _addr(i: int) -> str:
    return f"10.9.{i}.1"


async def fill(n: int) -> int:
    from pyroute2.conntrack import AsyncConntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    ct = AsyncConntrack()
    try:
        for i in range(n):
            a, b, port = _addr(i % SPREAD), f"10.8.{(i // 250) % 250}.{i % 250 + 1}", 1000 + i // SPREAD
            await ct.entry("add", timeout=600,
                           tuple_orig=NFCTAttrTuple(saddr=b, daddr=a, proto=6, sport=port, dport=80),
                           tuple_reply=NFCTAttrTuple(saddr=a, daddr=b, proto=6, sport=80, dport=port))
        return await ct.count()
    finally:
        ct.close()


async def count() -> int:
    from pyroute2.conntrack import AsyncConntrack

    ct = AsyncConntrack()
    try:
        return await ct.count()
    finally:
        ct.close()


async def flush_cli(addrs: list[str]) -> None:
    from felix.dataplane.cmd import CmdRunner
    from felix.dataplane.conntrack import ConntrackFlusher

    ct = ConntrackFlusher(CmdRunner(None))
    ct.set_owners({f"{a}/32": ("k", f"cali{i}") for i, a in enumerate(addrs)})
    ct.set_owners({})
    await ct.apply()
    assert ct.stats.flushed_addresses == len(addrs), ct.stats


async def flush_netlink(addrs: list[str]) -> None:
    from pyroute2.conntrack import AsyncConntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    ct = AsyncConntrack()
    try:
        for a in addrs:
            for direction in ("tuple_orig", "tuple_reply"):
                found = [e async for e in await ct.dump_entries(**{direction: NFCTAttrTuple(saddr=a)})]
                for e in found:
                    await ct.delete(e)
    finally:
        ct.close()


async def run(tables: list[int], addr_counts: list[int]) -> list[dict]:
    rows = []
    for n in tables:
        for k in addr_counts:
            addrs = [_addr(i) for i in range(k)]
            row = {"table": n, "addrs": k, "deleted": n * k // SPREAD}
            for name, fn in (("cli", flush_cli), ("netlink", flush_netlink)):
                subprocess.run(["conntrack", "-F"], capture_output=True)
                await fill(n)
                t0 = time.perf_counter()
                await fn(addrs)
                row[name] = time.perf_counter() - t0
                row[f"{name}_left"] = await count()
            assert row["cli_left"] == row["netlink_left"] == n - row["deleted"], row
            print(f"table {n:5d}, {k:2d} address(es), {row['deleted']:4d} entries deleted: "
                  f"cli {row['cli'] * 1000:7.1f} ms, netlink {row['netlink'] * 1000:7.1f} ms", flush=True)
            rows.append(row)
    subprocess.run(["conntrack", "-F"], capture_output=True)
    return rows


def section(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = os.path.splitext(path)[0] + ".png"
    load = os.getloadavg()[0]
    lines = ["## Conntrack deletion of released addresses", "",
             "| table entries | addresses released | entries deleted | `conntrack` CLI (Felix) | pyroute2 netlink |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['table']} | {r['addrs']} | {r['deleted']} | {r['cli'] * 1000:.0f} ms "
                     f"| {r['netlink'] * 1000:.0f} ms |")
    lines += ["", f"![conntrack deletion time]({os.path.basename(png)})", "",
              "Measured by `bench/bench_conntrack.py` (`make bench-conntrack`) in a namespace the bench "
              "creates and enters (no `ip netns exec` in the timings): a fresh table of N TCP "
              f"entries spread over {SPREAD} workload addresses, then the entries of 1 or 10 of them deleted "
              "by Felix's `ConntrackFlusher` (`conntrack -D --orig-src`/`--reply-src` per address, four "
              "processes at a time) and, on an identical table, by pyroute2's `AsyncConntrack` (a "
              "kernel-filtered dump per address and direction, one delete request per entry); both must "
              "leave the same entries.  pyroute2 spends about a millisecond of Python per deleted entry, "
              "the CLI filters and deletes in C: Felix uses the CLI.  Shared 2-core machine "
              f"(1-minute load {load:.1f} when written): wall time, not CPU time.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['table']}/{r['addrs']}" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["cli"] * 1000 for r in rows], 0.4, label="conntrack CLI (Felix)")
    ax.bar([x + 0.2 for x in xs], [r["netlink"] * 1000 for r in rows], 0.4, label="pyroute2 netlink")
    ax.set_xticks(list(xs), labels)
    ax.set_xlabel("table entries / addresses released")
    ax.set_ylabel("ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", default="200,2000,5000")
    ap.add_argument("--addrs", default="1,10")
    ap.add_argument("--section", help="write the markdown section (and its PNG beside it) to this path")
    a = ap.parse_args()
    from felix.dataplane.nsthread import setns

    ns = f"bench-ct-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        setns(ns)            # this thread (the whole bench) now lives in the namespace
        rows = asyncio.run(run([int(x) for x in a.tables.split(",")], [int(x) for x in a.addrs.split(",")]))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    if a.section:
        section(rows, a.section)
        print(f"wrote {a.section}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
