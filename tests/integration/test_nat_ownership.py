"""1:1 NAT cannot capture addresses that are not the endpoint's to give, on the real kernel.

Same topology as test_nat_dataplane (host H 192.168.50.1, outside O 192.168.50.2,
workloads w1..w4), programmed through the real writers (IptablesTable('nat'),
IpsetWriter) the way felix.addons does.  Every server answers with its own name,
so an assertion sees who really took the connection, not just that one succeeded.
"""

from __future__ import annotations

import json
import sys

import pytest

from calico_testing.netns import wait_for
from felix.addons import NatPusher
from felix.calc.nat import NatCalculator, NatConfig
from felix.dataplane.backend import Backend
from felix.dataplane.cmd import CmdRunner
from felix.dataplane.ipsets import IpsetWriter
from felix.dataplane.iptables import IptablesTable
from libcalico import keys
from libcalico.models import parse_key_value
from tests.integration.test_nat_dataplane import ME, topo  # noqa: F401 - the fixture

NAMED_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, peer = s.accept(); c.sendall(sys.argv[2].encode()); c.close()
"""
CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print(s.recv(64).decode())
except OSError as e:
    print(f"error:{e}")
"""
PORT = 8090


def who(ns, ip: str) -> str:
    return ns.run(sys.executable, "-c", CLIENT, ip, str(PORT)).stdout.strip()


def serve_named(ns, name: str) -> None:
    ns.popen([sys.executable, "-c", NAMED_SERVER, str(PORT), name])
    wait_for(lambda: f":{PORT} " in ns.run("ss", "-ltnH").stdout, 10, what=f"server in {ns.name}")


def put(calc: NatCalculator, path: str, value, rev: int = 0) -> None:
    key, v = parse_key_value(path, value if isinstance(value, str) else json.dumps(value))
    calc.on_update("put", key, v, create_revision=rev)


def w3_endpoint(ext_ip: str, int_ip: str = "10.65.0.4", name: str = "w3") -> dict:
    return {"state": "active", "name": f"cali{name}", "ipv4_nets": [f"{'10.65.0.4' if name == 'w3' else '10.65.0.3'}/32"],
            "ipv4_nat": [{"int_ip": int_ip, "ext_ip": ext_ip}]}


async def program(calc: NatCalculator, pusher: NatPusher) -> None:
    pusher.push(calc.desired(4))
    await pusher.ipsets.apply_updates()
    await pusher.table.apply()
    await pusher.ipsets.apply()


@pytest.mark.parametrize("mode", ["legacy", "nft"])
async def test_one_to_one_nat_cannot_capture_other_addresses(topo, mode):  # noqa: F811
    h, o, w = topo
    serve_named(o, "outside")
    serve_named(w["10.65.0.3"], "w2")
    serve_named(w["10.65.0.4"], "w3")
    runner = CmdRunner(h.name)
    pusher = NatPusher(IptablesTable(4, "nat", runner, Backend(mode)), IpsetWriter(4, runner))
    # O is another node (its bird_ip) and the etcd server this host talks to
    calc = NatCalculator(NatConfig(ME, protected=frozenset({"192.168.50.2"})))
    calc.set_host_addrs({"192.168.50.1"})
    put(calc, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": True})
    put(calc, keys.host_bird_ip("node-o"), "192.168.50.2")
    ep_w3 = keys.workload_endpoint(ME, "k8s", "w3", "eth0")
    ep_w2 = keys.workload_endpoint(ME, "k8s", "w2", "eth0")

    # w3 tries to take: another node's address, another workload's (pool) address, the host's own
    # address, and 172.31.0.9 pointed at w2's address instead of its own
    for ext, int_ip, why in [("192.168.50.2", "10.65.0.4", "address of node node-o"),
                             ("10.65.0.3", "10.65.0.4", "lies in IP pool"),
                             ("192.168.50.1", "10.65.0.4", "address of this host"),
                             ("172.31.0.9", "10.65.0.3", "not one of this endpoint's addresses")]:
        put(calc, ep_w3, w3_endpoint(ext, int_ip), rev=10)
        await program(calc, pusher)
        errors = dict(calc.take_errors())
        assert why in errors.get(ep_w3, ""), (ext, errors)
        assert who(h, "192.168.50.2") == "outside", "the host's own traffic to the node/etcd server"
        assert who(o, "10.65.0.3") == "w2", "traffic for another workload"
        assert not who(o, "172.31.0.9").startswith("w"), "a floating IP onto someone else's address"
    save = h.run(f"iptables-{mode}-save", "-t", "nat").stdout
    assert "-j DNAT" not in save

    # claimed twice: w2's endpoint was created first (revision 5) though it arrives last
    put(calc, ep_w3, w3_endpoint("172.31.0.9"), rev=10)
    await program(calc, pusher)
    assert who(o, "172.31.0.9") == "w3"
    put(calc, ep_w2, w3_endpoint("172.31.0.9", "10.65.0.3", name="w2"), rev=5)
    await program(calc, pusher)
    assert who(o, "172.31.0.9") == "w2"
    assert "already claimed by " + ep_w2 in dict(calc.take_errors())[ep_w3]
    # a restarted Felix that sees them in the other order reaches the same verdict
    fresh = NatCalculator(NatConfig(ME))
    put(fresh, ep_w2, w3_endpoint("172.31.0.9", "10.65.0.3", name="w2"), rev=5)
    put(fresh, ep_w3, w3_endpoint("172.31.0.9"), rev=10)
    put(fresh, keys.pool("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "masquerade": True})
    await program(fresh, pusher)
    assert who(o, "172.31.0.9") == "w2"
