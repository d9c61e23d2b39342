"""The `calico` plugin driven directly with the CNI_* environment, as a runtime drives it.

A node namespace with an uplink and its own etcd; workloads are namespaces
made by the test.  Every version answers ADD/DEL/CHECK in its own shape; bad
input is one error object each and leaves nothing behind (no veth, no
endpoint, no address, `calicoctl ipam check` clean).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from calico_testing.etcd import EtcdServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, ".venv", "bin")
POOL = "10.66.0.0/16"


class Node:
    def __init__(self, ns, etcd):
        self.ns, self.etcd, self.name = ns, etcd, ns.name

    def conf(self, version: str = "1.0.0", name: str = "net1", **keys) -> dict:
        return {"cniVersion": version, "name": name, "type": "calico", "etcd_endpoints": self.etcd.endpoint,
                "nodename": self.name, "log_level": "error", "ipam": {"type": "calico-ipam"}, **keys}

    def cni(self, command: str, conf: dict, cid: str, netns: str = "", ifname: str = "eth0", args: str = "",
            plugin: str = "calico") -> tuple[int, dict | None]:
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args}
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.name}", os.path.join(BIN, plugin)],
                           input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=120)
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None)

    def cali_links(self) -> list[str]:
        out = json.loads(self.ns.run("ip", "-j", "link", "show").stdout)
        return [li["ifname"] for li in out if li["ifname"].startswith("cali")]

    def endpoints(self) -> dict[str, dict]:
        prefix = f"/calico/v1/host/{self.name}/workload/"
        return {k: json.loads(self.etcd.get(k)) for k in self.etcd.keys(prefix)}

    def assert_clean(self) -> None:
        assert self.cali_links() == [] and self.endpoints() == {}
        assert self.etcd.keys("/calico/ipam/v2/handle/") == []
        r = self.ns.run("env", f"ETCD_ENDPOINTS={self.etcd.endpoint}", os.path.join(BIN, "calicoctl"), "ipam",
                        "check", check=False)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def node(netns_factory):
    ns = netns_factory("cni")
    ns.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    ns.run("ip", "link", "set", "uplink0", "up")
    ns.run("ip", "link", "set", "uplink1", "up")
    ns.run("ip", "addr", "add", "10.97.0.1/24", "dev", "uplink0")
    ns.run("ip", "route", "add", "default", "via", "10.97.0.254", "dev", "uplink0", "onlink")
    etcd = EtcdServer(netns=ns.name).start()
    etcd.put(f"/calico/bgp/v1/host/{ns.name}/ip_addr_v4", "10.97.0.1")
    etcd.put("/calico/v1/ipam/v4/pool/10.66.0.0-16", json.dumps({"cidr": POOL}))
    etcd.put("/calico/v1/ipam/v6/pool/fd66::-64", json.dumps({"cidr": "fd66::/64"}))
    yield Node(ns, etcd)
    etcd.close()


def _wl(netns_factory) -> tuple[object, str]:
    wl = netns_factory("w")
    return wl, f"/run/netns/{wl.name}"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_every_version_answers_add_check_del_in_its_shape(node, netns_factory, version):
    wl, path = _wl(netns_factory)
    conf = node.conf(version, ipam={"type": "calico-ipam", "assign_ipv6": "true"})
    rc, res = node.cni("ADD", conf, "c1", path)
    assert rc == 0, res
    assert res["cniVersion"] == version
    (v4,) = [ip for ip in res["ips"] if "." in ip["address"]]
    (v6,) = [ip for ip in res["ips"] if ":" in ip["address"]]
    assert v4["address"].startswith("10.66.") and v4["address"].endswith("/32") and v6["address"].endswith("/128")
    assert res["interfaces"][v4["interface"]]["name"] == "eth0"
    assert res["interfaces"][v4["interface"]]["sandbox"] == path
    if version == "1.0.0":
        assert "version" not in v4 and "version" not in v6
    else:
        assert (v4["version"], v6["version"]) == ("4", "6")
    assert {"dst": "0.0.0.0/0", "gw": "169.254.1.1"} in res["routes"]
    gw6 = next(r["gw"] for r in res["routes"] if r["dst"] == "::/0")
    assert gw6.startswith("fe80:")
    # the kernel side matches the result
    inner = json.loads(wl.run("ip", "-j", "addr", "show", "dev", "eth0").stdout)[0]
    assert {f"{a['local']}/{a['prefixlen']}" for a in inner["addr_info"]} >= {v4["address"], v6["address"]}
    assert inner["mtu"] == 1500  # no encapsulation anywhere: the uplink's MTU
    host_if = res["interfaces"][0]["name"]
    assert host_if.startswith("cali") and len(host_if) == 15 and host_if in node.cali_links()
    (key, ep), = node.endpoints().items()
    assert key == f"/calico/v1/host/{node.name}/workload/cni/c1/endpoint/eth0"
    assert ep["name"] == host_if and ep["container_id"] == "c1" and ep["profile_ids"] == ["net1"]
    assert ep["ipv6_gateway"] == gw6
    assert json.loads(node.etcd.get("/calico/v1/policy/profile/net1/rules"))["outbound_rules"] == [{"action": "allow"}]
    if version >= "0.4.0":
        rc, err = node.cni("CHECK", dict(conf, prevResult=res), "c1", path)
        assert rc == 0, err
        drifted = json.loads(json.dumps(res))
        drifted["interfaces"][1]["mac"] = "02:00:00:00:00:99"
        drifted["ips"] = [dict(v4, address="10.66.99.99/32")]
        rc, err = node.cni("CHECK", dict(conf, prevResult=drifted), "c1", path)
        assert rc == 1 and err["code"] == 102 and "MAC" in err["msg"] and "10.66.99.99" in err["msg"], err
    assert node.cni("DEL", conf, "c1", path) == (0, None)
    node.assert_clean()
    assert node.cni("DEL", conf, "c1", path) == (0, None)  # idempotent
    assert node.cni("DEL", conf, "c1", "") == (0, None)  # and without a namespace


def test_mtu_from_config_and_from_a_vxlan_pool(node, netns_factory):
    node.etcd.put("/calico/v1/ipam/v4/pool/10.67.0.0-16", json.dumps({"cidr": "10.67.0.0/16", "vxlan": "vxlan.calico"}))
    wl, path = _wl(netns_factory)
    assert node.cni("ADD", node.conf(), "c1", path)[0] == 0
    assert json.loads(wl.run("ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1450
    wl2, path2 = _wl(netns_factory)
    assert node.cni("ADD", node.conf(mtu=1300), "c2", path2)[0] == 0
    assert json.loads(wl2.run("ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1300
    host = [li for li in json.loads(node.ns.run("ip", "-j", "link", "show").stdout) if li["ifname"].startswith("cali")]
    assert sorted(li["mtu"] for li in host) == [1300, 1450]
    for cid, p in (("c1", path), ("c2", path2)):
        assert node.cni("DEL", node.conf(), cid, p)[0] == 0
    node.assert_clean()


def test_k8s_workload_ids_and_a_restarted_sandbox(node, netns_factory):
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0"
    old, old_path = _wl(netns_factory)
    rc, res = node.cni("ADD", node.conf(), "sandbox1", old_path, args=args)
    assert rc == 0, res
    (key, ep), = node.endpoints().items()
    assert key.endswith("/workload/k8s/prod.web-0/endpoint/eth0") and ep["container_id"] == "sandbox1"
    # the pod's sandbox restarts: a new container id takes the workload over
    new, new_path = _wl(netns_factory)
    rc, res2 = node.cni("ADD", node.conf(), "sandbox2", new_path, args=args)
    assert rc == 0, res2
    (key2, ep2), = node.endpoints().items()
    assert key2 == key and ep2["container_id"] == "sandbox2" and len(node.cali_links()) == 1
    # the old sandbox's late DEL leaves the new one alone
    assert node.cni("DEL", node.conf(), "sandbox1", old_path, args=args) == (0, None)
    assert node.endpoints() == {key: ep2} and len(node.cali_links()) == 1
    assert node.cni("DEL", node.conf(), "sandbox2", new_path, args=args) == (0, None)
    node.assert_clean()


def test_another_ipam_plugin_result_is_passed_through(node, netns_factory, tmp_path):
    if not os.path.exists("/usr/lib/cni/host-local"):
        pytest.fail("host-local missing: containernetworking-plugins (scripts/install-deps)")
    wl, path = _wl(netns_factory)
    conf = node.conf(ipam={"type": "host-local", "subnet": "10.70.0.0/24", "dataDir": str(tmp_path)})
    rc, res = node.cni("ADD", conf, "h1", path)
    assert rc == 0, res
    (ip,) = res["ips"]
    assert ip["address"].startswith("10.70.0.") and ip["address"].endswith("/24")  # as host-local gave it
    (_, ep), = node.endpoints().items()
    assert ep["ipv4_nets"] == [ip["address"].split("/")[0] + "/32"]
    assert node.etcd.keys("/calico/ipam/v2/handle/") == []  # calico IPAM untouched
    assert node.cni("DEL", conf, "h1", path) == (0, None)
    assert not any(f.startswith("10.70.") for _, _, fs in os.walk(tmp_path) for f in fs)
    node.assert_clean()
    # hostile: an IPAM plugin handing out an address of a Calico pool, or one another endpoint has
    rc, err = node.cni("ADD", node.conf(ipam={"type": "host-local", "subnet": "10.66.200.0/24",
                                              "dataDir": str(tmp_path)}), "h2", path)
    assert rc == 1 and err["code"] == 101 and "10.66.0.0/16" in err["msg"]
    other, other_path = _wl(netns_factory)
    sub = {"type": "host-local", "subnet": "10.71.0.0/29", "dataDir": str(tmp_path)}
    assert node.cni("ADD", node.conf(ipam=sub), "h3", other_path)[0] == 0
    (_, first), = node.endpoints().items()
    node.etcd.put(f"/calico/v1/host/{node.name}/workload/cni/squatter/endpoint/eth0", json.dumps(
        dict(first, name="cali0squatter1", ipv4_nets=["10.71.0.3/32"], container_id="squatter")))
    rc, err = node.cni("ADD", node.conf(ipam=sub), "h4", path)
    assert rc == 1 and err["code"] == 101 and "squatter" in err["msg"]
    node.etcd.delete(f"/calico/v1/host/{node.name}/workload/cni/squatter/endpoint/eth0")
    assert node.cni("DEL", node.conf(ipam=sub), "h3", other_path)[0] == 0
    assert not any(f.startswith("10.71.") for _, _, fs in os.walk(tmp_path) for f in fs)  # h4's was given back
    node.assert_clean()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_input_is_one_clear_error_and_leaves_nothing(node, netns_factory):
    wl, path = _wl(netns_factory)
    # malformed config
    r = subprocess.run(["nsenter", f"--net=/run/netns/{node.name}", os.path.join(BIN, "calico")], input="{",
                       env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "b1", "CNI_NETNS": path, "CNI_IFNAME": "eth0",
                            "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == 6
    # unknown pool
    rc, err = node.cni("ADD", node.conf(ipam={"type": "calico-ipam", "ipv4_pools": ["10.200.0.0/16"]}), "b2", path)
    assert rc == 1 and err["code"] == 7 and "ipam.ipv4_pools" in err["msg"] and "10.200.0.0/16" in err["msg"]
    # unreachable etcd
    rc, err = node.cni("ADD", node.conf(etcd_endpoints=f"http://127.0.0.1:{_free_port()}"), "b3", path)
    assert rc == 1 and err["code"] == 11 and "etcd" in err["msg"]
    # missing netns
    rc, err = node.cni("ADD", node.conf(), "b4", "/run/netns/no-such-namespace")
    assert rc == 1 and err["code"] == 3 and "CNI_NETNS" in err["msg"]
    # attach fails after IPAM assigned (the name is taken in the namespace): all undone
    wl.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    rc, err = node.cni("ADD", node.conf(), "b5", path)
    assert rc == 1 and err["code"] == 100 and "eth0" in err["msg"]
    # an unknown IPAM plugin
    rc, err = node.cni("ADD", node.conf(ipam={"type": "no-such-ipam"}), "b6", path)
    assert rc == 1 and err["code"] == 7 and "no-such-ipam" in err["msg"]
    for line in (err,):
        assert set(line) <= {"cniVersion", "code", "msg", "details"}
    assert {li["ifname"] for li in json.loads(wl.run("ip", "-j", "link", "show").stdout)} == {"lo", "eth0", "eth0p"}
    node.assert_clean()


def test_calico_ipam_on_its_own(node):
    conf = node.conf(ipam={"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"})
    rc, res = node.cni("ADD", conf, "i1", plugin="calico-ipam")
    assert rc == 0, res
    assert sorted(ip["address"][:6] for ip in res["ips"]) == ["10.66.", "fd66::"]
    assert node.etcd.keys("/calico/ipam/v2/handle/") == ["/calico/ipam/v2/handle/i1"]
    assert node.cni("DEL", conf, "i1", plugin="calico-ipam") == (0, None)
    assert node.cni("DEL", conf, "i1", plugin="calico-ipam") == (0, None)
    assert node.etcd.keys("/calico/ipam/v2/handle/") == []


def test_status_and_gc_of_cni_1_1_0(node, netns_factory):
    conf = node.conf("1.1.0")
    assert node.cni("STATUS", conf, "") == (0, None)
    rc, err = node.cni("STATUS", dict(conf, etcd_endpoints=f"http://127.0.0.1:{_free_port()}"), "")
    assert rc == 1 and err["code"] == 50
    kept, kept_path = _wl(netns_factory)
    gone, gone_path = _wl(netns_factory)
    assert node.cni("ADD", conf, "keep1", kept_path)[0] == 0
    assert node.cni("ADD", conf, "gone1", gone_path)[0] == 0
    other = node.conf("1.1.0", name="net2")
    assert node.cni("ADD", other, "other1", gone_path, ifname="eth1")[0] == 0  # another network: not ours to GC
    valid = {"cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]}
    assert node.cni("GC", dict(conf, **valid), "") == (0, None)
    keys = sorted(k.split("/workload/")[1] for k in node.endpoints())
    assert keys == ["cni/keep1/endpoint/eth0", "cni/other1/endpoint/eth1"]
    assert len(node.cali_links()) == 2
    assert node.cni("DEL", conf, "keep1", kept_path)[0] == 0
    assert node.cni("DEL", other, "other1", gone_path, ifname="eth1")[0] == 0
    node.assert_clean()


def test_libnetwork_shape_pair_stays_here_until_the_runtime_moves_it(node, netns_factory):
    """attach_host_side: both ends on the node; the runtime (Docker) moves and addresses the peer."""
    wl, _ = _wl(netns_factory)
    script = f"""
