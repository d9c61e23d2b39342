"""Tiered selector policy (issue 5, acceptance 1) with real packets, real etcd and calico-felix.

Five workloads behind one Felix host; three tiers whose policies use has(),
in {}, &&, ||, negation, next-tier, allow and deny in both selectors and
src_selector ipsets.  Every expectation is a real TCP connect or ping, and
relabelling latency is measured from just before the etcd put to the first
packet that sees the new verdict (a probe process loops inside the workload
namespace, so no process start-up sits in the measurement).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.felix_topology import FelixHost
from tests.integration.test_felix_core import P, T, expect

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALLOW = [{"action": "allow"}]
PORT, OTHER = 8080, 9090
LABELS = {
    1: {"role": "frontend", "env": "prod"},
    2: {"role": "db", "env": "prod", "pci": "true"},
    3: {"role": "backend", "env": "staging"},
    4: {"role": "db", "env": "dev"},
    5: {"role": "web", "env": "dev"},
}

# Loops TCP connects until the verdict equals `want` (or `limit` s pass: only so a broken run ends).
_PROBE = r"""
import socket, sys, time
dst, port, want, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
def ok():
    try:
        socket.create_connection((dst, port), timeout=0.1).close()
        return True
    except OSError:
        return False
print("initial", int(ok()), flush=True)
sys.stdin.readline()
end = time.monotonic() + limit
while time.monotonic() < end:
    if ok() == want:
        print("flip", flush=True)
        sys.exit(0)
