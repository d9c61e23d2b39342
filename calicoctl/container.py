"""`calicoctl container ...`: the namespace orchestrator.

It wires a network namespace to the node it runs in (the CLI runs in the
node's namespace): a veth `cali<id>` here and `eth0` there, an address from
IPAM, the link-local gateway routes inside, and the endpoint in etcd for Felix
to program.  Every step that fails undoes the earlier ones, so a failed
`add` leaves neither a veth nor an IP assignment nor a half endpoint behind.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import uuid
from typing import Any

from calicoctl import netns
from calicoctl.cli import Action, ArgError, CliError, Context, check, split_options, table, usage_error
from libcalico import keys, workload_attach
from libcalico.models import Pool
from libcalico.resources import Nodes, Pools, Stored, WorkloadEndpoints
from libcalico.validation import validate_ifname, validate_ip, validate_name
from libcalico.workload_attach import (  # noqa: F401 - node remove/stop and tests use them
    GATEWAY_V4,
    IFACE_PREFIX,
    delete_veth,
    inner_config,
)

USAGE = """\
Usage:
  calicoctl container add <NAMESPACE> <IP> [--interface=<INTERFACE>] [--hostname=<HOSTNAME>]
  calicoctl container remove <NAMESPACE> [--hostname=<HOSTNAME>]
  calicoctl container <NAMESPACE> ip (add|remove) <IP> [--interface=<INTERFACE>] [--hostname=<HOSTNAME>]
  calicoctl container <NAMESPACE> endpoint show [--hostname=<HOSTNAME>]
  calicoctl container <NAMESPACE> profile (set|append|remove) [<PROFILES>...] [--hostname=<HOSTNAME>]

