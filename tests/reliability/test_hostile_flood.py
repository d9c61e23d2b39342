"""10,000 invalid keys next to 100 valid endpoints, fed to the real calico-felix.

All 100 valid endpoints must be programmed (a route each), Felix must stay
up, and its log must stay readable: no more than a few lines per second for
each kind of error (the first few name their keys, the rest are counted).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter

import pytest

from calico_testing.netns import wait_for
from tests.integration.felix_topology import FelixHost
from tests.reliability.probe import PYTHON, ROOT

N_VALID = 100
LINES_PER_SECOND_PER_KIND = 12  # "a few": the limiter's burst (5) plus its summary, with slack


def bulk_put(fh: FelixHost, kv: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env.update(ETCD_ENDPOINTS=fh.etcd.endpoint, PYTHONPATH=ROOT)
    r = fh.host.run("env", *[f"{k}={v}" for k, v in env.items() if k in ("ETCD_ENDPOINTS", "PYTHONPATH")],
                    PYTHON, "-m", "tests.reliability.bulk_put", input=json.dumps(kv), timeout=120)
    assert r.stdout.strip() == str(len(kv)), r.stderr


def flood(host: str) -> dict[str, str]:
    """10,000 invalid keys of five kinds."""
    kv: dict[str, str] = {}
    wl = f"/calico/v1/host/{host}/workload/k8s"
    for i in range(3000):      # not JSON at all
        kv[f"{wl}/junk{i}/endpoint/e"] = '{"state": "active", "name": ' + "x" * (i % 50)
    for i in range(2000):      # JSON, but hostile values
        kv[f"{wl}/bad{i}/endpoint/e"] = json.dumps({
            "state": "active", "name": f"cali{i}; -j ACCEPT", "profile_ids": [f"p{i}\n-A INPUT -j ACCEPT"],
            "ipv4_nets": [f"10.0.{i % 250}.1/33"], "ipv6_nets": []})
    for i in range(2000):      # profiles whose rules cannot be rendered safely
        kv[f"/calico/v1/policy/profile/badprof{i}/rules"] = json.dumps({
            "inbound_rules": [{"action": "allow", "dst_ports": [80, f"{i}; -j DROP"]}], "outbound_rules": []})
    for i in range(2000):      # hostile key segments
        kv[f"{wl}/w;{i}\"{{}}/endpoint/e"] = json.dumps({"state": "active", "name": "cali0",
                                                          "profile_ids": [], "ipv4_nets": [], "ipv6_nets": []})
    for i in range(1000):      # valid JSON and names, but the interface is not ours (wrong prefix)
        kv[f"{wl}/eth{i}/endpoint/e"] = json.dumps({"state": "active", "name": f"eth{i}", "profile_ids": ["good"],
                                                     "ipv4_nets": [f"10.66.{i // 250}.{i % 250 + 1}/32"],
                                                     "ipv6_nets": []})
    assert len(kv) == 10_000
    return kv


def valid(host: str, ifaces: list[str]) -> dict[str, str]:
    kv = {"/calico/v1/Ready": "true", "/calico/v1/policy/profile/good/rules": json.dumps({
        "inbound_rules": [{"action": "allow", "src_tag": "good"}], "outbound_rules": [{"action": "allow"}]}),
        "/calico/v1/policy/profile/good/tags": '["good"]'}
    for i, ifname in enumerate(ifaces):
        kv[f"/calico/v1/host/{host}/workload/k8s/ok{i}/endpoint/e"] = json.dumps({
            "state": "active", "name": ifname, "profile_ids": ["good"],
            "ipv4_nets": [f"10.65.{i // 250}.{i % 250 + 1}/32"], "ipv6_nets": [f"fd00:65::{i + 1:x}/128"]})
    return kv


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)[.,]\d+ \[(\w+)\] ([\w.]+): (.*)$")


def error_kind(message: str) -> str:
    """A log message with its key and specifics removed: what a human would call the kind of error."""
    m = re.sub(r"/calico/\S+", "<key>", message)
    m = re.sub(r"'[^']*'|\"[^\"]*\"", "<v>", m)
    m = re.sub(r"\d+", "N", m)
    return m[:60]


@pytest.mark.slow
def test_hostile_flood_of_invalid_keys_valid_endpoints_programmed_logs_rate_limited(netns_factory):
    fh = FelixHost(netns_factory, n_workloads=0)
    try:
        ifaces = [f"caliF{i}" for i in range(N_VALID)]
        batch = "".join(f"link add {n} type veth peer name pF{i}\nlink set {n} up\nlink set pF{i} up\n"
                        for i, n in enumerate(ifaces))
        fh.host.run("ip", "-batch", "-", input=batch)
        kv = flood(fh.hostname)
        kv.update(valid(fh.hostname, ifaces))
        bulk_put(fh, kv)
        t0 = time.monotonic()
        fh.start_felix(FELIX_LOGSEVERITYSCREEN="info")

        def programmed() -> bool:
            return fh.routes(4).count(" proto 80") >= N_VALID or len(fh.routes(4).splitlines()) >= N_VALID
        try:
            wait_for(programmed, 60, interval=0.5, what=f"{N_VALID} routes")
        except AssertionError as e:
            raise AssertionError(f"{e}; routes:\n{fh.routes(4)[-500:]}\nfelix log tail:\n{fh.log()[-3000:]}") from None
        took = time.monotonic() - t0
        routes4 = fh.routes(4)
        for i, ifname in enumerate(ifaces):
            assert f"10.65.{i // 250}.{i % 250 + 1} dev {ifname}" in routes4
        assert "10.66." not in routes4, "endpoints on foreign interfaces are not programmed"
        assert fh.felix_alive()
        time.sleep(2)  # let the limiter write its summaries
        saved = fh.iptables_save(4)
        assert "-j ACCEPT\n-A INPUT" not in saved and "badprof" not in saved
        per_second: Counter = Counter()
        total_by_kind: Counter = Counter()
        for line in fh.log().splitlines():
            m = _LINE.match(line)
            if not m or m.group(2) not in ("WARNING", "ERROR"):
                continue
            kind = error_kind(m.group(4))
            per_second[(m.group(1), kind)] += 1
            total_by_kind[kind] += 1
        worst = per_second.most_common(3)
        print(f"flood: {N_VALID} endpoints programmed in {took:.1f}s; warning/error lines "
              f"{sum(total_by_kind.values())} in total, by kind {dict(total_by_kind)}; worst seconds {worst}")
        assert worst and worst[0][1] <= LINES_PER_SECOND_PER_KIND, \
            f"log not rate-limited: {worst[0][1]} lines in one second of kind {worst[0][0][1]!r}"
        assert sum(total_by_kind.values()) < 200, f"{sum(total_by_kind.values())} warning/error lines"
    finally:
        fh.close()


def test_hostile_flood_confd_renders_valid_peers_logs_rate_limited(caplog, tmp_path):
    """confd's side of the flood: 10,000 invalid BGP keys beside valid peers, through the syncer and
    `Confd.apply` (what calico-confd runs per batch).  The valid peers render; the log stays short."""
    import logging

    from confd.daemon import Confd, Settings
    from confd.render import PACKAGE_TEMPLATES, render_text
    from libcalico.bgp_values import parse_key_value
    from libcalico.syncer import Syncer

    g = "/calico/bgp/v1/global"
    kv = {f"{g}/as_num": "64512", f"{g}/node_mesh": '{"enabled": true}',
          "/calico/bgp/v1/host/node1/ip_addr_v4": "10.99.0.1"}
    for i in range(50):
        kv[f"{g}/peer_v4/10.98.{i}.1"] = json.dumps({"ip": f"10.98.{i}.1", "as_num": 65000 + i})
    for i in range(4000):   # not JSON
        kv[f"{g}/peer_v4/10.97.{i // 250}.{i % 250 + 1}"] = '{"ip": ' + "x" * (i % 20)
    for i in range(3000):   # hostile AS numbers for other hosts
        kv[f"/calico/bgp/v1/host/h{i}/as_num"] = f"{i}; protocol static x {{"
    for i in range(3000):   # keys outside the datamodel
        kv[f"/calico/bgp/v1/host/h{i};x/ip_addr_v4"] = "10.0.0.1"
    confd = Confd(Settings(host="node1", ip4="10.99.0.1", ip6=None, run_dir=str(tmp_path), conf_dir=str(tmp_path)))
    syncer = Syncer(client=None, prefixes=["/calico/"], parser=parse_key_value)  # what calico-confd runs
    with caplog.at_level(logging.INFO):
        t0 = time.monotonic()
        confd.apply(syncer.diff(kv))
        took = time.monotonic() - t0
    text = render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", confd.store.context())
    assert all(f"Global_10_98_{i}_1" in text for i in range(50)), "every valid peer rendered"
    errors = Counter(error_kind(r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING)
    print(f"confd flood: applied in {took:.2f}s; warning/error lines {sum(errors.values())}: {dict(errors)}")
    worst = errors.most_common(1)
    assert worst[0][1] <= LINES_PER_SECOND_PER_KIND, f"confd log not rate-limited: {worst}"
