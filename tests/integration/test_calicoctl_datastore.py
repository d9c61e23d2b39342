"""calicoctl datastore commands against a real etcd: exact keys and JSON of the datamodel, and
`show` reads back what was written."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from tests.lib.calicoctl_run import ctl, getj, ok

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CALICOCTL = os.path.join(ROOT, ".venv", "bin", "calicoctl")


def test_pool_add_show_remove(etcd_env):
    ok("pool", "add", "10.65.0.0/16", "--ipip", "--nat-outgoing")
    ok("pool", "add", "10.66.0.0/16", "10.67.0.0/24", "--vxlan")
    ok("pool", "add", "fd00:1::/64")
    assert getj(etcd_env, "/calico/v1/ipam/v4/pool/10.65.0.0-16") == {
        "cidr": "10.65.0.0/16", "ipip": "tunl0", "masquerade": True, "ipam": True, "disabled": False}
    assert getj(etcd_env, "/calico/v1/ipam/v4/pool/10.66.0.0-16") == {
        "cidr": "10.66.0.0/16", "vxlan": "vxlan.calico", "masquerade": False, "ipam": True, "disabled": False}
    assert getj(etcd_env, "/calico/v1/ipam/v4/pool/10.67.0.0-24")["vxlan"] == "vxlan.calico"
    assert getj(etcd_env, "/calico/v1/ipam/v6/pool/fd00:1::-64") == {
        "cidr": "fd00:1::/64", "masquerade": False, "ipam": True, "disabled": False}
    assert len(etcd_env.keys("/calico")) == 4

    out = ok("pool", "show")
    assert "| 10.65.0.0/16 | ipip,nat-outgoing |" in out
    assert "| 10.66.0.0/16 | vxlan" in out
    assert "fd00:1::/64" in out
    v4 = ok("pool", "show", "--ipv4")
    assert "10.67.0.0/24" in v4 and "fd00:1::/64" not in v4
    v6 = ok("pool", "show", "--ipv6")
    assert "fd00:1::/64" in v6 and "10.65.0.0/16" not in v6

    # Re-adding replaces the options (classic behaviour).
    ok("pool", "add", "10.65.0.0/16")
    assert "ipip" not in getj(etcd_env, "/calico/v1/ipam/v4/pool/10.65.0.0-16")

    ok("pool", "remove", "10.65.0.0/16", "fd00:1::/64")
    assert etcd_env.get("/calico/v1/ipam/v4/pool/10.65.0.0-16") is None
    assert etcd_env.get("/calico/v1/ipam/v6/pool/fd00:1::-64") is None
    assert "10.65.0.0/16" not in ok("pool", "show")
    # Removing a pool that is not there: exit 1, and the other named pool survives.
    r = ctl("pool", "remove", "10.66.0.0/16", "10.99.0.0/16")
    assert r.rc == 1 and "10.99.0.0/16" in r.err and r.err.count("\n") == 1
    assert etcd_env.get("/calico/v1/ipam/v4/pool/10.66.0.0-16") is not None


def test_pool_overlap_refused_nothing_written(etcd_env):
    ok("pool", "add", "10.65.0.0/16")
    before = etcd_env.keys("/calico")
    r = ctl("pool", "add", "10.70.0.0/16", "10.65.1.0/24")
    assert r.rc == 2 and "10.65.1.0/24" in r.err and "overlaps" in r.err
    assert etcd_env.keys("/calico") == before


def test_global_bgp_peers_mesh_and_as(etcd_env):
    ok("bgp", "peer", "add", "10.99.0.9", "as", "64600")
    ok("bgp", "peer", "add", "fd00::9", "as", "1.10")
    assert getj(etcd_env, "/calico/bgp/v1/global/peer_v4/10.99.0.9") == {"ip": "10.99.0.9", "as_num": "64600"}
    assert getj(etcd_env, "/calico/bgp/v1/global/peer_v6/fd00::9") == {"ip": "fd00::9", "as_num": "65546"}
    out = ok("bgp", "peer", "show")
    assert "| 10.99.0.9" in out and "64600" in out and "fd00::9" in out
    assert "fd00::9" not in ok("bgp", "peer", "show", "--ipv4")
    ok("bgp", "peer", "remove", "10.99.0.9")
    assert etcd_env.get("/calico/bgp/v1/global/peer_v4/10.99.0.9") is None
    r = ctl("bgp", "peer", "remove", "10.99.0.9")
    assert r.rc == 1 and "10.99.0.9" in r.err

    assert ok("bgp", "node-mesh").strip() == "on"  # never set: on
    ok("bgp", "node-mesh", "off")
    assert etcd_env.get("/calico/bgp/v1/global/node_mesh") == '{"enabled":false}'
    assert ok("bgp", "node-mesh").strip() == "off"
    ok("bgp", "node-mesh", "on")
    assert getj(etcd_env, "/calico/bgp/v1/global/node_mesh") == {"enabled": True}
    assert ok("bgp", "node-mesh").strip() == "on"

    assert ok("bgp", "default-node-as").strip() == "64511"
    ok("bgp", "default-node-as", "64512")
    assert etcd_env.get("/calico/bgp/v1/global/as_num") == "64512"
    assert ok("bgp", "default-node-as").strip() == "64512"


def test_node_bgp_peers(etcd_env, monkeypatch):
    ok("node", "bgp", "peer", "add", "10.99.0.20", "as", "64601", "--hostname", "node-a")
    ok("node", "bgp", "peer", "add", "10.99.0.21", "as", "64602", "--hostname=node-b")
    assert getj(etcd_env, "/calico/bgp/v1/host/node-a/peer_v4/10.99.0.20") == {
        "ip": "10.99.0.20", "as_num": "64601"}
    assert getj(etcd_env, "/calico/bgp/v1/host/node-b/peer_v4/10.99.0.21")["as_num"] == "64602"
    a = ok("node", "bgp", "peer", "show", "--hostname", "node-a")
    assert "10.99.0.20" in a and "10.99.0.21" not in a
    # Default hostname comes from NODENAME (then HOSTNAME, then the kernel's).
    monkeypatch.setenv("NODENAME", "node-b")
    assert "10.99.0.21" in ok("node", "bgp", "peer", "show")
    ok("node", "bgp", "peer", "remove", "10.99.0.21")
    assert etcd_env.get("/calico/bgp/v1/host/node-b/peer_v4/10.99.0.21") is None
    assert etcd_env.get("/calico/bgp/v1/host/node-a/peer_v4/10.99.0.20") is not None


def test_profile_lifecycle(etcd_env):
    ok("profile", "add", "web")
    assert getj(etcd_env, "/calico/v1/policy/profile/web/rules") == {
        "inbound_rules": [{"action": "allow", "src_tag": "web"}], "outbound_rules": [{"action": "allow"}]}
    assert getj(etcd_env, "/calico/v1/policy/profile/web/tags") == ["web"]
    assert "already exists" in ok("profile", "add", "web")
    ok("profile", "add", "db")
    out = ok("profile", "show")
    assert "| web" in out and "| db" in out

    ok("profile", "web", "tag", "add", "frontend")
    assert getj(etcd_env, "/calico/v1/policy/profile/web/tags") == ["web", "frontend"]
    assert ok("profile", "web", "tag", "show").split() == ["web", "frontend"]
    ok("profile", "web", "tag", "remove", "web")
    assert getj(etcd_env, "/calico/v1/policy/profile/web/tags") == ["frontend"]
    r = ctl("profile", "web", "tag", "remove", "nope")
    assert r.rc == 1 and "nope" in r.err

    r = ctl("profile", "ghost", "tag", "add", "x")
    assert r.rc == 1 and "ghost" in r.err
    assert etcd_env.keys("/calico/v1/policy/profile/ghost") == []

    ok("profile", "remove", "db")
    assert etcd_env.keys("/calico/v1/policy/profile/db") == []
    assert "db" not in ok("profile", "show")
    assert ctl("profile", "remove", "db").rc == 1


def test_profile_rules(etcd_env):
    ok("profile", "add", "web")
    ok("profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "80,443,8000:8080")
    ok("profile", "web", "rule", "add", "inbound", "--at=1", "deny", "from", "cidr", "10.9.0.0/16")
    ok("profile", "web", "rule", "add", "outbound", "deny", "icmp", "type", "8", "code", "0",
       "to", "tag", "db", "cidr", "10.1.0.0/16")
    ok("profile", "web", "rule", "add", "inbound", "allow", "udp", "from", "ports", "53", "tag", "dns",
       "to", "ports", "1000:2000")
    rules = getj(etcd_env, "/calico/v1/policy/profile/web/rules")
    assert rules["inbound_rules"] == [
        {"action": "deny", "src_net": "10.9.0.0/16"},
        {"action": "allow", "src_tag": "web"},
        {"action": "allow", "protocol": "tcp", "dst_ports": [80, 443, "8000:8080"]},
        {"action": "allow", "protocol": "udp", "src_tag": "dns", "src_ports": [53], "dst_ports": ["1000:2000"]},
    ]
    assert rules["outbound_rules"] == [
        {"action": "allow"},
        {"action": "deny", "protocol": "icmp", "dst_net": "10.1.0.0/16", "dst_tag": "db",
         "icmp_type": 8, "icmp_code": 0},
    ]
    shown = ok("profile", "web", "rule", "show")
    assert "Inbound rules:" in shown and "Outbound rules:" in shown
    assert "   1 deny from cidr 10.9.0.0/16" in shown
    assert "   3 allow tcp to ports 80,443,8000:8080" in shown
    assert "deny icmp type 8 code 0 to tag db cidr 10.1.0.0/16" in shown
    assert json.loads(ok("profile", "web", "rule", "json")) == rules

    # Remove by rule text and by position.
    ok("profile", "web", "rule", "remove", "inbound", "allow", "tcp", "to", "ports", "80,443,8000:8080")
    ok("profile", "web", "rule", "remove", "outbound", "--at=1")
    rules = getj(etcd_env, "/calico/v1/policy/profile/web/rules")
    assert len(rules["inbound_rules"]) == 3 and all(r.get("protocol") != "tcp" for r in rules["inbound_rules"])
    assert rules["outbound_rules"][0]["action"] == "deny"
    r = ctl("profile", "web", "rule", "remove", "inbound", "allow", "tcp")
    assert r.rc == 1 and "no inbound rule" in r.err
    r = ctl("profile", "web", "rule", "remove", "inbound", "--at=9")
    assert r.rc == 2 and "9" in r.err

    # rule update from stdin, then json round-trips through update unchanged.
    new = {"inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": [80, "8000:8080"]}],
           "outbound_rules": [{"action": "allow"}]}
    ok("profile", "web", "rule", "update", stdin=json.dumps(new))
    assert getj(etcd_env, "/calico/v1/policy/profile/web/rules") == new
    dumped = ok("profile", "web", "rule", "json")
    ok("profile", "web", "rule", "update", stdin=dumped)
    assert getj(etcd_env, "/calico/v1/policy/profile/web/rules") == new
    assert ctl("profile", "ghost", "rule", "update", stdin=json.dumps(new)).rc == 1


def test_profile_show_detailed_and_endpoints(etcd_env):
    ok("profile", "add", "web")
    ep = {"state": "active", "name": "cali1234abcd", "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": ["web"],
          "ipv4_nets": ["10.65.0.5/32"], "ipv6_nets": []}
    etcd_env.put("/calico/v1/host/h1/workload/docker/c1/endpoint/e1", json.dumps(ep))
    etcd_env.put("/calico/v1/host/h1/workload/docker/c2/endpoint/e2", json.dumps(dict(ep, profile_ids=[])))
    etcd_env.put("/calico/v1/host/h2/workload/k8s/p1/endpoint/e3", json.dumps(dict(ep, ipv4_nets=["10.65.1.9/32"])))
    etcd_env.put("/calico/v1/host/h2/workload/k8s/p2/endpoint/e4", '{"state": "active", "name": "bad name"}')

    detailed = ok("profile", "show", "--detailed")
    assert "| web  | h1   | docker" in detailed and "10.65.0.5/32" in detailed and "10.65.1.9/32" in detailed

    summary = ok("endpoint", "show")
    assert "| h1       | docker          | 2 " in summary
    assert "| h2       | k8s             | 2 " in summary
    only_h1 = ok("endpoint", "show", "--hostname", "h1", "--detailed")
    assert "e1" in only_h1 and "e2" in only_h1 and "e3" not in only_h1 and "ee:ee:ee:ee:ee:ee" in only_h1
    one = ok("endpoint", "show", "--workload=p1", "--detailed")
    assert "e3" in one and "e1" not in one
    bad = ok("endpoint", "show", "--endpoint", "e4", "--detailed")
    assert "invalid" in bad


def test_config_felix(etcd_env):
    ok("config", "felix", "LogSeverityScreen", "debug")
    assert etcd_env.get("/calico/v1/config/LogSeverityScreen") == "debug"
    ok("config", "felix", "LogSeverityScreen", "info", "--hostname", "node-a")
    assert etcd_env.get("/calico/v1/host/node-a/config/LogSeverityScreen") == "info"
    assert ok("config", "felix", "LogSeverityScreen").strip() == "debug"
    assert ok("config", "felix", "LogSeverityScreen", "--hostname=node-a").strip() == "info"
    ok("config", "felix", "LogSeverityScreen", "--remove")
    assert etcd_env.get("/calico/v1/config/LogSeverityScreen") is None
    assert etcd_env.get("/calico/v1/host/node-a/config/LogSeverityScreen") == "info"
    assert ctl("config", "felix", "LogSeverityScreen").rc == 1


def test_console_script_and_stdin(etcd_env):
    """The installed entry point, with stdin and exit codes across a real process boundary."""
    env = dict(os.environ, ETCD_ENDPOINTS=etcd_env.endpoint)
    exe = CALICOCTL if os.path.exists(CALICOCTL) else None
    cmd = [exe] if exe else [sys.executable, "-m", "calicoctl"]
    subprocess.run(cmd + ["profile", "add", "web"], env=env, check=True, capture_output=True)
    rules = '{"inbound_rules":[{"action":"allow","protocol":"tcp","dst_ports":[80,"8000:8080"]}],' \
            '"outbound_rules":[{"action":"allow"}]}'
    r = subprocess.run(cmd + ["profile", "web", "rule", "update"], env=env, input=rules, text=True,
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert "8000:8080" in etcd_env.get("/calico/v1/policy/profile/web/rules")
    r = subprocess.run(cmd + ["pool", "add", "10.1.2.3/40"], env=env, text=True, capture_output=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "10.1.2.3/40" in r.stderr
    r = subprocess.run(cmd + ["version"], env=env, text=True, capture_output=True)
    assert r.returncode == 0 and r.stdout.startswith("calicoctl version ")


def test_datastore_unreachable_is_one_line_exit_1(monkeypatch):
    from calico_testing.etcd import free_port

    monkeypatch.setenv("ETCD_ENDPOINTS", f"http://127.0.0.1:{free_port()}")
    r = ctl("pool", "show")
    assert r.rc == 1, r
    assert r.err.count("\n") == 1 and "datastore" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("argv", [
    ["--help"], ["pool", "--help"], ["pool", "add", "--help"], ["pool", "show", "-h"],
    ["bgp", "--help"], ["bgp", "peer", "add", "--help"], ["bgp", "node-mesh", "--help"],
    ["node", "--help"], ["node", "bgp", "--help"], ["node", "bgp", "peer", "show", "--help"],
    ["profile", "--help"], ["profile", "web", "rule", "add", "--help"], ["endpoint", "show", "--help"],
    ["ipam", "--help"], ["ipam", "info", "--help"], ["config", "felix", "--help"], ["version", "--help"],
])
def test_help_everywhere(argv):
    """--help works without a datastore and prints the group's grammar."""
    r = ctl(*argv)
    assert r.rc == 0 and r.out.startswith("Usage:") and r.err == ""
    if len(argv) > 1:
        assert f"calicoctl {argv[0]}" in r.out