Connect a network namespace to this node (run it in the node's namespace).

Arguments:
  <NAMESPACE>  A network namespace name (as made by `ip netns add`) or the path of a
               namespace file (e.g. /proc/<pid>/ns/net).
  <IP>         An address inside an enabled pool, or `ipv4`, `ipv6` (one address from
               IPAM) or `auto` (IPv4, plus IPv6 when an IPv6 pool exists).

Options:
  --interface=<INTERFACE>  The interface inside the namespace [default: eth0].
  --hostname=<HOSTNAME>    The node the endpoint belongs to [default: this node: NODENAME,
                           HOSTNAME, the node running from CALICO_RUN_DIR, the registered node owning
                           one of this namespace's addresses, else the kernel hostname].
"""

# The datamodel's orchestrator id for endpoints this command makes.  Releases
# before it wrote "netns"; those endpoints are still found, edited and removed.
ORCHESTRATOR = "calicoctl"
LEGACY_ORCHESTRATORS = ("netns",)
DEFAULT_RUN_DIR = "/var/run/calico"
_VALUED = ("--interface", "--hostname")


# ---- which node are we -------------------------------------------------------

def run_dir() -> str:
    return os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR


def _nodename_file() -> str | None:
    """The name calico-node runs under, from the state it leaves in its run dir."""
    try:
        with open(os.path.join(run_dir(), "node.json")) as f:
            name = json.load(f).get("nodename")
        if isinstance(name, str) and name.strip():
            return name.strip()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(os.path.join(run_dir(), "nodename")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _running_node_name() -> str | None:
    """NODENAME/HOSTNAME from the environment of a calico program running in this namespace.

    Live and immediate: right after `calico-node` starts, before it has
    registered or written its run dir, this already names the node.
    """
    from calicoctl import status

    for p in status.node_processes():
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        for var in (b"NODENAME", b"FELIX_FELIXHOSTNAME", b"HOSTNAME"):
            name = env.get(var, b"").decode(errors="replace").strip()
            if name:
                try:
                    return validate_name(name, "hostname")
                except ValueError:
                    break
    return None


async def local_hostname(client: Any | None, explicit: str | None = None) -> str:
    """The node this CLI acts for.

    Explicit > NODENAME > HOSTNAME > the name of the calico-node running in
    this network namespace (its environment, else the state it left in
    CALICO_RUN_DIR) > the kernel hostname when that node is registered > the
    registered node that owns an address of this namespace (the CLI is
    usually run with `ip netns exec <node-ns>`, where the kernel hostname is
    the machine's) > the kernel hostname.
    """
    for cand in (explicit, os.environ.get("NODENAME"), os.environ.get("HOSTNAME"), _running_node_name(),
                 _nodename_file()):
        if cand:
            return check(validate_name, cand, "hostname", what="hostname")
    kernel = socket.gethostname()
    if client is None:
        return kernel
    registered: dict[str, str] = {}
    for n in await Nodes(client).list():
        for ip in (n.ip4, n.ip6):
            if ip:  # a bad registration is node show's to report, not ours to trust
                registered.setdefault(ip, n.name)
    if kernel in registered.values():
        return kernel
    try:
        local = {a.get("local") for a in netns.addresses(None)}
    except (netns.NetnsError, ValueError):
        local = set()
    owners = {h for ip, h in registered.items() if ip in local}
    if len(owners) == 1:
        return owners.pop()
    return kernel


# ---- datastore helpers ---------------------------------------------------------

Endpoint = Stored  # a workload endpoint as read: .key (host, workload, endpoint), .value, .mod_revision


def ifname(ep: Endpoint) -> str:
    """The host-side interface, or "" when etcd holds something we must not hand to ip(8)."""
    return ep.value.name if ep.valid else ""


async def find_endpoint(client: Any, host: str, workload: str, strict: bool = True) -> Endpoint | None:
    """The (single) endpoint of a namespace on `host`, or None.

    An invalid value stops an edit (strict) but not a removal, which only
    needs the key and the endpoint id.
    """
    repo = WorkloadEndpoints(client)
    eps = []
    for orchestrator in (ORCHESTRATOR, *LEGACY_ORCHESTRATORS):
        eps += await repo.list(host, orchestrator, workload, include_invalid=True)
    for ep in sorted(eps, key=lambda s: s.create_revision):
        if strict and not ep.valid:
            raise CliError(f"{ep.path}: {ep.error}; fix it or remove the container")
        return ep
    return None


async def require_endpoint(client: Any, host: str, ns: netns.NamespaceRef) -> Endpoint:
    ep = await find_endpoint(client, host, ns.workload_id)
    if ep is None:
        raise CliError(f"namespace {ns.arg} has no endpoint on host {host} (see 'calicoctl container add')")
    return ep


async def ipam_pools(client: Any, version: int) -> list[Pool]:
    """Pools IPAM hands addresses from (not disabled, not `ipam: false`)."""
    return await Pools(client).for_ipam(version)


async def _check_in_pool(client: Any, ip: str) -> None:
    if await Pools(client).containing(ip) is None:
        v = ipaddress.ip_address(ip).version
        raise CliError(f"{ip} is not in any enabled IPv{v} pool (see 'calicoctl pool add')")


async def _write_endpoint(client: Any, ep: Endpoint, **changes: Any) -> None:
    """Compare-and-swap the changed endpoint back, so a concurrent edit is never lost silently."""
    if not await WorkloadEndpoints(client).cas(ep, ep.value.model_copy(update=changes)):
        raise CliError(f"{ep.path} changed while we edited it; nothing written, try again")


def _ipam(client: Any) -> Any:
    from libcalico.ipam import Ipam

    return Ipam(client)


async def _maybe_await(v: Any) -> Any:
    return await v if asyncio.iscoroutine(v) else v


# ---- kernel side -----------------------------------------------------------------
# One implementation for every orchestrator: libcalico.workload_attach.

def host_ifname(endpoint_id: str) -> str:
    return f"{IFACE_PREFIX}{endpoint_id[:11]}"


def host_link_local(ifname: str, timeout: float = 3.0) -> str:
    """The host-side veth's fe80:: address (the workload's IPv6 gateway)."""
    try:
        return workload_attach.host_link_local(ifname, timeout)
    except workload_attach.AttachError as e:
        raise CliError(str(e)) from None


def _valid_ifname(name: str) -> bool:
    try:
        validate_ifname(name)
        return True
    except ValueError:
        return False


# ---- commands -------------------------------------------------------------------

def _ip_spec(spec: str) -> tuple[str, str | None]:
    """('auto'|'ipv4'|'ipv6', None) or ('ip', normalized address)."""
    if spec.lower() in ("ipv4", "ipv6", "auto"):
        return spec.lower(), None
    return "ip", check(validate_ip, spec, what="IP")


async def add(ctx: Context, ns: netns.NamespaceRef, spec: tuple[str, str | None], iface: str,
              hostname: str | None) -> Endpoint:
    client = await ctx.client()
    host = await local_hostname(client, hostname)
    if await find_endpoint(client, host, ns.workload_id) is not None:
        raise CliError(f"namespace {ns.arg} already has an endpoint on host {host}")
    ep_id = uuid.uuid4().hex
    kind, ip = spec
    if kind == "ip":
        assert ip is not None
        await _check_in_pool(client, ip)
        ips, num4, num6 = [ip], 0, 0
    else:
        ips = []
        num4 = 1 if kind in ("ipv4", "auto") else 0
        num6 = 1 if kind == "ipv6" or (kind == "auto" and await ipam_pools(client, 6)) else 0
        if kind == "ipv6" and not await ipam_pools(client, 6):
            raise CliError("no enabled IPv6 pool to assign from (see 'calicoctl pool add')")
        if num4 and not await ipam_pools(client, 4):
            raise CliError("no enabled IPv4 pool to assign from (see 'calicoctl pool add')")
    try:
        v4, v6 = await workload_attach.assign_addresses(client, host, ep_id, ips, num4, num6)
    except workload_attach.AttachError as e:
        msg = str(e).removeprefix("IPAM: ")
        if "no free address" in msg:
            msg = "IPAM has no free address in the pools (see 'calicoctl ipam')"
        raise CliError(msg) from None
    attach_spec = workload_attach.EndpointSpec(host=host, orchestrator=ORCHESTRATOR, workload=ns.workload_id,
                                               endpoint=ep_id, host_ifname=host_ifname(ep_id), netns=ns,
                                               ifname=iface)
    try:
        await workload_attach.attach(client, attach_spec, v4, v6)
    except workload_attach.AttachError as e:
        await _ipam(client).release_handle(ep_id)
        raise CliError(str(e)) from None
    except BaseException:
        await _ipam(client).release_handle(ep_id)
        raise
    return await WorkloadEndpoints(client).get(host, ORCHESTRATOR, ns.workload_id, ep_id)


async def remove(ctx: Context, ns: netns.NamespaceRef | None, workload_id: str, hostname: str | None,
                 arg: str) -> Endpoint:
    client = await ctx.client()
    host = await local_hostname(client, hostname)
    ep = await find_endpoint(client, host, workload_id, strict=False)
    if ep is None:
        raise CliError(f"namespace {arg} has no endpoint on host {host}")
    # The stored name first; else the one we derive from the endpoint id; else the namespace's end.
    names = [n for n in (ifname(ep), host_ifname(ep.key.endpoint)) if n and _valid_ifname(n)]
    for n in dict.fromkeys(names):
        delete_veth(None, n)
    await workload_attach.detach(client, (host, ep.key.orchestrator, workload_id, ep.key.endpoint), netns_ref=ns,
                                 handle=ep.key.endpoint, release_endpoint_ips=True)
    return ep


def endpoint_ips(ep: Endpoint) -> list[str]:
    """The endpoint's addresses (none when its stored value is invalid)."""
    if not ep.valid:
        return []
    return [str(ipaddress.ip_interface(n).ip) for n in ep.value.ipv4_nets + ep.value.ipv6_nets]


async def ip_change(ctx: Context, ns: netns.NamespaceRef, op: str, ip: str, iface: str,
                    hostname: str | None) -> None:
    client = await ctx.client()
    host = await local_hostname(client, hostname)
    ep = await require_endpoint(client, host, ns)
    version = ipaddress.ip_address(ip).version
    field = f"ipv{version}_nets"
    cidr = f"{ip}/{32 if version == 4 else 128}"
    nets = list(getattr(ep.value, field))
    ipam = _ipam(client)
    if op == "add":
        if cidr in nets:
            raise CliError(f"{ip} is already assigned to namespace {ns.arg}")
        await _check_in_pool(client, ip)
        await _maybe_await(ipam.assign(ip, ep.key.endpoint, host))
        try:
            gw6 = host_link_local(ifname(ep)) if version == 6 else None
            first = not nets
            lines = [f"addr add {cidr} dev {iface}" + (" nodad" if version == 6 else "")]
            if first and version == 4:
                lines += [f"route replace {GATEWAY_V4} dev {iface} scope link",
                          f"route replace default via {GATEWAY_V4} dev {iface}"]
            if first and version == 6:
                lines.append(f"route replace ::/0 via {gw6} dev {iface}")
            netns.ip_batch(ns, lines)
            changes: dict[str, Any] = {field: nets + [cidr]}
            if version == 4 and ep.value.ipv4_gateway is None:
                changes["ipv4_gateway"] = GATEWAY_V4
            await _write_endpoint(client, ep, **changes)
        except BaseException:
            netns.run(ns, ["ip", "addr", "del", cidr, "dev", iface], check=False)
            await _maybe_await(ipam.release_ips([ip]))
            raise
    else:
        if cidr not in nets:
            raise CliError(f"{ip} is not assigned to namespace {ns.arg}")
        await _write_endpoint(client, ep, **{field: [n for n in nets if n != cidr]})
        netns.run(ns, ["ip", "addr", "del", cidr, "dev", iface], check=False)
        await _maybe_await(ipam.release_ips([ip]))


async def profile_change(ctx: Context, ns: netns.NamespaceRef, op: str, profiles: list[str],
                         hostname: str | None) -> list[str]:
    client = await ctx.client()
    host = await local_hostname(client, hostname)
    ep = await require_endpoint(client, host, ns)
    if op in ("set", "append"):
        for p in profiles:
            _, kvs = await client.get_prefix(keys.profile_dir(p))
            if not kvs:
                raise CliError(f"profile {p} does not exist (see 'calicoctl profile add')")
    current = list(ep.value.profile_ids)  # the model already reads a legacy single profile_id
    if op == "set":
        new = list(dict.fromkeys(profiles))
    elif op == "append":
        dup = [p for p in profiles if p in current]
        if dup:
            raise CliError(f"namespace {ns.arg} already has profile {dup[0]}")
        new = current + [p for p in dict.fromkeys(profiles)]
    else:
        missing = [p for p in profiles if p not in current]
        if missing:
            raise CliError(f"namespace {ns.arg} does not have profile {missing[0]}")
        new = [p for p in current if p not in profiles]
    await _write_endpoint(client, ep, profile_ids=new)
    return new


def endpoint_table(eps: list[Endpoint]) -> str:
    rows = [[e.key.endpoint, e.key.host, e.value.name, e.value.mac or "",
             "\n".join(e.value.ipv4_nets + e.value.ipv6_nets), ",".join(e.value.profile_ids), e.value.state]
            for e in eps]
    return table(["Endpoint ID", "Hostname", "Interface", "MAC", "IP Addresses", "Profiles", "State"], rows)


# ---- grammar --------------------------------------------------------------------

def _ns(arg: str) -> netns.NamespaceRef:
    try:
        return netns.resolve(arg)
    except netns.NetnsError as e:
        raise ArgError(str(e)) from None


def _ns_for_remove(arg: str) -> tuple[netns.NamespaceRef | None, str]:
    """A deleted namespace can still be cleaned up: only its workload id is needed then."""
    try:
        ref = netns.resolve(arg)
        return ref, ref.workload_id
    except netns.NetnsError:
        if "/" in arg:
            import re

            return None, re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.abspath(arg).strip("/"))
        return None, check(validate_name, arg, "namespace name", what="NAMESPACE")


def _ipam_errors(fn):
    """IPAM refusals (address taken, no pool) are user errors: one line, exit 1."""
    async def wrapped(ctx: Context) -> int:
        from libcalico.ipam import IpamError

        try:
            return await fn(ctx)
        except IpamError as e:
            raise CliError(str(e)) from None
    return wrapped


def parse(args: list[str]) -> Action:
    return _ipam_errors(_parse(args))


def _parse(args: list[str]) -> Action:
    words, opts = split_options(args, valued=_VALUED, usage=USAGE)
    iface = check(validate_ifname, opts.get("--interface", "eth0"), what="--interface")
    hostname = opts.get("--hostname")
    if hostname is not None:
        hostname = check(validate_name, hostname, "hostname", what="--hostname")
    if len(words) == 3 and words[0] == "add":
        ns, spec = _ns(words[1]), _ip_spec(words[2])

        async def do_add(ctx: Context) -> int:
            ep = await add(ctx, ns, spec, iface, hostname)
            nets = ep.value.ipv4_nets + ep.value.ipv6_nets
            ctx.print(f"IP {', '.join(n.split('/')[0] for n in nets)} added to {ns.arg} "
                      f"(endpoint {ep.key.endpoint}, interface {ep.value.name}, host {ep.key.host})")
            return 0

        return do_add
    if len(words) == 2 and words[0] == "remove":
        ref, wid = _ns_for_remove(words[1])
        arg = words[1]

        async def do_remove(ctx: Context) -> int:
            ep = await remove(ctx, ref, wid, hostname, arg)
            ctx.print(f"Removed networking from {arg} (endpoint {ep.key.endpoint})")
            return 0

        return do_remove
    if len(words) >= 3 and words[0] not in ("add", "remove"):
        ns = _ns(words[0])
        sub = words[1:]
        if sub[0] == "ip" and len(sub) == 3 and sub[1] in ("add", "remove"):
            op, ip = sub[1], check(validate_ip, sub[2], what="IP")

            async def do_ip(ctx: Context) -> int:
                await ip_change(ctx, ns, op, ip, iface, hostname)
                ctx.print(f"IP {ip} {'added to' if op == 'add' else 'removed from'} {ns.arg}")
                return 0

            return do_ip
        if sub == ["endpoint", "show"]:
            async def do_show(ctx: Context) -> int:
                client = await ctx.client()
                host = await local_hostname(client, hostname)
                ctx.print(endpoint_table([await require_endpoint(client, host, ns)]))
                return 0

            return do_show
        if sub[0] == "profile" and len(sub) >= 2 and sub[1] in ("set", "append", "remove"):
            op = sub[1]
            profiles = [check(validate_name, p, "profile name", what="profile") for p in sub[2:]]
            if op != "set" and not profiles:
                raise ArgError(f"profile {op} needs at least one <PROFILE>")

            async def do_profile(ctx: Context) -> int:
                new = await profile_change(ctx, ns, op, profiles, hostname)
                ctx.print(f"Profiles of {ns.arg}: {', '.join(new) or '(none)'}")
                return 0

            return do_profile
    raise usage_error(USAGE, words, "container")


async def host_endpoints(client: Any, host: str) -> list[Endpoint]:
    """Every workload endpoint of a host (any orchestrator); invalid values count too."""
    return list(await WorkloadEndpoints(client).list(host, include_invalid=True))
