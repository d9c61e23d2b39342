"""The `calico` CNI plugin driven by real podman on two calico nodes.

One cluster for the module (two node namespaces running the real
calico-node, etcd on the fabric) with two pools: 10.67.0.0/16 and 10.69.0.0/16
without encapsulation (networks `calinet` and `othernet`, routes learned over
BGP) and 10.68.0.0/16 with VXLAN (network `mtunet`, Felix's overlay).
`othernet` has a pool of its own so its addresses were never used by an
earlier test: Felix keeps conntrack entries of removed workloads, and a reused
address would inherit an "established" flow.  Felix's
`VXLANMTU` is left unset: Felix derives the device's MTU from the uplink and
the plugin derives the workloads' the same way, so the 1400-byte
don't-fragment ping proves they agree.  Every container is removed
by the podman harness, also after a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from calico_testing import podman as pm
from calico_testing.cluster import Cluster
from calico_testing.netns import wait_for

pytestmark = pytest.mark.skipif(not pm.available(), reason="podman not installed (scripts/install-deps)")

PLAIN_POOL, VXLAN_POOL, OTHER_POOL = "10.67.0.0/16", "10.68.0.0/16", "10.69.0.0/16"


@pytest.fixture(scope="module")
def env():
    cluster = Cluster(n_nodes=2, start=False)
    pods: list[pm.PodmanNode] = []
    try:
        n1, n2 = cluster.nodes
        n1.ctl("pool", "add", PLAIN_POOL)
        n1.ctl("pool", "add", VXLAN_POOL, "--vxlan")
        n1.ctl("pool", "add", OTHER_POOL)
        for node in cluster.nodes:
            cluster.start_node(node)
        pm.ensure_image()
        bin_dir = pm.plugin_dir(os.path.join(cluster.tmp, "cni-bin"))
        for node in cluster.nodes:
            p = pm.PodmanNode(node.ns.name, node.name, cluster.etcd_endpoints, cluster.tmp, cni_bin=bin_dir)
            p.add_network("calinet", ipam={"type": "calico-ipam", "ipv4_pools": [PLAIN_POOL]})
            p.add_network("othernet", ipam={"type": "calico-ipam", "ipv4_pools": [OTHER_POOL]})
            p.add_network("mtunet", ipam={"type": "calico-ipam", "ipv4_pools": [VXLAN_POOL]})
            pods.append(p)
        cluster.wait_ready(timeout=90)
        yield cluster, pods
    finally:
        for p in pods:
            p.close()
        cluster.close()


def _endpoints(cluster: Cluster, host: str) -> dict[str, dict]:
    prefix = f"/calico/v1/host/{host}/workload/"
    return {k: json.loads(cluster.etcd.get(k)) for k in cluster.etcd.keys(prefix)}


def _links(node) -> list[str]:
    return [li["ifname"] for li in json.loads(node.ns.run("ip", "-j", "link", "show").stdout)]


def _ipam_clean(node) -> None:
    r = node.ctl("ipam", "check", check=False)
    assert r.returncode == 0, f"ipam check: {r.stdout}{r.stderr}"


def test_containers_on_two_nodes_ping_over_bgp_routes_felix_programmed(env):
    cluster, (pa, pb) = env
    n1, n2 = cluster.nodes
    a = pa.run("calinet").name
    b = pb.run("calinet").name
    ip_a, ip_b = pa.ip(a), pb.ip(b)
    assert ip_a.startswith("10.67.") and ip_b.startswith("10.67.") and ip_a != ip_b
    wait_for(lambda: pa.ping(a, ip_b), timeout=60, what=f"{a} -> {ip_b}")
    assert pb.ping(b, ip_a)
    # B's block reached node 1 over BGP (proto bird), through node 2
    bird = n1.ns.run("ip", "-4", "route", "show", "proto", "bird").stdout
    assert any(line.startswith("10.67.") and f"via {n2.ip}" in line for line in bird.splitlines()), bird
    # Felix programmed both: the /32 route onto each host veth and its policy chains
    for node, pod, name, ip in ((n1, pa, a, ip_a), (n2, pb, b, ip_b)):
        (ep,) = [e for e in _endpoints(cluster, node.name).values() if e["ipv4_nets"] == [f"{ip}/32"]]
        assert ep["profile_ids"] == ["calinet"] and ep["container_id"] == pod.container_id(name)
        assert ep["name"] in node.ns.run("ip", "-4", "route", "show", f"{ip}/32").stdout
        assert ep["name"] in node.ns.run("iptables-save", "-t", "filter").stdout
        # host side carries no address
        addrs = json.loads(node.ns.run("ip", "-j", "-4", "addr", "show", "dev", ep["name"]).stdout)
        assert not any(e.get("addr_info") for e in addrs)
    key = next(k for k, e in _endpoints(cluster, n1.name).items() if e["ipv4_nets"] == [f"{ip_a}/32"])
    assert f"/workload/cni/{pa.container_id(a)}/endpoint/eth0" in key
    pa.rm(a)
    pb.rm(b)


def test_networks_are_isolated_until_a_profile_rule_allows(env):
    cluster, (pa, pb) = env
    n1 = cluster.nodes[0]
    other = pa.run("othernet").name
    cali = pb.run("calinet").name
    ip_o, ip_c = pa.ip(other), pb.ip(cali)
    assert cluster.etcd.get("/calico/v1/policy/profile/othernet/tags") == '["othernet"]'
    # reachable in principle (same-network traffic flows), yet blocked across networks
    same = pb.run("calinet").name
    wait_for(lambda: pb.ping(same, ip_c), timeout=30, what="calinet to calinet")
    (veth,) = [e["name"] for e in _endpoints(cluster, n1.name).values() if e["ipv4_nets"] == [f"{ip_o}/32"]]
    wait_for(lambda: veth in n1.ns.run("iptables-save", "-t", "filter").stdout, timeout=30,
             what=f"Felix programming {veth}")  # blocked by policy, not merely not yet wired
    assert not pa.ping(other, ip_c) and not pb.ping(cali, ip_o)
    n1.ctl("profile", "othernet", "rule", "add", "inbound", "allow", "from", "tag", "calinet")
    wait_for(lambda: pb.ping(cali, ip_o), timeout=30, what="calinet -> othernet once allowed")
    assert not pa.ping(other, ip_c)  # only that direction was opened
    for p, n in ((pa, other), (pb, cali), (pb, same)):
        p.rm(n)


def test_rm_runs_del_and_a_half_deleted_container_is_still_clean(env):
    cluster, (pa, _) = env
    n1 = cluster.nodes[0]
    c1, c2 = pa.run("calinet").name, pa.run("calinet").name
    ip1, ip2 = pa.ip(c1), pa.ip(c2)
    eps = {e["ipv4_nets"][0]: (k, e) for k, e in _endpoints(cluster, n1.name).items()}
    (k1, e1), (k2, e2) = eps[f"{ip1}/32"], eps[f"{ip2}/32"]
    pa.rm(c1)
    assert cluster.etcd.get(k1) is None and e1["name"] not in _links(n1)
    assert "not" in n1.ctl("ipam", "info", ip1, check=False).stdout.lower()
    # half-deleted by hand: veth and endpoint gone, the address still held
    n1.ns.run("ip", "link", "del", e2["name"])
    cluster.etcd.delete(k2)
    pa.rm(c2)
    assert e2["name"] not in _links(n1) and cluster.etcd.get(k2) is None
    assert "not" in n1.ctl("ipam", "info", ip2, check=False).stdout.lower()
    _ipam_clean(n1)


def test_twenty_containers_in_parallel_get_distinct_reachable_addresses(env):
    cluster, (pa, pb) = env
    names = [pa.new_name("par") for _ in range(20)]
    with ThreadPoolExecutor(max_workers=20) as ex:
        results = list(ex.map(lambda n: pa.run("calinet", n, check=False), names))
    failed = [r.stderr[-500:] for r in results if r.returncode != 0]
    assert not failed, failed
    recorded = pa.result_ips(names, "calinet")
    ips = list(recorded.values())
    assert len(set(ips)) == 20 and all(ip.startswith("10.67.") for ip in ips)
    assert pa.ip(names[0]) == recorded[names[0]]  # what podman recorded is what the container has
    probe = pb.run("calinet").name
    # one exec for all 20 (a podman exec each would be most of this test's time)
    loop = "for ip in " + " ".join(ips) + "; do ping -c1 -W2 $ip >/dev/null || echo unreachable $ip; done"
    wait_for(lambda: pb.exec(probe, "sh", "-c", loop).stdout.strip() == "", timeout=60,
             what="all 20 reachable from the other node")
    with ThreadPoolExecutor(max_workers=10) as ex:
        list(ex.map(pa.rm, names))
    pb.rm(probe)
    _ipam_clean(cluster.nodes[0])


def _plugin(node, command: str, conf: dict, cid: str, netns: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    return subprocess.run(["nsenter", f"--net=/run/netns/{node.ns.name}", os.path.join(pm.VENV_BIN, "calico")],
                          input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60)


def test_check_reports_a_veth_deleted_by_hand(env):
    cluster, (pa, _) = env
    n1 = cluster.nodes[0]
    c = pa.run("calinet").name
    cid, sandbox = pa.container_id(c), pa.sandbox(c)
    with open(os.path.join(pa.net_dir, "calinet.conflist")) as f:
        conflist = json.load(f)
    conf = dict(conflist["plugins"][0], name="calinet", cniVersion=conflist["cniVersion"])
    with open(f"/var/lib/cni/results/calinet-{cid}-eth0") as f:
        cached = json.load(f)
    conf["prevResult"] = cached.get("result", cached)
    ok = _plugin(n1, "CHECK", conf, cid, sandbox)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (e,) = [e for e in _endpoints(cluster, n1.name).values() if e["container_id"] == cid]
    n1.ns.run("ip", "link", "del", e["name"])
    bad = _plugin(n1, "CHECK", conf, cid, sandbox)
    err = json.loads(bad.stdout)
    assert bad.returncode != 0 and err["code"] == 102 and e["name"] in err["msg"] and "missing" in err["msg"]
    pa.rm(c)
    _ipam_clean(n1)


def test_vxlan_path_carries_a_1400_byte_dont_fragment_ping(env):
    cluster, (pa, pb) = env
    n1, n2 = cluster.nodes
    a, b = pa.run("mtunet").name, pb.run("mtunet").name
    ip_a, ip_b = pa.ip(a), pb.ip(b)
    assert ip_a.startswith("10.68.") and ip_b.startswith("10.68.")
    for pod, name in ((pa, a), (pb, b)):
        link = json.loads(subprocess.run(["nsenter", f"--net={pod.sandbox(name)}", "ip", "-j", "link", "show",
                                          "eth0"], capture_output=True, text=True, check=True).stdout)[0]
        assert link["mtu"] == 1450
    assert json.loads(n1.ns.run("ip", "-j", "link", "show", "vxlan.calico").stdout)[0]["mtu"] == 1450
    # the path between the nodes is Felix's VXLAN device, not a BGP route
    wait_for(lambda: "dev vxlan.calico" in n1.ns.run("ip", "-4", "route", "get", ip_b).stdout, timeout=60,
             what=f"route to {ip_b} through vxlan.calico on node 1")
    wait_for(lambda: pa.ping(a, ip_b), timeout=60, what="mtunet ping across nodes")

    def df_ping(size: int) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net={pa.sandbox(a)}", "ping", "-c", "1", "-W", "2", "-M", "do",
                               "-s", str(size), ip_b], capture_output=True, text=True, timeout=30)

    r = df_ping(1400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert df_ping(1450).returncode != 0  # larger than the workload MTU: refused, not silently lost
    pa.rm(a)
    pb.rm(b)
