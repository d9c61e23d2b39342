"""calicoctl create|apply|replace|delete -f and get, against a real etcd: the v1 keys each kind
writes, `get -o yaml|json` applying back unchanged for every kind, all-or-nothing batches in one
etcd transaction, and errors that name the document, kind, name and field."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.lib.calicoctl_run import fails, getj, module_etcd_fixture, ok, revision, store_fixture  # noqa: F401

POOL = "apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 10.70.0.0/16}\nspec: {ipip: {enabled: true}, nat-outgoing: true}\n"
EVERY_KIND = """\
apiVersion: v1
kind: ipPool
metadata: {cidr: 10.70.0.0/16}
spec: {ipip: {enabled: true, mode: always}, nat-outgoing: true, blockSize: 28}
---
apiVersion: v1
kind: ipPool
metadata: {cidr: fd00:70::/64}
spec: {vxlan: {enabled: true}, disabled: true, ipam: false}
---
apiVersion: v1
kind: bgpPeer
metadata: {peerIP: 10.99.0.254, scope: global}
spec: {asNumber: 65000}
---
apiVersion: v1
kind: bgpPeer
metadata: {peerIP: 10.99.0.253, scope: node, node: host1}
spec: {asNumber: 65001}
---
apiVersion: v1
kind: profile
metadata: {name: web, tags: [web, frontend], labels: {tier: fe}}
spec:
  ingress:
  - {action: allow, protocol: tcp, source: {tag: lb, notNet: 10.1.0.0/16}, destination: {ports: [80, "8000:8080"]}}
  - {action: deny, protocol: icmp, icmp: {type: 8, code: 0}, ipVersion: 4}
  - {action: log, notProtocol: udp, source: {selector: "role == 'x'", notTag: bad}}
  egress: [{action: allow}]
---
apiVersion: v1
kind: tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: v1
kind: tier
metadata: {name: last}
spec: {}
---
apiVersion: v1
kind: policy
metadata: {name: deny-db, tier: security}
spec:
  order: 5
  selector: role == 'db'
  ingress: [{action: deny, source: {selector: role != 'app'}}, {action: next-tier}]
  egress: [{action: allow, destination: {net: 10.0.0.0/8, notPorts: [22]}, protocol: tcp}]