def test_concurrent_tag_and_rule_edits_lose_nothing(etcd_env):
    """Read-modify-write goes through compare-and-swap: parallel editors never overwrite each other."""
    ok("profile", "add", "web")
    env = dict(os.environ, ETCD_ENDPOINTS=etcd_env.endpoint)
    exe = [CALICOCTL] if os.path.exists(CALICOCTL) else [sys.executable, "-m", "calicoctl"]
    procs = [subprocess.Popen(exe + ["profile", "web", "tag", "add", f"t{i}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(6)]
    procs += [subprocess.Popen(exe + ["profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports",
                                      str(1000 + i)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
              for i in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert sorted(getj(etcd_env, "/calico/v1/policy/profile/web/tags")) == sorted(
        ["web"] + [f"t{i}" for i in range(6)])
    ports = sorted(r["dst_ports"][0] for r in getj(etcd_env, "/calico/v1/policy/profile/web/rules")["inbound_rules"]
                   if "dst_ports" in r)
    assert ports == [1000 + i for i in range(6)]


@pytest.mark.parametrize("racer,expect_rc", [
    ("10.90.0.0/17", 2),   # overlapping pool sneaks in: our add must be refused on the re-check
    ("10.91.0.0/16", 0),   # an unrelated pool sneaks in: our add retries and lands
])
def test_pool_add_overlap_check_is_atomic(etcd_env, racer, expect_rc):
    import asyncio

    from calicoctl import pool as pool_cmd
    from calicoctl.cli import ArgError, Context
    from libcalico import keys
    from libcalico.datastore import DatastoreClient
    from tests.lib.faults import WritesBeforeTxn

    async def go() -> int:
        real = DatastoreClient.from_env()
        ctx = Context(stdout=io.StringIO())
        ctx._client = WritesBeforeTxn(real, {keys.pool(racer): json.dumps({"cidr": racer})})
        try:
            return await pool_cmd.parse(["add", "10.90.0.0/16"])(ctx) or 0
        except ArgError as e:
            assert "overlaps existing pool 10.90.0.0/17" in str(e)
            return 2
        finally:
            await real.close()

    assert asyncio.run(go()) == expect_rc
    pools = etcd_env.keys("/calico/v1/ipam/v4/pool/")
    assert ("/calico/v1/ipam/v4/pool/10.90.0.0-16" in pools) == (expect_rc == 0), pools


def test_parallel_overlapping_pool_adds_leave_no_overlap(etcd_env):
    cidrs = ["10.92.0.0/16", "10.92.0.0/17", "10.92.128.0/17", "10.92.0.0/18", "10.92.64.0/18",
             "10.92.128.0/18", "10.92.192.0/18", "10.92.0.0/15"]
    env = dict(os.environ, ETCD_ENDPOINTS=etcd_env.endpoint)
    exe = [CALICOCTL] if os.path.exists(CALICOCTL) else [sys.executable, "-m", "calicoctl"]
    procs = [subprocess.Popen(exe + ["pool", "add", c], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in cidrs]
    rcs = []
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0 or (p.returncode == 2 and "overlaps existing pool" in err), err
        rcs.append(p.returncode)
    import ipaddress
    pools = [ipaddress.ip_network(json.loads(etcd_env.get(k))["cidr"]) for k in etcd_env.keys("/calico/v1/ipam/v4/pool/")]
    assert len(pools) == rcs.count(0) >= 1
    assert not [(a, b) for i, a in enumerate(pools) for b in pools[i + 1:] if a.overlaps(b)], pools
