"""`calico-ipam`: Docker's IpamDriver over Calico's IPAM (libcalico.ipam).

Docker asks for a pool when a network is created and for one address per
container.  Without `--subnet` the network draws from every enabled Calico
pool (the fixed pool ids below, as the classic driver used); with `--subnet`
that CIDR must be an existing Calico pool and addresses come from it alone.
Addresses are handed out as /32 (/128) with a dummy gateway of 0.0.0.0/0, so
Docker neither reserves a gateway address nor believes the pool is on-link:
the container's gateway is 169.254.1.1 on its veth, set up by the network
driver.  Each address gets its own IPAM handle; Docker releases by address.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from calico_libnetwork.protocol import DriverError, Handler, Request
from libcalico.datastore import DatastoreClient
from libcalico.ipam import Ipam, IpamError
from libcalico.resources import Pools

POOL_ID = {4: "CalicoPoolIPv4", 6: "CalicoPoolIPv6"}
ANY = {4: "0.0.0.0/0", 6: "::/0"}
LOCAL_SPACE = "CalicoLocalAddressSpace"
GLOBAL_SPACE = "CalicoGlobalAddressSpace"
GATEWAY_OPTION = "com.docker.network.gateway"
ADDRESS_TYPE_OPTION = "RequestAddressType"
HANDLE_PREFIX = "libnetwork."


def is_calico_ipam(gateway: str) -> bool:
    """The network driver's test: a network whose gateway is our dummy 0/0 gets its addresses from us."""
    return gateway in (ANY[4], ANY[6])


class IpamDriver:
    def __init__(self, client: DatastoreClient, host: str):
        self.client = client
        self.host = host
        self.ipam = Ipam(client)

    def routes(self) -> dict[str, Handler]:
        return {
            "IpamDriver.GetCapabilities": self.capabilities,
            "IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.release_pool,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    async def capabilities(self, req: Request) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def address_spaces(self, req: Request) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}

    async def _pool(self, cidr: str, version: int, what: str) -> str:
        """The usable Calico pool with exactly this CIDR, else a refusal saying how to make one."""
        for pool in await Pools(self.client).for_ipam(version):
            if ipaddress.ip_network(pool.cidr) == ipaddress.ip_network(cidr):
                return str(ipaddress.ip_network(pool.cidr))
        raise DriverError(f"{what} {cidr} is not an enabled Calico IP pool: create it first with "
                          f"'calicoctl pool add {cidr}' (calico-ipam hands out addresses from Calico pools only)")

    async def request_pool(self, req: Request) -> dict[str, Any]:
        v6 = req.body.get("V6", False)
        if not isinstance(v6, bool):
            raise DriverError("RequestPool: V6 must be true or false")
        version = 6 if v6 else 4
        if req.str_field("SubPool", required=False):
            raise DriverError("calico-ipam does not support --ip-range: addresses come from the whole Calico pool "
                              "(create a smaller pool with 'calicoctl pool add' and use it as --subnet)")
        subnet = req.str_field("Pool", required=False, limit=64)
        if not subnet:
            return {"PoolID": POOL_ID[version], "Pool": ANY[version], "Data": {GATEWAY_OPTION: ANY[version]}}
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except ValueError:
            raise DriverError(f"--subnet {subnet!r} is not a network CIDR (like 10.68.0.0/16)") from None
        if net.version != version:
            raise DriverError(f"--subnet {subnet} is not an IPv{version} network")
        cidr = await self._pool(str(net), version, "--subnet")
        return {"PoolID": cidr, "Pool": cidr, "Data": {GATEWAY_OPTION: ANY[version]}}

    async def release_pool(self, req: Request) -> dict[str, Any]:
        req.str_field("PoolID")  # nothing to free: pools belong to calicoctl, not to Docker networks
        return {}

    def _pool_id(self, pool_id: str) -> tuple[int, str | None]:
        for version, fixed in POOL_ID.items():
            if pool_id == fixed:
                return version, None
        try:
            net = ipaddress.ip_network(pool_id, strict=True)
        except ValueError:
            raise DriverError(f"RequestAddress: unknown pool {pool_id!r} (not made by calico-ipam)") from None
        return net.version, str(net)

    async def request_address(self, req: Request) -> dict[str, Any]:
        version, subnet = self._pool_id(req.str_field("PoolID", limit=64))
        options = req.dict_field("Options")
        wanted = req.str_field("Address", required=False, limit=64)
        if options.get(ADDRESS_TYPE_OPTION) == GATEWAY_OPTION:
            raise DriverError("--gateway is not supported with calico-ipam: a Calico container's gateway is "
                              "169.254.1.1 on its own interface")
        if subnet is not None:
            try:
                await self._pool(subnet, version, "the network's subnet")
            except DriverError as e:
                raise DriverError(f"{e}; re-create the pool or the network") from None
        handle = f"{HANDLE_PREFIX}{uuid.uuid4().hex}"
        plen = 32 if version == 4 else 128
        if wanted:
            try:
                addr = ipaddress.ip_address(wanted)
            except ValueError:
                raise DriverError(f"--ip {wanted!r} is not an IP address") from None
            if addr.version != version:
                raise DriverError(f"--ip {wanted} is not an IPv{version} address")
            if subnet is not None and addr not in ipaddress.ip_network(subnet):
                raise DriverError(f"--ip {addr} is not in the network's subnet {subnet}")
            try:
                await self.ipam.assign(str(addr), handle, self.host)
            except IpamError as e:
                if await self.ipam.get_assignment(str(addr)) is not None:
                    raise DriverError(f"address {addr} is already in use (by another container or workload); "
                                      "pick a free one or leave out --ip") from None
                raise DriverError(f"--ip {addr}: {e}") from None
            return {"Address": f"{addr}/{plen}", "Data": {}}
        pools = [subnet] if subnet is not None else None
        where = f"Calico pool {subnet}" if subnet else f"enabled IPv{version} Calico pools"
        try:
            v4, v6 = await self.ipam.auto_assign(self.host, handle, 1 if version == 4 else 0,
                                                 1 if version == 6 else 0, pools=pools)
        except IpamError as e:
            await self.ipam.release_handle(handle)
            raise DriverError(f"no free address in the {where} ({e})") from None
        except BaseException:
            await self.ipam.release_handle(handle)
            raise
        got = v4 + v6
        if not got:
            await self.ipam.release_handle(handle)
            raise DriverError(f"no free address in the {where} (see 'calicoctl pool show' and 'calicoctl ipam')")
        ip = str(got[0]).split("/")[0]
        return {"Address": f"{ip}/{plen}", "Data": {}}

    async def release_address(self, req: Request) -> dict[str, Any]:
        req.str_field("PoolID", limit=64)
        raw = req.str_field("Address", limit=64)
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            raise DriverError(f"ReleaseAddress: {raw!r} is not an IP address") from None
        if addr.is_unspecified:
            return {}  # the dummy gateway Docker hands back when a network goes
        await self.ipam.release_ips([str(addr)])  # releasing a free address is a no-op
        return {}
