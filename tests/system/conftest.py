"""System tests: real calico-node hosts in namespaces, built by calico_testing/cluster.py."""

import json

import pytest

from calico_testing.cluster import Cluster

ALLOW_ALL = json.dumps({"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})


@pytest.fixture(scope="module")
def cluster3():
    """Three nodes on one subnet, full mesh, pool 10.65.0.0/16, profile 'open' allowing everything."""
    c = Cluster(n_nodes=3, start=False)
    try:
        a = c.nodes[0]
        a.ctl("pool", "add", "10.65.0.0/16")
        a.ctl("profile", "add", "open")
        a.ctl("profile", "open", "rule", "update", input=ALLOW_ALL)
        for n in c.nodes:
            c.start_node(n)
        c.wait_ready(timeout=90)
        for n in c.nodes:
            for _ in range(2):
                c.add_workload(n, "ipv4", profile="open")
        yield c
    finally:
        c.close()
