"""`calico`: the CNI plugin (ADD, DEL, CHECK, VERSION, STATUS, GC).

One call, one container: read the config, find who the call is about
(`identity`), get addresses (calico-ipam in-process, or another IPAM plugin
exec'd from CNI_PATH and its result passed through), wire the container with
`libcalico.workload_attach`, answer in the shape of the config's version.
Every failure is the spec's error object on stdout and exit 1; a failed ADD
releases what it took, so a runtime retry starts from nothing.

Both executables enter through `run(plugin_name, ...)`; `calico-ipam` only
does the address part.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from calico_cni import config as cfg
from calico_cni import spec
from calico_cni.identity import Identity, identify
from calico_cni.spec import CniError

log = logging.getLogger("calico-cni")
CLIENT_TIMEOUT = 5.0


def _setup_logging(conf: cfg.NetConf, plugin: str) -> None:
    if log.handlers:
        return
    fmt = logging.Formatter(f"%(asctime)s {plugin} [%(process)d] %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if conf.log_file_path:
        try:
            os.makedirs(os.path.dirname(conf.log_file_path) or ".", exist_ok=True)
            handlers.append(logging.FileHandler(conf.log_file_path))
        except OSError as e:
            sys.stderr.write(f"{plugin}: log_file_path {conf.log_file_path!r}: {e.strerror}\n")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(conf.log_level)
    log.propagate = False


# ---- the datastore ---------------------------------------------------------------

class _Client:
    """The etcd client for one call: built lazily, closed once, its failures mapped to CNI codes."""

    def __init__(self, conf: cfg.NetConf):
        self.conf = conf
        self.client: Any = None

    async def __aenter__(self) -> Any:
        from libcalico.datastore import DatastoreClient

        self.client = DatastoreClient(config=cfg.etcd_config(self.conf), timeout=CLIENT_TIMEOUT, retries=2)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.close(), 2)
            except Exception:  # noqa: BLE001 - the answer is already decided
                pass


def _datastore_error(e: BaseException) -> CniError | None:
    from libcalico.datastore import DatastoreError, DatastoreUnavailable

    if isinstance(e, DatastoreUnavailable):
        return CniError(spec.TRY_AGAIN_LATER, f"etcd_endpoints: {e}")
    if isinstance(e, DatastoreError):
        return CniError(spec.IO_FAILURE, f"etcd: {e}")
    return None


# ---- IPAM --------------------------------------------------------------------------

def _find_plugin(env: dict[str, str], name: str) -> str:
    for d in spec.env_var(env, "CNI_PATH").split(":"):
        path = os.path.join(d, name)
        if d and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CniError(spec.INVALID_CONFIG, f"ipam.type: no executable {name!r} in CNI_PATH")


def delegate(env: dict[str, str], conf: cfg.NetConf, command: str) -> dict[str, Any]:
    """Run another IPAM plugin (as a runtime would) and return its result."""
    import subprocess

    path = _find_plugin(env, conf.ipam.type)
    try:
        r = subprocess.run([path], input=json.dumps(conf.raw).encode(), capture_output=True, timeout=60,
                           env=dict(env, CNI_COMMAND=command))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(spec.IPAM_FAILED, f"ipam plugin {conf.ipam.type} {command}: {e}") from None
    try:
        out = json.loads(r.stdout or b"{}")
    except ValueError:
        out = None
    if r.returncode != 0 or not isinstance(out, dict):
        msg = out.get("msg") if isinstance(out, dict) else (r.stderr or r.stdout).decode(errors="replace")[-500:]
        raise CniError(spec.IPAM_FAILED, f"ipam plugin {conf.ipam.type} {command} failed: {msg}")
    return out


async def ipam_add(client: Any, env: dict[str, str], conf: cfg.NetConf, who: Identity) -> dict[str, Any]:
    if conf.ipam.type == "calico-ipam":
        from calico_cni import ipam

        return await ipam.add(client, conf, who.attachment)
    return delegate(env, conf, "ADD")


async def ipam_del(client: Any, env: dict[str, str], conf: cfg.NetConf, who: Identity) -> None:
    if conf.ipam.type == "calico-ipam":
        from calico_cni import ipam

        await ipam.release(client, who.attachment)
    else:
        delegate(env, conf, "DEL")


# ---- commands ------------------------------------------------------------------------

def _endpoint_spec(conf: cfg.NetConf, who: Identity, netns_ref: Any) -> Any:
    from libcalico.workload_attach import EndpointSpec, veth_name

    return EndpointSpec(host=conf.nodename, orchestrator=who.orchestrator, workload=who.workload,
                        endpoint=who.endpoint, host_ifname=veth_name(who.attachment), netns=netns_ref,
                        ifname=who.ifname, profiles=[conf.name], create_profiles=True, mtu=conf.mtu,
                        extra={"container_id": who.container_id, "network": conf.name}, replace_stale=True)


def _netns_ref(path: str) -> Any:
    from libcalico.netns import NamespaceRef

    return NamespaceRef(path, path, path)


async def cmd_add(env: dict[str, str], conf: cfg.NetConf) -> dict[str, Any]:
    from libcalico import workload_attach as wa

    who = identify(env, need_netns=True)
    if not os.path.exists(who.netns):
        raise CniError(spec.UNKNOWN_CONTAINER, f"CNI_NETNS: {who.netns} does not exist")
    async with _Client(conf) as client:
        es = _endpoint_spec(conf, who, _netns_ref(who.netns))
        # A record under this key is a leftover (a restarted pod sandbox, an ADD whose DEL
        # never came): its veth, record and addresses go before anything new is taken.
        stale = await wa.detach(client, es.key)  # a leftover veth of this name: attach replaces it
        if stale.endpoint_found:
            log.info("removed a stale endpoint for %s/%s", who.orchestrator, who.workload)
            if conf.ipam.type == "calico-ipam":
                await ipam_del(client, env, conf, who)
        ipam_result = await ipam_add(client, env, conf, who)
        try:
            addrs = spec.result_ips(ipam_result, f"ipam plugin {conf.ipam.type} result")
            v4 = [a for a in addrs if ":" not in a]
            v6 = [a for a in addrs if ":" in a]
            if not addrs:
                raise CniError(spec.IPAM_FAILED, f"ipam plugin {conf.ipam.type} returned no address")
            if conf.ipam.type != "calico-ipam":
                await _check_foreign_addresses(client, conf, es.key, addrs)
            attached = await wa.attach(client, es, v4, v6)
        except BaseException as e:
            try:
                await ipam_del(client, env, conf, who)
            except Exception as again:  # noqa: BLE001 - the first failure is the one to report
                log.error("releasing the addresses of %s after a failed ADD: %s", who.attachment, again)
            if isinstance(e, wa.AttachError):
                raise CniError(spec.ATTACH_FAILED, str(e)) from None
            raise
    log.info("ADD %s/%s: %s on %s, %s", who.orchestrator, who.workload, attached.host_ifname, conf.nodename,
             ", ".join(addrs))
    routes = []
    if v4:
        routes.append({"dst": "0.0.0.0/0", "gw": wa.GATEWAY_V4})
    if v6 and attached.ipv6_gateway:
        routes.append({"dst": "::/0", "gw": attached.ipv6_gateway})
    ips = [dict(ip, interface=1) for ip in ipam_result.get("ips", [])]
    result: dict[str, Any] = {
        "interfaces": [{"name": attached.host_ifname},
                       {"name": who.ifname, "mac": attached.mac, "sandbox": who.netns, "mtu": attached.mtu}],
        "ips": ips, "routes": routes,
    }
    dns = ipam_result.get("dns") or conf.raw.get("dns")
    if isinstance(dns, dict):
        result["dns"] = dns
    return result


async def _check_foreign_addresses(client: Any, conf: cfg.NetConf, key: tuple, addrs: list[str]) -> None:
    """Addresses from another IPAM plugin must not be Calico IPAM's nor another endpoint's on this host:
    Felix gives an address to one endpoint only, so a duplicate would cut off the workload that had it."""
    import ipaddress

    from libcalico.resources import Pools, WorkloadEndpoints

    for s in await Pools(client).list():
        if Pools.usable(s.value):
            net = ipaddress.ip_network(s.value.cidr)
            inside = [a for a in addrs if ipaddress.ip_address(a) in net]
            if inside:
                raise CniError(spec.IPAM_FAILED, f"ipam plugin {conf.ipam.type} gave {inside[0]}, inside Calico "
                                                 f"pool {s.value.cidr} that calico-ipam manages")
    for ep in await WorkloadEndpoints(client).list(conf.nodename):
        if (ep.key.host, ep.key.orchestrator, ep.key.workload, ep.key.endpoint) == tuple(key) or not ep.valid:
            continue
        used = {n.split("/")[0] for n in ep.value.ipv4_nets + ep.value.ipv6_nets}
        clash = [a for a in addrs if a in used]
        if clash:
            raise CniError(spec.IPAM_FAILED, f"ipam plugin {conf.ipam.type} gave {clash[0]}, already used by "
                                             f"endpoint {ep.path}")


async def cmd_del(env: dict[str, str], conf: cfg.NetConf) -> None:
    from libcalico import workload_attach as wa

    who = identify(env, need_netns=False)
    ref = _netns_ref(who.netns) if who.netns and os.path.exists(who.netns) else None
    async with _Client(conf) as client:
        es = _endpoint_spec(conf, who, ref)
        out = await wa.detach(client, es.key, netns_ref=ref, ifname=who.ifname, host_ifname=es.host_ifname,
                              handle=who.attachment if conf.ipam.type == "calico-ipam" else None,
                              owner={"container_id": who.container_id})
        if out.foreign:
            log.info("DEL %s: endpoint %s belongs to a newer container; left alone", who.container_id, es.key)
        if conf.ipam.type != "calico-ipam":
            delegate(env, conf, "DEL")
    log.info("DEL %s/%s: endpoint %s, veth %s, released %s", who.orchestrator, who.workload,
             "removed" if out.endpoint_found else "absent", "removed" if out.veth_deleted else "absent",
             ", ".join(out.released) or "nothing")


async def cmd_check(env: dict[str, str], conf: cfg.NetConf) -> None:
    from libcalico import workload_attach as wa

    if spec.version_tuple(conf.cni_version) < (0, 4, 0):
        raise CniError(spec.INCOMPATIBLE_VERSION, f"cniVersion: CHECK needs 0.4.0 or later, not {conf.cni_version}")
    who = identify(env, need_netns=True)
    prev = conf.raw.get("prevResult")
    if prev is None:
        raise CniError(spec.INVALID_CONFIG, "prevResult: CHECK needs the result of ADD")
    addrs = spec.result_ips(prev)
    if not os.path.exists(who.netns):
        raise CniError(spec.UNKNOWN_CONTAINER, f"CNI_NETNS: {who.netns} does not exist")
    async with _Client(conf) as client:
        es = _endpoint_spec(conf, who, _netns_ref(who.netns))
        ifaces = prev.get("interfaces") if isinstance(prev.get("interfaces"), list) else []
        mac = next((i.get("mac") for i in ifaces if isinstance(i, dict) and i.get("name") == who.ifname
                    and i.get("sandbox") and isinstance(i.get("mac"), str)), None)
        problems = await wa.verify(client, es, [a for a in addrs if ":" not in a], [a for a in addrs if ":" in a],
                                   mac=mac)
        from libcalico.resources import WorkloadEndpoints

        ep = await WorkloadEndpoints(client).get(*es.key)
        if ep is not None and ep.valid and (ep.value.model_extra or {}).get("container_id") != who.container_id:
            problems.append(f"endpoint record {ep.path} belongs to another container")
    if problems:
        raise CniError(spec.CHECK_FAILED, "; ".join(problems))


async def cmd_status(env: dict[str, str], conf: cfg.NetConf) -> None:
    async with _Client(conf) as client:
        try:
            await client.get("/calico/v1/Ready")
        except Exception as e:  # noqa: BLE001 - any failure means not available
            raise CniError(spec.PLUGIN_NOT_AVAILABLE, f"etcd_endpoints: datastore not reachable: {e}") from None


async def cmd_gc(env: dict[str, str], conf: cfg.NetConf) -> None:
    """Remove this network's endpoints on this node that the runtime no longer knows."""
    from libcalico import workload_attach as wa
    from libcalico.resources import WorkloadEndpoints

    valid = conf.raw.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list):
        raise cfg.bad("cni.dev/valid-attachments", "must be a list")
    keep = {(a.get("containerID"), a.get("ifname")) for a in valid if isinstance(a, dict)}
    async with _Client(conf) as client:
        for orch in ("cni", "k8s"):
            for ep in await WorkloadEndpoints(client).list(conf.nodename, orch):
                extra = ep.value.model_extra or {}
                if extra.get("network") != conf.name or (extra.get("container_id"), ep.key.endpoint) in keep:
                    continue
                attachment = ep.key.workload if ep.key.endpoint == "eth0" else f"{ep.key.workload}.{ep.key.endpoint}"
                await wa.detach(client, (ep.key.host, orch, ep.key.workload, ep.key.endpoint),
                                handle=attachment if conf.ipam.type == "calico-ipam" else None)
                log.info("GC: removed %s", ep.path)


