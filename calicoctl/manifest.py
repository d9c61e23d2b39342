"""`calicoctl create|apply|replace|delete -f FILE` and `calicoctl get KIND`: declarative resources.

A batch is all or nothing: every document is validated (same models as Felix
and confd) before anything is read, then the current state of each resource is
read, the batch's rules are checked (exists for replace, absent for create, no
overlapping pools, no node address taken, the policy's tier exists), and every
write happens in one etcd transaction guarded on everything read.  When a
guard fails (someone wrote meanwhile) the batch is re-read and re-checked.
An error names the document (1-based index), its kind and name, and the field.

Kinds live in `calicoctl.manifest_kinds`; the four verbs and `get` are each a
command group (`calicoctl.manifest_<verb>`) built by `command()` here.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from calicoctl.cli import Action, ArgError, CliError, Context, check, split_options
from calicoctl.manifest_io import DocumentError, dump, load_documents, read_source
from calicoctl.manifest_kinds import API_VERSION, KINDS, Kind, Plan, kind_named
from calicoctl.manifest_rules import FieldError
from libcalico import keys
from libcalico.datastore import mod, unchanged_since
from libcalico.models import InvalidValue, parse_key_value
from libcalico.resources import Nodes, Pools, Tiers, checked_put
from libcalico.validation import validate_name

# etcd refuses a transaction with more operations than --max-txn-ops (default 128).
MAX_TXN_OPS = 128
ATTEMPTS = 10
VERBS = ("create", "apply", "replace", "delete")
KIND_LIST = ", ".join(KINDS)


class BatchError(CliError):
    """A document the batch refuses; nothing was written."""


def _where(index: int, kind: str, name: str) -> str:
    return f"document {index} ({kind} {name})" if name else f"document {index} ({kind})"


def _short_opts(args: list[str]) -> list[str]:
    """`-f X`, `-fX`, `-o X`, `-oyaml` -> the long forms split_options knows."""
    out: list[str] = []
    it = iter(range(len(args)))
    for i in it:
        a = args[i]
        for short, long in (("-f", "--filename"), ("-o", "--output")):
            if a == short:
                if i + 1 >= len(args):
                    raise ArgError(f"option {short} needs a value")
                out.append(f"{long}={args[i + 1]}")
                next(it, None)
                break
            if a.startswith(short) and not a.startswith("--") and len(a) > 2:
                out.append(f"{long}={a[2:].lstrip('=')}")
                break
        else:
            out.append(a)
    return out


# ---- planning (no datastore) ---------------------------------------------------------

def plan_documents(docs: list[Any], verb: str) -> list[Plan]:
    """Validate every document; the first failure raises BatchError naming it."""
    plans: list[Plan] = []
    seen: dict[tuple, int] = {}
    for index, doc in enumerate(docs, 1):
        plan = plan_document(doc, index, verb)
        if plan.ident in seen:
            raise BatchError(f"{_where(index, plan.kind, plan.name)}: the same resource as document "
                             f"{seen[plan.ident]}; give each resource once")
        seen[plan.ident] = index
        plans.append(plan)
    return plans


def plan_document(doc: Any, index: int, verb: str) -> Plan:
    if not isinstance(doc, dict):
        raise BatchError(f"document {index}: expected a resource (an object with apiVersion, kind, metadata, spec)")
    kind = kind_named(doc.get("kind"))  # type: ignore[arg-type]
    name = _guess_name(doc)
    if kind is None:
        raise BatchError(f"{_where(index, str(doc.get('kind')), name)}: kind: unknown kind {doc.get('kind')!r} "
                         f"(known: {KIND_LIST})")
    if doc.get("apiVersion") != API_VERSION:
        raise BatchError(f"{_where(index, kind.name, name)}: apiVersion: {doc.get('apiVersion')!r} is not supported "
                         f"(use {API_VERSION})")
    extra = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        raise BatchError(f"{_where(index, kind.name, name)}: {sorted(extra)[0]}: unknown field")
    if verb in ("create", "delete") and not kind.writable:
        raise BatchError(f"{_where(index, kind.name, name)}: kind: a {kind.name} is created and deleted by its "
                         "orchestrator; apply or replace may change its labels and profiles only")
    try:
        plan = kind.plan(doc)
    except FieldError as e:
        raise BatchError(f"{_where(index, kind.name, name)}: {e.field}: {e.reason}") from None
    plan.doc = doc
    plan.facts["index"] = index
    return plan


def _guess_name(doc: dict) -> str:
    md = doc.get("metadata")
    if not isinstance(md, dict):
        return ""
    for f in ("name", "cidr", "peerIP"):
        if isinstance(md.get(f), str | int):
            return str(md[f])[:100]
    return ""


# ---- execution ---------------------------------------------------------------------

class _State:
    """One read of everything the batch depends on, and the guards that keep it true."""

    def __init__(self) -> None:
        self.exists: dict[tuple, bool] = {}
        self.guards: list = []
        self.kvs: dict[str, Any] = {}


async def _read(client: Any, plans: list[Plan]) -> _State:
    st = _State()
    for plan in plans:
        found = False
        for path, prefix in plan.reads:
            if prefix:
                rev, kvs = await client.get_prefix(path)
                st.guards.append(unchanged_since(path, rev))
                found = found or bool(kvs)
            else:
                kv = await client.get_kv(path)
                st.kvs[path] = kv
                st.guards.append(mod(path) == (kv.mod_revision if kv is not None else 0))
                found = found or kv is not None
        st.exists[plan.ident] = found
    return st


def _fail(plan: Plan, text: str) -> BatchError:
    return BatchError(f"{_where(plan.facts['index'], plan.kind, plan.name)}: {text}")


async def _batch_checks(client: Any, plans: list[Plan], st: _State, verb: str) -> list:
    """Cross-resource rules; returns extra ops (the implicit default tier)."""
    extra: list = []
    pools = [p for p in plans if "pool" in p.facts]
    if pools and verb != "delete":
        listing = await Pools(client).list(include_invalid=False)
        st.guards.append(unchanged_since(keys.IPAM_V1_DIR, listing.revision))
        clash = Pools.overlapping([p.facts["pool"] for p in pools], [s.value for s in listing])
        if clash is not None:
            culprit = next(p for p in pools if p.facts["pool"].cidr in clash)
            raise _fail(culprit, f"metadata.cidr: pools {clash[0]} and {clash[1]} overlap")
    nodes = [p for p in plans if "node" in p.facts]
    if nodes and verb != "delete":
        listing = await Nodes(client).list()
        st.guards.append(unchanged_since(keys.BGP_HOST_DIR, listing.revision))
        addrs = {n.name: (n.raw.get("v4"), n.raw.get("v6")) for n in listing}
        addrs.update({p.facts["node"][0]: p.facts["node"][1:] for p in nodes})  # the batch wins over the store
        for p in nodes:
            name, ip4, ip6 = p.facts["node"]
            for other, (o4, o6) in sorted(addrs.items()):
                for field, a, b in (("ipv4Address", ip4, o4), ("ipv6Address", ip6, o6)):
                    if other != name and a and a == b:
                        raise _fail(p, f"spec.bgp.{field}: {a} is already used by node {other!r}")
    tiers_in_batch = {p.facts["tier"] for p in plans if "tier" in p.facts}
    if verb != "delete":
        for p in plans:
            tier = p.facts.get("in_tier")
            if tier is None or tier in tiers_in_batch:
                continue
            path = keys.tier_metadata(tier)
            kv = await client.get_kv(path)
            st.guards.append(mod(path) == (kv.mod_revision if kv is not None else 0))
            if kv is not None:
                continue
            if tier != "default":
                raise _fail(p, f"metadata.tier: tier {tier!r} does not exist (create it first, or in this file)")
            extra.append(checked_put(path, json.dumps({"order": "default"})))
            tiers_in_batch.add(tier)
    else:
        deleting = {q.ident for q in plans}
        for p in plans:
            if "tier" in p.facts:
                tier = p.facts["tier"]
                prefix = keys.tier_policy(tier, "_").removesuffix("_")
                rev, _ = await client.get_prefix(prefix)
                st.guards.append(unchanged_since(prefix, rev))
                left = [n for n in await Tiers(client).policy_names(tier) if ("policy", tier, n) not in deleting]
                if left:
                    raise _fail(p, f"tier {tier!r} still has policies ({', '.join(left[:5])}); delete them first")
    return extra


def _wep_ops(plan: Plan, st: _State) -> list:
    """A workload endpoint's labels/profiles change, applied to the stored value (everything else kept)."""
    path = plan.reads[0][0]
    kv = st.kvs.get(path)
    if kv is None:
        raise _fail(plan, "does not exist (workload endpoints are created by their orchestrator)")
    try:
        _, ep = parse_key_value(path, kv.value)
    except InvalidValue as e:
        raise _fail(plan, f"the stored value is invalid ({e.reason}); fix it first") from None
    current = WORKLOAD.to_doc(keys.parse(path), ep)["spec"]
    want = plan.facts["wep"]
    for f, v in want["fixed"].items():
        if v != current.get(f):
            raise _fail(plan, f"spec.{f}: cannot be changed here (the orchestrator owns it; only "
                              "metadata.labels and spec.profiles can be changed)")
    raw = json.loads(kv.value)
    if want["labels"] is not None:
        raw["labels"] = want["labels"]
    if want["profile_ids"] is not None:
        raw.pop("profile_id", None)
        raw["profile_ids"] = want["profile_ids"]
    try:
        return [checked_put(path, json.dumps(raw, separators=(",", ":")))]
    except InvalidValue as e:
        raise _fail(plan, e.reason) from None


