"""Each resource kind of `calicoctl create|apply|replace|delete|get`: its v1 document, its keys.

A kind turns a document into a `Plan` (the keys it writes, validated by the
same libcalico models Felix and confd use, and what must be read to know
whether it exists) without touching the datastore, and turns what is stored
back into the document `get` prints.  `get -o yaml` output must apply back
unchanged, so `to_doc` only emits fields `plan` accepts.

Kinds and keys (shared/datamodel.md):
- ipPool            /calico/v1/ipam/v{4,6}/pool/<cidr-key>
- bgpPeer           /calico/bgp/v1/global/peer_v*/<ip> or .../host/<node>/peer_v*/<ip>
- profile           /calico/v1/policy/profile/<name>/{rules,tags,labels}
- tier              /calico/v1/policy/tier/<name>/metadata
- policy            /calico/v1/policy/tier/<tier>/policy/<name>
- hostEndpoint      /calico/v1/host/<node>/endpoint/<name>
- workloadEndpoint  /calico/v1/host/<node>/workload/<orch>/<workload>/endpoint/<name> (labels, profiles only)
- node              /calico/bgp/v1/host/<node>/{ip_addr_v4,ip_addr_v6,as_num,rr_cluster_id}, host bird_ip
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from calicoctl.manifest_rules import FieldError, rule_to_doc, rules_to_stored
from libcalico import keys
from libcalico.datastore import op_delete
from libcalico.models import (
    InvalidValue,
    parse_key_value,
    to_json,
    validate_labels,
    validate_tags,
)
from libcalico.resources import BgpPeers, checked_put
from libcalico.validation import validate_asn, validate_bgp_ip, validate_cidr, validate_ip, validate_name

API_VERSION = "v1"


def rr_cluster_id_key(node: str) -> str:
    builder = getattr(keys, "bgp_host_rr_cluster_id", None)
    return builder(node) if builder else f"{keys.bgp_host_dir(node)}rr_cluster_id"


@dataclass
class Plan:
    """What one valid document does to the datastore.

    `reads` are (path, is_prefix): the resource exists when any of them holds a key,
    and the transaction is guarded on each staying as read.  `ops` make the stored
    resource exactly the document; `delete_ops` remove it.
    """

    kind: str
    name: str
    ident: tuple
    reads: list[tuple[str, bool]]
    ops: list = field(default_factory=list)
    delete_ops: list = field(default_factory=list)
    doc: dict = field(default_factory=dict)
    # extra, kind-specific facts the batch checks need (pool cidr, node addresses, tier, ...)
    facts: dict = field(default_factory=dict)


# ---- document helpers ---------------------------------------------------------------

def _obj(doc: dict, name: str, allowed: set[str], required: bool = False, parent: str = "") -> dict:
    value = doc.get(name)
    path = f"{parent}.{name}" if parent else name
    if value is None:
        if required:
            raise FieldError(path, "is required")
        return {}
    if not isinstance(value, dict):
        raise FieldError(path, "must be an object")
    for k in value:
        if k not in allowed:
            raise FieldError(f"{path}.{k}", f"unknown field (known: {', '.join(sorted(allowed)) or 'none'})")
    return value


def _req(obj: dict, where: str, name: str) -> Any:
    v = obj.get(name)
    if v is None or v == "":
        raise FieldError(f"{where}.{name}", "is required")
    return v


def _check(fn: Callable, value: Any, where: str, *args: Any) -> Any:
    try:
        return fn(value, *args)
    except (ValueError, TypeError) as e:
        raise FieldError(where, str(e)) from None


def _name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise FieldError(where, f"{value!r} is not a {what}")
    return _check(validate_name, value, where, what)


def _bool(value: Any, where: str, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(where, f"{value!r} is not true or false")
    return value


def _stored_value(path: str, text: str, where: str) -> Any:
    """Validate `text` for `path` exactly as the readers will; a failure names `where`."""
    try:
        return parse_key_value(path, text)[1]
    except InvalidValue as e:
        raise FieldError(where, e.reason) from None


def _base(kind: str, metadata: dict, spec: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


# ---- kinds ---------------------------------------------------------------------------

class Kind:
    name = ""
    aliases: tuple[str, ...] = ()
    metadata_fields: set[str] = set()
    spec_fields: set[str] = set()
    name_field = "name"
    writable = True
    headers: tuple[str, ...] = ("NAME",)
    wide_headers: tuple[str, ...] = ()

    def plan(self, doc: dict) -> Plan:
        md = _obj(doc, "metadata", self.metadata_fields, required=True)
        spec = _obj(doc, "spec", self.spec_fields)
        return self._plan(md, spec)

    def _plan(self, md: dict, spec: dict) -> Plan:
        raise NotImplementedError

    def ident_doc(self, name: str, opts: dict) -> dict:
        """The metadata naming one resource from `delete KIND NAME` / `get KIND NAME` options."""
        return {self.name_field: name}

    async def list(self, client: Any, opts: dict) -> list[dict]:
        raise NotImplementedError

    def matches(self, doc: dict, name: str | None, opts: dict) -> bool:
        md = doc["metadata"]
        if name is not None and str(md.get(self.name_field)) != name:
            return False
        return all(md.get(f) == v for f, v in opts.items() if f in self.metadata_fields)

    def row(self, doc: dict, wide: bool) -> list[Any]:
        return [doc["metadata"].get(self.name_field)]


class IpPoolKind(Kind):
    name = "ipPool"
    aliases = ("ippool", "ippools", "pool", "pools")
    metadata_fields = {"cidr"}
    spec_fields = {"ipip", "vxlan", "nat-outgoing", "disabled", "ipam", "blockSize", "strictAffinity"}
    name_field = "cidr"
    headers = ("CIDR",)
    wide_headers = ("CIDR", "OVERLAY", "NAT", "DISABLED", "IPAM")

    def _plan(self, md: dict, spec: dict) -> Plan:
        cidr = _check(validate_cidr, _req(md, "metadata", "cidr"), "metadata.cidr")
        ipip = _obj(spec, "ipip", {"enabled", "mode"}, parent="spec") if "ipip" in spec else {}
        if ipip.get("mode") not in (None, "always"):
            raise FieldError("spec.ipip.mode", f"{ipip.get('mode')!r}: only 'always' is supported")
        vxlan = _obj(spec, "vxlan", {"enabled"}, parent="spec") if "vxlan" in spec else {}
        value: dict[str, Any] = {"cidr": cidr}
        if _bool(ipip.get("enabled"), "spec.ipip.enabled", default=bool(ipip)):
            value["ipip"] = "tunl0"
        if _bool(vxlan.get("enabled"), "spec.vxlan.enabled", default=bool(vxlan)):
            value["vxlan"] = "vxlan.calico"
        value["masquerade"] = _bool(spec.get("nat-outgoing"), "spec.nat-outgoing")
        value["ipam"] = _bool(spec.get("ipam"), "spec.ipam", default=True)
        value["disabled"] = _bool(spec.get("disabled"), "spec.disabled")
        for doc_name, stored in (("blockSize", "block_size"), ("strictAffinity", "strict_affinity")):
            if spec.get(doc_name) is not None:  # IPAM's per-pool settings, validated by the Pool model
                value[stored] = spec[doc_name]
        path = keys.pool(cidr)
        pool = _stored_value(path, json.dumps(value), "spec")  # a field error names the stored field
        return Plan(self.name, cidr, (self.name, cidr), [(path, False)],
                    ops=[checked_put(path, pool)], delete_ops=[op_delete(path)], facts={"pool": pool})

    @staticmethod
    def to_doc(pool: Any) -> dict:
        spec: dict[str, Any] = {}
        if pool.ipip:
            spec["ipip"] = {"enabled": True, "mode": "always"}
        if pool.vxlan:
            spec["vxlan"] = {"enabled": True}
        if pool.masquerade:
            spec["nat-outgoing"] = True
        if pool.disabled:
            spec["disabled"] = True
        if not pool.ipam:
            spec["ipam"] = False
        for doc_name, stored in (("blockSize", "block_size"), ("strictAffinity", "strict_affinity")):
            if getattr(pool, stored, None) is not None:
                spec[doc_name] = getattr(pool, stored)
        return _base("ipPool", {"cidr": pool.cidr}, spec)

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import Pools

        return [self.to_doc(s.value) for s in await Pools(client).list()]

    def row(self, doc: dict, wide: bool) -> list[Any]:
        spec = doc["spec"]
        if not wide:
            return [doc["metadata"]["cidr"]]
        overlay = "ipip" if "ipip" in spec else "vxlan" if "vxlan" in spec else ""
        return [doc["metadata"]["cidr"], overlay, str(bool(spec.get("nat-outgoing"))).lower(),
                str(bool(spec.get("disabled"))).lower(), str(spec.get("ipam", True)).lower()]


class BgpPeerKind(Kind):
    name = "bgpPeer"
    aliases = ("bgppeer", "bgppeers", "peer", "peers")
    metadata_fields = {"peerIP", "scope", "node"}
    spec_fields = {"asNumber"}
    name_field = "peerIP"
    headers = ("SCOPE", "PEERIP", "NODE", "ASN")

    def _plan(self, md: dict, spec: dict) -> Plan:
        ip = _check(validate_bgp_ip, str(_req(md, "metadata", "peerIP")), "metadata.peerIP")
        scope = md.get("scope") or ("node" if md.get("node") else "global")
        if scope not in ("global", "node"):
            raise FieldError("metadata.scope", f"{scope!r} is not 'global' or 'node'")
        node = None
        if scope == "node":
            node = _name(_req(md, "metadata", "node"), "metadata.node", "node name")
        elif md.get("node"):
            raise FieldError("metadata.node", "a global peer has no node (use scope: node)")
        asn = _check(validate_asn, _req(spec, "spec", "asNumber"), "spec.asNumber")
        path = keys.bgp_global_peer(ip) if node is None else keys.bgp_host_peer(node, ip)
        text = json.dumps({"ip": ip, "as_num": str(asn)}, separators=(",", ":"))
        _stored_value(path, text, "spec")
        return Plan(self.name, ip if node is None else f"{node}/{ip}", (self.name, node, ip), [(path, False)],
                    ops=[checked_put(path, text)], delete_ops=[op_delete(path)])

    def ident_doc(self, name: str, opts: dict) -> dict:
        md: dict[str, Any] = {"peerIP": name}
        if opts.get("node"):
            md.update(scope="node", node=opts["node"])
        return md

    async def list(self, client: Any, opts: dict) -> list[dict]:
        peers = BgpPeers(client)
        out = []
        for s in await peers.list():
            out.append(_base(self.name, {"scope": "global", "peerIP": s.value.ip}, {"asNumber": s.value.as_num}))
        rev, kvs = await client.get_prefix(keys.BGP_HOST_DIR)
        for kv in kvs:
            k = keys.parse(kv.key)
            if k is None or k.kind != "bgp_host_peer":
                continue
            try:
                _, peer = parse_key_value(kv.key, kv.value)
            except InvalidValue:
                continue
            out.append(_base(self.name, {"scope": "node", "node": k.host, "peerIP": peer.ip},  # type: ignore[union-attr]
                             {"asNumber": peer.as_num}))  # type: ignore[union-attr]
        return out

    def matches(self, doc: dict, name: str | None, opts: dict) -> bool:
        md = doc["metadata"]
        if name is not None and md["peerIP"] != name:
            return False
        if opts.get("node") and md.get("node") != opts["node"]:
            return False
        return not (opts.get("scope") and md["scope"] != opts["scope"])

    def row(self, doc: dict, wide: bool) -> list[Any]:
        md = doc["metadata"]
        return [md["scope"], md["peerIP"], md.get("node", ""), doc["spec"]["asNumber"]]


class ProfileKind(Kind):
    name = "profile"
    aliases = ("profiles", "pro", "pros")
    metadata_fields = {"name", "tags", "labels"}
    spec_fields = {"ingress", "egress"}
    headers = ("NAME",)
    wide_headers = ("NAME", "TAGS", "LABELS")

    def _plan(self, md: dict, spec: dict) -> Plan:
        from libcalico.resources import Profiles

        name = _name(_req(md, "metadata", "name"), "metadata.name", "profile name")
        tags = None if md.get("tags") is None else _check(validate_tags, md["tags"], "metadata.tags")
        labels = None if md.get("labels") is None else _check(validate_labels, md["labels"], "metadata.labels")
        rules = {"inbound_rules": rules_to_stored(spec.get("ingress"), "spec.ingress"),
                 "outbound_rules": rules_to_stored(spec.get("egress"), "spec.egress")}
        model = _stored_value(keys.profile_rules(name), to_json(rules), "spec")
        return Plan(self.name, name, (self.name, name), [(keys.profile_dir(name), True)],
                    ops=Profiles.write_ops(name, model, tags, labels),  # type: ignore[arg-type]
                    delete_ops=[op_delete(keys.profile_dir(name), prefix=True)])

    @staticmethod
    def to_doc(prof: Any) -> dict:
        md: dict[str, Any] = {"name": prof.name}
        if prof.tags is not None:
            md["tags"] = list(prof.tags)
        if prof.labels is not None:
            md["labels"] = dict(prof.labels)
        spec: dict[str, Any] = {"ingress": [], "egress": []}
        if prof.rules is not None:
            stored = json.loads(to_json(prof.rules))
            spec = {"ingress": [rule_to_doc(r) for r in stored.get("inbound_rules", [])],
                    "egress": [rule_to_doc(r) for r in stored.get("outbound_rules", [])]}
        return _base("profile", md, spec)

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import Profiles

        return [self.to_doc(p) for p in await Profiles(client).list() if not p.errors]

    def row(self, doc: dict, wide: bool) -> list[Any]:
        md = doc["metadata"]
        if not wide:
            return [md["name"]]
        return [md["name"], ",".join(md.get("tags", [])),
                ",".join(f"{k}={v}" for k, v in sorted(md.get("labels", {}).items()))]


class TierKind(Kind):
    name = "tier"
    aliases = ("tiers",)
    metadata_fields = {"name"}
    spec_fields = {"order"}
    headers = ("NAME", "ORDER")

    def _plan(self, md: dict, spec: dict) -> Plan:
        name = _name(_req(md, "metadata", "name"), "metadata.name", "tier name")
        order = spec.get("order")
        path = keys.tier_metadata(name)
        tier = _stored_value(path, json.dumps({"order": "default" if order is None else order}), "spec.order")
        return Plan(self.name, name, (self.name, name), [(path, False)], ops=[checked_put(path, tier)],
                    delete_ops=[op_delete(path)], facts={"tier": name})

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import Tiers

        out = []
        for s in await Tiers(client).list():
            spec = {} if s.value.order is None else {"order": s.value.order}
            out.append(_base(self.name, {"name": s.key.tier}, spec))
        return out

    def row(self, doc: dict, wide: bool) -> list[Any]:
        return [doc["metadata"]["name"], doc["spec"].get("order", "default")]


class PolicyKind(Kind):
    name = "policy"
    aliases = ("policies", "pol", "pols")
    metadata_fields = {"name", "tier"}
    spec_fields = {"order", "selector", "ingress", "egress"}
    headers = ("TIER", "NAME", "ORDER", "SELECTOR")

    def _plan(self, md: dict, spec: dict) -> Plan:
        name = _name(_req(md, "metadata", "name"), "metadata.name", "policy name")
        tier = _name(md.get("tier") or "default", "metadata.tier", "tier name")
        value: dict[str, Any] = {"selector": spec.get("selector", "all()")}
        if spec.get("order") is not None:
            value["order"] = spec["order"]
        value["inbound_rules"] = rules_to_stored(spec.get("ingress"), "spec.ingress")
        value["outbound_rules"] = rules_to_stored(spec.get("egress"), "spec.egress")
        path = keys.tier_policy(tier, name)
        try:
            text = to_json(value)
        except (TypeError, ValueError) as e:
            raise FieldError("spec", str(e)) from None
        policy = _stored_value(path, text, "spec")
        return Plan(self.name, f"{tier}/{name}", (self.name, tier, name), [(path, False)],
                    ops=[checked_put(path, policy)], delete_ops=[op_delete(path)], facts={"in_tier": tier})

    def ident_doc(self, name: str, opts: dict) -> dict:
        return {"name": name, "tier": opts.get("tier") or "default"}

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import Policies

        out = []
        for s in await Policies(client).list():
            stored = json.loads(to_json(s.value))
            spec: dict[str, Any] = {}
            if stored.get("order") is not None:
                spec["order"] = stored["order"]
            spec["selector"] = stored["selector"]
            spec["ingress"] = [rule_to_doc(r) for r in stored.get("inbound_rules", [])]
            spec["egress"] = [rule_to_doc(r) for r in stored.get("outbound_rules", [])]
            out.append(_base(self.name, {"name": s.key.policy, "tier": s.key.tier}, spec))
        return out

    def row(self, doc: dict, wide: bool) -> list[Any]:
        md, spec = doc["metadata"], doc["spec"]
        return [md["tier"], md["name"], spec.get("order", ""), spec["selector"]]


def _split_ips(ips: Any, where: str) -> tuple[list[str], list[str]]:
    if ips is None:
        return [], []
    if not isinstance(ips, list):
        raise FieldError(where, "must be a list of IP addresses")
    v4, v6 = [], []
    for i, ip in enumerate(ips):
        addr = _check(validate_ip, str(ip), f"{where}[{i}]")
        (v4 if ipaddress.ip_address(addr).version == 4 else v6).append(addr)
    return v4, v6


def _profile_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(where, "must be a list of profile names")
    return [_name(p, f"{where}[{i}]", "profile name") for i, p in enumerate(value)]


class HostEndpointKind(Kind):
    name = "hostEndpoint"
    aliases = ("hostendpoint", "hostendpoints", "hep", "heps")
    metadata_fields = {"name", "node", "labels"}
    spec_fields = {"interfaceName", "expectedIPs", "profiles"}
    headers = ("NODE", "NAME")
    wide_headers = ("NODE", "NAME", "INTERFACE", "IPS", "PROFILES")

    def _plan(self, md: dict, spec: dict) -> Plan:
        name = _name(_req(md, "metadata", "name"), "metadata.name", "endpoint id")
        node = _name(_req(md, "metadata", "node"), "metadata.node", "node name")
        value: dict[str, Any] = {}
        if spec.get("interfaceName") is not None:
            value["name"] = spec["interfaceName"]
        v4, v6 = _split_ips(spec.get("expectedIPs"), "spec.expectedIPs")
        value.update(expected_ipv4_addrs=v4, expected_ipv6_addrs=v6,
                     profile_ids=_profile_list(spec.get("profiles"), "spec.profiles"),
                     labels={} if md.get("labels") is None else _check(validate_labels, md["labels"],
                                                                       "metadata.labels"))
        path = keys.host_endpoint(node, name)
        text = json.dumps(value, separators=(",", ":"))
        _stored_value(path, text, "spec.interfaceName" if "name" in value else "spec")
        return Plan(self.name, f"{node}/{name}", (self.name, node, name), [(path, False)],
                    ops=[checked_put(path, text)], delete_ops=[op_delete(path)])

    def ident_doc(self, name: str, opts: dict) -> dict:
        return {"name": name, "node": opts.get("node") or ""}

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import HostEndpoints

        out = []
        for s in await HostEndpoints(client).list():
            ep = s.value
            md: dict[str, Any] = {"name": s.key.endpoint, "node": s.key.host}
            if ep.labels:
                md["labels"] = dict(ep.labels)
            spec: dict[str, Any] = {}
            if ep.name:
                spec["interfaceName"] = ep.name
            if ep.expected_ipv4_addrs or ep.expected_ipv6_addrs:
                spec["expectedIPs"] = list(ep.expected_ipv4_addrs) + list(ep.expected_ipv6_addrs)
            if ep.profile_ids:
                spec["profiles"] = list(ep.profile_ids)
            out.append(_base(self.name, md, spec))
        return out

    def row(self, doc: dict, wide: bool) -> list[Any]:
        md, spec = doc["metadata"], doc["spec"]
        if not wide:
            return [md["node"], md["name"]]
        return [md["node"], md["name"], spec.get("interfaceName", ""), ",".join(spec.get("expectedIPs", [])),
                ",".join(spec.get("profiles", []))]


class WorkloadEndpointKind(Kind):
    """Workload endpoints belong to their orchestrator: apply may change labels and profiles only."""

    name = "workloadEndpoint"
    aliases = ("workloadendpoint", "workloadendpoints", "wep", "weps")
    metadata_fields = {"name", "node", "orchestrator", "workload", "labels"}
    spec_fields = {"interfaceName", "mac", "ipNetworks", "ipNATs", "profiles", "state"}
    headers = ("NODE", "ORCHESTRATOR", "WORKLOAD", "NAME")
    wide_headers = ("NODE", "ORCHESTRATOR", "WORKLOAD", "NAME", "NETWORKS", "INTERFACE", "PROFILES")
    writable = False

    def _plan(self, md: dict, spec: dict) -> Plan:
        ids = [_name(_req(md, "metadata", f), f"metadata.{f}", what)
               for f, what in (("node", "node name"), ("orchestrator", "orchestrator id"),
                               ("workload", "workload id"), ("name", "endpoint id"))]
        labels = None if "labels" not in md else (
            {} if md["labels"] is None else _check(validate_labels, md["labels"], "metadata.labels"))
        profiles = None if "profiles" not in spec else _profile_list(spec["profiles"], "spec.profiles")
        path = keys.workload_endpoint(*ids)
        return Plan(self.name, "/".join(ids), (self.name, *ids), [(path, False)],
                    facts={"wep": {"labels": labels, "profile_ids": profiles, "fixed": self._fixed(spec)}})

    @staticmethod
    def _fixed(spec: dict) -> dict:
        """The fields the orchestrator owns, as the document gives them (compared, never written)."""
        return {f: spec[f] for f in ("interfaceName", "mac", "ipNetworks", "ipNATs", "state") if f in spec}

    def ident_doc(self, name: str, opts: dict) -> dict:
        return {"name": name, **{f: opts.get(f) or "" for f in ("node", "orchestrator", "workload")}}

    @staticmethod
    def to_doc(key: Any, ep: Any) -> dict:
        md: dict[str, Any] = {"name": key.endpoint, "workload": key.workload,
                              "orchestrator": key.orchestrator, "node": key.host}
        if ep.labels:
            md["labels"] = dict(ep.labels)
        spec: dict[str, Any] = {"interfaceName": ep.name, "state": ep.state}
        if ep.mac:
            spec["mac"] = ep.mac
        spec["ipNetworks"] = list(ep.ipv4_nets) + list(ep.ipv6_nets)
        if ep.ipv4_nat:
            spec["ipNATs"] = [{"internalIP": n.int_ip, "externalIP": n.ext_ip} for n in ep.ipv4_nat]
        spec["profiles"] = list(ep.profile_ids)
        return _base("workloadEndpoint", md, spec)

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import WorkloadEndpoints

        want = {"host": opts.get("node"), "orchestrator": opts.get("orchestrator"), "workload": opts.get("workload")}
        return [self.to_doc(s.key, s.value) for s in await WorkloadEndpoints(client).list(**want)]

    def row(self, doc: dict, wide: bool) -> list[Any]:
        md, spec = doc["metadata"], doc["spec"]
        out = [md["node"], md["orchestrator"], md["workload"], md["name"]]
        if wide:
            out += [",".join(spec.get("ipNetworks", [])), spec.get("interfaceName", ""),
                    ",".join(spec.get("profiles", []))]
        return out


class NodeKind(Kind):
    name = "node"
    aliases = ("nodes", "no")
    metadata_fields = {"name"}
    spec_fields = {"bgp"}
    headers = ("NAME",)
    wide_headers = ("NAME", "ASN", "IPV4", "IPV6", "RR CLUSTER ID")

    def _plan(self, md: dict, spec: dict) -> Plan:
        name = _name(_req(md, "metadata", "name"), "metadata.name", "node name")
        bgp = _obj(spec, "bgp", {"asNumber", "ipv4Address", "ipv6Address", "routeReflectorClusterID"}, parent="spec")
        ip4 = self._addr(bgp.get("ipv4Address"), 4, "spec.bgp.ipv4Address")
        ip6 = self._addr(bgp.get("ipv6Address"), 6, "spec.bgp.ipv6Address")
        if ip4 is None:
            raise FieldError("spec.bgp.ipv4Address", "is required (the address this node peers from)")
        asn = None if bgp.get("asNumber") is None else _check(validate_asn, bgp["asNumber"], "spec.bgp.asNumber")
        rr = bgp.get("routeReflectorClusterID")
        rr = None if rr in (None, "") else _check(validate_ip, str(rr), "spec.bgp.routeReflectorClusterID", 4)
        ops = [checked_put(keys.host_bird_ip(name), ip4), checked_put(keys.bgp_host_ip(name, 4), ip4),
               checked_put(keys.bgp_host_ip(name, 6), ip6 or ""),
               op_delete(keys.bgp_host_as(name)) if asn is None else checked_put(keys.bgp_host_as(name), str(asn)),
               op_delete(rr_cluster_id_key(name)) if rr is None else checked_put(rr_cluster_id_key(name), rr)]
        return Plan(self.name, name, (self.name, name),
                    [(keys.bgp_host_dir(name), True), (keys.host_bird_ip(name), False)], ops=ops,
                    delete_ops=[op_delete(keys.bgp_host_dir(name), prefix=True), op_delete(keys.host_bird_ip(name))],
                    facts={"node": (name, ip4, ip6)})

    @staticmethod
    def _addr(value: Any, version: int, where: str) -> str | None:
        if value in (None, ""):
            return None
        text = str(value)
        if "/" in text:  # calicoctl 1.x wrote the address with its subnet: the node's address is the IP
            try:
                text = str(ipaddress.ip_interface(text).ip)
            except ValueError as e:
                raise FieldError(where, str(e)) from None
        return _check(validate_bgp_ip, text, where, version)

    async def list(self, client: Any, opts: dict) -> list[dict]:
        from libcalico.resources import Nodes

        out = []
        for node in await Nodes(client).list():
            if node.ip4 is None:
                continue
            bgp: dict[str, Any] = {"ipv4Address": node.ip4}
            if node.ip6:
                bgp["ipv6Address"] = node.ip6
            if node.as_num is not None:
                bgp["asNumber"] = node.as_num
            rr = (await client.get(rr_cluster_id_key(node.name)) or "").strip()
            if rr:
                bgp["routeReflectorClusterID"] = rr
            out.append(_base(self.name, {"name": node.name}, {"bgp": bgp}))
        return out

    def row(self, doc: dict, wide: bool) -> list[Any]:
        bgp = doc["spec"].get("bgp", {})
        if not wide:
            return [doc["metadata"]["name"]]
        return [doc["metadata"]["name"], bgp.get("asNumber", "(global)"), bgp.get("ipv4Address", ""),
                bgp.get("ipv6Address", ""), bgp.get("routeReflectorClusterID", "")]


KINDS: dict[str, Kind] = {k.name: k for k in (IpPoolKind(), BgpPeerKind(), ProfileKind(), TierKind(), PolicyKind(),
                                              HostEndpointKind(), WorkloadEndpointKind(), NodeKind())}
_BY_ALIAS = {a.lower(): k for k in KINDS.values() for a in (k.name, *k.aliases)}


def kind_named(text: str) -> Kind | None:
    """The kind for a document's `kind` or a command-line KIND (case-insensitive, plurals and short forms)."""
    return _BY_ALIAS.get(text.lower()) if isinstance(text, str) else None
