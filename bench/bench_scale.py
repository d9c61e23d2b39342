"""Felix at scale (`make bench` runs it): cold start and memory for 100, 1,000 and 5,000 endpoints.

For each size N, in throwaway namespaces:
- etcd (on the Felix namespace's loopback) is loaded first with N local
  endpoints, 100 profiles and 10 tags (the same documents as `make bench-felix`);
- the namespace gets N workload veths, made with one `ip -batch` (setup, not timed);
- `calico-felix` is spawned; cold start = spawn -> dataplane complete, i.e.
  every endpoint's /32 route in the kernel AND both of its iptables chains
  (felix-to-/felix-from-<iface>) in the filter table;
- peak RSS is Felix's VmHWM from /proc/<pid>/status once it has also finished
  its stale cleanup (so the figure covers the whole start-up, not a mid-point);
- the floor: the same final state (from Felix's own calculator) applied to a
  second namespace with the same interfaces by one `ipset restore`, one
  `iptables-restore` and one `ip -batch` (bench/bench_dataplane.py).

Targets: cold start at 5,000 endpoints <= 10 s, RSS <= 200 MB at 5,000.
Run as root: .venv/bin/python bench/bench_scale.py [--sizes 100,1000,5000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_dataplane import (  # noqa: E402
    endpoint_ip,
    floor_ipset,
    floor_iptables,
    floor_routes,
    ifname,
    make_interfaces,
)
from bench.bench_felix import HOST, floor_state, kernel_routes, populate  # noqa: E402

FELIX = os.path.join(ROOT, ".venv", "bin", "calico-felix")
LIMIT = 300.0  # seconds; a cold start slower than this is reported as a failure


def _ns_cleanup(name: str) -> None:
    for p in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def run_inner(ns: str, argv: list[str], what: str) -> dict:
    """Run a benchmark's inner half inside `ns`, echoing its output; the dict of its `RESULT {json}` line."""
    r = subprocess.run(["ip", "netns", "exec", ns] + argv, stdout=subprocess.PIPE, text=True)
    result = None
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print(line, flush=True)
    if r.returncode != 0 or result is None:
        raise SystemExit(f"{what} failed (exit {r.returncode})")
    return result


def settle(limit: float = 15.0) -> float:
    """Wait until the kernel has finished tearing down earlier namespaces; returns the seconds waited.

    `ip netns del` returns at once, but the kernel then unregisters the
    namespace's devices in the background under the RTNL lock (about 1.3 s for
    10,000 veths here), which would stall the next size's route writes and
    inflate its figures.  Settled = a veth add + delete in a scratch namespace
    takes under 150 ms twice in a row (or `limit` passes).
    """
    scratch = f"bscale{os.getpid()}-settle"
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    t0 = time.perf_counter()
    try:
        fast = 0
        while fast < 2 and time.perf_counter() - t0 < limit:
            t = time.perf_counter()
            subprocess.run(["ip", "-n", scratch, "link", "add", "st0", "type", "veth", "peer", "name", "st1"],
                           check=True, capture_output=True)
            subprocess.run(["ip", "-n", scratch, "link", "del", "st0"], check=True, capture_output=True)
            fast = fast + 1 if time.perf_counter() - t < 0.15 else 0
        return time.perf_counter() - t0
    finally:
        subprocess.run(["ip", "netns", "del", scratch], capture_output=True)


def one_size(n: int, a: argparse.Namespace) -> dict:
    """Namespaces + veths for size n, then the timed part runs inside the Felix namespace."""
    felix_ns, floor_ns = f"bscale{os.getpid()}-{n}", f"bscale{os.getpid()}-{n}fl"
    try:
        waited = settle()
        if waited > 1:
            print(f"[{n} endpoints] waited {waited:.1f} s for the kernel to finish earlier namespace teardown")
        for ns in (felix_ns, floor_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        names = [ifname(i) for i in range(n)]
        t = time.perf_counter()
        make_interfaces(felix_ns, names)
        make_interfaces(floor_ns, names)
        print(f"[{n} endpoints] {n} veth pairs in each of two namespaces in {time.perf_counter() - t:.1f} s", flush=True)
        settle()  # their creation has settled too before anything is timed
        argv = [sys.executable, os.path.abspath(__file__), "--inner", str(n), "--floor-ns", floor_ns,
                "--profiles", str(a.profiles), "--tags", str(a.tags), "--backend", a.backend]
        return run_inner(felix_ns, argv, f"scale run with {n} endpoints")
    finally:
        _ns_cleanup(felix_ns)
        _ns_cleanup(floor_ns)


# ---- inside the Felix namespace -----------------------------------------------------

def chains_present(backend: str) -> set[str]:
    out = subprocess.run([f"iptables-{backend}-save", "-t", "filter"], capture_output=True, text=True).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith(":")}