WORKLOAD = KINDS["workloadEndpoint"]


async def run_batch(client: Any, plans: list[Plan], verb: str, skip: bool = False) -> list[tuple[Plan, str]]:
    """Check and write the batch in one transaction; returns (plan, what happened) per document."""
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, 0.02 * attempt))  # de-synchronize racing writers
        st = await _read(client, plans)
        extra = await _batch_checks(client, plans, st, verb)
        ops: list = []
        done: list[tuple[Plan, str]] = []
        for plan in plans:
            exists = st.exists[plan.ident]
            if verb == "create" and exists:
                if skip:
                    done.append((plan, "skipped (exists)"))
                    continue
                raise _fail(plan, "already exists (use apply or replace to change it)")
            if verb in ("replace", "delete") and not exists:
                if verb == "delete" and skip:
                    done.append((plan, "skipped (not found)"))
                    continue
                raise _fail(plan, "does not exist" + (" (use create or apply)" if verb == "replace" else ""))
            if verb == "delete":
                ops.extend(plan.delete_ops)
            elif plan.kind == "workloadEndpoint":
                ops.extend(_wep_ops(plan, st))
            else:
                ops.extend(plan.ops)
            done.append((plan, {"create": "created", "apply": "applied", "replace": "replaced",
                                "delete": "deleted"}[verb]))
        ops = extra + ops
        if len(ops) > MAX_TXN_OPS or len(st.guards) > MAX_TXN_OPS:
            raise BatchError(f"this batch needs {max(len(ops), len(st.guards))} etcd operations, more than one "
                             f"transaction allows ({MAX_TXN_OPS}); split the file")
        if not ops:
            return done
        ok, _ = await client.txn(st.guards, ops, [], what=f"calicoctl {verb}")
        if ok:
            return done
    raise CliError("the resources kept changing while being checked; nothing written, try again")