import asyncio, json, sys
sys.path.insert(0, {ROOT!r})
from libcalico.datastore import DatastoreClient
from libcalico.workload_attach import EndpointSpec, assign_addresses, attach_host_side, detach, verify

async def main():
    client = DatastoreClient([{node.etcd.endpoint!r}])
    spec = EndpointSpec(host={node.name!r}, orchestrator="libnetwork", workload="libnetwork", endpoint="ep1",
                        host_ifname="cali0ep1", profiles=["dockernet"], create_profiles=True)
    v4, v6 = await assign_addresses(client, spec.host, "ep1", num4=1)
    att = await attach_host_side(client, spec, v4, v6, peer_name="tmp0ep1")
    print(json.dumps({{"mac": att.mac, "ip": v4[0], "gw": att.ipv4_gateway, "mtu": att.mtu}}))
    sys.stdout.flush()
    input()
    out = await detach(client, spec.key, host_ifname=spec.host_ifname, handle="ep1")
    print(json.dumps({{"found": out.endpoint_found, "veth": out.veth_deleted, "released": out.released}}))
    await client.close()

asyncio.run(main())
"""
    p = subprocess.Popen(["ip", "netns", "exec", node.name, os.path.join(BIN, "python"), "-c", script],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(p.stdout.readline())
        links = {li["ifname"]: li for li in json.loads(node.ns.run("ip", "-j", "link", "show").stdout)}
        assert "cali0ep1" in links and "UP" in links["cali0ep1"]["flags"] and links["tmp0ep1"]["address"] == first["mac"]
        assert first["gw"] == "169.254.1.1" and first["mtu"] == 1500
        (key, ep), = node.endpoints().items()
        assert key.endswith("/workload/libnetwork/libnetwork/endpoint/ep1") and ep["ipv4_nets"] == [f"{first['ip']}/32"]
        # what Docker does: move the peer into the container and configure it from the driver's answer
        node.ns.run("ip", "link", "set", "tmp0ep1", "netns", wl.name)
        wl.run("ip", "link", "set", "tmp0ep1", "name", "eth0")
        wl.run("ip", "addr", "add", f"{first['ip']}/32", "dev", "eth0")
        wl.run("ip", "link", "set", "eth0", "up")
        wl.run("ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        wl.run("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        out, _ = p.communicate("\n", timeout=60)
        assert json.loads(out) == {"found": True, "veth": True, "released": [first["ip"]]}
    finally:
        if p.poll() is None:
            p.kill()
    assert [li["ifname"] for li in json.loads(wl.run("ip", "-j", "link", "show").stdout)] == ["lo"]
    node.assert_clean()


def test_calicoctl_container_add_shares_the_mtu_rule(node, netns_factory):
    """One attach implementation: `calicoctl container add` and the CNI plugin give the same MTU."""
    node.etcd.put("/calico/v1/ipam/v4/pool/10.68.0.0-16", json.dumps({"cidr": "10.68.0.0/16", "ipip": "tunl0"}))
    cni_wl, path = _wl(netns_factory)
    ctl_wl, _ = _wl(netns_factory)
    assert node.cni("ADD", node.conf(), "m1", path)[0] == 0
    r = node.ns.run("env", f"ETCD_ENDPOINTS={node.etcd.endpoint}", f"NODENAME={node.name}",
                    os.path.join(BIN, "calicoctl"), "container", "add", ctl_wl.name, "ipv4", check=False)
    assert r.returncode == 0, r.stderr
    for wl in (cni_wl, ctl_wl):
        assert json.loads(wl.run("ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1480
    node.etcd.put("/calico/v1/config/IpInIpMtu", "1400")  # Felix's configured tunnel MTU wins over deriving
    late, late_path = _wl(netns_factory)
    assert node.cni("ADD", node.conf(), "m2", late_path)[0] == 0
    assert json.loads(late.run("ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1400
    node.ns.run("env", f"ETCD_ENDPOINTS={node.etcd.endpoint}", f"NODENAME={node.name}",
                os.path.join(BIN, "calicoctl"), "container", "remove", ctl_wl.name)
    for cid, p in (("m1", path), ("m2", late_path)):
        assert node.cni("DEL", node.conf(), cid, p)[0] == 0
    node.assert_clean()


def test_etcd_over_tls_with_the_plugins_cert_keys(netns_factory, tmp_path):
    from calico_testing.etcd import make_tls_certs

    certs = make_tls_certs(str(tmp_path))
    ns = netns_factory("tls")
    etcd = EtcdServer(netns=ns.name, tls=certs).start()
    try:
        node = Node(ns, etcd)
        wl, path = _wl(netns_factory)
        base = {"cniVersion": "1.0.0", "name": "tlsnet", "nodename": ns.name, "log_level": "error",
                "etcd_authority": f"127.0.0.1:{etcd.port}", "etcd_scheme": "https",
                "etcd_ca_cert_file": certs["ca"], "ipam": {"type": "calico-ipam"}}
        good = dict(base, etcd_cert_file=certs["client_cert"], etcd_key_file=certs["client_key"])
        assert node.cni("STATUS", dict(good, cniVersion="1.1.0"), "") == (0, None)
        rc, err = node.cni("STATUS", dict(base, cniVersion="1.1.0", etcd_cert_file=certs["rogue_cert"],
                                          etcd_key_file=certs["rogue_key"]), "")
        assert rc == 1 and err["code"] == 50  # etcd refuses a client cert of another CA
        rc, err = node.cni("ADD", dict(good, etcd_cert_file="/nonexistent.pem"), "t1", path)
        assert rc == 1 and err["code"] == 7 and "etcd_cert_file" in err["msg"]
        etcd.put("/calico/v1/ipam/v4/pool/10.66.0.0-16", json.dumps({"cidr": POOL}))
        rc, res = node.cni("ADD", good, "t1", path)
        assert rc == 0, res
        assert node.cni("DEL", good, "t1", path) == (0, None)
        assert node.cali_links() == [] and node.endpoints() == {}
    finally:
        etcd.close()
