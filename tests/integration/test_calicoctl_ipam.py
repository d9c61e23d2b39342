"""`calicoctl ipam info|release` against addresses the real IPAM assigned in a real etcd."""

from __future__ import annotations

import asyncio

from tests.integration.test_calicoctl_datastore import ctl, ok


def test_ipam_info_and_release(etcd_env):
    from libcalico.datastore import DatastoreClient
    from libcalico.ipam import Ipam

    ok("pool", "add", "10.65.0.0/24")

    async def assign() -> list[str]:
        client = DatastoreClient(endpoints=[etcd_env.endpoint])
        try:
            v4, _ = await Ipam(client).auto_assign("node-a", "wl-handle-1", num4=2)
            return v4
        finally:
            await client.close()

    ips = asyncio.run(assign())
    assert len(ips) == 2
    ip, other = ips

    info = ok("ipam", "info", ip)
    assert f"IP {ip} is in use" in info and "wl-handle-1" in info
    assert "not currently assigned" in ok("ipam", "info", "10.65.0.250")

    assert f"Released IP {ip}" in ok("ipam", "release", ip)
    assert "not currently assigned" in ok("ipam", "info", ip)
    assert "is in use" in ok("ipam", "info", other)  # its neighbour is untouched
    r = ctl("ipam", "release", ip)
    assert r.rc == 1 and ip in r.err and r.err.count("\n") == 1
