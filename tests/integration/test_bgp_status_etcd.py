"""The BIRD shim's etcd writer (JSON gateway over a plain socket) against a real etcd."""

from __future__ import annotations

import json

import pytest

from bird_control.status import EtcdGateway, Publisher
from calico_testing.etcd import EtcdServer, free_port


@pytest.fixture
def etcd():
    e = EtcdServer().start()
    yield e
    e.stop()


def test_gateway_put_and_delete(etcd):
    gw = EtcdGateway.from_env({"ETCD_ENDPOINTS": etcd.endpoint})
    gw.put("/calico/bgp/v1/host/n1/status/v4", json.dumps({"sessions": [], "note": "é ünïcode"}))
    assert json.loads(etcd.get("/calico/bgp/v1/host/n1/status/v4"))["note"] == "é ünïcode"
    gw.delete("/calico/bgp/v1/host/n1/status/v4")
    assert etcd.get("/calico/bgp/v1/host/n1/status/v4") is None


def test_second_endpoint_used_when_the_first_is_down(etcd):
    gw = EtcdGateway.from_env({"ETCD_ENDPOINTS": f"http://127.0.0.1:{free_port()},{etcd.endpoint}"})
    gw.put("/calico/bgp/v1/host/n2/status/v4", "{}")
    assert etcd.get("/calico/bgp/v1/host/n2/status/v4") == "{}"


def test_publisher_with_etcd_down_says_so_once_then_recovers(etcd):
    said: list[str] = []
    dead = EtcdGateway([("http", "127.0.0.1", free_port())], timeout=1.0)
    t = [0.0]
    pub = Publisher("n3", 4, "/nonexistent/bird.ctl", dead, clock=lambda: t[0], say=said.append)
    sessions = [{"peer": "10.0.0.1", "name": "Global_10_0_0_1", "type": "global", "state": "Established"}]
    for _ in range(3):
        t[0] += 10
        assert not pub.step(sessions)
    assert len(said) == 1 and "cannot write BGP status" in said[0]
    pub.gateway = EtcdGateway.from_env({"ETCD_ENDPOINTS": etcd.endpoint})
    t[0] += 10
    assert pub.step(sessions)
    assert json.loads(etcd.get("/calico/bgp/v1/host/n3/status/v4"))["sessions"] == sessions
    assert pub.read() is None  # no BIRD at that socket: nothing to publish, no exception
