"""Host endpoints (issue 5, acceptance 2): deny-all policy on a host interface, failsafe ports.

A client namespace is wired to the Felix host namespace by a veth (`hep0` on
the host, 10.77.0.1/24 <-> 10.77.0.2/24).  Servers listen in the host
namespace (22 = SSH failsafe, 8080 = ordinary) and in the client (2380 =
outbound failsafe, 8080).  Every verdict is a real TCP connect; the root
namespace is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.felix_topology import _SERVER, FelixHost
from tests.integration.test_felix_core import P, expect

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALLOW = [{"action": "allow"}]
HOST_IP, CLIENT_IP, FAR_IP = "10.77.0.1", "10.77.0.2", "10.78.0.2"


class Tcp:
    """A TCP connect from one namespace to an address, with a readable name."""

    def __init__(self, ns, dst: str, port: int, name: str):
        self.ns, self.dst, self.port, self.name = ns, dst, port, name

    def __call__(self) -> bool:
        code = f"import socket;socket.create_connection(({self.dst!r},{self.port}),timeout=1).close()"
        return self.ns.run(sys.executable, "-c", code, check=False).returncode == 0

    def __repr__(self) -> str:
        return f"{self.name} tcp:{self.port}"


@pytest.fixture
def topo(netns_factory):
    fh = FelixHost(netns_factory, n_workloads=2)
    client = netns_factory("cl")
    servers = []
    try:
        fh.host.run("ip", "link", "add", "hep0", "type", "veth", "peer", "name", "eth0", "netns", client.name)
        fh.host.run("ip", "addr", "add", f"{HOST_IP}/24", "dev", "hep0")
        fh.host.run("ip", "link", "set", "hep0", "up")
        client.run("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        client.run("ip", "link", "set", "eth0", "up")
        client.run("ip", "route", "add", "default", "via", HOST_IP)
        # a second outside network behind the host, for forwarded (routed) traffic
        far = netns_factory("far")
        fh.host.run("ip", "link", "add", "hep1", "type", "veth", "peer", "name", "eth0", "netns", far.name)
        fh.host.run("ip", "addr", "add", "10.78.0.1/24", "dev", "hep1")
        fh.host.run("ip", "link", "set", "hep1", "up")
        far.run("ip", "addr", "add", f"{FAR_IP}/24", "dev", "eth0")
        far.run("ip", "link", "set", "eth0", "up")
        far.run("ip", "route", "add", "default", "via", "10.78.0.1")
        fh.far = far
        for ns, ports in ((fh.host, ("22", "8080")), (client, ("2380", "8080")), (far, ("22", "8080"))):
            p = ns.popen([sys.executable, "-c", _SERVER, *ports], stdout=subprocess.PIPE)
            servers.append(p)
            assert p.stdout.readline().strip() == b"ready"
        yield fh, client
    finally:
        for p in servers:
            p.kill()
            p.wait()
        fh.close()


def test_deny_all_host_endpoint_keeps_failsafe_and_workloads(topo):
    fh, client = topo
    a, b = fh.workloads
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("open", ALLOW, ALLOW)
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"])
    fh.start_felix()
    fh.wait_programmed(a)
    fh.wait_programmed(b)
    ssh_in = Tcp(client, HOST_IP, 22, "client->host")
    web_in = Tcp(client, HOST_IP, 8080, "client->host")
    etcd_out = Tcp(fh.host, CLIENT_IP, 2380, "host->client")
    web_out = Tcp(fh.host, CLIENT_IP, 8080, "host->client")
    wl = P(a, b, 4)
    wl_out = Tcp(a.ns, CLIENT_IP, 8080, "workload->client through hep0")
    fwd = Tcp(client, FAR_IP, 8080, "client->far forwarded through hep0")
    fwd22 = Tcp(client, FAR_IP, 22, "client->far forwarded through hep0")
    expect("no host endpoint: host open", allowed=[ssh_in, web_in, etcd_out, web_out, wl, wl_out, fwd])

    fh.put("/calico/v1/policy/tier/hosts/metadata", {"order": 1})
    fh.put("/calico/v1/policy/tier/hosts/policy/denyall",
           {"selector": "edge == 'true'", "inbound_rules": [{"action": "deny"}],
            "outbound_rules": [{"action": "deny"}]})
    expect("deny-all policy selects no endpoint yet", allowed=[web_in, web_out, wl])
    hep_key = f"/calico/v1/host/{fh.hostname}/endpoint/hep0"
    fh.put(hep_key, {"name": "hep0", "labels": {"edge": "true"}})
    # workload traffic is workload policy's alone, even through the host endpoint's interface;
    # forwarded traffic between outside networks is the host endpoint's (failsafes are for the host only)
    expect("deny-all host endpoint", allowed=[ssh_in, etcd_out, wl, wl_out],
           blocked=[web_in, web_out, fwd, fwd22])
    assert any(ln.startswith("-A felix-INPUT -i hep0 -p tcp") and "--dports 22,179,2379,2380" in ln
               for ln in fh.iptables_save(4).splitlines())

    # no policy and no profile at all: still only the failsafe ports
    fh.delete("/calico/v1/policy/tier/hosts", prefix=True)
    fh.put(hep_key, {"name": "hep0"})
    expect("host endpoint without policy", allowed=[ssh_in, etcd_out, wl], blocked=[web_in, web_out])

    # a profile that allows inbound 8080 only
    fh.put_profile("web", [{"action": "allow", "protocol": "tcp", "dst_ports": [8080]}], [])
    fh.put(hep_key, {"name": "hep0", "profile_ids": ["web"]})
    expect("host endpoint with profile", allowed=[ssh_in, web_in, etcd_out, wl], blocked=[web_out])

    fh.delete(hep_key)
    expect("host endpoint removed", allowed=[ssh_in, web_in, etcd_out, web_out, wl, wl_out, fwd])
    assert "hep0" not in fh.iptables_save(4)
    assert fh.felix_alive(), fh.log()[-3000:]


def test_host_endpoint_by_expected_ip(topo):
    fh, client = topo
    fh.put("/calico/v1/Ready", "true")
    fh.put_profile("open", ALLOW, ALLOW)
    fh.put_endpoint(fh.workloads[0], ["open"])
    fh.start_felix()
    fh.wait_programmed(fh.workloads[0])
    web_in = Tcp(client, HOST_IP, 8080, "client->host")
    ssh_in = Tcp(client, HOST_IP, 22, "client->host")
    expect("open", allowed=[web_in, ssh_in])
    fh.put(f"/calico/v1/host/{fh.hostname}/endpoint/byip", {"expected_ipv4_addrs": [HOST_IP]})
    expect("endpoint found by its address", allowed=[ssh_in], blocked=[web_in])
    fh.delete(f"/calico/v1/host/{fh.hostname}/endpoint/byip")
    expect("removed", allowed=[web_in, ssh_in])