# ---- commands ------------------------------------------------------------------------

_VERB_HELP = {
    "create": "Create the resources; a resource that already exists is an error (--skip-exists: leave it).",
    "apply": "Create or replace each resource.",
    "replace": "Replace the resources; a resource that does not exist is an error.",
    "delete": "Delete the resources (from a file, or one named KIND NAME); a missing one is an error\n"
              "(--skip-not-exists: ignore it).",
}


def usage(verb: str) -> str:
    extra = {"create": " [--skip-exists]", "delete": " [--skip-not-exists]"}.get(verb, "")
    named = "\n  calicoctl delete <KIND> <NAME> [--node=<NODE>] [--tier=<TIER>] [--orchestrator=<ORCH>] " \
            "[--workload=<WL>]" if verb == "delete" else ""
    return f"""\
Usage:
  calicoctl {verb} --filename=<FILE>{extra}{named}

Description:
  {_VERB_HELP[verb]}
  All documents are validated first and written in one etcd transaction: when
  one is invalid or refused, nothing is written and the error names the
  document (1 = first), its kind, name and field.

  <FILE> holds YAML or JSON (- = stdin): one resource, several separated by
  '---', a 'kind: List' with items, or an array.  Kinds (apiVersion: v1):
  {KIND_LIST}.
  See the README section "calicoctl resources" for each kind's fields.

Options:
  -f --filename=<FILE>   The file of resources (- reads stdin)
"""


GET_USAGE = f"""\
Usage:
  calicoctl get <KIND> [<NAME>] [--output=<FORMAT>] [--node=<NODE>] [--tier=<TIER>] [--scope=<SCOPE>]
                [--orchestrator=<ORCH>] [--workload=<WL>]

Description:
  List resources of one kind ({KIND_LIST}).
  The yaml and json output applies back unchanged with 'calicoctl apply -f'.

Options:
  -o --output=<FORMAT>   ps (default: a table), wide (more columns), yaml or json
  --node=<NODE>          Only resources of this node (hostEndpoint, workloadEndpoint, bgpPeer)
  --tier=<TIER>          Only policies of this tier
  --scope=<SCOPE>        bgpPeer: global or node
"""

_FILTERS = ("--node", "--tier", "--scope", "--orchestrator", "--workload")


def _filters(opts: dict) -> dict:
    out = {}
    for opt in _FILTERS:
        if opt in opts:
            what = opt.lstrip("-")
            out[what] = check(validate_name, opts[opt], what, what=what)
    return out