---
apiVersion: v1
kind: policy
metadata: {name: everything}
spec: {ingress: [{action: allow}]}
---
apiVersion: v1
kind: hostEndpoint
metadata: {name: eth0, node: host1, labels: {role: edge}}
spec: {interfaceName: eth0, expectedIPs: [10.99.0.1, "fd00::1"], profiles: [web]}
---
apiVersion: v1
kind: node
metadata: {name: host1}
spec: {bgp: {ipv4Address: 10.99.0.1/24, ipv6Address: "fd00::1", asNumber: 64600, routeReflectorClusterID: 1.0.0.1}}
"""
WEP_KEY = "/calico/v1/host/host1/workload/k8s/ns.pod/endpoint/eth0"
WEP = {"state": "active", "name": "cali12345", "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": ["web"],
       "ipv4_nets": ["10.70.0.5/32"], "ipv6_nets": [], "ipv4_gateway": "169.254.1.1",
       "labels": {"app": "x"}, "future_field": {"kept": True}}
KINDS = ("ipPool", "bgpPeer", "profile", "tier", "policy", "hostEndpoint", "workloadEndpoint", "node")


def stored_values(etcd) -> dict:
    """Every key's value, JSON parsed (the writer's spacing is not part of the value)."""
    out = {}
    for k in etcd.keys("/calico"):
        raw = etcd.get(k)
        try:
            out[k] = json.loads(raw)
        except ValueError:
            out[k] = raw
    return out


def write(tmp_path, text: str, name: str = "r.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_writes_the_v1_keys(store, tmp_path):
    out = ok("apply", "-f", write(tmp_path, EVERY_KIND))
    assert "Successfully applied 11 resource(s)" in out
    assert getj(store, "/calico/v1/ipam/v4/pool/10.70.0.0-16") == {
        "cidr": "10.70.0.0/16", "ipip": "tunl0", "masquerade": True, "ipam": True, "disabled": False,
        "block_size": 28}
    assert getj(store, "/calico/v1/ipam/v6/pool/fd00:70::-64") == {
        "cidr": "fd00:70::/64", "vxlan": "vxlan.calico", "masquerade": False, "ipam": False, "disabled": True}
    assert getj(store, "/calico/bgp/v1/global/peer_v4/10.99.0.254") == {"ip": "10.99.0.254", "as_num": "65000"}
    assert getj(store, "/calico/bgp/v1/host/host1/peer_v4/10.99.0.253") == {"ip": "10.99.0.253", "as_num": "65001"}
    rules = getj(store, "/calico/v1/policy/profile/web/rules")
    assert rules["inbound_rules"][0] == {"action": "allow", "protocol": "tcp", "src_tag": "lb",
                                         "!src_net": "10.1.0.0/16", "dst_ports": [80, "8000:8080"]}
    assert rules["inbound_rules"][1] == {"action": "deny", "protocol": "icmp", "icmp_type": 8, "icmp_code": 0,
                                         "ip_version": 4}
    assert rules["inbound_rules"][2]["!protocol"] == "udp" and rules["inbound_rules"][2]["!src_tag"] == "bad"
    assert rules["outbound_rules"] == [{"action": "allow"}]
    assert getj(store, "/calico/v1/policy/profile/web/tags") == ["web", "frontend"]
    assert getj(store, "/calico/v1/policy/profile/web/labels") == {"tier": "fe"}
    assert getj(store, "/calico/v1/policy/tier/security/metadata") == {"order": 10}
    assert getj(store, "/calico/v1/policy/tier/last/metadata") == {"order": "default"}
    # A policy without a tier lands in "default", whose metadata is created so the policy is in force.
    assert getj(store, "/calico/v1/policy/tier/default/metadata") == {"order": "default"}
    pol = getj(store, "/calico/v1/policy/tier/security/policy/deny-db")
    assert pol["order"] == 5 and pol["selector"] == 'role == "db"'
    assert pol["inbound_rules"] == [{"action": "deny", "src_selector": 'role != "app"'}, {"action": "next-tier"}]
    assert pol["outbound_rules"] == [{"action": "allow", "protocol": "tcp", "dst_net": "10.0.0.0/8",
                                      "!dst_ports": [22]}]
    assert getj(store, "/calico/v1/host/host1/endpoint/eth0") == {
        "name": "eth0", "expected_ipv4_addrs": ["10.99.0.1"], "expected_ipv6_addrs": ["fd00::1"],
        "profile_ids": ["web"], "labels": {"role": "edge"}}
    assert store.get("/calico/bgp/v1/host/host1/ip_addr_v4") == "10.99.0.1"
    assert store.get("/calico/bgp/v1/host/host1/ip_addr_v6") == "fd00::1"
    assert store.get("/calico/bgp/v1/host/host1/as_num") == "64600"
    assert store.get("/calico/bgp/v1/host/host1/rr_cluster_id") == "1.0.0.1"
    assert store.get("/calico/v1/host/host1/bird_ip") == "10.99.0.1"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_get_output_applies_back_unchanged_for_every_kind(store, tmp_path, fmt):
    ok("apply", "-f", write(tmp_path, EVERY_KIND))
    store.put(WEP_KEY, json.dumps(WEP))
    before = stored_values(store)
    for kind in KINDS:
        text = ok("get", kind, "-o", fmt)
        docs = (yaml.safe_load(text) if fmt == "yaml" else json.loads(text))["items"]
        assert docs and all(d["kind"] == kind and d["apiVersion"] == "v1" for d in docs), (kind, text)
        rev = revision(store)
        ok("apply", "-f", "-", stdin=text)
        assert revision(store) == rev + 1, f"{kind}: one apply must be one transaction"
        assert ok("get", kind, "-o", fmt) == text, kind
    after = stored_values(store)
    assert after == before, "re-applying get output changed the stored values"


def test_get_one_by_name_and_tables(store, tmp_path):
    ok("apply", "-f", write(tmp_path, EVERY_KIND))
    one = yaml.safe_load(ok("get", "policy", "deny-db", "--tier=security", "-o", "yaml"))
    assert one["kind"] == "policy" and one["metadata"] == {"name": "deny-db", "tier": "security"}
    table = ok("get", "policy")
    assert table.splitlines()[0].split() == ["TIER", "NAME", "ORDER", "SELECTOR"]
    assert "deny-db" in table and "everything" in table
    wide = ok("get", "ipPool", "-o", "wide")
    assert "10.70.0.0/16   ipip" in wide
    assert ok("get", "bgpPeer", "--scope=node").count("10.99.0.25") == 1
    assert "host1" in ok("get", "node", "-owide") and "1.0.0.1" in ok("get", "node", "-owide")
    assert "not found" in fails("get", "profile", "nope")
    assert "unknown kind" in fails("get", "widget", rc=2)
    assert "output format" in fails("get", "pool", "-o", "xml", rc=2)


def test_a_bad_document_writes_nothing_and_is_named(store, tmp_path):
    good = "apiVersion: v1\nkind: profile\nmetadata: {name: ok1}\nspec: {}\n---\n"
    cases = [
        ("apiVersion: v1\nkind: ipPool\nmetadata: {cidr: 10.71.0.0/40}\nspec: {}\n",
         "document 2 (ipPool 10.71.0.0/40): metadata.cidr:"),
        ("apiVersion: v1\nkind: profile\nmetadata: {name: p2}\nspec: {ingress: [{action: allow}, "
         "{protocol: tcp, destination: {ports: [99999]}}]}\n",
         "document 2 (profile p2): spec.ingress[1].destination.ports[0]"),
        ("apiVersion: v1\nkind: policy\nmetadata: {name: p3}\nspec: {selector: 'a =='}\n",
         "document 2 (policy p3): spec"),
        ("apiVersion: v1\nkind: policy\nmetadata: {name: p4, tier: nosuch}\nspec: {}\n",
         "document 2 (policy nosuch/p4): metadata.tier: tier 'nosuch' does not exist"),
        ("apiVersion: v1\nkind: hostEndpoint\nmetadata: {name: h, node: n}\nspec: {expectedIPs: [300.1.1.1]}\n",
         "document 2 (hostEndpoint h): spec.expectedIPs[0]"),
        ("apiVersion: v1\nkind: bgpPeer\nmetadata: {peerIP: 10.0.0.1}\nspec: {asNumber: -1}\n",
         "document 2 (bgpPeer 10.0.0.1): spec.asNumber"),
        ("apiVersion: v1\nkind: node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 10.0.0.1, colour: red}}\n",
         "document 2 (node n1): spec.bgp.colour: unknown field"),
        ("apiVersion: v1\nkind: tier\nmetadata: {name: t}\nspec: {order: high}\n",
         "document 2 (tier t): spec.order"),
        ("apiVersion: v2\nkind: tier\nmetadata: {name: t}\n", "document 2 (tier t): apiVersion"),
        ("apiVersion: v1\nkind: gadget\nmetadata: {name: g}\n", "document 2 (gadget g): kind: unknown kind"),
        ("apiVersion: v1\nkind: profile\nmetadata: {name: ok1}\nspec: {}\n", "the same resource as document 1"),
        ("apiVersion: v1\nkind: profile\nmetadata: {name: 'a/b'}\nspec: {}\n", "metadata.name"),
        ("apiVersion: v1\nkind: workloadEndpoint\nmetadata: {name: e, node: n, orchestrator: o, workload: w}\n",
         "document 2 (workloadEndpoint n/o/w/e): does not exist (workload endpoints are created by their"),
    ]
    for bad, want in cases:
        err = fails("apply", "-f", write(tmp_path, good + bad))
        assert want in err, (want, err)
        assert store.keys("/calico") == [], f"{want}: something was written"


def test_create_replace_delete_semantics(store, tmp_path):
    path = write(tmp_path, POOL)
    ok("create", "-f", path)
    assert "already exists" in fails("create", "-f", path)
    assert ok("create", "-f", path, "--skip-exists").strip() == ("Successfully created 0 resource(s); skipped 1 that "
                                                                  "already existed")
    other = write(tmp_path, POOL.replace("10.70.0.0", "10.72.0.0"), "o.yaml")
    assert "document 1 (ipPool 10.72.0.0/16): does not exist" in fails("replace", "-f", other)
    ok("replace", "-f", write(tmp_path, POOL.replace("nat-outgoing: true", "nat-outgoing: false"), "p2.yaml"))
    assert getj(store, "/calico/v1/ipam/v4/pool/10.70.0.0-16")["masquerade"] is False
    ok("delete", "-f", path)
    assert store.keys("/calico") == []
    assert "does not exist" in fails("delete", "-f", path)
    assert "skipped" in ok("delete", "-f", path, "--skip-not-exists")
    # Delete by kind and name.
    ok("apply", "-f", write(tmp_path, EVERY_KIND))
    ok("delete", "bgpPeer", "10.99.0.253", "--node=host1")
    assert store.get("/calico/bgp/v1/host/host1/peer_v4/10.99.0.253") is None
    assert store.get("/calico/bgp/v1/global/peer_v4/10.99.0.254") is not None
    assert "still has policies (deny-db)" in fails("delete", "tier", "security")
    ok("delete", "policy", "deny-db", "--tier=security")
    ok("delete", "tier", "security")
    ok("delete", "profile", "web")
    assert store.keys("/calico/v1/policy/profile/") == []
    ok("delete", "node", "host1")
    assert store.keys("/calico/bgp/v1/host/host1/") == [] and store.get("/calico/v1/host/host1/bird_ip") is None
    assert "-f" in fails("apply", rc=2)


def test_pools_and_nodes_are_checked_against_the_store_and_the_batch(store, tmp_path):
    ok("apply", "-f", write(tmp_path, POOL))
    inner = POOL.replace("10.70.0.0/16", "10.70.1.0/24")
    assert "metadata.cidr: pools 10.70.1.0/24 and 10.70.0.0/16 overlap" in fails(
        "apply", "-f", write(tmp_path, inner, "i.yaml"))
    node = "apiVersion: v1\nkind: node\nmetadata: {name: %s}\nspec: {bgp: {ipv4Address: 10.9.0.1}}\n"
    ok("apply", "-f", write(tmp_path, node % "a", "a.yaml"))
    err = fails("apply", "-f", write(tmp_path, node % "b", "b.yaml"))
    assert "document 1 (node b): spec.bgp.ipv4Address: 10.9.0.1 is already used by node 'a'" in err
    err = fails("apply", "-f", write(tmp_path, node % "c" + "---\n" + node % "d", "cd.yaml"))
    assert "already used" in err and store.keys("/calico/bgp/v1/host/c/") == []


def test_workload_endpoints_change_labels_and_profiles_only(store, tmp_path):
    store.put(WEP_KEY, json.dumps(WEP))
    doc = yaml.safe_load(ok("get", "workloadEndpoint", "eth0", "--node=host1", "-o", "yaml"))
    assert doc["spec"]["interfaceName"] == "cali12345" and doc["metadata"]["labels"] == {"app": "x"}
    doc["metadata"]["labels"] = {"app": "y", "env": "prod"}
    doc["spec"]["profiles"] = ["web", "db"]
    ok("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    stored = getj(store, WEP_KEY)
    assert stored["labels"] == {"app": "y", "env": "prod"} and stored["profile_ids"] == ["web", "db"]
    assert stored["future_field"] == {"kept": True} and stored["ipv4_gateway"] == "169.254.1.1"
    doc["spec"]["ipNetworks"] = ["10.70.0.6/32"]
    assert "spec.ipNetworks: cannot be changed" in fails("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    doc["metadata"]["name"] = "eth1"
    assert "does not exist" in fails("replace", "-f", "-", stdin=yaml.safe_dump(doc))
    assert "created and deleted by its orchestrator" in fails("delete", "-f", "-", stdin=yaml.safe_dump(doc))


def test_input_forms(store, tmp_path):
    pool = {"apiVersion": "v1", "kind": "ipPool", "metadata": {"cidr": "10.80.0.0/16"}, "spec": {}}
    prof = {"apiVersion": "v1", "kind": "profile", "metadata": {"name": "j"}, "spec": {}}
    ok("apply", "-f", write(tmp_path, json.dumps([pool, prof]), "a.json"))
    ok("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pool]}))
    ok("apply", "--filename=-", stdin=yaml.safe_dump({"kind": "List", "items": [prof]}))
    assert store.get("/calico/v1/policy/profile/j/rules") is not None
    assert "No resources" in ok("apply", "-f", "-", stdin="---\n")
    assert "are not supported" in fails("apply", "-f", "-", stdin="a: &x [1]\nb: *x\n")
    assert "not valid YAML" in fails("apply", "-f", "-", stdin="a: [1\n")
    assert "cannot read" in fails("apply", "-f", str(tmp_path / "missing.yaml"))
    assert "expected a resource" in fails("apply", "-f", "-", stdin="- 1\n")


def test_a_batch_larger_than_one_transaction_is_refused_whole(store):
    docs = [{"apiVersion": "v1", "kind": "profile", "metadata": {"name": f"p{i}"}, "spec": {}} for i in range(50)]
    err = fails("apply", "-f", "-", stdin=json.dumps(docs))
    assert "split the file" in err and "150 etcd operations" in err
    assert store.keys("/calico") == []
    ok("apply", "-f", "-", stdin=json.dumps(docs[:40]))  # 120 operations: one transaction
    assert len(store.keys("/calico/v1/policy/profile/")) == 40  # rules only: no tags or labels given


class _RacingClient:
    """A real datastore client that lets `race` write just before the batch's first transaction."""

    def __init__(self, client, race):
        self._client, self._race, self.txns = client, race, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def txn(self, *args, **kw):
        self.txns += 1
        if self.txns == 1:
            await self._race(self._client)
        return await self._client.txn(*args, **kw)


def test_a_write_between_check_and_commit_is_seen(store):
    """The overlap check and the write are one guarded transaction: a pool written in between
    makes the batch re-read, and the re-check refuses it (nothing half-written)."""
    from calicoctl.manifest import BatchError, plan_documents, run_batch
    from calicoctl.manifest_io import load_documents
    from libcalico.datastore import DatastoreClient, run_sync

    plans = plan_documents(load_documents(POOL + "---\n" + EVERY_KIND.split("---\n")[4]), "apply")

    async def race(client):
        await client.put("/calico/v1/ipam/v4/pool/10.70.128.0-17",
                         '{"cidr":"10.70.128.0/17","masquerade":false,"ipam":true,"disabled":false}')

    async def go():
        client = _RacingClient(DatastoreClient.from_env(), race)
        try:
            with pytest.raises(BatchError, match="overlap"):
                await run_batch(client, plans, "apply")
        finally:
            await client.close()
        return client.txns

    assert run_sync(go()) == 1  # the guarded transaction failed; the re-read refused the batch
    assert store.keys("/calico") == ["/calico/v1/ipam/v4/pool/10.70.128.0-17"]