def vm(pid: int) -> dict[str, float]:
    """VmHWM and VmRSS in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


async def inner(a: argparse.Namespace) -> int:
    from calico_testing.etcd import EtcdServer
    from libcalico.datastore import DatastoreClient

    n = a.inner
    spec = argparse.Namespace(endpoints=n, profiles=a.profiles, tags=a.tags, ipv6=False)
    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    etcd = EtcdServer(data_dir=tmp).start()
    client = DatastoreClient(endpoints=[etcd.endpoint])
    felix = None
    log_path = os.path.join(tmp, "felix.log")
    try:
        t = time.perf_counter()
        await populate(client, spec)
        print(f"[{n} endpoints] etcd loaded ({n} endpoints, {a.profiles} profiles, {a.tags} tags) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        want_routes = {endpoint_ip(i) for i in range(n)}
        want_chains = {f"felix-{d}-{ifname(i)}" for i in range(n) for d in ("to", "from")}
        env = dict(os.environ, FELIX_FELIXHOSTNAME=HOST, FELIX_ETCDENDPOINTS=etcd.endpoint,
                   FELIX_IPTABLESBACKEND=a.backend, FELIX_IPV6SUPPORT="false", FELIX_LOGSEVERITYSCREEN="info")
        with open(log_path, "wb") as log:
            t0 = time.perf_counter()
            felix = subprocess.Popen([FELIX], env=env, stdout=log, stderr=subprocess.STDOUT)

        def check_alive(what: str) -> None:
            if felix.poll() is not None:
                print(open(log_path).read()[-3000:])
                raise SystemExit(f"felix exited during {what}")
            if time.perf_counter() - t0 > LIMIT:
                raise SystemExit(f"{what} took more than {LIMIT:.0f} s")

        while not want_routes <= kernel_routes():
            check_alive("cold start (routes)")
            await asyncio.sleep(0.005)
        t_routes = time.perf_counter() - t0
        # Felix writes routes last, so the chains are normally there already; the
        # time of a successful check is when its iptables-save started (a 5,000
        # endpoint save itself takes a good fraction of a second).
        while True:
            t_check = time.perf_counter()
            if want_chains <= chains_present(a.backend):
                break
            check_alive("cold start (chains)")
            await asyncio.sleep(0.02)
        cold = t_check - t0
        while "dataplane programmed" not in open(log_path).read():
            check_alive("first apply")
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)  # stale cleanup and the interface monitor's first pass
        mem = vm(felix.pid)
        text = open(log_path).read()
        m = re.search(r"dataplane programmed: .*total (\d+) ms", text)
        internal = int(m.group(1)) / 1000 if m else None
        m = re.search(r"dataplane programmed: [^\n]*? in [\d.]+s \(([^)\n]*)\)", text)
        breakdown = m.group(1) if m else ""
        errors = [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]

        s = floor_state(spec)
        fl = {"ipset": floor_ipset(a.floor_ns, s), "iptables": floor_iptables(a.floor_ns, s, a.backend),
              "routes": floor_routes(a.floor_ns, s)}
        floor = sum(fl.values())
        res = {"endpoints": n, "cold_s": cold, "routes_s": t_routes, "felix_apply_s": internal,
               "floor_s": floor, "floor_parts_s": fl, "hwm_mib": mem.get("VmHWM"), "rss_mib": mem.get("VmRSS"),
               "felix_apply_breakdown": breakdown, "errors": errors[:5]}
        print(f"[{n} endpoints] cold start {cold:.2f} s (routes complete {t_routes:.2f} s; felix's own apply "
              f"{internal if internal is not None else float('nan'):.2f} s), floor {floor:.2f} s "
              f"(ratio {cold / floor:.1f}), peak RSS {res['hwm_mib']:.0f} MiB", flush=True)
        print(f"[{n} endpoints] felix's first apply: {breakdown}; floor: ipset {fl['ipset'] * 1000:.0f} ms, "
              f"iptables {fl['iptables'] * 1000:.0f} ms, routes {fl['routes'] * 1000:.0f} ms", flush=True)
        for e in errors[:5]:
            print(f"  felix log: {e}")
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    finally:
        if felix is not None and felix.poll() is None:
            felix.terminate()
            try:
                felix.wait(10)
            except subprocess.TimeoutExpired:
                felix.kill()
                felix.wait()
        await client.close()
        etcd.close()
        subprocess.run(["rm", "-rf", tmp])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,5000", help="comma-separated endpoint counts")
    ap.add_argument("--profiles", type=int, default=100)
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--floor-ns", help=argparse.SUPPRESS)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks clean up
    if a.inner:
        return asyncio.run(inner(a))
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    results = [one_size(int(n), a) for n in a.sizes.split(",")]
    print("endpoints  cold start  floor   ratio  peak RSS")
    for r in results:
        print(f"{r['endpoints']:9d}  {r['cold_s']:8.2f} s  {r['floor_s']:5.2f} s  {r['cold_s'] / r['floor_s']:5.1f}"
              f"  {r['hwm_mib']:6.0f} MiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"backend": a.backend, "profiles": a.profiles, "tags": a.tags, "sizes": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
