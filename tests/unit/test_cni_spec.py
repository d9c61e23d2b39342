"""The CNI protocol side of the plugins: versions, result shapes, errors, config keys, identity."""

from __future__ import annotations

import io
import json

import pytest

from calico_cni import config, identity, install, spec
from calico_cni.plugin import run
from calico_cni.spec import CniError

RESULT = {"interfaces": [{"name": "cali1"}, {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/x", "mtu": 1450}],
          "ips": [{"address": "10.0.0.1/32", "interface": 1}, {"address": "fd00::1/128", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_old_versions_carry_ip_version(version):
    out = spec.convert(RESULT, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert "mtu" not in out["interfaces"][1]


def test_1_0_0_drops_ip_version_and_1_1_0_keeps_mtu():
    out = spec.convert(RESULT, "1.0.0")
    assert all("version" not in ip for ip in out["ips"]) and "mtu" not in out["interfaces"][1]
    assert spec.convert(RESULT, "1.1.0")["interfaces"][1]["mtu"] == 1450
    # an old-shape IPAM result converts up as well
    assert "version" not in spec.convert({"ips": [{"version": "4", "address": "1.2.3.4/32"}]}, "1.0.0")["ips"][0]


def _call(env: dict, stdin: bytes) -> tuple[int, dict]:
    out = io.StringIO()
    rc = run("calico", io.BytesIO(stdin), out, env=env)
    return rc, json.loads(out.getvalue())


def test_version_answers_without_a_datastore():
    rc, doc = _call({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert rc == 0 and doc["cniVersion"] == "0.4.0" and "1.0.0" in doc["supportedVersions"]


@pytest.mark.parametrize("env,stdin,code,words", [
    ({}, b"{}", 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "FROB"}, b"{}", 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "ADD"}, b"{not json", 6, "not JSON"),
    ({"CNI_COMMAND": "ADD"}, b"[1]", 6, "object"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "0.2.0", "name": "n"}', 1, "cniVersion"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "bad/name"}', 7, "name"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n", "mtu": "big"}', 7, "mtu"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n", "log_level": "loud"}', 7, "log_level"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "calico-ipam", '
                             b'"ipv4_pools": ["fd00::/64"]}}', 7, "ipam.ipv4_pools"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "calico-ipam", '
                             b'"assign_ipv4": "maybe"}}', 7, "assign_ipv4"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n", "etcd_endpoints": "ftp://x:1"}', 7,
     "etcd_endpoints"),
    ({"CNI_COMMAND": "ADD"}, b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_CONTAINERID"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c/1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_CONTAINERID"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "a-very-long-interface", "CNI_NETNS": "/x"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_IFNAME"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_NETNS"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x\nlink del eth0"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_NETNS"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "relative/ns"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_NETNS"),
    ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/0/ns/net"},
     b'{"cniVersion": "0.3.1", "name": "n"}', 3, "CNI_NETNS"),
    ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "0.3.1", "name": "n"}', 1, "CHECK"),
    ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 7, "prevResult"),
    ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_ARGS": "junk"},
     b'{"cniVersion": "1.0.0", "name": "n"}', 4, "CNI_ARGS"),
])
def test_bad_input_is_one_error_object_naming_the_culprit(env, stdin, code, words):
    rc, doc = _call(env, stdin)
    assert rc == 1 and doc["code"] == code and words in doc["msg"], doc
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}


def test_oversized_config_is_refused():
    with pytest.raises(CniError) as e:
        spec.read_config(io.BytesIO(b" " * (spec.MAX_STDIN + 10)))
    assert e.value.code == spec.DECODE_FAILURE


def test_config_keys_of_the_real_plugin():
    c = config.parse({"name": "net", "etcd_authority": "10.0.0.1:2379", "etcd_scheme": "https", "nodename": "n1",
                      "mtu": 1400, "log_level": "DEBUG",
                      "ipam": {"type": "calico-ipam", "assign_ipv4": "false", "assign_ipv6": "true",
                               "ipv6_pools": ["fd00::/64"]}}, "1.0.0")
    assert c.etcd_env == {"ETCD_AUTHORITY": "10.0.0.1:2379", "ETCD_SCHEME": "https"}
    assert (c.nodename, c.mtu, c.log_level) == ("n1", 1400, 10)
    assert (c.ipam.assign_ipv4, c.ipam.assign_ipv6, c.ipam.ipv6_pools) == (False, True, ["fd00::/64"])
    assert config.parse({"name": "net", "hostname": "old"}, "0.3.1").nodename == "old"


def test_identity_k8s_and_plain():
    k8s = identity.identify({"CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", "CNI_NETNS": "/n",
                             "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1"}, True)
    assert (k8s.orchestrator, k8s.workload, k8s.endpoint, k8s.attachment) == ("k8s", "default.web-1", "eth0",
                                                                              "default.web-1")
    plain = identity.identify({"CNI_CONTAINERID": "abc", "CNI_IFNAME": "net1"}, False)
    assert (plain.orchestrator, plain.workload, plain.attachment) == ("cni", "abc", "abc.net1")


def test_veth_name_is_stable_and_fits():
    from libcalico.workload_attach import veth_name

    assert veth_name("default.web-1") == veth_name("default.web-1") != veth_name("default.web-2")
    assert len(veth_name("x" * 300)) == 15 and veth_name("abc").startswith("cali")


def test_install_writes_plugins_and_conflist(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in install.PLUGINS:
        (src / name).write_text("#!/bin/sh\n")
    monkeypatch.setattr(install, "plugin_source", lambda name: str(src / name))
    rc = install.main([f"--bin-dir={tmp_path}/bin", f"--conf-dir={tmp_path}/net.d", "--network=k8s-pod-network",
                       "--etcd-endpoints=http://10.0.0.1:2379", "--nodename=n1", "--k8s"])
    assert rc == 0
    assert all((tmp_path / "bin" / n).stat().st_mode & 0o111 for n in install.PLUGINS)
    conf = json.loads((tmp_path / "net.d" / "10-calico.conflist").read_text())
    assert conf["name"] == "k8s-pod-network" and conf["plugins"][0]["nodename"] == "n1"
    assert conf["plugins"][0]["ipam"]["type"] == "calico-ipam" and conf["plugins"][1]["type"] == "portmap"
    assert install.main(["--mtu=12"]) == 2
