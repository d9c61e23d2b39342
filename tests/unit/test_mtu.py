"""libcalico.mtu: the workload MTU rule, with fake `ip` output and a fake datastore."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from libcalico import mtu
from libcalico.models import Pool


def test_configured_wins_over_everything():
    assert mtu.choose(9000, {"vxlan"}, {"vxlan": 1400}, 1500) == 9000


@pytest.mark.parametrize("encaps,felix,uplink,want", [
    ({None}, {}, 1500, 1500),
    ({"vxlan"}, {}, 1500, 1450),
    ({"ipip"}, {}, 1500, 1480),
    ({"ipip", "vxlan", None}, {}, 1500, 1450),  # the most expensive encapsulation of any pool
    ({"vxlan"}, {"vxlan": 1410}, 1500, 1410),   # Felix's configured tunnel MTU
    ({"ipip"}, {"ipip": 1440}, 9000, 1440),
    ({"vxlan"}, {}, 9000, 8950),                # jumbo uplink
    (set(), {}, 1400, 1400),
])
def test_never_more_than_the_tunnel_carries(encaps, felix, uplink, want):
    assert mtu.choose(None, encaps, felix, uplink) == want


def _fake_ip(routes: list, links: list):
    def run(argv, **kw):
        out = routes if "route" in argv and "-4" in argv else [] if "route" in argv else links
        return subprocess.CompletedProcess(argv, 0, json.dumps(out), "")
    return run


def test_uplink_is_the_default_route_device():
    run = _fake_ip([{"dst": "default", "dev": "eth1"}],
                   [{"ifname": "lo", "mtu": 65536, "flags": ["UP"]}, {"ifname": "eth0", "mtu": 9000, "flags": ["UP"]},
                    {"ifname": "eth1", "mtu": 1400, "flags": ["UP"]}])
    assert mtu.uplink_mtu(run) == 1400


def test_uplink_without_default_route_ignores_workload_and_tunnel_devices():
    run = _fake_ip([], [{"ifname": "cali1", "mtu": 9000, "flags": ["UP"]},
                        {"ifname": "vxlan.calico", "mtu": 9000, "flags": ["UP"]},
                        {"ifname": "eth0", "mtu": 1500, "flags": ["UP"]}])
    assert mtu.uplink_mtu(run) == 1500
    assert mtu.uplink_mtu(_fake_ip([], [])) == mtu.DEFAULT_MTU


class FakeConfig:
    def __init__(self, values: dict[str, str]):
        self.values = values

    async def get(self, key: str) -> str | None:
        return self.values.get(key)


def test_felix_keys_host_over_global_and_bad_values_ignored():
    client = FakeConfig({"/calico/v1/config/VXLANMTU": "1400", "/calico/v1/host/h1/config/VXLANMTU": "1300",
                         "/calico/v1/config/IpInIpMtu": "lots"})
    assert asyncio.run(mtu.felix_mtu(client, "h1", "vxlan")) == 1300
    assert asyncio.run(mtu.felix_mtu(client, "h2", "vxlan")) == 1400
    assert asyncio.run(mtu.felix_mtu(client, "h1", "ipip")) is None
    pools = [Pool(cidr="10.0.0.0/16", vxlan="vxlan.calico"), Pool(cidr="10.1.0.0/16")]
    assert asyncio.run(mtu.workload_mtu(client, "h2", pools=pools, uplink=1500)) == 1400
    assert asyncio.run(mtu.workload_mtu(FakeConfig({}), "h2", pools=pools, uplink=1500)) == 1450
    assert asyncio.run(mtu.workload_mtu(client, "h2", configured=1200, pools=pools, uplink=1500)) == 1200
