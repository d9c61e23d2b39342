"""Benchmark the real calico-felix (`make bench-felix`): numbers, not pass/fail.

- cold start: 1,000 local endpoints, 100 profiles, 10 tags already in etcd ->
  dataplane complete (every route present; Felix applies routes last, after
  ipsets and iptables, so the last route marks the whole dataplane);
- incremental: one endpoint added to that state, etcd put -> its route present,
  p50/p99 (its chains are checked after each sample, outside the timing);
- the floor: the same final state (computed by Felix's own calculator) applied
  with one `ipset restore`, one `iptables-restore` and one `ip -batch`;
- Felix's peak RSS.

Everything runs inside throwaway namespaces: the script re-executes itself
inside the Felix namespace (etcd on that namespace's loopback), and the floor
goes to a second namespace with the same interfaces.
Targets: cold start <= 2x floor, incremental p99 <= 100 ms.

Run as root: .venv/bin/python bench/bench_felix.py [--endpoints 1000] [--backend nft|legacy] [--ipv6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_dataplane import (  # noqa: E402
    State,
    endpoint_ip,
    floor_ipset,
    floor_iptables,
    floor_iptables_identical,
    floor_routes,
    ifname,
    make_interfaces,
    pct,
)

HOST = "benchhost"
FELIX = os.path.join(ROOT, ".venv", "bin", "calico-felix")


def _ns_cleanup(name: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for p in pids:
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def outer(a: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    felix_ns, floor_ns = f"benchf{os.getpid()}", f"benchf{os.getpid()}-floor"
    try:
        for ns in (felix_ns, floor_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        make_interfaces(felix_ns, [ifname(i) for i in range(a.endpoints + a.samples)])
        make_interfaces(floor_ns, [ifname(i) for i in range(a.endpoints)])
        argv = [sys.executable, os.path.abspath(__file__), "--inner", "--floor-ns", floor_ns,
                "--endpoints", str(a.endpoints), "--profiles", str(a.profiles), "--tags", str(a.tags),
                "--samples", str(a.samples), "--backend", a.backend] + (["--ipv6"] if a.ipv6 else [])
        return subprocess.run(["ip", "netns", "exec", felix_ns] + argv).returncode
    finally:
        _ns_cleanup(felix_ns)
        _ns_cleanup(floor_ns)


# ---- inside the Felix namespace -----------------------------------------------------

def kernel_routes() -> set[str]:
    """IPv4 destinations in the main table, from /proc/net/route (cheap enough to poll every ms)."""
    out = set()
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            dst = line.split()[1]
            out.add(socket.inet_ntoa(bytes.fromhex(dst)[::-1]))
    return out


def endpoint_doc(i: int, profiles: int) -> str:
    return json.dumps({"state": "active", "name": ifname(i), "profile_ids": [f"profile{i % profiles}"],
                       "ipv4_nets": [f"{endpoint_ip(i)}/32"], "ipv6_nets": []})


def ep_key(i: int) -> str:
    return f"/calico/v1/host/{HOST}/workload/bench/w{i}/endpoint/eth0"


def profile_docs(p: int, tags: int) -> dict[str, str]:
    rules = {"inbound_rules": [{"action": "allow", "src_tag": f"tag{p % tags}"},
                               {"action": "allow", "protocol": "tcp", "dst_ports": [80, 443, "8000:8100"]}],
             "outbound_rules": [{"action": "allow"}]}
    return {f"/calico/v1/policy/profile/profile{p}/rules": json.dumps(rules),
            f"/calico/v1/policy/profile/profile{p}/tags": json.dumps([f"tag{p % tags}"])}


async def populate(client, a) -> None:
    items: dict[str, str] = {"/calico/v1/Ready": "true", "/calico/v1/config/ReportingIntervalSecs": "0"}
    for p in range(a.profiles):
        items.update(profile_docs(p, a.tags))
    for i in range(a.endpoints):
        items[ep_key(i)] = endpoint_doc(i, a.profiles)
    keys = list(items)
    for k in range(0, len(keys), 200):
        await asyncio.gather(*(client.put(key, items[key]) for key in keys[k:k + 200]))


def floor_state(a) -> State:
    """The final state Felix computes, from Felix's own calculator, as the floor helpers want it."""
    from felix.calc import CalcConfig, Calculator
    from libcalico import models

    calc = Calculator(CalcConfig(HOST, ipv6=a.ipv6))
    docs: dict[str, str] = {}
    for p in range(a.profiles):
        docs.update(profile_docs(p, a.tags))
    for i in range(a.endpoints):
        docs[ep_key(i)] = endpoint_doc(i, a.profiles)
    for path, raw in docs.items():
        k, v = models.parse_key_value(path, raw)
        calc.on_update("put", k, v)
    d = calc.desired()
    s = State()
    s.chains = dict(d.v4.chains)
    s.hooks = dict(d.v4.hooks)
    s.ipsets = {n: set(m) for n, m in d.v4.ipsets.items()}
    s.routes = {i: set(c) for i, c in d.routes.items()}
    return s