async def _ipam_only(env: dict[str, str], conf: cfg.NetConf, command: str) -> dict[str, Any] | None:
    from calico_cni import ipam

    who = identify(env, need_netns=False)
    async with _Client(conf) as client:
        if command == "ADD":
            return await ipam.add(client, conf, who.attachment)
        if command == "DEL":
            await ipam.release(client, who.attachment)
    return None


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


async def dispatch(plugin: str, env: dict[str, str], conf: cfg.NetConf, command: str) -> dict[str, Any] | None:
    try:
        if plugin == "calico-ipam":
            if command in ("CHECK", "STATUS", "GC"):
                return None
            return await _ipam_only(env, conf, command)
        return await COMMANDS[command](env, conf)
    except CniError:
        raise
    except Exception as e:  # noqa: BLE001 - mapped to the spec's error object
        mapped = _datastore_error(e)
        if mapped is not None:
            raise mapped from None
        from libcalico.workload_attach import AttachError

        if isinstance(e, AttachError):
            raise CniError(spec.ATTACH_FAILED, str(e)) from None
        log.exception("%s %s failed", plugin, command)
        raise CniError(spec.IO_FAILURE, f"{type(e).__name__}: {e}") from None


def run(plugin: str, stdin: Any, stdout: Any, env: dict[str, str] | None = None) -> int:
    """One plugin call; returns the exit code after writing the answer to stdout."""
    env = spec.environ() if env is None else env
    version = spec.LATEST
    try:
        command = spec.env_var(env, "CNI_COMMAND")
        if command not in spec.COMMANDS:
            raise CniError(spec.INVALID_ENV, f"CNI_COMMAND: {command!r} is not one of {', '.join(spec.COMMANDS)}")
        if command == "VERSION":
            try:
                raw = spec.read_config(stdin)
            except CniError:
                raw = {}
            spec.emit(spec.version_answer(raw.get("cniVersion")), stdout)
            return 0
        raw = spec.read_config(stdin)
        if isinstance(raw.get("cniVersion"), str) and raw["cniVersion"] in spec.SUPPORTED:
            version = raw["cniVersion"]
        version = spec.check_version(raw)
        conf = cfg.parse(raw, version)
        _setup_logging(conf, plugin)
        cfg.etcd_config(conf)  # a bad etcd key is the config's error, before any other check
        import asyncio  # not at load time: VERSION needs no event loop

        result = asyncio.run(dispatch(plugin, env, conf, command))
        if result is not None:
            spec.emit(spec.convert(result, version), stdout)
        return 0
    except CniError as e:
        log.error("%s: %s (code %d)", plugin, e.msg, e.code)
        spec.emit(e.to_json(version), stdout)
        return 1


def exit_now(code: int) -> None:
    """End the process once the answer is out, skipping interpreter finalization.

    Tearing down the interpreter (every module's objects, the pydantic
    schemas) took longer than most of an ADD's own work, and a runtime waits
    for our exit, not our answer.  Nothing is left to run: the etcd
    connections are closed and the answer written, so only the streams and
    log files need flushing.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
    finally:
        os._exit(code)


def start() -> None:
    """Process set-up of the executables: no cyclic GC.

    A call lives well under a second and allocates mostly while importing
    (asyncio, pydantic), where the collector's passes find nothing to
    free yet cost about a tenth of the start-up; exit_now frees everything.
    """
    import gc

    gc.disable()
    # pydantic otherwise reads every installed distribution's entry points (importlib.metadata) the
    # first time it builds a validator, looking for plugins none of our programs use.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def main() -> int:
    start()
    exit_now(run("calico", sys.stdin.buffer, sys.stdout))
    return 0  # not reached
