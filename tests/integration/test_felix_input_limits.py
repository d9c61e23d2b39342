"""What a workload's own data may not do to the host, against the real calico-felix, etcd and kernel.

- With Ipv6Support=false nothing polices IPv6, so the workload's veth must not
  carry IPv6 at all (it would reach host services over `fe80::`).
- Workload networks are single addresses: a /1, /8 or /3 must never become a
  route onto a workload's veth.
- A tag spelled like one of Felix's own ipsets must not share a set with it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.integration.felix_topology import _SERVER, FelixHost, always, eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

ALLOW_ALL = [{"action": "allow"}]


@pytest.fixture
def fh(netns_factory):
    host = FelixHost(netns_factory, n_workloads=3)
    host.put("/calico/v1/Ready", "true")
    yield host
    host.close()


def serve_on_host(fh: FelixHost, port: int) -> None:
    p = fh.host.popen([sys.executable, "-c", _SERVER, str(port)], stdout=subprocess.PIPE)
    fh.servers.append(p)
    assert p.stdout.readline().strip() == b"ready"


def test_ipv6_off_workload_cannot_reach_host_over_link_local(fh):
    a = fh.workloads[0]
    target = f"{fh.link_local(a.ifname)}%eth0"
    serve_on_host(fh, 7070)
    # before Felix the host's link-local service answers (so the check below can fail); link-local
    # addresses finish duplicate address detection first
    eventually(lambda: a.tcp(target, 7070), 15, "workload -> host over fe80:: before Felix")
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"], ipv6_nets=[])
    fh.start_felix(FELIX_IPV6SUPPORT="false")
    fh.wait_programmed(a)
    eventually(lambda: not a.tcp(target, 7070), 10, "workload -> host over fe80:: blocked")
    always(lambda: not a.tcp(target, 7070), 1.5, "workload -> host over fe80:: stays blocked")
    assert fh.host.run("cat", f"/proc/sys/net/ipv6/conf/{a.ifname}/disable_ipv6").stdout.strip() == "1"


def test_workload_networks_are_single_addresses(fh):
    a, b, c = fh.workloads
    fh.put_profile("open", ALLOW_ALL, ALLOW_ALL)
    fh.put_endpoint(a, ["open"])
    fh.put_endpoint(b, ["open"], ipv4_nets=[f"{b.ip4}/32", "128.0.0.0/1"])
    fh.put_endpoint(c, ["open"], ipv4_nets=["1.0.0.0/8"], ipv6_nets=["2000::/3"])
    fh.start_felix()
    fh.wait_programmed(a)

    def no_wide_routes() -> bool:
        v4, v6 = fh.routes(4), fh.routes(6)
        return not any(n in v4 for n in ("128.0.0.0/1", "1.0.0.0/8", b.ifname, c.ifname)) and "2000::/3" not in v6
    always(no_wide_routes, 1.5, "no route wider than one address onto a workload")
    assert "128.0.0.0/1" not in fh.host.run("ip", "-4", "route", "show", "table", "all").stdout
    assert "not a single address" in fh.log()


def _match_sets(save: str, chain_prefix: str, action: str) -> set[str]:
    out = set()
    for line in save.splitlines():
        if line.startswith(f"-A {chain_prefix}") and action in line:
            out |= set(re.findall(r"--match-set (\S+) src", line))
    return out


def _members(fh: FelixHost, name: str) -> set[str]:
    out = fh.host.run("ipset", "list", name).stdout
    return set(out.split("Members:\n", 1)[1].split()) if "Members:" in out else set()


def test_tag_named_like_internal_set_coexists_with_nat_outgoing(fh):
    a, b, _ = fh.workloads
    fh.put("/calico/v1/ipam/v4/pool/10.65.0.0-16", {"cidr": "10.65.0.0/16", "masquerade": True})
    tags = ["masq-ipam-pools", "all-ipam-pools"]
    fh.put_profile("p", [{"action": "allow", "src_tag": t} for t in tags], ALLOW_ALL, tags=tags)
    fh.put_endpoint(a, ["p"])
    fh.put_endpoint(b, ["p"])
    fh.start_felix()
    fh.wait_programmed(b)
    eventually(lambda: "MASQUERADE" in fh.host.run("iptables-save", "-t", "nat").stdout, 10, "NAT outgoing")
    nat_save = fh.host.run("iptables-save", "-t", "nat").stdout
    filter_save = fh.host.run("iptables-save", "-t", "filter").stdout
    nat_sets = _match_sets(nat_save, "felix-", "MASQUERADE")
    tag_sets = _match_sets(filter_save, "felix-p-", "")
    assert len(nat_sets) == 1 and len(tag_sets) == 2 and not nat_sets & tag_sets, (nat_sets, tag_sets)

    def right_members() -> bool:
        return all(_members(fh, s) == {"10.65.0.0/16"} for s in nat_sets) \
            and all(_members(fh, s) == {a.ip4, b.ip4} for s in tag_sets)
    eventually(right_members, 10, "pool set holds the pool, tag sets the workloads")
    always(right_members, 1.5, "no writer fights over a set")
