"""calicoctl's route reflector and BGP status commands against a real etcd (no calico-node needed).

`node bgp route-reflector set|remove|show`, `bgp peer add` naming a reflector node, `node show`'s
reflector column, `status --all` from published status documents, and `status` heading its tables
with the node's `IP: ... AS Number: ...` line.
"""

from __future__ import annotations

import json
import os

import pytest

from calico_testing.etcd import EtcdServer
from calico_testing.netns import sh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALICOCTL = os.path.join(ROOT, ".venv", "bin", "calicoctl")


@pytest.fixture
def etcd_ns(netns_factory):
    ns = netns_factory("rrc")
    etcd = EtcdServer(netns=ns.name).start()
    etcd.put("/calico/bgp/v1/host/rr1/ip_addr_v4", "10.0.0.1")
    etcd.put("/calico/bgp/v1/host/n2/ip_addr_v4", "10.0.0.2")
    etcd.put("/calico/bgp/v1/host/n2/as_num", "65002")
    yield ns, etcd
    etcd.close()


def run(ns, etcd, *args: str, **env: str):
    e = {"PATH": os.environ["PATH"], "ETCD_ENDPOINTS": etcd.endpoint, "NODENAME": "n2", **env}
    return sh("env", "-i", *[f"{k}={v}" for k, v in e.items()], CALICOCTL, *args, ns=ns.name, check=False,
              timeout=120)


def test_route_reflector_set_show_remove(etcd_ns):
    ns, etcd = etcd_ns
    r = run(ns, etcd, "node", "bgp", "route-reflector", "set", "1.0.0.1", "--hostname=rr1")
    assert r.returncode == 0 and "route reflector of cluster 1.0.0.1" in r.stdout, r.stderr
    assert etcd.get("/calico/bgp/v1/host/rr1/rr_cluster_id") == "1.0.0.1"
    assert run(ns, etcd, "node", "bgp", "route-reflector", "show", "--hostname=rr1").stdout.strip() == "1.0.0.1"
    show = run(ns, etcd, "node", "show").stdout
    row = next(ln for ln in show.splitlines() if ln.startswith("| rr1 "))
    assert row.rstrip(" |").endswith("1.0.0.1"), show
    # the shortcut: a global peer that is a reflector node
    r = run(ns, etcd, "bgp", "peer", "add", "10.0.0.1", "as", "64511")
    assert r.returncode == 0 and "node rr1, a route reflector (cluster 1.0.0.1)" in r.stdout, r.stdout + r.stderr
    r = run(ns, etcd, "bgp", "peer", "add", "10.0.0.2", "as", "64511")
    assert "not a route reflector" in r.stdout and "--hostname=n2" in r.stdout, r.stdout
    r = run(ns, etcd, "bgp", "peer", "add", "10.0.0.99", "as", "64511")
    assert r.returncode == 0 and r.stdout == "", r.stdout  # not a node: nothing to say
    assert run(ns, etcd, "node", "bgp", "route-reflector", "remove", "--hostname=rr1").returncode == 0
    assert etcd.get("/calico/bgp/v1/host/rr1/rr_cluster_id") is None
    r = run(ns, etcd, "node", "bgp", "route-reflector", "remove", "--hostname=rr1")
    assert r.returncode != 0 and "not a route reflector" in r.stderr


@pytest.mark.parametrize("args,error", [
    (["set", "1.2.3"], "cluster id"),
    (["set", "fd00::1"], "cluster id"),
    (["set", "1.0.0.1", "extra"], "invalid command"),
    (["frob"], "invalid command"),
    (["set", "1.0.0.1", "--hostname=bad/name"], "hostname"),
])
def test_route_reflector_bad_arguments(etcd_ns, args, error):
    ns, etcd = etcd_ns
    r = run(ns, etcd, "node", "bgp", "route-reflector", *args)
    assert r.returncode != 0 and error in r.stderr, r.stderr
    assert etcd.keys("/calico/bgp/v1/host/rr1/rr_cluster_id") == []


def test_set_on_an_unregistered_node_is_refused(etcd_ns):
    ns, etcd = etcd_ns
    r = run(ns, etcd, "node", "bgp", "route-reflector", "set", "1.0.0.1", "--hostname=ghost")
    assert r.returncode != 0 and "not registered" in r.stderr
    assert etcd.get("/calico/bgp/v1/host/ghost/rr_cluster_id") is None


def test_status_all_and_the_ip_as_line(etcd_ns, tmp_path):
    ns, etcd = etcd_ns
    etcd.put("/calico/bgp/v1/host/rr1/status/v4", json.dumps({"time": "2026-11-28T12:00:00Z", "sessions": [
        {"peer": "10.0.0.2", "type": "rr client", "state": "Established", "since": "2026-11-28 11:59:00",
         "imported": 1, "exported": 0}]}))
    etcd.put("/calico/bgp/v1/host/n2/status/v4", "{broken")
    r = run(ns, etcd, "status", "--all")
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("| rr1 "))
    assert "10.0.0.2" in row and "rr client" in row and "Established" in row and "1/0" in row
    assert "/calico/bgp/v1/host/n2/status/v4: unreadable status" in r.stdout
    r = run(ns, etcd, "node", "status", "--all")
    assert r.returncode == 0 and "| rr1 " in r.stdout
    # `status` on host n2 (no calico-node here): the registration line heads each family's table
    r = run(ns, etcd, "status", CALICO_RUN_DIR=str(tmp_path))
    assert r.returncode == 1 and "IP: 10.0.0.2    AS Number: 65002" in r.stdout, r.stdout
    etcd.put("/calico/bgp/v1/global/as_num", "64999")
    r = run(ns, etcd, "status", CALICO_RUN_DIR=str(tmp_path), NODENAME="rr1")
    assert "IP: 10.0.0.1    AS Number: 64999 (inherited)" in r.stdout, r.stdout
    r = run(ns, etcd, "status", "--runtime=rkt")
    assert r.returncode != 0 and "--runtime" in r.stderr
    r = run(ns, etcd, "status", "--all", "--runtime=docker")
    assert r.returncode != 0
