"""Endpoints claiming an established workload's IP or interface, against real etcd, the real
calico-felix and real packets in namespaces: the first claimant (by etcd create revision)
keeps what it claimed, live and after a restart; thieves are in error; deleting the owner
hands its IP to the earliest remaining claimant.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.integration.felix_topology import FelixHost, always, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALLOW_ALL = [{"action": "allow"}]


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=3)
    yield host
    host.close()


def test_established_workload_keeps_ip_and_interface_against_later_claimants(fh):
    w1, w2, w3 = fh.workloads
    fh.put("/calico/v1/Ready", "true")
    fh.put("/calico/v1/config/EndpointReportingEnabled", "true")
    fh.put_profile("p", ALLOW_ALL, ALLOW_ALL)
    fh.put_profile("t", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(w1, ["p"], mac=True)
    fh.put_endpoint(w3, ["p"])
    fh.start_felix()
    fh.wait_programmed(w1)
    fh.wait_programmed(w3)
    eventually(lambda: w3.ping(w1.ip4), 20, "w3 -> w1 before the thieves")

    # Thieves, created after w1 but with keys that sort before it (the old restart tie-break).
    base = f"/calico/v1/host/{fh.hostname}/workload/test"
    ip_thief = f"{base}/a-ipthief/endpoint/e"      # w1's IP on w2's interface
    if_thief = f"{base}/a-ifthief/endpoint/e"      # w1's interface, another IP
    fh.put(ip_thief, {"state": "active", "name": w2.ifname, "profile_ids": ["t"],
                      "ipv4_nets": [f"{w1.ip4}/32"]})
    fh.put(if_thief, {"state": "active", "name": w1.ifname, "profile_ids": ["t"],
                      "ipv4_nets": ["10.65.0.99/32"]})
    # w2 answers for w1's address too, so a route moved to its interface would be seen working
    w2.ns.run("ip", "addr", "add", f"{w1.ip4}/32", "dev", "eth0")

    status = f"/calico/felix/v1/host/{fh.hostname}/workload/test"

    def in_error(wl: str, *words: str) -> bool:
        doc = json.loads(fh.etcd.get(f"{status}/{wl}/endpoint/e") or "{}")
        return doc.get("status") == "error" and all(w in doc.get("reason", "") for w in words)

    def owner_intact() -> bool:
        routes = fh.routes(4)
        return (f"{w1.ip4} dev {w1.ifname}" in routes and "10.65.0.99" not in routes
                and f"dev {w2.ifname}" not in routes and w3.ping(w1.ip4))

    def thieves_contained() -> bool:
        # the IP thief's interface drops everything, even packets from the stolen address
        return (not w2.ping(w3.ip4) and
                w2.ns.run("ping", "-c1", "-W1", "-I", w1.ip4, w3.ip4, check=False).returncode != 0)

    for phase in ("live", "after restart"):
        eventually(lambda: in_error("a-ipthief", w1.ip4, fh.ep_key(w1))
                   and in_error("a-ifthief", w1.ifname, fh.ep_key(w1)), 20, f"thieves in error ({phase})")
        eventually(owner_intact, 20, f"w1 keeps its route and traffic ({phase})")
        always(owner_intact, 2, f"w1 keeps its route and traffic ({phase})")
        assert thieves_contained(), phase
        assert json.loads(fh.etcd.get(f"{status}/w1/endpoint/e1"))["status"] == "up"
        if phase == "live":
            assert ip_thief in fh.log() and if_thief in fh.log(), "conflicts logged with the key"
            fh.kill_felix(signal.SIGKILL)
            fh.start_felix()

    # The owner goes: the earliest remaining claimant of each takes over at once.
    fh.delete(fh.ep_key(w1))
    eventually(lambda: f"{w1.ip4} dev {w2.ifname}" in fh.routes(4)
               and f"10.65.0.99 dev {w1.ifname}" in fh.routes(4), 20, "claims handed over")
    eventually(lambda: w3.ping(w1.ip4), 20, "w1's address now reaches w2 (the IP thief, first in line)")
    eventually(lambda: json.loads(fh.etcd.get(f"{status}/a-ipthief/endpoint/e") or "{}").get("status") == "up"
               and json.loads(fh.etcd.get(f"{status}/a-ifthief/endpoint/e") or "{}").get("status") == "up",
               20, "former thieves up")
