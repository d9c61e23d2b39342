"""SIGKILL each calico-node service 20 times under supervisord: the final dataplane equals the reference.

The reference is the same node's dataplane once it first converged (same
datastore, same workloads).  After 20 SIGKILLs of each of felix, confd and
bird (all three at once per round, each waited back to RUNNING), iptables-save,
ipsets and Felix's routes must be identical after normalizing counters, and
BIRD's config byte-identical.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from calico_testing.netns import veth, wait_for
from tests.integration.test_node_runtime import FABRIC_V4, Fabric, Node
from tests.lib import faults

KILLS = 20
SERVICES = ["felix", "confd", "bird"]
pytestmark = pytest.mark.timeout(300)


@pytest.mark.slow
def test_sigkill_each_service_20_times_dataplane_equals_reference(netns_factory, tmp_path):
    fabric = Fabric(netns_factory)
    node = None
    try:
        fabric.etcd.start()
        ns = fabric.node_ns(1)
        wl = netns_factory("wk")
        ifname = f"caliK{os.getpid() % 10000}"
        veth(ns, ifname, wl, "eth0")
        wl.run("ip", "addr", "add", "10.65.7.1/32", "dev", "eth0")
        e = fabric.etcd
        e.put("/calico/v1/policy/profile/web/rules", json.dumps({
            "inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [80, 443], "src_tag": "web"},
                              {"action": "deny"}],
            "outbound_rules": [{"action": "allow"}]}))
        e.put("/calico/v1/policy/profile/web/tags", '["web"]')
        e.put("/calico/v1/host/nodek/workload/k8s/w1/endpoint/e1", json.dumps({
            "state": "active", "name": ifname, "profile_ids": ["web"], "ipv4_nets": ["10.65.7.1/32"],
            "ipv6_nets": ["fd00:65::7:1/128"]}))
        e.put("/calico/bgp/v1/host/peer2/ip_addr_v4", f"{FABRIC_V4}.2")
        node = Node(ns, tmp_path / "nodek", "nodek", {"IP": f"{FABRIC_V4}.1", "ETCD_ENDPOINTS": fabric.endpoint})
        node.start()
        node.wait_running(SERVICES, timeout=90)
        bird_cfg = node.conf_dir / "bird.cfg"

        def converged() -> dict | None:
            dp = faults.dataplane(ns)
            ok = ("10.65.7.1" in dp["routes"] and "felix-" in dp["ipsets"] and bird_cfg.exists()
                  and "Mesh_10_98_0_2" in bird_cfg.read_text())
            return dp if ok else None
        wait_for(converged, 60, 0.5, "first convergence")
        time.sleep(3)  # let cleanups and refreshes settle: the reference is a quiet state
        reference = faults.dataplane(ns)
        reference_cfg = bird_cfg.read_bytes()

        t0 = time.monotonic()
        kills = dict.fromkeys(SERVICES, 0)
        states = node.wait_running(SERVICES, timeout=60)
        for round_ in range(KILLS):
            # Every service at once, round after round: the harshest order for their restarts
            # (felix and confd lose their datastore view together, BIRD its sessions).
            for svc in SERVICES:
                os.kill(states[svc][1], signal.SIGKILL)
                kills[svc] += 1

            def back(old=states, round_=round_):
                st = node.states()
                ok = all(st.get(s, ("", 0))[0] == "RUNNING" and st[s][1] != old[s][1] for s in SERVICES)
                return st if ok else None
            states = wait_for(back, 60, 0.2, f"every service back after round {round_ + 1}")
        took = time.monotonic() - t0
        node.wait_running(SERVICES, timeout=60)

        def same() -> bool:
            return faults.dataplane(ns) == reference and bird_cfg.read_bytes() == reference_cfg
        try:
            wait_for(same, 60, 1.0, "dataplane equal to the reference")
        except AssertionError:
            now = faults.dataplane(ns)
            diff = {k: (reference[k], now[k]) for k in reference if reference[k] != now[k]}
            raise AssertionError(f"after {kills} kills the dataplane differs: {diff}") from None
        print(f"supervised kills: {kills} in {took:.0f}s; final dataplane == reference "
              f"({sum(len(v.splitlines()) for v in reference.values())} lines compared)")
        assert node.proc.poll() is None, "calico-node (supervisord) itself stayed up"
    finally:
        if node is not None:
            node.stop(20)
        fabric.close()


@pytest.mark.slow
def test_full_log_disk_every_service_keeps_running(netns_factory, tmp_path):
    """calico-node's whole log dir (supervisord's and every service's logs) on a tmpfs that fills up."""
    fabric = Fabric(netns_factory)
    disk = faults.SmallTmpfs(size_kb=256)
    node = None
    try:
        fabric.etcd.start()
        ns = fabric.node_ns(1)
        wl = netns_factory("wd")
        ifname = f"caliD{os.getpid() % 10000}"
        veth(ns, ifname, wl, "eth0")
        e = fabric.etcd
        e.put("/calico/v1/policy/profile/web/rules", json.dumps({"inbound_rules": [{"action": "allow"}],
                                                                  "outbound_rules": [{"action": "allow"}]}))
        node = Node(ns, tmp_path / "noded", "noded", {"IP": f"{FABRIC_V4}.1", "ETCD_ENDPOINTS": fabric.endpoint,
                                                     "CALICO_LOG_DIR": disk.path,
                                                     "FELIX_LOGSEVERITYSCREEN": "debug"})
        node.log_dir = disk.path
        node.start()
        before = node.wait_running(SERVICES, timeout=90)
        assert all(os.path.isdir(os.path.join(disk.path, svc)) for svc in SERVICES), "logs live on the tmpfs"
        disk.fill()
        assert disk.free() == 0
        # Work that makes every service log: an endpoint for Felix, a peer for confd and BIRD.
        e.put("/calico/v1/host/noded/workload/k8s/w1/endpoint/e1", json.dumps({
            "state": "active", "name": ifname, "profile_ids": ["web"], "ipv4_nets": ["10.65.8.1/32"],
            "ipv6_nets": []}))
        e.put("/calico/bgp/v1/host/peer2/ip_addr_v4", f"{FABRIC_V4}.2")
        bird_cfg = node.conf_dir / "bird.cfg"
        wait_for(lambda: "10.65.8.1" in faults.routes(ns), 40, 0.5, "endpoint programmed on a full disk")
        wait_for(lambda: bird_cfg.exists() and "Mesh_10_98_0_2" in bird_cfg.read_text(), 40, 0.5,
                 "confd renders on a full disk")
        time.sleep(3)
        after = node.states()
        assert after == before, f"a service restarted or stopped while the log disk was full: {before} -> {after}"
        assert node.proc.poll() is None, "supervisord survived the full disk"
        print(f"full log disk: services {sorted(after)} kept their pids; endpoint and BGP peer applied")
    finally:
        if node is not None:
            node.stop(20)
        fabric.close()
        disk.close()
