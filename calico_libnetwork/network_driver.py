"""`calico`: Docker's NetworkDriver, a front door onto libcalico.workload_attach.

A Docker network is a Calico profile named after the network (created with
the classic defaults, allow from the same tag and all outbound, the first time
a container joins it); the label `org.projectcalico.profiles=a,b` appends
existing profiles.  Scope is `local`: every host creates the network itself,
and since the profile is named after the network's *name*, `calinet` on two
hosts is one Calico network.  Docker's CreateNetwork carries no name, so the
name is asked of Docker at the first CreateEndpoint (docker_api).

CreateEndpoint does all the work, through the same attach code as the CNI
plugin and `calicoctl container add` (host-side variant: Docker moves the
peer into the container): veth `cali...` + `tmp...`, MTU, profile, the
endpoint record (orchestrator and workload `libnetwork`, as the classic
driver wrote them).  Join only tells Docker which interface to take and that
the gateway is 169.254.1.1, reached by a static connected route.
DeleteEndpoint removes veth and record; addresses are Docker's to release
through the IPAM driver (it does, also after a failed `docker run`).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from calico_libnetwork.docker_api import DockerApi
from calico_libnetwork.ipam_driver import HANDLE_PREFIX, is_calico_ipam
from calico_libnetwork.protocol import DriverError, Handler, Request
from calico_libnetwork.records import NetworkRecord, Records
from libcalico import keys
from libcalico.datastore import DatastoreClient
from libcalico.ipam import Ipam
from libcalico.resources import WorkloadEndpoints
from libcalico.validation import validate_name
from libcalico.workload_attach import (
    GATEWAY_V4,
    AttachError,
    EndpointSpec,
    attach_host_side,
    detach,
    ensure_profile,
    veth_name,
)

log = logging.getLogger(__name__)

ORCHESTRATOR = "libnetwork"
WORKLOAD = "libnetwork"
DST_PREFIX = "eth"
PROFILES_LABEL = "org.projectcalico.profiles"
SCOPE = "local"


def peer_name(endpoint_id: str) -> str:
    return veth_name(endpoint_id, prefix="tmp")


def _id(req: Request, name: str) -> str:
    value = req.str_field(name, limit=128)
    try:
        validate_name(value, name)
    except ValueError as e:
        raise DriverError(f"{req.method}: {e}") from None
    return value


def _cidr(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_interface(text).network) if "/" in text else str(ipaddress.ip_network(text))
    except ValueError:
        raise DriverError(f"{what}: {text[:64]!r} is not a CIDR") from None


def _address(text: str, version: int) -> str:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise DriverError(f"CreateEndpoint: {text[:64]!r} is not an IPv{version} address") from None
    if iface.version != version:
        raise DriverError(f"CreateEndpoint: {text} is not an IPv{version} address")
    return str(iface.ip)


class NetworkDriver:
    def __init__(self, client: DatastoreClient, host: str, docker: DockerApi):
        self.client = client
        self.host = host
        self.docker = docker
        self.records = Records(client, host)

    def routes(self) -> dict[str, Handler]:
        return {
            "NetworkDriver.GetCapabilities": self.capabilities,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.leave,
            "NetworkDriver.DiscoverNew": self.nothing,
            "NetworkDriver.DiscoverDelete": self.nothing,
            "NetworkDriver.ProgramExternalConnectivity": self.nothing,
            "NetworkDriver.RevokeExternalConnectivity": self.nothing,
        }

    async def capabilities(self, req: Request) -> dict[str, Any]:
        return {"Scope": SCOPE, "ConnectivityScope": "global"}

    async def nothing(self, req: Request) -> dict[str, Any]:
        return {}

    # ---- networks -----------------------------------------------------------------

    async def create_network(self, req: Request) -> dict[str, Any]:
        network_id = _id(req, "NetworkID")
        subnets: list[str] = []
        calico_ipam: bool | None = None
        for version in (4, 6):
            data = req.list_field(f"IPv{version}Data")
            if len(data) > 1:
                raise DriverError(f"a Calico network takes at most one IPv{version} subnet ({len(data)} given)")
            for entry in data:
                if not isinstance(entry, dict):
                    raise DriverError(f"CreateNetwork: IPv{version}Data entries must be objects")
                pool = entry.get("Pool")
                gateway = entry.get("Gateway") or ""
                if not isinstance(pool, str) or not isinstance(gateway, str):
                    raise DriverError(f"CreateNetwork: IPv{version}Data Pool and Gateway must be strings")
                ours = is_calico_ipam(gateway)
                if calico_ipam is not None and ours != calico_ipam:
                    raise DriverError("CreateNetwork: IPv4 and IPv6 must use the same IPAM driver")
                calico_ipam = ours
                subnets.append(_cidr(pool, f"IPv{version}Data Pool"))
        rec = NetworkRecord(network_id, bool(calico_ipam), subnets)
        await self.records.put_network(rec)
        log.info("network %s: %s IPAM, subnets %s", network_id[:12], "calico" if rec.calico_ipam else "Docker's",
                 ", ".join(subnets) or "none")
        return {}

    async def delete_network(self, req: Request) -> dict[str, Any]:
        network_id = _id(req, "NetworkID")
        rec = await self.records.network(network_id)
        await self.records.delete_network(network_id)
        if rec is None or not rec.name:
            return {}
        # The profile goes with the last network of this name on any host, if we made it and nobody uses it.
        if await self.records.networks_named(rec.name) or not await self.records.profile_marked(rec.name):
            return {}
        for ep in await WorkloadEndpoints(self.client).list():
            if ep.valid and rec.name in ep.value.profile_ids:
                log.info("profile %s still used by %s; kept", rec.name, ep.path)
                return {}
        await self.client.delete_prefix(keys.profile_dir(rec.name))
        await self.records.unmark_profile(rec.name)
        log.info("network %s (%s) removed with its profile", rec.name, network_id[:12])
        return {}

    async def _record(self, network_id: str) -> NetworkRecord:
        rec = await self.records.network(network_id)
        if rec is None:
            raise DriverError(f"network {network_id[:12]} is unknown to the Calico driver on {self.host}; "
                              "remove and re-create the Docker network")
        return rec

    async def _named(self, req: Request, rec: NetworkRecord) -> dict[str, str]:
        """Name the record (from Docker) on first use; returns the network's current labels."""
        network_id = rec.network_id
        info = await self.docker.network(network_id, req.peer_pid)
        if not rec.name:
            try:
                validate_name(info.name, "network name")
                keys.profile_dir(info.name)
            except ValueError as e:
                raise DriverError(f"Docker network name cannot name a Calico profile: {e}") from None
            rec.name = info.name
            await self.records.put_network(rec)
        return info.labels

    async def _extra_profiles(self, labels: dict[str, str]) -> list[str]:
        raw = labels.get(PROFILES_LABEL, "")
        extra = [p.strip() for p in raw.split(",") if p.strip()]
        if len(extra) > 32:
            raise DriverError(f"label {PROFILES_LABEL}: at most 32 profiles ({len(extra)} given)")
        for p in extra:
            try:
                validate_name(p, "profile name")
                keys.profile_dir(p)
            except ValueError as e:
                raise DriverError(f"label {PROFILES_LABEL}: {e}") from None
            _, kvs = await self.client.get_prefix(keys.profile_dir(p))
            if not kvs:
                raise DriverError(f"label {PROFILES_LABEL} names profile {p}, which does not exist "
                                  f"(create it with 'calicoctl profile add {p}')")
        return extra

    async def _check_owner(self, rec: NetworkRecord, ips: list[str]) -> None:
        """An address must be one calico-ipam handed to Docker, or (Docker's IPAM) none Calico gave away.

        Otherwise the endpoint would pull another workload's address (and its
        traffic) onto this host.
        """
        ipam = Ipam(self.client)
        for ip in ips:
            held = await ipam.get_assignment(ip)
            handle = str((held or {}).get("handle") or "")
            if rec.calico_ipam and not handle.startswith(HANDLE_PREFIX):
                raise DriverError(f"address {ip} was not handed out by calico-ipam "
                                  f"({'it belongs to ' + handle if handle else 'it is not assigned'})")
            if not rec.calico_ipam and held is not None:
                raise DriverError(f"address {ip} from Docker's IPAM is already used by a Calico workload "
                                  f"({handle}); give the network a --subnet outside the Calico pools")

    # ---- endpoints ----------------------------------------------------------------

    def _spec(self, endpoint_id: str, profiles: list[str]) -> EndpointSpec:
        return EndpointSpec(host=self.host, orchestrator=ORCHESTRATOR, workload=WORKLOAD, endpoint=endpoint_id,
                            host_ifname=veth_name(endpoint_id), profiles=profiles)

    async def create_endpoint(self, req: Request) -> dict[str, Any]:
        network_id = _id(req, "NetworkID")
        endpoint_id = _id(req, "EndpointID")
        iface = req.dict_field("Interface")
        raw4, raw6 = iface.get("Address") or "", iface.get("AddressIPv6") or ""
        if not isinstance(raw4, str) or not isinstance(raw6, str):
            raise DriverError("CreateEndpoint: Interface addresses must be strings")
        v4 = [_address(raw4, 4)] if raw4 else []
        v6 = [_address(raw6, 6)] if raw6 else []
        if not v4 and not v6:
            raise DriverError("CreateEndpoint: Docker gave the container no address (does the network have a subnet?)")
        rec = await self._record(network_id)
        await self._check_owner(rec, v4 + v6)
        extra = await self._extra_profiles(await self._named(req, rec))
        profiles = [rec.name] + [p for p in extra if p != rec.name]
        if await ensure_profile(self.client, rec.name):
            await self.records.mark_profile(rec.name, network_id)
        try:
            attached = await attach_host_side(self.client, self._spec(endpoint_id, profiles), v4, v6,
                                              peer_name(endpoint_id))
        except AttachError as e:
            raise DriverError(f"cannot attach the container to {rec.name}: {e}") from None
        log.info("endpoint %s on %s: %s via %s", endpoint_id[:12], rec.name, ", ".join(v4 + v6),
                 attached.host_ifname)
        mac = iface.get("MacAddress")
        return {"Interface": {} if mac else {"MacAddress": attached.mac}}

    async def delete_endpoint(self, req: Request) -> dict[str, Any]:
        _id(req, "NetworkID")
        endpoint_id = _id(req, "EndpointID")
        await detach(self.client, (self.host, ORCHESTRATOR, WORKLOAD, endpoint_id),
                     host_ifname=veth_name(endpoint_id))
        return {}

    async def endpoint_oper_info(self, req: Request) -> dict[str, Any]:
        _id(req, "NetworkID")
        endpoint_id = _id(req, "EndpointID")
        ep = await WorkloadEndpoints(self.client).get(self.host, ORCHESTRATOR, WORKLOAD, endpoint_id)
        if ep is None or not ep.valid:
            return {"Value": {}}
        return {"Value": {"Interface": ep.value.name, "Profiles": list(ep.value.profile_ids)}}

    async def join(self, req: Request) -> dict[str, Any]:
        _id(req, "NetworkID")
        endpoint_id = _id(req, "EndpointID")
        ep = await WorkloadEndpoints(self.client).get(self.host, ORCHESTRATOR, WORKLOAD, endpoint_id)
        if ep is None or not ep.valid:
            raise DriverError(f"endpoint {endpoint_id[:12]} has no Calico record on {self.host} "
                              "(was it removed meanwhile?); start the container again")
        reply: dict[str, Any] = {"InterfaceName": {"SrcName": peer_name(endpoint_id), "DstPrefix": DST_PREFIX}}
        routes = []
        if ep.value.ipv4_nets:
            reply["Gateway"] = GATEWAY_V4
            routes.append({"Destination": f"{GATEWAY_V4}/32", "RouteType": 1, "NextHop": ""})
        gw6 = getattr(ep.value, "ipv6_gateway", None)
        if ep.value.ipv6_nets and gw6:
            reply["GatewayIPv6"] = str(gw6)
            routes.append({"Destination": f"{gw6}/128", "RouteType": 1, "NextHop": ""})
        reply["StaticRoutes"] = routes
        reply["DisableGatewayService"] = False
        return reply

    async def leave(self, req: Request) -> dict[str, Any]:
        _id(req, "NetworkID")
        _id(req, "EndpointID")
        return {}  # DeleteEndpoint, which always follows, removes the pair and the record
