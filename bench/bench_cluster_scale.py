"""Felix and confd on one node of a 500-host cluster (`make bench-cluster-scale`; not in CI).

What grows in a real cluster is not the ~100 local endpoints of a host but
everything every Felix must hold and react to: other hosts' endpoints (they
fill tag and selector ipsets), policies, profiles, and the churn of workloads
starting and stopping across the cluster.  For each size N of remote
endpoints (default 5,000 / 20,000 / 50,000), in a throwaway namespace:

- etcd (on the namespace's loopback) is preloaded as a 500-host cluster: N
  remote workload endpoints spread over 500 hosts (labels `app` (50 values),
  `role` (20), `env` (3), `zone` (5), some `canary`; one or two of 200
  profiles, each profile with one or two of 30 tags, some with profile
  labels `ns`), 1,000 tiered selector policies in 5 tiers (selectors over
  those labels, some not narrowable by an index; rules with `src_selector`,
  `dst_selector` and `src_tag`), every host's BGP keys, one IPv4 pool and
  5,000 block affinities (10 per host); 100 local endpoints with real veths;
- calico-confd and BIRD start first (confd cold start: spawn -> BIRD
  configured with the 500-host mesh); then calico-felix: cold start = spawn ->
  its log says "dataplane programmed" (every local route, chain and ipset
  written, stale objects cleaned); peak RSS = VmHWM then; ipset members =
  `ipset list -t` entries over Felix's sets;
- churn for `--churn-seconds` (60): `--churn-rate` (200) remote endpoint
  operations per second, alternating a create of a new endpoint (a tag of a
  local profile, so its IP must reach a big tag ipset) and a delete of an
  existing one, plus `--policy-rate` (1) policy rewrites per second (a rule
  selector and the order change).  Felix CPU = utime+stime over the window
  (fraction of one core); lag = etcd put answered -> the IP is in the kernel
  set (all creates, tested by one `ipset restore` of `test` lines every 5 ms,
  which stops at the first missing member: a member is timed when it and
  every earlier one are in); RSS growth = VmRSS at the end - at the start;
  restores per second from Felix's Prometheus counters;
- confd: 10 new hosts' BGP addresses written one at a time, each timed from
  the etcd put to the new neighbour in bird.cfg (render + `bird -p` + install)
  and to confd's next "BIRD reconfigured" log line (+ configure); its RSS.

Goals (2 cores): 50k remote: Felix peak RSS <= 400 MB, cold start <= 5 s;
churn 200/s: CPU <= 50% of a core, lag p99 <= 250 ms, no RSS growth;
confd 500 hosts / 5,000 blocks: render+check+configure <= 500 ms.

Run as root: .venv/bin/python bench/bench_cluster_scale.py [--sizes 5000,20000,50000]
[--churn-seconds 60] [--json FILE] [--section docs/bench/cluster-scale.md]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_dataplane import ifname, make_interfaces  # noqa: E402
from bench.bench_scale import _ns_cleanup, run_inner, settle, vm  # noqa: E402

FELIX = os.path.join(ROOT, ".venv", "bin", "calico-felix")
CONFD = os.path.join(ROOT, ".venv", "bin", "calico-confd")
HOST = "bcs-local"
HOST_IP = "172.31.255.1"
HOSTS = 500
LOCAL = 100
PROFILES = 200
TAGS = 30
POLICIES = 1000
TIERS = 5
BLOCKS_PER_HOST = 10
POOL = "10.128.0.0/12"
APPS, ROLES, ENVS, ZONES = 50, 20, ("prod", "staging", "dev"), 5
LIMIT = 300.0


# ---- the cluster, as etcd documents (deterministic) -----------------------------------

def host_name(h: int) -> str:
    return f"node{h:03d}"


def host_ip(h: int) -> str:
    return f"172.30.{h // 250}.{h % 250 + 1}"


def block_base(b: int) -> int:
    return (10 << 24) | (128 << 16) | (b * 64)


def dotted(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def remote_ip(i: int) -> str:
    """Endpoint i lives on host i % 500 in one of that host's blocks (63 addresses used per block)."""
    h, j = i % HOSTS, i // HOSTS
    b = h * BLOCKS_PER_HOST + (j // 63) % BLOCKS_PER_HOST
    return dotted(block_base(b) + (j % 63) + 1)


def churn_ip(k: int) -> str:
    return f"10.160.{(k // 250) % 256}.{k % 250 + 1}"


def local_ip(i: int) -> str:
    return f"10.176.0.{i + 1}"


def labels(rng: random.Random) -> dict[str, str]:
    out = {"app": f"app{rng.randrange(APPS)}", "role": f"role{rng.randrange(ROLES)}",
           "env": rng.choice(ENVS), "zone": f"zone{rng.randrange(ZONES)}"}
    if rng.random() < 0.05:
        out["canary"] = "true"
    return out


def endpoint_doc(name: str, ip: str, rng: random.Random, profiles: list[str] | None = None) -> str:
    if profiles is None:
        profiles = [f"prof{rng.randrange(PROFILES)}"]
        if rng.random() < 0.3:
            profiles.append(f"prof{rng.randrange(PROFILES)}")
    return json.dumps({"state": "active", "name": name, "mac": None, "profile_ids": profiles,
                       "ipv4_nets": [f"{ip}/32"], "ipv6_nets": [], "labels": labels(rng)})


def profile_tags(p: int) -> list[str]:
    return [f"tag{p % TAGS}"] + ([f"tag{(p * 7 + 3) % TAGS}"] if p % 3 == 0 else [])


def policy_doc(k: int, variant: int = 0) -> str:
    rng = random.Random(k)
    app = f"app{rng.randrange(APPS)}"
    kind = k % 5
    if kind == 0:
        sel = f"app == '{app}'"
    elif kind == 1:
        sel = f"app == '{app}' && env == '{rng.choice(ENVS)}'"
    elif kind == 2:
        sel = f"role in {{'role{rng.randrange(ROLES)}', 'role{rng.randrange(ROLES)}'}}"
    elif kind == 3:
        sel = f"app == '{app}' && has(canary)"
    else:
        sel = f"zone == 'zone{rng.randrange(ZONES)}' && env != 'dev'" if k % 50 else "env != 'dev'"
    role = (rng.randrange(ROLES) + variant) % ROLES
    inbound = [{"action": "allow", "src_selector": f"role == 'role{role}'"},
               {"action": "allow", "protocol": "tcp", "src_tag": f"tag{rng.randrange(TAGS)}",
                "dst_ports": [80, 443, 8000 + k % 100]},
               {"action": "next-tier"}]
    outbound = [{"action": "allow", "dst_selector": f"app == 'app{rng.randrange(APPS)}'"}, {"action": "next-tier"}]
    return json.dumps({"order": k + variant, "selector": sel, "inbound_rules": inbound, "outbound_rules": outbound})


def policy_key(k: int) -> str:
    return f"/calico/v1/policy/tier/tier{k % TIERS}/policy/pol{k}"


def cluster_docs(n: int) -> dict[str, str]:
    rng = random.Random(n)
    d: dict[str, str] = {"/calico/v1/Ready": "true", "/calico/v1/config/ReportingIntervalSecs": "0",
                         "/calico/bgp/v1/global/as_num": "64512",
                         "/calico/bgp/v1/global/node_mesh": json.dumps({"enabled": True}),
                         f"/calico/v1/ipam/v4/pool/{POOL.replace('/', '-')}": json.dumps({"cidr": POOL})}
    for p in range(PROFILES):
        base = f"/calico/v1/policy/profile/prof{p}"
        d[f"{base}/tags"] = json.dumps(profile_tags(p))
        d[f"{base}/rules"] = json.dumps({
            "inbound_rules": [{"action": "allow", "src_tag": f"tag{(p + 1) % TAGS}"},
                              {"action": "allow", "protocol": "tcp", "dst_ports": [22, 80]}],
            "outbound_rules": [{"action": "allow"}]})
        if p % 4 == 0:
            d[f"{base}/labels"] = json.dumps({"ns": f"ns{p % 8}"})
    for t in range(TIERS):
        d[f"/calico/v1/policy/tier/tier{t}/metadata"] = json.dumps({"order": t * 10})
    for k in range(POLICIES):
        d[policy_key(k)] = policy_doc(k)
    for h in range(HOSTS):
        name = host_name(h)
        d[f"/calico/bgp/v1/host/{name}/ip_addr_v4"] = host_ip(h)
        for b in range(BLOCKS_PER_HOST):
            cidr = f"{dotted(block_base(h * BLOCKS_PER_HOST + b))}-26"
            d[f"/calico/ipam/v2/host/{name}/ipv4/block/{cidr}"] = json.dumps({"state": "confirmed"})
    d[f"/calico/bgp/v1/host/{HOST}/ip_addr_v4"] = HOST_IP
    for i in range(n):
        d[f"/calico/v1/host/{host_name(i % HOSTS)}/workload/k8s/pod{i}/endpoint/eth0"] = \
            endpoint_doc(f"cali{i:011x}", remote_ip(i), rng)
    for i in range(LOCAL):
        d[f"/calico/v1/host/{HOST}/workload/k8s/local{i}/endpoint/eth0"] = \
            endpoint_doc(ifname(i), local_ip(i), rng)
    return d


async def load(client, docs: dict[str, str]) -> None:
    """Bulk load in transactions of 128 puts (etcd's default limit), four at a time."""
    from libcalico.datastore import op_put
    items = list(docs.items())
    chunks = [items[i:i + 128] for i in range(0, len(items), 128)]
    for i in range(0, len(chunks), 4):
        await asyncio.gather(*(client.txn([], [op_put(k, v) for k, v in c]) for c in chunks[i:i + 4]))


# ---- measuring -----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def felix_sets() -> dict[str, int]:
    """Felix's ipsets in this namespace and their sizes (`ipset list -t`, headers only)."""
    out = subprocess.run(["ipset", "list", "-t"], capture_output=True, text=True).stdout
    sizes: dict[str, int] = {}
    name = None
    for line in out.splitlines():
        if line.startswith("Name: "):
            name = line[6:].strip()
        elif line.startswith("Number of entries: ") and name and name.startswith("felix-v4-"):
            sizes[name] = int(line.split(":")[1])
    return sizes


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"(felix_[a-z_]+(?:_count|_total)?)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class LagProbe:
    """etcd put -> member in the kernel set, for every churn create, with one child process per poll."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, str, str]] = []     # (t_put, set, ip) in write order
        self.lags: list[float] = []
        self.polls = 0
        self.missed = 0

    def add(self, t: float, set_name: str, ip: str) -> None:
        self.pending.append((t, set_name, ip))

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self.pending):
            if not self.pending:
                await asyncio.sleep(0.005)
                continue
            batch = list(self.pending)
            text = "".join(f"test {s} {ip}\n" for _, s, ip in batch)
            p = await asyncio.create_subprocess_exec("ipset", "restore", stdin=subprocess.PIPE,
                                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, err = await p.communicate(text.encode())
            now = time.perf_counter()
            self.polls += 1
            if p.returncode == 0:
                present = len(batch)
            else:
                m = re.search(rb"line (\d+)", err)
                present = int(m.group(1)) - 1 if m else 0
            for t, _s, _ip in batch[:present]:
                self.lags.append(now - t)
            del self.pending[:present]
            while self.pending and now - self.pending[0][0] > 10:   # given up on: counted, not timed
                self.missed += 1
                self.pending.pop(0)
            await asyncio.sleep(0.005)


async def churn(client, a: argparse.Namespace, n: int, local_tags: list[str], felix_pid: int,
                metrics_port: int) -> dict:
    from felix.names import tag_ipset
    rng = random.Random(7)
    # keys of the remote endpoints present: deletes draw from these, creates add to them (steady size)
    live = [f"/calico/v1/host/{host_name(i % HOSTS)}/workload/k8s/pod{i}/endpoint/eth0" for i in range(n)]
    recent: collections.deque[tuple[float, str]] = collections.deque()
    probe = LagProbe()
    stop = asyncio.Event()
    poller = asyncio.create_task(probe.run(stop))
    # a tag some local profile's rules name: its set is programmed, and it is big
    ptags = [p for p in range(PROFILES) if profile_tags(p)[0] in local_tags]
    m0, c0, rss0 = scrape(metrics_port), cpu_seconds(felix_pid), vm(felix_pid)["VmRSS"]
    t0 = time.perf_counter()
    interval = 1.0 / a.churn_rate
    ops = k = 0
    next_policy = t0
    inflight: set[asyncio.Task] = set()

    put_times: list[float] = []

    async def put_probe(key: str, doc: str, set_name: str, ip: str) -> None:
        # timed from the put's reply (the write is in etcd): the time this client takes to send
        # it (this process also drives 200 writes/s and the probe) is the benchmark's, not Felix's
        t = time.perf_counter()
        await client.put(key, doc)
        done = time.perf_counter()
        put_times.append(done - t)
        probe.add(done, set_name, ip)

    while True:
        now = time.perf_counter()
        if now - t0 >= a.churn_seconds:
            break
        due = t0 + ops * interval
        if now < due:
            await asyncio.sleep(min(due - now, 0.005))
            continue
        if ops % 2 == 0:
            p = rng.choice(ptags)
            ip = churn_ip(k)
            key = f"/calico/v1/host/{host_name(k % HOSTS)}/workload/k8s/churn{k}/endpoint/eth0"
            doc = endpoint_doc(f"calic{k:010x}", ip, rng, [f"prof{p}"])
            task = asyncio.create_task(put_probe(key, doc, tag_ipset(profile_tags(p)[0], 4), ip))
            recent.append((now, key))
            k += 1
        else:
            # creates become deletable after 15 s, long after the probe saw them land
            while recent and now - recent[0][0] > 15:
                live.append(recent.popleft()[1])
            j = rng.randrange(len(live))
            live[j], live[-1] = live[-1], live[j]
            task = asyncio.create_task(client.delete(live.pop()))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        ops += 1
        if a.policy_rate and now >= next_policy:
            j = rng.randrange(POLICIES)
            t = asyncio.create_task(client.put(policy_key(j), policy_doc(j, variant=1 + ops % 7)))
            inflight.add(t)
            t.add_done_callback(inflight.discard)
            next_policy += 1.0 / a.policy_rate
    took = time.perf_counter() - t0
    c1, rss1 = cpu_seconds(felix_pid), vm(felix_pid)["VmRSS"]
    m1 = scrape(metrics_port)
    await asyncio.gather(*inflight, return_exceptions=True)
    stop.set()
    await asyncio.wait_for(poller, 30)

    def rate(name: str) -> float:
        """Counters are exported Go-style (no _total) by Felix; either spelling is read."""
        return sum(m1.get(n, 0.0) - m0.get(n, 0.0) for n in (name, name + "_total")) / took

    return {"seconds": took, "ops": ops, "creates": k, "cpu": (c1 - c0) / took,
            "lag_p50_ms": pct(probe.lags, 50) * 1000, "lag_p99_ms": pct(probe.lags, 99) * 1000,
            "lag_max_ms": max(probe.lags, default=float("nan")) * 1000, "lag_samples": len(probe.lags),
            "lag_missed": probe.missed, "probe_polls": probe.polls,
            "put_p50_ms": pct(put_times, 50) * 1000, "put_p99_ms": pct(put_times, 99) * 1000,
            "rss_start_mib": rss0, "rss_end_mib": rss1,
            "ipset_calls_per_s": rate("felix_ipset_calls"),
            "iptables_restores_per_s": rate("felix_iptables_restore_calls"),
            "applies_per_s": rate("felix_int_dataplane_apply_time_seconds_count"),
            "updates_per_s": rate("felix_calc_graph_updates_processed")}


# ---- confd + BIRD --------------------------------------------------------------------

def count(path: str, needle: str) -> int:
    try:
        with open(path) as f:
            return f.read().count(needle)
    except OSError:
        return 0


async def wait_until(pred, limit: float, what: str) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > limit:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return time.perf_counter()


async def start_confd(tmp: str, etcd_ep: str) -> tuple[subprocess.Popen, subprocess.Popen, dict]:
    run_dir, conf_dir = os.path.join(tmp, "run"), os.path.join(tmp, "conf")
    os.makedirs(run_dir)
    os.makedirs(conf_dir)
    log_path = os.path.join(tmp, "confd.log")
    env = dict(os.environ, NODENAME=HOST, IP=HOST_IP, ETCD_ENDPOINTS=etcd_ep, CALICO_RUN_DIR=run_dir,
               CALICO_CONF_DIR=conf_dir, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    confd = subprocess.Popen([CONFD], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    cfg = os.path.join(conf_dir, "bird.cfg")
    t_cfg = await wait_until(lambda: count(cfg, "neighbor ") >= HOSTS, LIMIT, "confd's first bird.cfg")
    bird = subprocess.Popen(["bird", "-f", "-s", os.path.join(run_dir, "bird.ctl"), "-c", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    return confd, bird, {"log": log_path, "cfg": cfg, "first_cfg_s": t_cfg - t0, "run_dir": run_dir}


async def confd_changes(client, confd: subprocess.Popen, info: dict, changes: int = 10) -> dict:
    """New hosts joining, one at a time: etcd put -> bird.cfg has the neighbour -> BIRD reconfigured."""
    to_file, to_bird = [], []
    for c in range(changes):
        ip = f"172.29.0.{c + 1}"
        before = count(info["log"], "BIRD reconfigured")
        t0 = time.perf_counter()
        await client.put(f"/calico/bgp/v1/host/joiner{c}/ip_addr_v4", ip)
        t1 = await wait_until(lambda ip=ip: count(info["cfg"], f"neighbor {ip} ") > 0, 30, f"neighbour {ip}")
        t2 = await wait_until(lambda b=before: count(info["log"], "BIRD reconfigured") > b, 30,
                              "BIRD reconfigured")
        to_file.append(t1 - t0)
        to_bird.append(t2 - t0)
        await asyncio.sleep(0.3)
    return {"to_file_p50_ms": pct(to_file, 50) * 1000, "to_file_max_ms": max(to_file) * 1000,
            "to_bird_p50_ms": pct(to_bird, 50) * 1000, "to_bird_max_ms": max(to_bird) * 1000,
            "rss_mib": vm(confd.pid)["VmRSS"], "hwm_mib": vm(confd.pid)["VmHWM"],
            "neighbours": count(info["cfg"], "neighbor ")}


# ---- one size, inside the namespace ----------------------------------------------------

async def inner(a: argparse.Namespace) -> int:
    from calico_testing.etcd import EtcdServer
    from libcalico.datastore import DatastoreClient
    from libcalico.keys import parse

    n = a.inner
    tmp = tempfile.mkdtemp(prefix="bench-cluster-scale-")
    etcd = EtcdServer(data_dir=os.path.join(tmp, "etcd")).start()
    client = DatastoreClient(endpoints=[etcd.endpoint])
    procs: list[subprocess.Popen] = []
    res: dict = {"remote": n}
    try:
        docs = cluster_docs(n)
        t = time.perf_counter()
        await load(client, docs)
        print(f"[{n}] etcd loaded: {len(docs)} keys ({n} remote + {LOCAL} local endpoints, {PROFILES} profiles, "
              f"{POLICIES} policies in {TIERS} tiers, {HOSTS} hosts, {HOSTS * BLOCKS_PER_HOST} blocks) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        local_profiles = {p for k, v in docs.items() if (pk := parse(k)) is not None
                          and pk.kind == "workload_endpoint" and pk.host == HOST for p in json.loads(v)["profile_ids"]}
        local_tags = sorted({f"tag{(int(p[4:]) + 1) % TAGS}" for p in local_profiles})
        del docs

        confd, bird, cinfo = await start_confd(tmp, etcd.endpoint)
        procs += [confd, bird]
        res["confd_first_cfg_s"] = cinfo["first_cfg_s"]
        print(f"[{n}] confd: first bird.cfg with {HOSTS} mesh neighbours {cinfo['first_cfg_s']:.2f} s after spawn",
              flush=True)

        port = 19000 + os.getpid() % 1000
        log_path = os.path.join(tmp, "felix.log")
        env = dict(os.environ, FELIX_FELIXHOSTNAME=HOST, FELIX_ETCDENDPOINTS=etcd.endpoint,
                   FELIX_IPV6SUPPORT="false", FELIX_LOGSEVERITYSCREEN=a.felix_log,
                   FELIX_PROMETHEUSMETRICSENABLED="true", FELIX_PROMETHEUSMETRICSPORT=str(port))
        t0 = time.perf_counter()
        felix = subprocess.Popen([FELIX], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        procs.append(felix)
        if a.pyspy:   # a sampling profile of the cold start (py-spy attaches within a few ms)
            procs.append(subprocess.Popen(
                [a.pyspy, "record", "--pid", str(felix.pid), "--format", "raw", "--rate", "200", "--duration",
                 str(int(a.profile_cold)), "--output", os.path.join(a.profile_dir, f"felix-cold-{n}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def programmed() -> bool:
            if felix.poll() is not None:
                print(open(log_path).read()[-3000:])
                raise SystemExit("felix exited during cold start")
            return count(log_path, "dataplane programmed") > 0
        t1 = await wait_until(programmed, LIMIT, "felix's first apply")
        res["cold_s"] = t1 - t0
        res["hwm_mib"] = vm(felix.pid)["VmHWM"]
        sizes = felix_sets()
        res["ipsets"] = len(sizes)
        res["members"] = sum(sizes.values())
        m = re.search(r"dataplane programmed: [^\n]*", open(log_path).read())
        print(f"[{n}] felix cold start {res['cold_s']:.2f} s, peak RSS {res['hwm_mib']:.0f} MiB, "
              f"{res['ipsets']} ipsets with {res['members']} members", flush=True)
        print(f"[{n}] felix log: {m.group(0) if m else '?'}", flush=True)
        await asyncio.sleep(2)

        if a.churn_seconds > 0:
            spy = None
            if a.pyspy:
                spy = subprocess.Popen([a.pyspy, "record", "--pid", str(felix.pid), "--format", "raw", "--rate", "200",
                                        "--duration", str(int(a.churn_seconds)), "--output",
                                        os.path.join(a.profile_dir, f"felix-churn-{n}.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            c = await churn(client, a, n, local_tags, felix.pid, port)
            if spy is not None:
                spy.wait(30)
            c["hwm_mib"] = vm(felix.pid)["VmHWM"]
            res["churn"] = c
            print(f"[{n}] churn {c['ops'] / c['seconds']:.0f} endpoint ops/s + {a.policy_rate} policy change/s for "
                  f"{c['seconds']:.0f} s: felix CPU {c['cpu'] * 100:.0f}% of a core, put -> ipset member "
                  f"p50 {c['lag_p50_ms']:.0f} ms p99 {c['lag_p99_ms']:.0f} ms max {c['lag_max_ms']:.0f} ms "
                  f"({c['lag_samples']} samples, {c['lag_missed']} never seen; the puts themselves p50 {c['put_p50_ms']:.0f} ms p99 {c['put_p99_ms']:.0f} ms), RSS {c['rss_start_mib']:.0f} -> "
                  f"{c['rss_end_mib']:.0f} MiB (peak {c['hwm_mib']:.0f}), ipset restores {c['ipset_calls_per_s']:.1f}/s, "
                  f"iptables restores {c['iptables_restores_per_s']:.1f}/s, applies {c['applies_per_s']:.1f}/s",
                  flush=True)
        cd = await confd_changes(client, confd, cinfo)
        res["confd"] = cd
        print(f"[{n}] confd ({HOSTS} hosts, {HOSTS * BLOCKS_PER_HOST} blocks): etcd put -> bird.cfg p50 "
              f"{cd['to_file_p50_ms']:.0f} ms (max {cd['to_file_max_ms']:.0f}), -> BIRD reconfigured p50 "
              f"{cd['to_bird_p50_ms']:.0f} ms (max {cd['to_bird_max_ms']:.0f}); RSS {cd['rss_mib']:.0f} MiB "
              f"(peak {cd['hwm_mib']:.0f})", flush=True)
        errors = [ln for ln in open(log_path).read().splitlines() if "ERROR" in ln or "Traceback" in ln]
        res["felix_errors"] = errors[:5]
        for e in errors[:5]:
            print(f"  felix log: {e}")
        if a.keep_log:
            subprocess.run(["cp", log_path, f"{a.keep_log}.{n}"])
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        await client.close()
        etcd.close()
        subprocess.run(["rm", "-rf", tmp])


# ---- outside: namespaces, sizes, report ------------------------------------------------

def one_size(n: int, a: argparse.Namespace) -> dict:
    ns = f"bcs{os.getpid()}-{n}"
    try:
        settle()
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        make_interfaces(ns, [ifname(i) for i in range(LOCAL)])
        argv = [sys.executable, os.path.abspath(__file__), "--inner", str(n), "--profile-cold", str(a.profile_cold),
                "--felix-log", a.felix_log, *(["--keep-log", os.path.abspath(a.keep_log)] if a.keep_log else []),
                *(["--pyspy", a.pyspy, "--profile-dir", os.path.abspath(a.profile_dir)] if a.pyspy else []),
                "--churn-seconds", str(a.churn_seconds), "--churn-rate", str(a.churn_rate),
                "--policy-rate", str(a.policy_rate)]
        return run_inner(ns, argv, f"cluster-scale run with {n} remote endpoints")
    finally:
        _ns_cleanup(ns)


def goals(r: dict) -> list[str]:
    out = []
    c = r.get("churn") or {}
    if r["remote"] >= 50000:
        out.append(f"peak RSS {r['hwm_mib'] * 1.048576:.0f} MB {'<=' if r['hwm_mib'] * 1.048576 <= 400 else '>'} 400")
        out.append(f"cold start {r['cold_s']:.1f} s {'<=' if r['cold_s'] <= 5 else '>'} 5")
    if c:
        out.append(f"churn CPU {c['cpu'] * 100:.0f}% {'<=' if c['cpu'] <= 0.5 else '>'} 50%")
        out.append(f"lag p99 {c['lag_p99_ms']:.0f} ms {'<=' if c['lag_p99_ms'] <= 250 else '>'} 250")
    return out


def section(results: list[dict], a: argparse.Namespace, path: str, before: list[dict] | None = None) -> None:
    png = os.path.splitext(path)[0] + ".png"
    lines = ["## Cluster scale: remote endpoints, 1,000 policies, churn (`make bench-cluster-scale`)", "",
             f"One node of a {HOSTS}-host cluster: {LOCAL} local endpoints, N remote endpoints, {PROFILES} "
             f"profiles ({TAGS} tags), {POLICIES} selector policies in {TIERS} tiers, {HOSTS} hosts' BGP keys, "
             f"{HOSTS * BLOCKS_PER_HOST} IPAM blocks; churn {a.churn_rate:g} remote endpoint creates/deletes "
             f"per second + {a.policy_rate:g} policy change/s for {a.churn_seconds:g} s. Machine: "
             f"{os.cpu_count()} cores, shared with other work while measured.", "",
             "| remote endpoints | cold start | peak RSS | ipsets / members | churn CPU | put -> ipset member "
             "p50 / p99 | RSS during churn | ipset restores/s | iptables restores/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(r, "") for r in results] + [(r, " (before)") for r in before or []]
    for r, tag in rows:
        c = r.get("churn") or {}
        missed = (f" ({c['lag_missed']:,} of {c['lag_missed'] + c['lag_samples']:,} not in 10 s)"
                  if c.get("lag_missed") else "")
        ch = (f"{c['cpu'] * 100:.0f}% | {c['lag_p50_ms']:.0f} / {c['lag_p99_ms']:.0f} ms{missed} | "
              f"{c['rss_start_mib'] * 1.048576:.0f} -> {c['rss_end_mib'] * 1.048576:.0f} MB | "
              f"{c['ipset_calls_per_s']:.1f} | {c['iptables_restores_per_s']:.1f}") if c else "- | - | - | - | -"
        lines.append(f"| {r['remote']:,}{tag} | {r['cold_s']:.2f} s | {r['hwm_mib'] * 1.048576:.0f} MB | "
                     f"{r['ipsets']} / {r['members']:,} | {ch} |")
    big = results[-1]
    cd = big["confd"]
    lines += ["", f"confd + BIRD ({HOSTS} hosts, {HOSTS * BLOCKS_PER_HOST} blocks, "
              f"{cd['neighbours']} mesh neighbours): a host joining, etcd put -> new bird.cfg (render + "
              f"`bird -p` + install) p50 {cd['to_file_p50_ms']:.0f} ms (max {cd['to_file_max_ms']:.0f}), -> BIRD "
              f"reconfigured p50 {cd['to_bird_p50_ms']:.0f} ms (max {cd['to_bird_max_ms']:.0f}; both include "
              f"confd's debounce of up to 100 ms); first config {big['confd_first_cfg_s']:.2f} s after spawn; "
              f"RSS {cd['rss_mib'] * 1.048576:.0f} MB.", "",
              f"Goals at {big['remote']:,}: " + "; ".join(goals(big)) + f"; confd render+check+configure "
              f"max {cd['to_bird_max_ms']:.0f} ms {'<=' if cd['to_bird_max_ms'] <= 500 else '>'} 500 ms.", "",
              *([f"Rows marked (before) are the same benchmark on the code before this work ({a.before_label})."]
                if before else []), "",
              f"![Felix cold start and peak RSS against remote endpoints]({os.path.basename(png)})", "",
              "How it is measured: cold start is calico-felix spawn -> its \"dataplane programmed\" log line "
              "(every local route, chain and ipset in the kernel, stale objects removed); peak RSS is VmHWM "
              "then; lag is the etcd put (from its reply) of a new remote endpoint (a tag of a local profile's rule) -> its "
              "IP in that tag's kernel ipset (`ipset restore` of `test` lines every 5 ms); CPU is Felix's "
              "utime+stime over the churn window; restores per second from Felix's Prometheus counters. "
              "Source: bench/bench_cluster_scale.py.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [r["remote"] for r in results]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(xs, [r["cold_s"] for r in results], "o-", color="tab:blue", label="cold start (s)")
    ax1.set_xlabel("remote endpoints")
    ax1.set_ylabel("cold start (s)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [r["hwm_mib"] * 1.048576 for r in results], "s--", color="tab:red", label="peak RSS (MB)")
    ax2.set_ylabel("peak RSS (MB)", color="tab:red")
    ax1.set_title("Felix: cold start and peak RSS vs remote endpoints")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000,50000", help="comma-separated remote endpoint counts")
    ap.add_argument("--churn-seconds", type=float, default=60)
    ap.add_argument("--churn-rate", type=float, default=200, help="remote endpoint creates+deletes per second")
    ap.add_argument("--policy-rate", type=float, default=1, help="policy changes per second")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--section", help="write the docs/benchmarks.md section (markdown + PNG beside it)")
    ap.add_argument("--pyspy", help="py-spy binary: sample Felix's cold start and churn (raw stacks)")
    ap.add_argument("--profile-dir", default=".", help="where the py-spy profiles go")
    ap.add_argument("--profile-cold", type=float, default=15, help="seconds of cold start to sample")
    ap.add_argument("--before", help="a --json file from a run of the earlier code, shown as (before) rows")
    ap.add_argument("--before-label", default="the previous commit", help="what --before measured")
    ap.add_argument("--felix-log", default="info", help="Felix's LogSeverityScreen (debug shows each batch's timing)")
    ap.add_argument("--keep-log", help="copy Felix's log here")
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks clean up
    if a.inner:
        return asyncio.run(inner(a))
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    results = [one_size(int(n), a) for n in a.sizes.split(",")]
    print("remote  cold start  peak RSS  members   churn CPU  lag p50/p99")
    for r in results:
        c = r.get("churn") or {}
        print(f"{r['remote']:6d}  {r['cold_s']:8.2f} s  {r['hwm_mib']:5.0f} MiB  {r['members']:7d}  "
              + (f"{c['cpu'] * 100:6.0f}%   {c['lag_p50_ms']:.0f}/{c['lag_p99_ms']:.0f} ms" if c else "-"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"sizes": results}, f, indent=1)
    if a.section:
        before = json.load(open(a.before))["sizes"] if a.before else None
        section(results, a, a.section, before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