def felix_log_times(path: str) -> dict[str, float]:
    text = open(path).read()
    out = {}
    m = re.search(r"dataplane programmed: .*total (\d+) ms; stale cleanup (\d+) ms", text)
    if m:
        out["apply"] = int(m.group(1)) / 1000
        out["cleanup"] = int(m.group(2)) / 1000
    return out


async def inner(a: argparse.Namespace) -> int:
    from calico_testing.etcd import EtcdServer
    from libcalico.datastore import DatastoreClient

    tmp = tempfile.mkdtemp(prefix="bench-felix-")
    etcd = EtcdServer(data_dir=tmp).start()
    felix = None
    client = DatastoreClient(endpoints=[etcd.endpoint])
    try:
        t = time.perf_counter()
        await populate(client, a)
        print(f"etcd populated: {a.endpoints} endpoints, {a.profiles} profiles, {a.tags} tags "
              f"in {time.perf_counter() - t:.2f}s; backend {a.backend}, ipv6 {'on' if a.ipv6 else 'off'}")
        want = {endpoint_ip(i) for i in range(a.endpoints)}
        log_path = os.path.join(tmp, "felix.log")
        env = dict(os.environ, FELIX_FELIXHOSTNAME=HOST, FELIX_ETCDENDPOINTS=etcd.endpoint,
                   FELIX_IPTABLESBACKEND=a.backend, FELIX_IPV6SUPPORT="true" if a.ipv6 else "false",
                   FELIX_LOGSEVERITYSCREEN=os.environ.get("BENCH_FELIX_LOG", "info"))
        with open(log_path, "wb") as log:
            t0 = time.perf_counter()
            print(f"  felix spawned at {time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}")
            cmd = os.environ.get("BENCH_FELIX_CMD", FELIX).split()
            felix = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        cold = await wait_cold_start(felix, want, log_path, t0)
        for line in open(log_path).read().splitlines():
            if re.search(r"Felix starting|in sync|backend:|programmed|ERROR|Traceback", line):
                print(f"  felix log: {line}")
        times = felix_log_times(log_path)
        internal = times.get("apply", float("nan"))
        save = subprocess.run([f"iptables-{a.backend}-save", "-t", "filter"], capture_output=True,
                              text=True).stdout
        n_rules = sum(1 for ln in save.splitlines() if ln.startswith("-A felix-"))
        n_sets = len([n for n in subprocess.run(["ipset", "list", "-n"], capture_output=True,
                                                text=True).stdout.split() if n.startswith("felix-")])

        # incremental: one endpoint at a time onto the full state
        lat = []
        for k in range(a.samples):
            i = a.endpoints + k
            ip = endpoint_ip(i)
            t1 = time.perf_counter()
            await client.put(ep_key(i), endpoint_doc(i, a.profiles))
            while ip not in kernel_routes():
                if time.perf_counter() - t1 > 10:
                    raise SystemExit(f"endpoint {i} not programmed in 10 s")
                await asyncio.sleep(0.002)
            lat.append(time.perf_counter() - t1)
            await asyncio.sleep(0.02)
        chk = subprocess.run([f"iptables-{a.backend}-save", "-t", "filter"], capture_output=True, text=True).stdout
        missing = [k for k in range(a.samples)
                   if f":felix-to-{ifname(a.endpoints + k)}" not in chk
                   or f"-g felix-from-{ifname(a.endpoints + k)}" not in chk]
        rss_kb = 0
        with open(f"/proc/{felix.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss_kb = int(line.split()[1])

        # floor: same final state, one command per slice, in the other namespace
        s = floor_state(a)
        fl = {"ipset": floor_ipset(a.floor_ns, s), "iptables": floor_iptables(a.floor_ns, s, a.backend),
              "routes": floor_routes(a.floor_ns, s)}
        floor = sum(fl.values())
        ident_ipt = floor_iptables_identical(s, a.backend)
        floor_ident = fl["ipset"] + ident_ipt + fl["routes"]

        print(f"final state: {n_rules} felix iptables rules (v4), {n_sets} felix ipsets, "
              f"{len(want)} routes")
        print(f"floor (one ipset restore + one iptables-restore + one ip -batch): {floor * 1000:.0f} ms "
              f"(ipset {fl['ipset'] * 1000:.0f}, iptables {fl['iptables'] * 1000:.0f}, "
              f"routes {fl['routes'] * 1000:.0f})")
        print(f"floor with Felix's exact rules (its per-rule hash comments included): {floor_ident * 1000:.0f} ms "
              f"(iptables {ident_ipt * 1000:.0f})")
        print(f"cold start, felix process start -> dataplane complete: {cold * 1000:.0f} ms "
              f"(ratio to floor {cold / floor:.2f}; target <= 2; to the exact-rules floor {cold / floor_ident:.2f})")
        print(f"cold start, felix's own first apply (ipsets + iptables + routes, from its log): "
              f"{internal * 1000:.0f} ms (ratio to floor {internal / floor:.2f}); "
              f"then stale cleanup {times.get('cleanup', float('nan')) * 1000:.0f} ms")
        print(f"incremental add-one-endpoint, etcd put -> route present ({a.samples} samples): "
              f"p50 {pct(lat, 50) * 1000:.1f} ms  p99 {pct(lat, 99) * 1000:.1f} ms  "
              f"mean {statistics.mean(lat) * 1000:.1f} ms  max {max(lat) * 1000:.1f} ms (target p99 <= 100)")
        print(f"chains of the added endpoints present: {a.samples - len(missing)}/{a.samples}")
        print(f"felix peak RSS: {rss_kb / 1024:.1f} MiB")
        return 0 if not missing else 1
    finally:
        await stop_felix(felix, client, etcd, log_path, tmp)


async def wait_cold_start(felix: subprocess.Popen, want: set, log_path: str, t0: float) -> float:
    """Seconds from `t0` until every wanted route is in the kernel; then let Felix settle (stale
    cleanup, the interface monitor's first dump and its sysctls) so later figures measure the
    steady state."""
    while not want <= kernel_routes():
        if felix.poll() is not None:
            print(open(log_path).read()[-3000:])
            raise SystemExit("felix exited during cold start")
        if time.perf_counter() - t0 > 300:
            raise SystemExit("cold start took more than 300 s")
        await asyncio.sleep(0.005)
    cold = time.perf_counter() - t0
    while "dataplane programmed" not in open(log_path).read():
        await asyncio.sleep(0.05)
    await asyncio.sleep(3)
    return cold


async def stop_felix(felix: subprocess.Popen | None, client, etcd, log_path: str, tmp: str) -> None:
    """Tear down one benchmark run: Felix, the etcd client and server, the temp dir (log kept on request)."""
    if felix is not None and felix.poll() is None:
        felix.terminate()
        try:
            felix.wait(10)
        except subprocess.TimeoutExpired:
            felix.kill()
    await client.close()
    etcd.close()
    if os.environ.get("BENCH_KEEP_LOG"):
        subprocess.run(["cp", log_path, os.environ["BENCH_KEEP_LOG"]])
    subprocess.run(["rm", "-rf", tmp])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--profiles", type=int, default=100)
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    ap.add_argument("--ipv6", action="store_true", help="let Felix program IPv6 too (the floor stays v4)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--floor-ns", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        return asyncio.run(inner(a))
    return outer(a)


if __name__ == "__main__":
    sys.exit(main())
