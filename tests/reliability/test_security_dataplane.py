"""Security defaults of the dataplane, proven with real packets through the real calico-felix.

Default deny (no profile, or a profile that does not exist: nothing in or
out), DefaultEndpointToHostAction, anti-spoofing of source IPs and of ARP
(a workload cannot take over another workload's address), and the health
and metrics listeners binding to localhost unless configured otherwise.
"""

from __future__ import annotations

import sys
import time

import pytest

from calico_testing.netns import wait_for
from tests.integration.felix_topology import FelixHost, always, eventually

ALLOW = [{"action": "allow"}]

# Gratuitous ARP from the attacker: "<victim IP> is at <my MAC>", broadcast, sent twice.
_GARP = r"""
import socket, sys
ifname, ip, mac = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3].replace(":", ""))
ipb = socket.inet_aton(ip)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
arp = b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + ipb + b"\xff" * 6 + ipb
for _ in range(2):
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
"""


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=3, hostname="sechost")
    host.put("/calico/v1/Ready", "true")
    yield host
    host.close()


def test_default_deny_without_profile_or_with_missing_profile(fh):
    a, b, c = fh.workloads
    fh.put_profile("open", ALLOW, ALLOW)
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, [])                 # no profile at all
    fh.put_endpoint(c, ["does-not-exist"])  # a profile nobody wrote
    fh.start_felix()
    for w in (a, b, c):
        fh.wait_programmed(w)
    fh.serve(b, 7001)
    fh.serve(c, 7001)
    fh.serve(a, 7001)
    always(lambda: not a.ping(b.ip4) and not a.tcp(b.ip4, 7001) and not b.ping(a.ip4), 1.5,
           "no profile: nothing in or out")
    always(lambda: not a.ping(c.ip4) and not c.ping(a.ip4) and not c.tcp(a.ip4, 7001), 1.5,
           "missing profile: nothing in or out")
    always(lambda: not a.ping(b.ip6) and not c.ping(a.ip6), 1.0, "the same for IPv6")
    # Once c gets a real profile it opens: the deny above was policy, not a broken path.
    fh.put_profile("does-not-exist", ALLOW, ALLOW)
    eventually(lambda: a.tcp(c.ip4, 7001) and c.ping(a.ip4), 15, "c opened by its profile")
    assert not b.ping(a.ip4)


def test_endpoint_to_host_action_each_value(fh):
    a = fh.workloads[0]
    fh.host.run("ip", "addr", "add", "10.99.99.1/32", "dev", "uplink0")
    fh.put_profile("open", ALLOW, ALLOW)
    fh.put_endpoint(a, ["open"])
    fh.start_felix()
    fh.wait_programmed(a)
    always(lambda: not a.ping("10.99.99.1"), 1.5, "default DROP")
    fh.put("/calico/v1/config/DefaultEndpointToHostAction", "RETURN")  # host's own INPUT rules decide
    eventually(lambda: a.ping("10.99.99.1"), 15, "RETURN: the (empty) host INPUT chain accepts")
    fh.host.run("iptables", "-A", "INPUT", "-s", a.ip4, "-p", "icmp", "-j", "DROP")
    eventually(lambda: not a.ping("10.99.99.1"), 15, "RETURN: a host INPUT rule after Felix's applies")
    fh.put("/calico/v1/config/DefaultEndpointToHostAction", "ACCEPT")
    eventually(lambda: a.ping("10.99.99.1"), 15, "ACCEPT overrides the host's own rules")
    fh.put("/calico/v1/config/DefaultEndpointToHostAction", "DROP")
    eventually(lambda: not a.ping("10.99.99.1"), 15, "back to DROP")


def test_anti_spoofing_source_ip_and_arp_claim(fh):
    a, b, c = fh.workloads
    fh.put_profile("open", ALLOW, ALLOW)
    for w in fh.workloads:
        fh.put_endpoint(w, ["open"])
    fh.start_felix()
    for w in fh.workloads:
        fh.wait_programmed(w)
    eventually(lambda: c.ping(b.ip4) and a.ping(c.ip4), 15, "baseline connectivity")
    # 1. a sends with b's source address: dropped at the host.
    a.ns.run("ip", "addr", "add", f"{b.ip4}/32", "dev", "eth0")
    r = a.ns.run("ping", "-c2", "-W1", "-I", b.ip4, c.ip4, check=False)
    assert r.returncode != 0, "a packet with another workload's source IP must be dropped"
    # 2. a claims b's address by ARP (gratuitous replies) and listens on a port b does not.
    fh.serve(a, 7002)
    a.ns.run(sys.executable, "-c", _GARP, "eth0", b.ip4, a.mac)
    time.sleep(0.5)
    always(lambda: not c.tcp(b.ip4, 7002), 2.0, "traffic for b's IP never reaches a")
    assert c.ping(b.ip4), "b still answers for its own address"
    neigh = fh.host.run("ip", "neigh", "show", b.ip4).stdout
    assert a.mac not in " ".join(line for line in neigh.splitlines() if b.ifname in line), neigh
    # 3. proxy ARP on a's interface answers only for the gateway, not for b's address.
    r = a.ns.run("ip", "neigh", "show", "dev", "eth0").stdout
    assert b.ip4 not in r, f"a learned a link-layer address for b's IP: {r}"


def _listeners(fh: FelixHost) -> str:
    return fh.host.run("ss", "-ltnH").stdout


def test_health_and_metrics_bind_localhost_by_default(fh):
    fh.start_felix(FELIX_HEALTHENABLED="true", FELIX_PROMETHEUSMETRICSENABLED="true")
    wait_for(lambda: ":9099" in _listeners(fh) and ":9091" in _listeners(fh), 30,
             what="health and metrics listeners")
    lines = [line for line in _listeners(fh).splitlines() if ":9099" in line or ":9091" in line]
    assert lines and all("127.0.0.1:" in line for line in lines), lines
    fh.kill_felix()
    # Configurable: an operator can bind them elsewhere on purpose.
    fh.start_felix(FELIX_HEALTHENABLED="true", FELIX_HEALTHHOST="0.0.0.0", FELIX_HEALTHPORT="9199",
                   FELIX_PROMETHEUSMETRICSENABLED="true", FELIX_PROMETHEUSMETRICSPORT="9191")
    wait_for(lambda: "0.0.0.0:9199" in _listeners(fh) and "127.0.0.1:9191" in _listeners(fh), 30,
             what="configured listeners")
