"""NAT outgoing, 1:1 NAT and metadata DNAT on the real kernel, through IptablesTable('nat') and IpsetWriter.

  w1 10.65.0.2 (masq pool) ┐
  w2 10.65.0.3 (masq pool) ├─ host H (192.168.50.1) ── outside O (192.168.50.2)
  w3 10.65.0.4 (1:1 NAT to 172.31.0.9) ┘
  w4 10.70.0.2 (pool without masquerade)

The outside namespace HAS a route back to the pools, so a connection from an
un-NATed source would succeed too: the TCP servers report the peer address
they saw, which is what the assertions check.
"""

from __future__ import annotations

import json
import sys

import pytest

from calico_testing.netns import veth, wait_for
from felix.addons import NatPusher
from felix.calc.nat import NatCalculator, NatConfig
from felix.dataplane.backend import Backend
from felix.dataplane.cmd import CmdRunner
from felix.dataplane.ipsets import IpsetWriter
from felix.dataplane.iptables import IptablesTable
from libcalico import keys
from libcalico.models import parse_key_value

ME = "host-h"
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"""
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print(s.recv(64).decode())
"""


def peer_seen(ns, ip: str, port: int, check: bool = True) -> str:
    return ns.run(sys.executable, "-c", CLIENT, ip, str(port), check=check).stdout.strip()


def serve(ns, port: int) -> None:
    ns.popen([sys.executable, "-c", SERVER, str(port)])
    wait_for(lambda: f":{port} " in ns.run("ss", "-ltnH").stdout, 10, what=f"server on {port} in {ns.name}")


@pytest.fixture
def topo(netns_factory):
    h, o = netns_factory("nath"), netns_factory("nato")
    veth(h, "eth0", o, "eth0")
    h.run("ip", "addr", "add", "192.168.50.1/24", "dev", "eth0")
    o.run("ip", "addr", "add", "192.168.50.2/24", "dev", "eth0")
    h.run("ip", "route", "add", "default", "via", "192.168.50.2")
    h.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    for net in ("10.65.0.0/16", "10.70.0.0/16", "172.31.0.9/32"):
        o.run("ip", "route", "add", net, "via", "192.168.50.1")
    wls = {}
    for i, ip in enumerate(("10.65.0.2", "10.65.0.3", "10.65.0.4", "10.70.0.2"), start=1):
        w = netns_factory(f"natw{i}")
        dev = f"caliw{i}"
        veth(h, dev, w, "eth0")
        h.run("sysctl", "-qw", f"net.ipv4.conf.{dev}.proxy_arp=1")
        h.run("sysctl", "-qw", f"net.ipv4.neigh.{dev}.proxy_delay=0")
        h.run("ip", "route", "add", f"{ip}/32", "dev", dev)
        w.run("ip", "addr", "add", f"{ip}/32", "dev", "eth0")
        w.run("ip", "route", "add", "169.254.1.1", "dev", "eth0")
        w.run("ip", "route", "add", "default", "via", "169.254.1.1")
        wls[ip] = w
    return h, o, wls


def calc_for_test() -> NatCalculator:
    calc = NatCalculator(NatConfig(ME, iface_prefix="cali", metadata_addr="192.168.50.2", metadata_port=8775))
    for path, value in [
        (keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": True}),
        (keys.pool("10.70.0.0/16"), {"cidr": "10.70.0.0/16"}),
        (keys.workload_endpoint(ME, "k8s", "w3", "eth0"),
         {"state": "active", "name": "caliw3", "ipv4_nets": ["10.65.0.4/32"],
          "ipv4_nat": [{"int_ip": "10.65.0.4", "ext_ip": "172.31.0.9"}]}),
    ]:
        key, v = parse_key_value(path, json.dumps(value))
        assert calc.on_update("put", key, v)
    return calc


async def program(calc: NatCalculator, pusher: NatPusher) -> None:
    """What the daemon does per batch (felix.addons): push, then ipsets -> nat table -> ipset removals."""
    pusher.push(calc.desired(4))
    await pusher.ipsets.apply_updates()
    await pusher.table.apply()
    await pusher.ipsets.apply()


@pytest.mark.parametrize("mode", ["legacy", "nft"])
async def test_nat_outgoing_one_to_one_and_metadata(topo, mode):
    h, o, w = topo
    for ns, port in ((o, 8080), (o, 8775), (w["10.65.0.3"], 8080), (w["10.65.0.4"], 8080)):
        serve(ns, port)
    # before any NAT: the outside sees the workload's own address (so the check below can fail)
    assert peer_seen(w["10.65.0.2"], "192.168.50.2", 8080) == "10.65.0.2"

    runner = CmdRunner(h.name)
    table, sets = IptablesTable(4, "nat", runner, Backend(mode)), IpsetWriter(4, runner)
    pusher = NatPusher(table, sets)
    calc = calc_for_test()
    await program(calc, pusher)

    # masquerade pool -> outside: the host's address
    assert peer_seen(w["10.65.0.2"], "192.168.50.2", 8080) == "192.168.50.1"
    # masquerade pool -> another pool address: source kept
    assert peer_seen(w["10.65.0.2"], "10.65.0.3", 8080) == "10.65.0.2"
    # pool without masquerade -> outside: source kept
    assert peer_seen(w["10.70.0.2"], "192.168.50.2", 8080) == "10.70.0.2"
    # 1:1 NAT: outside reaches w3 on its external IP; w3 goes out as its external IP
    assert peer_seen(o, "172.31.0.9", 8080) == "192.168.50.2"
    assert peer_seen(w["10.65.0.4"], "192.168.50.2", 8080) == "172.31.0.9"
    # metadata: 169.254.169.254:80 from a workload lands on MetadataAddr:MetadataPort
    assert peer_seen(w["10.65.0.2"], "169.254.169.254", 80) == "192.168.50.1"

    # masquerade switched off on the pool: only the ipset changes, and NAT stops
    key, v = parse_key_value(keys.pool("10.65.0.0/16"), json.dumps({"cidr": "10.65.0.0/16"}))
    calc.on_update("put", key, v)
    restores = table.stats["restores"]
    await program(calc, pusher)
    assert table.stats["restores"] == restores  # no chain changed
    assert peer_seen(w["10.65.0.2"], "192.168.50.2", 8080) == "10.65.0.2"
    save = h.run(f"iptables-{mode}-save", "-t", "nat").stdout
    assert "felix-NAT-OUTGOING" in save and "-A POSTROUTING" in save

    # nothing left to NAT (pools and the 1:1 entry gone, no metadata): the nat table and ipsets are ours no more
    for path in (keys.pool("10.65.0.0/16"), keys.pool("10.70.0.0/16"), keys.workload_endpoint(ME, "k8s", "w3", "eth0")):
        key, _ = parse_key_value(path, None)
        calc.on_update("delete", key, None)
    calc.set_config(NatConfig(ME))
    await program(calc, pusher)
    assert "felix-" not in h.run(f"iptables-{mode}-save", "-t", "nat").stdout
    assert "felix-" not in h.run("ipset", "list", "-n").stdout
    assert peer_seen(o, "172.31.0.9", 8080, check=False) != "192.168.50.2"
