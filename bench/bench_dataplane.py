"""Micro-benchmark: Felix's dataplane writers vs the floor, for N endpoints, inside throwaway namespaces.

The floor is the same final state applied the cheapest way we know: one
`iptables-restore`, one `ipset restore`, one `ip -batch`. `make bench-felix`
reuses `build_state`, `floor_*` and `make_interfaces` from here.

Run as root: .venv/bin/python bench/bench_dataplane.py [--endpoints 1000] [--backend nft|legacy]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from felix.dataplane.backend import Backend  # noqa: E402
from felix.dataplane.cmd import CmdRunner  # noqa: E402
from felix.dataplane.ipsets import IpsetWriter  # noqa: E402
from felix.dataplane.iptables import IptablesTable  # noqa: E402
from felix.dataplane.routes import RouteWriter  # noqa: E402
from felix.names import chain_name, tag_ipset  # noqa: E402


@dataclass
class State:
    """A Felix-like final state: per-endpoint chains, dispatch chains, profile chains, tag ipsets, routes."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    hooks: dict[str, list[str]] = field(default_factory=dict)
    ipsets: dict[str, set[str]] = field(default_factory=dict)
    routes: dict[str, set[str]] = field(default_factory=dict)  # ifname -> cidrs


def ifname(i: int) -> str:
    return f"cali{i:011x}"


def endpoint_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def build_state(endpoints: int = 1000, profiles: int = 100, tags: int = 10) -> State:
    s = State()
    for p in range(profiles):
        tag = tag_ipset(f"tag{p % tags}", 4)
        s.chains[chain_name("felix-pi-", f"profile{p}")] = [
            f"-m set --match-set {tag} src -j MARK --set-mark 0x1000000/0x1000000",
            "-m mark --mark 0x1000000/0x1000000 -j RETURN",
            "-p tcp -m multiport --dports 80,443,8000:8100 -j MARK --set-mark 0x1000000/0x1000000",
            "-m mark --mark 0x1000000/0x1000000 -j RETURN",
        ]
        s.chains[chain_name("felix-po-", f"profile{p}")] = ["-j MARK --set-mark 0x1000000/0x1000000", "-j RETURN"]
    for t in range(tags):
        s.ipsets[tag_ipset(f"tag{t}", 4)] = set()
    to_dispatch, from_dispatch = [], []
    for i in range(endpoints):
        ifn, ip, prof = ifname(i), endpoint_ip(i), f"profile{i % profiles}"
        s.ipsets[tag_ipset(f"tag{(i % profiles) % tags}", 4)].add(ip)
        to_c, from_c = chain_name("felix-tw-", ifn), chain_name("felix-fw-", ifn)
        s.chains[to_c] = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-m conntrack --ctstate INVALID -j DROP",
            "-j MARK --set-mark 0x0/0x1000000",
            f"-j {chain_name('felix-pi-', prof)}",
            "-m mark --mark 0x1000000/0x1000000 -j ACCEPT",
            "-j DROP",
        ]
        s.chains[from_c] = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-m conntrack --ctstate INVALID -j DROP",
            f"! -s {ip}/32 -j DROP",
            "-j MARK --set-mark 0x0/0x1000000",
            f"-j {chain_name('felix-po-', prof)}",
            "-m mark --mark 0x1000000/0x1000000 -j ACCEPT",
            "-j DROP",
        ]
        to_dispatch.append(f"-o {ifn} -g {to_c}")
        from_dispatch.append(f"-i {ifn} -g {from_c}")
        s.routes[ifn] = {f"{ip}/32"}
    s.chains["felix-to-wl-dispatch"] = to_dispatch + ["-j DROP"]
    s.chains["felix-from-wl-dispatch"] = from_dispatch + ["-j DROP"]
    s.chains["felix-FORWARD"] = ["-o cali+ -j felix-to-wl-dispatch", "-i cali+ -j felix-from-wl-dispatch"]
    s.chains["felix-INPUT"] = ["-i cali+ -j felix-from-wl-dispatch", "-i cali+ -j ACCEPT"]
    s.hooks = {"FORWARD": ["-j felix-FORWARD"], "INPUT": ["-j felix-INPUT"]}
    return s


# ---- floor: the same state, each kernel slice in one command ----
def iptables_text(s: State) -> str:
    lines = ["*filter"] + [f":{c} - [0:0]" for c in s.chains]
    for c, rules in s.chains.items():
        lines += [f"-A {c} {r}" for r in rules]
    for b, rules in s.hooks.items():
        lines += [f"-I {b} {i} {r}" for i, r in enumerate(rules, 1)]
    return "\n".join(lines + ["COMMIT", ""])


def ipset_text(s: State) -> str:
    lines = []
    for name, members in s.ipsets.items():
        lines.append(f"create {name} hash:net family inet maxelem 1048576")
        lines += [f"add {name} {m}" for m in members]
    return "\n".join(lines) + "\n"


def route_batch(s: State) -> str:
    return "".join(f"route replace {c} dev {ifn} proto 80 scope link\n"
                   for ifn, cidrs in s.routes.items() for c in cidrs)


def _timed(argv: list[str], data: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input=data, text=True, check=True, capture_output=True)
    return time.perf_counter() - t0


def floor_iptables(ns: str, s: State, backend: str = "nft") -> float:
    return _timed(["ip", "netns", "exec", ns, f"iptables-{backend}-restore", "--noflush"], iptables_text(s))


def felix_iptables_text(s: State, backend: str = "nft") -> str:
    """The restore input Felix itself writes for `s` on an empty table: the same rules as
    iptables_text plus the per-rule `felix:<hash>` comments Felix keeps for drift detection."""
    from felix.dataplane.iptables import parse_save

    t = IptablesTable(4, "filter", None, Backend(backend))
    for c, rules in s.chains.items():
        t.set_chain(c, rules)
    for b, rules in s.hooks.items():
        t.set_hooks(b, rules)
    t._kernel = parse_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
                           "filter")
    return t.render(True)[0]


