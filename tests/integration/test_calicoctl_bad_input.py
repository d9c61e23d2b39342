"""Table-driven bad input for calicoctl: each case exits 2 with one line on stderr naming the
argument, and the datastore is left exactly as it was (checked key by key and by revision)."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_calicoctl_datastore import ctl, ok

GOOD_RULES = {"inbound_rules": [{"action": "allow"}], "outbound_rules": []}

# (argv, stdin or None, substring the error line must contain)
CASES = [
    # pools: bad CIDRs, unusable ranges, incompatible flags
    (["pool", "add", "10.1.2.3/40"], None, "10.1.2.3/40"),
    (["pool", "add", "300.1.2.3/16"], None, "300.1.2.3/16"),
    (["pool", "add", "10.1.2/33"], None, "10.1.2/33"),
    (["pool", "add", "abc"], None, "abc"),
    (["pool", "add", "10.0.0.0/8;rm"], None, "10.0.0.0/8;rm"),
    (["pool", "add", ""], None, "''"),
    (["pool", "add", "10.70.0.0"], None, "prefix length"),
    (["pool", "add", "10.70.0.0/28"], None, "10.70.0.0/28"),
    (["pool", "add", "127.0.0.0/8"], None, "127.0.0.0/8"),
    (["pool", "add", "224.0.0.0/8"], None, "224.0.0.0/8"),
    (["pool", "add", "fd00::/64", "--ipip"], None, "--ipip"),
    (["pool", "add", "10.70.0.0/16", "--ipip", "--vxlan"], None, "--vxlan"),
    (["pool", "add", "10.70.0.0/16", "10.71.0.0/16", "10.70.3.0/24"], None, "overlap"),
    (["pool", "add", "10.65.1.0/24"], None, "overlaps existing pool 10.65.0.0/16"),
    (["pool", "add", "10.70.0.0/16", "--bogus"], None, "--bogus"),
    (["pool", "remove", "10.0.0.0/99"], None, "10.0.0.0/99"),
    (["pool", "show", "--ipv4", "--ipv6"], None, "--ipv6"),
    # AS numbers and peer IPs
    (["bgp", "peer", "add", "10.1.1.1", "as", "abc"], None, "'abc'"),
    (["bgp", "peer", "add", "10.1.1.1", "as", "0"], None, "'0'"),
    (["bgp", "peer", "add", "10.1.1.1", "as", "4294967296"], None, "4294967296"),
    (["bgp", "peer", "add", "10.1.1.1", "as", "-1"], None, "-1"),
    (["bgp", "peer", "add", "10.1.1.1", "as", "65536.1"], None, "65536.1"),
    (["bgp", "peer", "add", "10.1.1.256", "as", "64600"], None, "10.1.1.256"),
    (["bgp", "peer", "add", "10.1.1.0/24", "as", "64600"], None, "10.1.1.0/24"),
    (["bgp", "peer", "add", "10.1.1.1", "64600"], None, "bgp peer add"),
    (["bgp", "peer", "remove", "not-an-ip"], None, "not-an-ip"),
    (["bgp", "default-node-as", "4294967296"], None, "4294967296"),
    (["bgp", "default-node-as", "abc"], None, "abc"),
    (["bgp", "node-mesh", "maybe"], None, "maybe"),
    (["node", "bgp", "peer", "add", "10.1.1.1", "as", "64600", "--hostname", "a b"], None, "'a b'"),
    (["node", "bgp", "peer", "add", "10.1.1.1", "as", "64600", "--hostname", "a;b"], None, "a;b"),
    (["node", "bgp", "peer", "add", "10.1.1.1", "as", "0", "--hostname", "h1"], None, "'0'"),
    # names with spaces, ';', quotes, newlines, slashes
    (["profile", "add", "x;y"], None, "x;y"),
    (["profile", "add", "a b"], None, "'a b'"),
    (["profile", "add", "a'b"], None, "a'b"),
    (["profile", "add", 'a"b'], None, 'a"b'),
    (["profile", "add", "a\nb"], None, "a\\nb"),
    (["profile", "add", "a/b"], None, "a/b"),
    (["profile", "add", ".."], None, "'..'"),
    (["profile", "add", ""], None, "''"),
    (["profile", "remove", "a b"], None, "'a b'"),
    (["profile", "web", "tag", "add", "t;t"], None, "t;t"),
    (["profile", "web", "tag", "add", "t\nt"], None, "t\\nt"),
    (["profile", "we b", "tag", "add", "ok"], None, "we b"),
    # rules in the classic grammar
    (["profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "99999"], None, "99999"),
    (["profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "abc"], None, "abc"),
    (["profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "10:5"], None, "10:5"),
    (["profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "80,,81"], None, "80,,81"),
    (["profile", "web", "rule", "add", "inbound", "allow", "icmp", "to", "ports", "80"], None, "ports"),
    (["profile", "web", "rule", "add", "inbound", "allow", "to", "ports", "80"], None, "ports"),
    (["profile", "web", "rule", "add", "inbound", "allow", "icmp", "type", "300"], None, "300"),
    (["profile", "web", "rule", "add", "inbound", "allow", "icmp", "code", "3"], None, "code"),
    (["profile", "web", "rule", "add", "inbound", "allow", "from", "cidr", "10.0.0.0/33"], None, "10.0.0.0/33"),
    (["profile", "web", "rule", "add", "inbound", "allow", "from", "tag", "a b"], None, "a b"),
    (["profile", "web", "rule", "add", "inbound", "allow", "from", "tag", "x;y"], None, "x;y"),
    (["profile", "web", "rule", "add", "inbound", "permit"], None, "permit"),
    (["profile", "web", "rule", "add", "inbound", "allow", "tcp", "from"], None, "from"),
    (["profile", "web", "rule", "add", "inbound", "allow", "to", "tag", "x", "from", "tag", "y"], None, "from"),
    (["profile", "web", "rule", "add", "inbound", "allow", "sideways"], None, "sideways"),
    (["profile", "web", "rule", "add", "inbound"], None, "empty"),
    (["profile", "web", "rule", "add", "sideways", "allow"], None, "sideways"),
    (["profile", "web", "rule", "add", "inbound", "--at=0", "allow"], None, "'0'"),
    (["profile", "web", "rule", "add", "inbound", "--at=x", "allow"], None, "'x'"),
    (["profile", "web", "rule", "add", "inbound", "--at=5", "allow"], None, "'5'"),
    (["profile", "web", "rule", "remove", "inbound", "--at=2"], None, "'2'"),
    (["profile", "web", "rule", "remove", "inbound"], None, "--at"),
    # rule update: JSON on stdin
    (["profile", "web", "rule", "update"], "{not json", "malformed JSON"),
    (["profile", "web", "rule", "update"], "[]", "JSON object"),
    (["profile", "web", "rule", "update"], '{"inbound_rules": "all"}', "inbound_rules"),
    (["profile", "web", "rule", "update"],
     '{"inbound_rules": [{"action": "allow", "protocol": "tcp", "dst_ports": ["x"]}]}', "dst_ports"),
    (["profile", "web", "rule", "update"], '{"inbound_rules": [{"action": "maybe"}]}', "action"),
    (["profile", "web", "rule", "update"], '{"inbound_rules": [{"src_net": "10.0.0.0/40"}]}', "src_net"),
    (["profile", "web", "rule", "update"], '{"inbound_rules": [{"src_tag": "a b"}]}', "src_tag"),
    (["profile", "web", "rule", "update"], '{"inbound_rules": [{"src_selector": "role == "}]}',
     "src_selector"),
    (["profile", "web", "rule", "update"], '{"outbound_rules": [{"dst_ports": [80]}]}', "ports"),
    # felix config
    (["config", "felix", "Log Severity", "debug"], None, "Log Severity"),
    (["config", "felix", "LogSeverityScreen;x", "debug"], None, "LogSeverityScreen;x"),
    (["config", "felix", "LogSeverityScreen", "a\nb"], None, "LogSeverityScreen"),
    (["config", "felix", "LogSeverityScreen", "debug", "--remove"], None, "--remove"),
    (["config", "felix", "LogSeverityScreen", "debug", "--hostname", "a b"], None, "a b"),
    # reads and ipam refuse bad arguments too
    (["endpoint", "show", "--hostname", "a;b"], None, "a;b"),
    (["ipam", "info", "10.1.1.256"], None, "10.1.1.256"),
    (["ipam", "release", "abc"], None, "abc"),
    # grammar
    (["frobnicate"], None, "frobnicate"),
    (["pool", "frob"], None, "pool frob"),
    (["node", "frob"], None, "node frob"),
]


@pytest.fixture(scope="module")
def seeded(request):
    """One etcd for the whole table (starting 90 etcds would only cost time)."""
    from calico_testing.etcd import EtcdServer

    server = EtcdServer().start()
    request.addfinalizer(server.close)
    return server


@pytest.fixture
def store(seeded, monkeypatch):
    monkeypatch.setenv("ETCD_ENDPOINTS", seeded.endpoint)
    for var in ("ETCD_AUTHORITY", "ETCD_SCHEME", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    if not seeded.keys("/calico"):
        ok("pool", "add", "10.65.0.0/16")
        ok("profile", "add", "web")
        ok("profile", "web", "rule", "update", stdin=json.dumps(GOOD_RULES))
    return seeded


def snapshot(etcd) -> tuple[str, dict[str, str]]:
    """Every key and value under /calico, plus etcd's revision (any write bumps it)."""
    out = json.loads(etcd.etcdctl("get", "--prefix", "/calico", "-w", "json"))
    kvs = {kv["key"]: kv["value"] for kv in out.get("kvs", [])}
    return str(out["header"]["revision"]), kvs


