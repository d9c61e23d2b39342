"""The classic calicoctl v0.20 commands this project lacked, against a real etcd (and, for
`checksystem --fix`, a network namespace of the test's own)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.lib.calicoctl_run import fails, getj, module_etcd_fixture, ok, store_fixture  # noqa: F401

WEP_KEY = "/calico/v1/host/h1/workload/o/w/endpoint/e1"
WEP = {"state": "active", "name": "cali1", "profile_ids": ["web"], "ipv4_nets": ["10.70.0.1/32"],
       "ipv6_nets": [], "extra": 1}


def test_profile_remove_refuses_a_profile_in_use(store):
    ok("profile", "add", "web")
    store.put(WEP_KEY, json.dumps(WEP))
    err = fails("profile", "remove", "web")
    assert "in use by endpoint(s)" in err and WEP_KEY in err and "--no-check" in err
    assert store.get("/calico/v1/policy/profile/web/rules") is not None
    # A host endpoint counts too.
    ok("profile", "add", "edge")
    store.put("/calico/v1/host/h1/endpoint/eth0", json.dumps({"name": "eth0", "profile_ids": ["edge"]}))
    assert "/calico/v1/host/h1/endpoint/eth0" in fails("profile", "remove", "edge")
    ok("profile", "remove", "web", "--no-check")
    assert store.keys("/calico/v1/policy/profile/web/") == []
    ok("profile", "add", "unused")
    ok("profile", "remove", "unused")
    assert "--no-check only applies" in fails("profile", "show", "--no-check", rc=2)


def test_config_felix_maps_classic_names(store):
    ok("config", "felix", "loglevel", "debug")
    assert store.get("/calico/v1/config/LogSeverityScreen") == "debug"
    ok("config", "felix", "LOGLEVEL", "WARN", "--hostname=h1")
    assert store.get("/calico/v1/host/h1/config/LogSeverityScreen") == "warning"
    assert ok("config", "felix", "loglevel").strip() == "debug"
    ok("config", "felix", "ipip", "on")
    assert store.get("/calico/v1/config/IpInIpEnabled") == "true"
    ok("config", "felix", "ipipmtu", "1400")
    assert store.get("/calico/v1/config/IpInIpMtu") == "1400"
    ok("config", "felix", "interfaceprefix", "tap")  # a Felix name, any case
    assert store.get("/calico/v1/config/InterfacePrefix") == "tap"
    assert "not a log level" in fails("config", "felix", "loglevel", "loud", rc=2)
    assert "--force" in fails("config", "felix", "NoSuchThing", "1", rc=2)
    assert store.get("/calico/v1/config/NoSuchThing") is None
    ok("config", "felix", "NoSuchThing", "1", "--force")
    assert store.get("/calico/v1/config/NoSuchThing") == "1"
    ok("config", "felix", "loglevel", "loud", "--force")  # --force also lets an unrecognised value through
    assert store.get("/calico/v1/config/LogSeverityScreen") == "loud"
    assert ok("config", "felix", "loglevel", "--remove").strip() == "Value removed"
    assert store.get("/calico/v1/config/LogSeverityScreen") is None
    assert "not set" in fails("config", "felix", "loglevel", "--remove")


def test_config_bgp_and_node_bgp_write_the_keys_confd_reads(store):
    ok("config", "bgp", "logLevel", "debug")
    ok("config", "bgp", "asNumber", "64700")
    ok("config", "bgp", "nodeToNodeMesh", "off")
    assert store.get("/calico/bgp/v1/global/loglevel") == "debug"
    assert store.get("/calico/bgp/v1/global/as_num") == "64700"
    assert getj(store, "/calico/bgp/v1/global/node_mesh") == {"enabled": False}
    assert ok("config", "bgp", "nodeToNodeMesh").strip() == "off"
    ok("config", "node", "bgp", "logLevel", "none", "--hostname=h1")
    ok("config", "node", "bgp", "asNumber", "64701", "--hostname=h1")
    assert store.get("/calico/bgp/v1/host/h1/loglevel") == "none"
    assert store.get("/calico/bgp/v1/host/h1/as_num") == "64701"
    ok("config", "node", "bgp", "asNumber", "--remove", "--hostname=h1")
    assert store.get("/calico/bgp/v1/host/h1/as_num") is None
    assert "invalid logLevel" in fails("config", "bgp", "logLevel", "loud", rc=2)
    assert "unknown BGP setting" in fails("config", "node", "bgp", "nodeToNodeMesh", "on", rc=2)
    assert "asNumber" in fails("config", "bgp", "asNumber", "-5", rc=2)
    ok("config", "bgp", "logLevel", "warning", "--force")
    assert store.get("/calico/bgp/v1/global/loglevel") == "warning"
    ok("config", "node", "bgp", "newThing", "x", "--force", "--hostname=h1")
    assert store.get("/calico/bgp/v1/host/h1/newThing") == "x"
    assert "newThing" in fails("config", "bgp", "newThing", "x", rc=2)


def test_endpoint_profile_append_remove_set_show(store):
    store.put(WEP_KEY, json.dumps(WEP))
    for p in ("web", "db", "ops"):
        ok("profile", "add", p)
    ok("endpoint", "e1", "profile", "append", "db", "ops")
    assert getj(store, WEP_KEY)["profile_ids"] == ["web", "db", "ops"]
    assert ok("endpoint", "e1", "--host=h1", "profile", "show").split() == ["web", "db", "ops"]
    ok("endpoint", "e1", "profile", "remove", "web")
    assert getj(store, WEP_KEY)["profile_ids"] == ["db", "ops"]
    ok("endpoint", "e1", "--hostname=h1", "--orchestrator=o", "--workload=w", "profile", "set", "web")
    stored = getj(store, WEP_KEY)
    assert stored["profile_ids"] == ["web"] and stored["extra"] == 1  # everything else kept
    assert "not found" in fails("endpoint", "e1", "profile", "append", "ghost")
    ok("endpoint", "e1", "profile", "append", "ghost", "--no-check")
    assert "does not have" in fails("endpoint", "e1", "profile", "remove", "db")
    assert "already has" in fails("endpoint", "e1", "profile", "append", "web")
    ok("endpoint", "e1", "profile", "set")
    assert getj(store, WEP_KEY)["profile_ids"] == []
    assert "no endpoint" in fails("endpoint", "e1", "--host=h2", "profile", "show")
    store.put(WEP_KEY.replace("/h1/", "/h2/"), json.dumps(WEP))
    assert "pick one" in fails("endpoint", "e1", "profile", "show")


def test_endpoint_show_host_alias(store):
    store.put(WEP_KEY, json.dumps(WEP))
    store.put(WEP_KEY.replace("/h1/", "/h2/"), json.dumps(WEP))
    by_host = ok("endpoint", "show", "--host=h1")
    assert by_host == ok("endpoint", "show", "--hostname=h1")
    assert "| h1 " in by_host and "| h2 " not in by_host
    assert "| h2 " in ok("endpoint", "show", "--host", "h2", "--detailed")


def test_node_start_form_is_node_run():
    classic = ok("node", "--ip=10.0.0.1", "--as", "64512", "--name=n1", "--dry-run")
    assert classic == ok("node", "run", "--ip=10.0.0.1", "--as=64512", "--name=n1", "--dry-run")
    assert "-e IP=10.0.0.1" in classic and "-e AS=64512" in classic
    assert "invalid" in fails("node", "--ip=300.0.0.1", "--dry-run", rc=2)


def test_version_is_the_package_version():
    from importlib import metadata

    from calicoctl.version import _source_version

    out = ok("version").strip()
    assert out == f"calicoctl version {metadata.version('calico-node-py')}"
    assert _source_version() == metadata.version("calico-node-py")


def test_checksystem_fix_enables_forwarding(netns_factory):
    ns = netns_factory("ckfix")
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        subprocess.run(["ip", "netns", "exec", ns.name, "sh", "-c", f"echo 0 > {path}"], check=True)
    cmd = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "calicoctl", "checksystem", "--no-datastore"]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    before = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert "net.ipv4.ip_forward=0" in before.stdout, before
    after = subprocess.run(cmd + ["--fix"], capture_output=True, text=True, env=env)
    assert re.search(r"fix: net\.ipv4\.ip_forward\s*\|\s*OK\s*\|\s*0 -> 1", after.stdout), after
    assert "net.ipv4.ip_forward=1" in after.stdout
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        r = subprocess.run(["ip", "netns", "exec", ns.name, "cat", path], capture_output=True, text=True)
        assert r.stdout.strip() == "1", path
    again = subprocess.run(cmd + ["--fix"], capture_output=True, text=True, env=env)
    assert again.returncode == after.returncode and "fix: net." not in again.stdout, again  # nothing left to fix