print("never", flush=True)
"""


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=5)
    yield host
    host.close()


def _put_ep(fh: FelixHost, n: int, labels: dict) -> None:
    fh.put_endpoint(fh.workloads[n - 1], ["open"], labels=labels)


def _tier(fh, name, order):
    fh.put(f"/calico/v1/policy/tier/{name}/metadata", {"order": order})


def _policy(fh, tier, name, selector, order=None, inbound=(), outbound=()):
    doc = {"selector": selector, "inbound_rules": list(inbound), "outbound_rules": list(outbound)}
    if order is not None:
        doc["order"] = order
    fh.put(f"/calico/v1/policy/tier/{tier}/policy/{name}", doc)


def expect_flip(fh: FelixHost, src, dst, port: int, want: bool, change, limit: float = 10.0) -> None:
    """The verdict for src->dst:port is the opposite of `want` before `change()` (an etcd put) and
    becomes `want` after it.  How fast is `make bench` (bench_policy: relabel p50/p99)."""
    p = src.ns.popen([sys.executable, "-c", _PROBE, dst.ip4, str(port), "1" if want else "0", str(limit)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline().split()
        assert first == ["initial", "0" if want else "1"], f"probe started in the wrong state: {first}"
        p.stdin.write("go\n")
        p.stdin.flush()
        change()
        line = p.stdout.readline().split()
        assert line == ["flip"], f"verdict never changed within {limit}s: {line}"
    finally:
        p.kill()
        p.wait()


def test_three_tiers_selectors_and_relabel(fh):
    w = {i + 1: wl for i, wl in enumerate(fh.workloads)}
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("open", ALLOW, ALLOW)
    for n, labels in LABELS.items():
        _put_ep(fh, n, labels)
        fh.serve(w[n], PORT, OTHER)
    fh.start_felix()
    for wl in fh.workloads:
        fh.wait_programmed(wl)
    expect("allow-all profile before any policy", allowed=[T(w[5], w[2], 4, PORT), P(w[1], w[4], 4)])

    _tier(fh, "security", 10)
    _tier(fh, "platform", 20)
    _tier(fh, "app", "default")
    # has() and &&: the pci workload accepts only prod frontends; no outbound rule: its egress is denied
    _policy(fh, "security", "pci", "has(pci)", 1,
            inbound=[{"action": "allow", "src_selector": "role == 'frontend' && env == 'prod'"},
                     {"action": "deny"}])
    # negation + next-tier: everyone else goes on to the next tier
    _policy(fh, "security", "others", "!has(pci)", 2,
            inbound=[{"action": "next-tier"}], outbound=[{"action": "next-tier"}])
    # in {} and ||: databases refuse dev and backend sources, the rest go on
    _policy(fh, "platform", "dbguard", "role in {'db', 'cache'}", 1,
            inbound=[{"action": "deny", "src_selector": "env == 'dev' || role == 'backend'"},
                     {"action": "next-tier"}],
            outbound=[{"action": "next-tier"}])
    # default tier: non-prod workloads take tcp/8080 only (no verdict for anything else = deny)
    _policy(fh, "app", "nonprod", "has(env) && env != 'prod'",
            inbound=[{"action": "allow", "protocol": "tcp", "dst_ports": [PORT]}], outbound=ALLOW)

    expect("three tiers",
           allowed=[T(w[1], w[2], 4, PORT),      # security: frontend && prod
                    T(w[1], w[2], 6, PORT),
                    T(w[1], w[4], 4, PORT),      # platform next-tier -> app allows 8080
                    T(w[1], w[3], 4, PORT),
                    P(w[3], w[1], 4),            # frontend: no policy at all -> profile
                    T(w[3], w[1], 4, OTHER)],
           blocked=[T(w[5], w[2], 4, PORT),      # web/dev is not frontend && prod
                    T(w[5], w[2], 6, PORT),      # ... and IPv6 (v6 selector ipsets)
                    T(w[3], w[4], 6, PORT),
                    T(w[3], w[2], 4, PORT),
                    T(w[2], w[1], 4, PORT),      # pci egress: tier matched, no verdict
                    T(w[3], w[4], 4, PORT),      # || via role == backend
                    T(w[5], w[4], 4, PORT),      # || via env == dev
                    P(w[1], w[4], 4),            # app tier: no verdict for icmp
                    T(w[1], w[3], 4, OTHER)])

    # tier order: an allow-all tier for databases, first after platform, then before it
    _tier(fh, "override", 30)
    _policy(fh, "override", "dbopen", "role == 'db'", inbound=ALLOW, outbound=ALLOW)
    expect("override after platform", allowed=[P(w[1], w[4], 4)], blocked=[T(w[3], w[4], 4, PORT)])
    _tier(fh, "override", 15)
    expect("override before platform", allowed=[T(w[3], w[4], 4, PORT), T(w[5], w[4], 4, PORT)],
           blocked=[T(w[5], w[2], 4, PORT)])   # security (10) still comes first for pci
    fh.delete("/calico/v1/policy/tier/override", prefix=True)
    expect("override removed", blocked=[T(w[3], w[4], 4, PORT)])

    # relabelling: w5 leaves the app tier (dev -> prod) and comes back; then joins the
    # frontend && prod src_selector ipset that pci admits.  Each relabel flips the verdict.
    expect_flip(fh, w[1], w[5], OTHER, True, lambda: _put_ep(fh, 5, {"role": "web", "env": "prod"}))
    expect_flip(fh, w[1], w[5], OTHER, False, lambda: _put_ep(fh, 5, {"role": "web", "env": "dev"}))
    expect_flip(fh, w[5], w[2], PORT, True, lambda: _put_ep(fh, 5, {"role": "frontend", "env": "prod"}))
    expect_flip(fh, w[5], w[2], PORT, False, lambda: _put_ep(fh, 5, {"role": "frontend", "env": "qa"}))
    assert fh.felix_alive(), fh.log()[-3000:]


def test_profile_labels_and_log_action(fh):
    """Profile labels feed selectors; a `log` rule logs and evaluation goes on."""
    w = {i + 1: wl for i, wl in enumerate(fh.workloads)}
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("open", ALLOW, ALLOW)
    for n in (1, 2):
        _put_ep(fh, n, {})
        fh.serve(w[n], PORT)
    fh.start_felix()
    for wl in fh.workloads[:2]:
        fh.wait_programmed(wl)
    _tier(fh, "t", 1)
    _policy(fh, "t", "logdeny", "team == 'red'",
            inbound=[{"action": "log", "log_prefix": "tiertest:"}, {"action": "deny"}],
            outbound=[{"action": "next-tier"}])
    expect("no team label yet", allowed=[T(w[1], w[2], 4, PORT)])
    fh.put("/calico/v1/policy/profile/open/labels", {"team": "red"})
    expect("profile label selects both", blocked=[T(w[1], w[2], 4, PORT), T(w[2], w[1], 4, PORT)])
    save = fh.iptables_save(4)
    assert '--log-prefix "tiertest:"' in save
    # LOG counts the packets it saw before the deny: the rule's counter is non-zero
    out = "".join(fh.host.run(f"iptables-{b}-save", "-c", check=False).stdout for b in ("nft", "legacy"))
    logged = [ln for ln in out.splitlines() if "tiertest:" in ln]
    assert logged and any(int(ln[1:].split(":")[0]) > 0 for ln in logged), out
    # an endpoint's own label wins over its profile's
    _put_ep(fh, 2, {"team": "blue"})
    expect("own label overrides", allowed=[T(w[1], w[2], 4, PORT)], blocked=[T(w[2], w[1], 4, PORT)])