def command(verb: str) -> tuple[str, Any]:
    """(USAGE, parse) of the command group for `verb` (create, apply, replace, delete, get)."""
    if verb == "get":
        return GET_USAGE, _parse_get
    text = usage(verb)

    def parse(args: list[str]) -> Action:
        flags = {"create": ("--skip-exists",), "delete": ("--skip-not-exists",)}.get(verb, ())
        words, opts = split_options(_short_opts(args), flags=flags,
                                    valued=("--filename", *(_FILTERS if verb == "delete" else ())), usage=text)
        skip = bool(opts.get("--skip-exists") or opts.get("--skip-not-exists"))
        if "--filename" in opts:
            if words:
                raise ArgError(f"unexpected argument {words[0]!r} (give resources with -f, or see "
                               f"'calicoctl {verb} --help')")
            return _file_action(verb, opts["--filename"], skip)
        if verb == "delete" and len(words) == 2:
            return _named_delete(words[0], words[1], _filters(opts), skip)
        raise ArgError(f"'calicoctl {verb}' needs -f <FILE> (see 'calicoctl {verb} --help')")

    return text, parse


def _file_action(verb: str, path: str, skip: bool) -> Action:
    async def act(ctx: Context) -> int:
        text, source = read_source(path, ctx.stdin)
        try:
            docs = load_documents(text, source)
        except DocumentError as e:
            raise CliError(str(e)) from None
        plans = plan_documents(docs, verb)
        return await _execute(ctx, plans, verb, skip)

    return act


def _named_delete(kind_text: str, name: str, filters: dict, skip: bool) -> Action:
    kind = kind_named(kind_text)
    if kind is None:
        raise ArgError(f"unknown kind {kind_text!r} (known: {KIND_LIST})")
    doc = {"apiVersion": API_VERSION, "kind": kind.name, "metadata": kind.ident_doc(name, filters), "spec": {}}
    plans = [_plan_named(kind, doc)]

    async def act(ctx: Context) -> int:
        return await _execute(ctx, plans, "delete", skip)

    return act


def _plan_named(kind: Kind, doc: dict) -> Plan:
    """A delete by name only needs the identity: fill what a full document would require."""
    if kind.name == "bgpPeer":
        doc["spec"] = {"asNumber": 64512}
    if kind.name == "node":
        doc["spec"] = {"bgp": {"ipv4Address": "0.0.0.1"}}
    try:
        return plan_document(doc, 1, "delete")
    except BatchError as e:
        raise ArgError(f"{kind.name} {doc['metadata'].get(kind.name_field)}: {str(e).split('): ', 1)[-1]}") from None


async def _execute(ctx: Context, plans: list[Plan], verb: str, skip: bool) -> int:
    if not plans:
        ctx.print("No resources given; nothing to do.")
        return 0
    client = await ctx.client()
    done = await run_batch(client, plans, verb, skip)
    # calicoctl 1.x's wording: "Successfully created 2 'ipPool' resource(s)"
    past = {"create": "created", "apply": "applied", "replace": "replaced", "delete": "deleted"}[verb]
    acted = [p for p, what in done if what == past]
    kinds = {p.kind for p in acted}
    what = f"'{next(iter(kinds))}' " if len(kinds) == 1 else ""
    line = f"Successfully {past} {len(acted)} {what}resource(s)"
    skipped = len(done) - len(acted)
    if skipped:
        line += f"; skipped {skipped} that {'already existed' if verb == 'create' else 'did not exist'}"
    ctx.print(line)
    return 0


def _columns(headers: tuple[str, ...], rows: list[list[Any]]) -> str:
    cells = [list(headers)] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _parse_get(args: list[str]) -> Action:
    words, opts = split_options(_short_opts(args), valued=("--output", *_FILTERS), usage=GET_USAGE)
    if not words or len(words) > 2:
        raise ArgError("usage: calicoctl get <KIND> [<NAME>] [-o ps|wide|yaml|json] (see 'calicoctl get --help')")
    kind = kind_named(words[0])
    if kind is None:
        raise ArgError(f"unknown kind {words[0]!r} (known: {KIND_LIST})")
    name = words[1] if len(words) == 2 else None
    if name is not None and len(name) > 256:
        raise ArgError("resource name longer than 256 characters")
    fmt = opts.get("--output", "ps")
    if fmt not in ("ps", "wide", "yaml", "json"):
        raise ArgError(f"invalid output format {fmt!r} (ps, wide, yaml or json)")
    filters = _filters(opts)

    async def get(ctx: Context) -> int:
        client = await ctx.client()
        docs = [d for d in await kind.list(client, filters) if kind.matches(d, name, filters)]
        if name is not None and not docs:
            raise CliError(f"{kind.name} {name!r} not found")
        if fmt in ("yaml", "json"):
            ctx.print(dump(docs, fmt, single=name is not None))
            return 0
        wide = fmt == "wide"
        ctx.print(_columns(kind.wide_headers if wide and kind.wide_headers else kind.headers,
                           [kind.row(d, wide) for d in docs]))
        return 0

    return get
