"""Calico's per-service probes on real nodes: an IPv6-only node (IP=none, CALICO_ROUTER_ID=hash) peers
over BGP with a dual-stack one; once that peer is gone it is not ready (-bird6-ready) but alive
(-felix-live -bird6-live): a node whose BGP peer is down is not reported dead.  A third node with
CALICO_NETWORKING_BACKEND=vxlan runs Felix alone, and its BIRD probes say why they fail.

Nodes and fabric are test_node_runtime's (real etcd, supervisord, Felix, confd, BIRD/BIRD6).
"""

from __future__ import annotations

import asyncio

import pytest

from bird_control.protocol import BirdClient, BirdError, BirdUnavailable
from calico_testing.netns import wait_for
from libcalico.router_id import hash_router_id
from tests.integration.test_node_runtime import FABRIC_V4, FABRIC_V6, fabric, nodes  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(180)


def established_v6(node) -> int:
    async def read() -> int:
        async with BirdClient(str(node.run_dir / "bird6.ctl"), timeout=3.0) as bird:
            return sum(1 for p in await bird.show_protocols() if p.proto == "BGP" and p.established)
    try:
        return asyncio.run(read())
    except (BirdUnavailable, BirdError, OSError, TimeoutError):
        return 0


def test_ipv6_only_node_peers_and_its_probes_split_liveness_from_readiness(fabric, nodes):  # noqa: F811
    fabric.etcd.start()
    common = dict(ETCD_ENDPOINTS=fabric.endpoint, FELIX_HEALTHENABLED="true")
    a = nodes(fabric.node_ns(1), "dual", IP=f"{FABRIC_V4}.1", IP6=f"{FABRIC_V6}1", **common).start()
    b = nodes(fabric.node_ns(2), "v6only", IP="none", IP6=f"{FABRIC_V6}2", CALICO_ROUTER_ID="hash", **common).start()
    # and a VXLAN-backend node: Felix alone (no IPv6, so no session with the IPv6-only node)
    vx = nodes(fabric.node_ns(3), "vx", IP=f"{FABRIC_V4}.3", CALICO_NETWORKING_BACKEND="vxlan", **common).start()
    a.wait_running(["felix", "bird", "bird6", "confd"])
    b.wait_running(["felix", "bird6", "confd"])
    vx.wait_running(["felix"])
    wait_for(lambda: established_v6(b) == 1, 60, 0.5, f"the IPv6-only node's BGP session; {b.tail()}")
    assert f"router id {hash_router_id('v6only')};" in (b.conf_dir / "bird6.cfg").read_text()
    assert not (b.conf_dir / "bird.cfg").exists()

    def probe(node, *flags: str):
        return node.run(*flags)

    wait_for(lambda: probe(b, "-felix-ready", "-bird6-ready").returncode == 0, 60, 0.5, "b ready")
    r = probe(b, "-felix-live", "-bird6-live")
    assert r.returncode == 0 and "calico/node is live (felix-live, bird6-live)" in r.stdout
    r = probe(b, "-bird-ready")
    assert r.returncode == 1 and "bird: not run by this node (no IPv4 address (IP=none))" in r.stdout
    wait_for(lambda: vx.run("-felix-ready").returncode == 0, 60, 0.5, "the VXLAN node's Felix ready")
    r = vx.run("-felix-live", "-bird-live")
    assert r.returncode == 1
    assert "bird: not run by this node (BGP networking is off: CALICO_NETWORKING_BACKEND=vxlan)" in r.stdout
    assert not (vx.conf_dir / "bird.cfg").exists()

    assert a.stop() == 0  # the only BGP peer goes away

    def not_ready():
        r = probe(b, "-bird6-ready")
        return r.returncode == 1 and "BGP sessions not Established" in r.stdout and r.stdout
    out = wait_for(not_ready, 60, 0.5, "b not ready once its peer is gone")
    assert out.startswith("calico/node is not ready (bird6-ready): bird6:")
    r = probe(b, "-felix-live", "-bird6-live")
    assert r.returncode == 0, r.stdout  # alive: nothing to restart
    assert probe(b, "-felix-ready").returncode == 0  # Felix's readiness does not depend on BGP
    assert probe(b, "-ready").returncode == 1 and probe(b, "-live").returncode == 0  # the aggregates agree

