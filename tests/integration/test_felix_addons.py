"""The real calico-felix with the issue-5 add-ons wired in: health, metrics, VXLAN overlay and NAT from etcd.

Felix runs inside a host namespace with its own etcd (tests.integration.felix_topology); health and
metrics bind to that namespace's loopback and are read from inside it.
"""

from __future__ import annotations

import sys

import pytest

from libcalico import keys
from tests.integration.felix_topology import FelixHost, eventually

HOST = "felixhost"
FETCH = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2); print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=1, hostname=HOST)
    yield host
    host.close()


def fetch(fh: FelixHost, url: str) -> tuple[int, str]:
    r = fh.host.run(sys.executable, "-c", FETCH, url, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        return 0, r.stderr
    code, _, body = r.stdout.partition("\n")
    return int(code), body


def test_readiness_503_until_in_sync_then_200_and_metrics(fh):
    fh.start_felix(FELIX_HEALTHENABLED="true", FELIX_PROMETHEUSMETRICSENABLED="true")
    eventually(lambda: fetch(fh, "http://127.0.0.1:9099/liveness")[0] == 200, 20, "liveness answers")
    code, body = fetch(fh, "http://127.0.0.1:9099/readiness")
    assert code == 503 and "not in sync" in body, (code, body)  # no /calico/v1/Ready yet
    fh.put("/calico/v1/Ready", "true")
    eventually(lambda: fetch(fh, "http://127.0.0.1:9099/readiness")[0] == 200, 20,
               f"readiness 200; log:\n{fh.log()[-2000:]}")
    code, text = fetch(fh, "http://127.0.0.1:9091/metrics")
    assert code == 200
    lines = [ln for ln in text.splitlines() if ln.startswith("felix")]
    assert any(ln.startswith("felix_calc_graph_updates_processed ") for ln in lines)
    assert "felix_resync_state 3.0" in lines
    assert any(ln.startswith("felix_int_dataplane_apply_time_seconds_count ") for ln in lines)
    # bound to loopback only
    assert "127.0.0.1:9099" in fh.host.run("ss", "-ltnH").stdout
    assert fh.felix_alive()


def test_vxlan_and_nat_programmed_from_etcd(fh):
    h = fh.host
    h.run("ip", "addr", "add", "10.0.1.2/24", "dev", "uplink0")
    fh.put("/calico/v1/Ready", "true")
    fh.put(keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "vxlan": "vxlan.calico", "masquerade": True})
    fh.put(keys.host_bird_ip(HOST), "10.0.1.2")
    fh.put(keys.host_config(HOST, "VXLANTunnelAddr"), "10.65.0.0")
    fh.put(keys.block_affinity(HOST, "10.65.0.0/26"), {"state": "confirmed"})
    other = "otherhost"
    fh.put(keys.host_bird_ip(other), "10.0.2.2")
    fh.put(keys.host_config(other, "VXLANTunnelAddr"), "10.65.0.64")
    fh.put(keys.host_vxlan_mac(other), "66:00:00:00:00:0b")
    fh.put(keys.block_affinity(other, "10.65.0.64/26"), {"state": "confirmed"})
    fh.start_felix()
    eventually(lambda: "via 10.65.0.64" in h.run("ip", "route", "show", "10.65.0.64/26").stdout, 30,
               f"overlay route; log:\n{fh.log()[-3000:]}")
    route = h.run("ip", "route", "show", "10.65.0.64/26").stdout
    assert "vxlan.calico" in route and "onlink" in route and "proto 80" in route
    assert "dst 10.0.2.2" in h.run("bridge", "fdb", "show", "dev", "vxlan.calico").stdout
    assert "10.65.0.0/32" in h.run("ip", "-4", "addr", "show", "vxlan.calico").stdout
    # our MAC is published for the other hosts
    mac = h.run("cat", "/sys/class/net/vxlan.calico/address").stdout.strip()
    eventually(lambda: fh.etcd.get(keys.host_vxlan_mac(HOST)) == mac, 10, "vxlan_tunnel_mac published")
    # NAT outgoing for the masquerade pool
    save = fh.iptables_save(4)
    assert "felix-NAT-OUTGOING" in save and "MASQUERADE" in save
    assert {"felix-v4-i:masq-ipam-pools", "felix-v4-i:all-ipam-pools"} <= fh.felix_ipsets()
    # the other host goes away: its route, neighbour and fdb entry go too
    fh.delete(keys.block_affinity(other, "10.65.0.64/26"))
    fh.delete(keys.host_vxlan_mac(other))
    eventually(lambda: not h.run("ip", "route", "show", "10.65.0.64/26").stdout.strip(), 10, "route removed")
    eventually(lambda: "66:00:00:00:00:0b" not in h.run("bridge", "fdb", "show", "dev", "vxlan.calico").stdout,
               10, "fdb removed")
    assert "10.65.0.64" not in h.run("ip", "neigh", "show", "dev", "vxlan.calico").stdout
    # pool removed: no VXLAN device, no NAT chains or pool sets
    fh.delete(keys.pool("10.65.0.0/16"))
    eventually(lambda: h.run("ip", "link", "show", "vxlan.calico", check=False).returncode != 0, 10,
               "vxlan.calico removed")
    eventually(lambda: "felix-NAT-OUTGOING" not in fh.iptables_save(4), 10, "nat chains removed")
    eventually(lambda: not {"felix-v4-i:masq-ipam-pools"} & fh.felix_ipsets(), 10, "pool ipsets removed")
    assert fh.felix_alive()
