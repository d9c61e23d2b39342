"""calico-node's Calico 3.x environment against a real namespace's interfaces and a real etcd:
every IP_AUTODETECTION_METHOD form, IP6_AUTODETECTION_METHOD, the re-registration warning, the
default pools from CALICO_IPV4POOL_* (with a tunnel address from the VXLAN pool through real IPAM)
and one clear error per bad variable.

Runs `calico-node --init-only` (startup to completion, no services) in a node namespace on the
fabric of test_node_runtime.
"""

from __future__ import annotations

import json

import pytest

from libcalico import keys
from tests.integration.test_node_runtime import FABRIC_V4, fabric, nodes  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def test_autodetection_methods_pools_and_errors(fabric, nodes):  # noqa: F811
    fabric.etcd.start()
    ns = fabric.node_ns(1)
    # besides eth0 (10.98.0.1, the default route): two more interfaces, one of them IPv6 too
    for dev, v4, v6 in (("ens7", "192.168.77.1/24", "2001:db8:77::1/64"), ("ext5", "172.31.5.1/24", None)):
        ns.run("ip", "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")  # no dummy module here
        ns.run("ip", "link", "set", f"{dev}p", "up")
        ns.run("ip", "addr", "add", v4, "dev", dev)
        if v6:
            ns.run("ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
        ns.run("ip", "link", "set", dev, "up")
    etcd = fabric.etcd

    def init(**env: str):
        node = nodes(ns, "auto", ETCD_ENDPOINTS=fabric.endpoint, **env)
        return node.run("--init-only")

    def registered(v: int = 4) -> str | None:
        return etcd.get(keys.bgp_host_ip("auto", v))

    warned = []
    for method, want in (("interface=ens.*", "192.168.77.1"), ("cidr=172.31.0.0/16", "172.31.5.1"),
                         ("skip-interface=eth.*,ens.*", "172.31.5.1"),
                         (f"can-reach={FABRIC_V4}.254", f"{FABRIC_V4}.1")):
        r = init(IP_AUTODETECTION_METHOD=method)
        assert r.returncode == 0, r.stderr
        assert registered() == want, (method, r.stderr)
        assert f"using {method}" in r.stderr
        warned += [line for line in r.stderr.splitlines() if "already registered" in line]
    # each registration of this name with another address than before was warned about, once
    assert len(warned) == 2, warned
    assert "already registered with IP 192.168.77.1; it now registers 172.31.5.1" in warned[0]
    assert f"already registered with IP 172.31.5.1; it now registers {FABRIC_V4}.1" in warned[1]

    # IP6 by its own method, and the default pools from the environment
    r = init(IP="autodetect", IP6="autodetect", IP_AUTODETECTION_METHOD="interface=ens7",
             IP6_AUTODETECTION_METHOD="cidr=2001:db8:77::/48", NO_DEFAULT_POOLS="false",
             CALICO_IPV4POOL_CIDR="10.244.0.0/16", CALICO_IPV4POOL_BLOCK_SIZE="24",
             CALICO_IPV4POOL_VXLAN="Always", CALICO_IPV4POOL_NAT_OUTGOING="false",
             CALICO_IPV6POOL_CIDR="fd00:244::/48", CALICO_IPV6POOL_BLOCK_SIZE="120")
    assert r.returncode == 0, r.stderr
    assert (registered(4), registered(6)) == ("192.168.77.1", "2001:db8:77::1")
    v4 = json.loads(etcd.get(keys.pool("10.244.0.0/16")))
    assert v4["vxlan"] == "vxlan.calico" and not v4.get("ipip") and not v4["masquerade"]
    assert v4["block_size"] == 24
    assert json.loads(etcd.get(keys.pool("fd00:244::/48")))["block_size"] == 120
    tunnel = etcd.get(keys.host_config("auto", "VXLANTunnelAddr"))
    assert tunnel and tunnel.startswith("10.244."), tunnel

    # a bad value: exit 1, one line naming the variable, before anything is written (every variable's
    # errors: tests/unit/test_node_env.py)
    before = etcd.keys("/calico")
    r = init(IP_AUTODETECTION_METHOD="interface=ens7", CALICO_IPV4POOL_IPIP="sometimes")
    errors = [line for line in r.stderr.splitlines() if "[ERROR]" in line]
    assert r.returncode == 1 and len(errors) == 1 and "CALICO_IPV4POOL_IPIP='sometimes'" in errors[0], r.stderr
    assert etcd.keys("/calico") == before
    # nothing matches: one error naming the method, nothing registered anew
    r = init(IP_AUTODETECTION_METHOD="interface=nomatch")
    assert r.returncode == 1
    assert "no global IPv4 address found by IP_AUTODETECTION_METHOD=interface=nomatch" in r.stderr