def floor_iptables_identical(s: State, backend: str = "nft") -> float:
    """One iptables-restore of exactly the rules Felix ends up with (comments included), in a
    fresh namespace whose ipsets exist (created untimed)."""
    ns = new_ns("ident")
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ipset", "restore"], input=ipset_text(s), text=True,
                       check=True, capture_output=True)
        return _timed(["ip", "netns", "exec", ns, f"iptables-{backend}-restore", "--noflush"],
                      felix_iptables_text(s, backend))
    finally:
        del_ns(ns)  # its tables and sets go with it


def floor_ipset(ns: str, s: State) -> float:
    return _timed(["ip", "netns", "exec", ns, "ipset", "restore"], ipset_text(s))


def floor_routes(ns: str, s: State) -> float:
    return _timed(["ip", "-n", ns, "-batch", "-"], route_batch(s))


def make_interfaces(ns: str, names: list[str]) -> None:
    """The workload veths (both ends in `ns`, up), in one ip -batch: setup, not measured."""
    batch = "".join(f"link add {n} type veth peer name p{n[4:]}\nlink set {n} up\n" for n in names)
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True, capture_output=True)


def new_ns(tag: str) -> str:
    name = f"bench{os.getpid()}-{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def del_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


# ---- the writers ----
async def writers_cold(ns: str, s: State, backend: str) -> tuple[dict[str, float], tuple]:
    runner = CmdRunner(ns)
    ipt = IptablesTable(4, "filter", runner, Backend(backend))
    ips = IpsetWriter(4, runner)
    rw = RouteWriter(ns)
    times = {}
    t0 = time.perf_counter()
    for name, members in s.ipsets.items():
        ips.set_members(name, members)
    t = time.perf_counter()
    await ips.apply_updates()
    times["ipsets"] = time.perf_counter() - t
    for c, rules in s.chains.items():
        ipt.set_chain(c, rules)
    for b, rules in s.hooks.items():
        ipt.set_hooks(b, rules)
    t = time.perf_counter()
    await ipt.apply()
    times["iptables"] = time.perf_counter() - t
    for ifn, cidrs in s.routes.items():
        rw.set_routes(ifn, cidrs)
    t = time.perf_counter()
    await rw.apply()
    times["routes"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    return times, (ipt, ips, rw)


async def writers_incremental(ns: str, s: State, writers: tuple, n: int, samples: int) -> list[float]:
    """Latency of adding one endpoint (chains + dispatch rule + route + tag member) to the full state."""
    ipt, ips, rw = writers
    lat = []
    names = [ifname(n + k) for k in range(samples)]
    make_interfaces(ns, names)
    for k, ifn in enumerate(names):
        i = n + k
        ip = endpoint_ip(i)
        t0 = time.perf_counter()
        to_c, from_c = chain_name("felix-tw-", ifn), chain_name("felix-fw-", ifn)
        ipt.set_chain(to_c, ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-j DROP"])
        ipt.set_chain(from_c, [f"! -s {ip}/32 -j DROP", "-j DROP"])
        s.chains["felix-to-wl-dispatch"].insert(-1, f"-o {ifn} -g {to_c}")
        s.chains["felix-from-wl-dispatch"].insert(-1, f"-i {ifn} -g {from_c}")
        ipt.set_chain("felix-to-wl-dispatch", s.chains["felix-to-wl-dispatch"])
        ipt.set_chain("felix-from-wl-dispatch", s.chains["felix-from-wl-dispatch"])
        tag = tag_ipset("tag0", 4)
        s.ipsets[tag].add(ip)
        ips.set_members(tag, s.ipsets[tag])
        rw.set_routes(ifn, {f"{ip}/32"})
        await ips.apply_updates()
        await ipt.apply()
        await rw.apply()
        lat.append(time.perf_counter() - t0)
    return lat


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--profiles", type=int, default=100)
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    ap.add_argument("--samples", type=int, default=50)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    s = build_state(a.endpoints, a.profiles, a.tags)
    nrules = sum(len(r) for r in s.chains.values())
    print(f"state: {a.endpoints} endpoints, {len(s.chains)} chains / {nrules} rules, "
          f"{len(s.ipsets)} ipsets / {sum(map(len, s.ipsets.values()))} members, "
          f"{sum(map(len, s.routes.values()))} routes; backend {a.backend}")
    names = list(s.routes)
    floor_ns, w_ns = new_ns("floor"), new_ns("writers")
    try:
        make_interfaces(floor_ns, names)
        make_interfaces(w_ns, names)
        f = {"ipsets": floor_ipset(floor_ns, s), "iptables": floor_iptables(floor_ns, s, a.backend),
             "routes": floor_routes(floor_ns, s)}
        f["total"] = sum(f.values())
        w, writers = await writers_cold(w_ns, s, a.backend)
        for k in ("ipsets", "iptables", "routes", "total"):
            print(f"cold {k:9s} writer {w[k] * 1000:8.1f} ms   floor {f[k] * 1000:8.1f} ms   "
                  f"ratio {w[k] / f[k]:5.2f}")
        lat = await writers_incremental(w_ns, s, writers, a.endpoints, a.samples)
        print(f"incremental add-one-endpoint ({a.samples} samples): p50 {pct(lat, 50) * 1000:.1f} ms  "
              f"p99 {pct(lat, 99) * 1000:.1f} ms  mean {statistics.mean(lat) * 1000:.1f} ms")
        writers[2].close()
    finally:
        del_ns(floor_ns)
        del_ns(w_ns)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