@pytest.mark.parametrize("argv,stdin,named", CASES, ids=[" ".join(c[0]).replace("\n", "\\n") for c in CASES])
def test_bad_input_exit_2_nothing_written(store, argv, stdin, named):
    before = snapshot(store)
    r = ctl(*argv, stdin=stdin or "")
    assert r.rc == 2, r
    assert r.out == "", r
    assert r.err.startswith("calicoctl: ") and r.err.endswith("\n") and r.err.count("\n") == 1, r
    assert named in r.err, r
    assert snapshot(store) == before


def test_good_neighbours_still_work(etcd_env):
    """The same commands with the bad part fixed succeed: the table tests the argument, not the command."""
    store = etcd_env
    ok("profile", "add", "web")
    ok("profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "8080")
    ok("bgp", "peer", "add", "10.1.1.1", "as", "4294967295")
    ok("config", "felix", "LogSeverityScreen", "debug", "--hostname", "a-b")
    ok("pool", "add", "10.80.0.0/26", "fd00:5::/122")  # exactly one IPAM block: the smallest pools
    assert store.get("/calico/v1/ipam/v6/pool/fd00:5::-122") is not None
    assert store.get("/calico/bgp/v1/global/peer_v4/10.1.1.1") == '{"ip":"10.1.1.1","as_num":"4294967295"}'
    assert "8080" in store.get("/calico/v1/policy/profile/web/rules")
