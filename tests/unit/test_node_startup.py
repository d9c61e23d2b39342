"""calico-node startup logic against an in-memory datastore (the real-etcd runs are in tests/integration)."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from calico_node import autodetect, settings, startup
from libcalico import keys
from libcalico.datastore import KV, Compare, DatastoreUnavailable, Put


class MemStore:
    """Just the DatastoreClient calls startup makes, over a dict (with etcd's mod revisions)."""

    def __init__(self, data: dict[str, str] | None = None, fail: int = 0):
        self.data = dict(data or {})
        self.mods = dict.fromkeys(self.data, 1)
        self.fail = fail  # the first `fail` calls raise DatastoreUnavailable
        self.rev = 1
        self.closed = 0
        self.before_txn = None  # a hook run just before a transaction applies (a concurrent writer)

    def _maybe_fail(self):
        if self.fail:
            self.fail -= 1
            raise DatastoreUnavailable("get: etcd unavailable (test)")

    async def get(self, key):
        self._maybe_fail()
        return self.data.get(key)

    async def get_kv(self, key):
        self._maybe_fail()
        return KV(key, self.data[key], self.mods[key], self.mods[key]) if key in self.data else None

    async def put(self, key, value):
        self.rev += 1
        self.data[key] = value
        self.mods[key] = self.rev
        return self.rev

    async def put_if_absent(self, key, value):
        if key in self.data:
            return False
        await self.put(key, value)
        return True

    async def delete(self, key):
        self.mods.pop(key, None)
        return self.data.pop(key, None) is not None

    async def get_prefix(self, prefix):
        return self.rev, [KV(k, v, 1, self.mods[k]) for k, v in sorted(self.data.items()) if k.startswith(prefix)]

    def _holds(self, c) -> bool:
        key = c.key.decode()
        if c.range_end is None:
            found = [key] if key in self.data else []
        else:
            end = c.range_end.decode()
            found = [k for k in self.data if key <= k < end]
        assert isinstance(c, Compare) and c.target == "mod" and c.op == "LESS", "only unchanged_since is modelled"
        return all(self.mods[k] < c.value for k in found)

    async def txn(self, compare, success, failure, what=""):
        if self.before_txn:
            hook, self.before_txn = self.before_txn, None
            await hook(self)
        if not all(self._holds(c) for c in compare):
            return False, []
        out = []
        for op in success:
            if isinstance(op, Put):
                await self.put(op.key.decode(), op.value.decode())
                out.append(None)
            else:
                out.append(int(await self.delete(op.key.decode())))
        return True, out

    async def close(self):
        self.closed += 1


class MemIpam:
    """Hands out addresses from the given pools in order; records releases."""

    def __init__(self):
        self.assigned: dict[str, str] = {}
        self.released: list[str] = []

    async def auto_assign(self, host, handle, num4=0, num6=0, pools=None):
        for cidr in pools or []:
            for ip in ipaddress.ip_network(cidr).hosts():
                if str(ip) not in self.assigned:
                    self.assigned[str(ip)] = handle
                    return [str(ip)], []
        return [], []

    async def get_assignment(self, ip):
        return {"ip": ip, "handle": self.assigned[ip]} if ip in self.assigned else None

    async def assign(self, ip, handle, host):
        if ip in self.assigned:
            raise ValueError(f"{ip}: already assigned")
        self.assigned[ip] = handle

    async def release_ips(self, ips):
        for ip in ips:
            self.assigned.pop(ip, None)
            self.released.append(ip)
        return []


def cfg(**env) -> settings.NodeSettings:
    base = {"NODENAME": "node1", "IP": "10.0.0.1"}
    base.update(env)
    return settings.from_env(base)


ADDRS = [
    autodetect.Address("lo", 4, "127.0.0.1", 8, "host"),
    autodetect.Address("docker0", 4, "172.17.0.1", 16, "global"),
    autodetect.Address("cali123", 4, "169.254.1.1", 32, "global"),
    autodetect.Address("eth0", 6, "fe80::1", 64, "link"),
    autodetect.Address("eth0", 4, "10.0.0.7", 24, "global"),
    autodetect.Address("eth1", 4, "10.1.0.7", 24, "global"),
    autodetect.Address("eth1", 6, "2001:db8::7", 64, "global"),
]


def test_settings_validation_names_the_variable():
    for env, var in (({"IP": "10.0.0.300"}, "IP"), ({"IP6": "10.0.0.1"}, "IP6"), ({"AS": "abc"}, "AS"),
                     ({"AS": "0"}, "AS"), ({"NODENAME": "a/b"}, "NODENAME"),
                     ({"CALICO_NETWORKING": "maybe"}, "CALICO_NETWORKING"),
                     ({"CALICO_LOG_MAX_BYTES": "10"}, "CALICO_LOG_MAX_BYTES"),
                     ({"CALICO_RUN_DIR": "relative/dir"}, "CALICO_RUN_DIR"),
                     ({"IP_AUTODETECT_INTERFACE": "eth["}, "IP_AUTODETECT_INTERFACE")):
        with pytest.raises(settings.SettingsError, match=f"^{var}"):
            cfg(**env)


def test_settings_defaults_and_nodename_precedence():
    s = settings.from_env({"HOSTNAME": "h", "NODENAME": "n", "IP": "", "AS": "65001"})
    assert (s.nodename, s.ip, s.ip6, s.as_num) == ("n", settings.AUTODETECT, "", 65001)
    assert s.networking and not s.disable_file_logging and not s.wait_for_datastore
    assert (s.run_dir, s.log_dir, s.log_max_bytes, s.log_backups) == ("/var/run/calico", "/var/log/calico",
                                                                       10 * 1024 * 1024, 5)
    assert settings.from_env({"HOSTNAME": "h", "IP": "autodetect"}).nodename == "h"
    assert not settings.from_env({"HOSTNAME": "h", "CALICO_NETWORKING": "false"}).networking


def test_autodetect_skips_excluded_interfaces_and_non_global_scopes():
    assert autodetect.choose(ADDRS, 4).address == "10.0.0.7"
    assert autodetect.choose(ADDRS, 6).address == "2001:db8::7"
    assert autodetect.choose(ADDRS, 4, re.compile("eth1")).address == "10.1.0.7"
    assert autodetect.choose(ADDRS, 4, re.compile("wlan.*")) is None
    assert autodetect.choose(ADDRS[:4], 4) is None


def test_parse_ip_json():
    text = json.dumps([{"ifname": "eth0", "addr_info": [
        {"family": "inet", "local": "10.0.0.7", "prefixlen": 24, "scope": "global"},
        {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
        {"ifname": "x", "addr_info": [{"family": "bridge"}]}])
    assert autodetect.parse_ip_json(text) == [autodetect.Address("eth0", 4, "10.0.0.7", 24, "global"),
                                               autodetect.Address("eth0", 6, "fe80::1", 64, "link")]


def test_resolve_ips_autodetects_only_when_asked():
    assert startup.resolve_ips(cfg(IP="autodetect", IP6="autodetect"), lambda: ADDRS) == \
        startup.StartupResult("10.0.0.7", "2001:db8::7")
    assert startup.resolve_ips(cfg(), lambda: pytest.fail("read without autodetect")) == \
        startup.StartupResult("10.0.0.1", "")
    with pytest.raises(startup.StartupError, match="^IP: no global IPv4"):
        startup.resolve_ips(cfg(IP=""), lambda: ADDRS[:3])


async def test_defaults_written_once_and_never_overwritten():
    store = MemStore({keys.bgp_global_as(): "65000", keys.global_config("LogSeverityScreen"): "debug"})
    await startup.ensure_defaults(store)
    assert store.data[keys.bgp_global_as()] == "65000"
    assert store.data[keys.global_config("LogSeverityScreen")] == "debug"
    assert store.data[keys.READY] == "true"
    assert store.data[keys.global_config("InterfacePrefix")] == "cali"
    assert json.loads(store.data[keys.bgp_node_mesh()]) == {"enabled": True}
    assert store.data[keys.global_config("ReportingIntervalSecs")] == "0"


async def test_register_host_and_as_deleted_when_unset():
    store = MemStore()
    await startup.register_host(store, cfg(AS="65010"), startup.StartupResult("10.0.0.1", "2001:db8::1"))
    assert store.data[keys.host_bird_ip("node1")] == "10.0.0.1"
    assert store.data[keys.bgp_host_ip("node1", 4)] == "10.0.0.1"
    assert store.data[keys.bgp_host_ip("node1", 6)] == "2001:db8::1"
    assert store.data[keys.bgp_host_as("node1")] == "65010"
    await startup.register_host(store, cfg(), startup.StartupResult("10.0.0.1", ""))
    assert keys.bgp_host_as("node1") not in store.data
    assert store.data[keys.bgp_host_ip("node1", 6)] == ""


async def test_ip_conflict_refused_but_own_old_registration_is_fine():
    data = {keys.bgp_host_ip("other", 4): "10.0.0.1", keys.bgp_host_ip("node1", 4): "10.0.0.1"}
    with pytest.raises(startup.StartupError, match="already used by node 'other'"):
        await startup.register_host(MemStore(data), cfg(), startup.StartupResult("10.0.0.1", ""))
    await startup.register_host(MemStore({keys.bgp_host_ip("other", 4): "10.0.0.1"}), cfg(NODENAME="other"),
                                startup.StartupResult("10.0.0.1", ""))
    data = {keys.bgp_host_ip("other", 6): "2001:db8::1", keys.bgp_host_ip("other", 4): "10.0.0.9"}
    with pytest.raises(startup.StartupError, match="IP6 2001:db8::1"):
        await startup.register_host(MemStore(data), cfg(), startup.StartupResult("10.0.0.1", "2001:db8::1"))


async def test_register_rechecks_when_another_node_registers_concurrently():
    """The conflict check and the write are one guarded transaction: a node that
    registers our IP between them makes the write fail, and the re-check refuses."""
    store = MemStore()

    async def racer(s):
        await s.put(keys.bgp_host_ip("other", 4), "10.0.0.1")
    store.before_txn = racer
    with pytest.raises(startup.StartupError, match="already used by node 'other'"):
        await startup.register_host(store, cfg(), startup.StartupResult("10.0.0.1", ""))
    assert keys.bgp_host_ip("node1", 4) not in store.data and keys.host_bird_ip("node1") not in store.data

    store = MemStore()

    async def unrelated(s):
        await s.put(keys.bgp_host_ip("third", 4), "10.0.0.3")
    store.before_txn = unrelated
    await startup.register_host(store, cfg(), startup.StartupResult("10.0.0.1", ""))
    assert store.data[keys.bgp_host_ip("node1", 4)] == "10.0.0.1"


async def test_default_pools_unless_disabled_or_pools_exist():
    store = MemStore()
    await startup.ensure_default_pools(store, cfg(NO_DEFAULT_POOLS="true"))
    assert not store.data
    await startup.ensure_default_pools(store, cfg())
    assert json.loads(store.data[keys.pool("192.168.0.0/16")])["cidr"] == "192.168.0.0/16"
    assert keys.pool("fd80:24e2:f998:72d6::/64") in store.data
    store = MemStore({keys.pool("10.65.0.0/16"): json.dumps({"cidr": "10.65.0.0/16"})})
    await startup.ensure_default_pools(store, cfg())
    assert keys.pool("192.168.0.0/16") not in store.data
    store = MemStore()

    async def operator(s):  # an operator's pool lands between the read and the write
        await s.put(keys.pool("10.66.0.0/16"), json.dumps({"cidr": "10.66.0.0/16"}))
    store.before_txn = operator
    await startup.ensure_default_pools(store, cfg())
    assert keys.pool("192.168.0.0/16") not in store.data and keys.pool("10.66.0.0/16") in store.data


async def test_tunnel_addresses_follow_pool_kinds():
    ipam = MemIpam()
    store = MemStore({keys.pool("10.65.0.0/16"): json.dumps({"cidr": "10.65.0.0/16", "ipip": "tunl0"}),
                      keys.pool("10.66.0.0/16"): json.dumps({"cidr": "10.66.0.0/16"}),
                      keys.pool("10.67.0.0/16"): "{not json"})
    out = await startup.ensure_tunnel_addrs(store, "node1", lambda c: ipam)
    ipip = out["IpInIpTunnelAddr"]
    assert ipip and ipaddress.ip_address(ipip) in ipaddress.ip_network("10.65.0.0/16")
    assert out["VXLANTunnelAddr"] is None
    assert store.data[keys.host_config("node1", "IpInIpTunnelAddr")] == ipip
    # Kept on a restart.
    assert (await startup.ensure_tunnel_addrs(store, "node1", lambda c: ipam))["IpInIpTunnelAddr"] == ipip
    # The IPIP pool becomes VXLAN: the IPIP address is released, a VXLAN one allocated.
    store.data[keys.pool("10.65.0.0/16")] = json.dumps({"cidr": "10.65.0.0/16", "vxlan": "vxlan.calico"})
    out = await startup.ensure_tunnel_addrs(store, "node1", lambda c: ipam)
    assert out["IpInIpTunnelAddr"] is None and ipip in ipam.released
    assert keys.host_config("node1", "IpInIpTunnelAddr") not in store.data
    assert store.data[keys.host_config("node1", "VXLANTunnelAddr")] == out["VXLANTunnelAddr"]


async def test_no_ipam_needed_without_overlay_pools():
    store = MemStore({keys.pool("10.66.0.0/16"): json.dumps({"cidr": "10.66.0.0/16"})})
    out = await startup.ensure_tunnel_addrs(store, "node1", lambda c: pytest.fail("IPAM used"))
    assert out == {"IpInIpTunnelAddr": None, "VXLANTunnelAddr": None}


async def test_connect_fails_fast_or_waits():
    with pytest.raises(startup.StartupError, match="cannot reach the datastore at http://x:1.*WAIT_FOR_DATASTORE"):
        await startup.connect(cfg(ETCD_ENDPOINTS="http://x:1"), lambda: MemStore(fail=1))
    stores = [MemStore(fail=1), MemStore(fail=1), MemStore()]
    it = iter(stores)
    client = await startup.connect(cfg(WAIT_FOR_DATASTORE="true"), lambda: next(it))
    assert client is stores[2] and stores[0].closed == 1


def test_ip_forwarding_written(tmp_path):
    for p in ("net/ipv4", "net/ipv6/conf/all"):
        (tmp_path / p).mkdir(parents=True)
    startup.enable_ip_forwarding(True, str(tmp_path))
    assert (tmp_path / "net/ipv4/ip_forward").read_text() == "1\n"
    assert (tmp_path / "net/ipv6/conf/all/forwarding").read_text() == "1\n"


async def test_tunnel_address_assignment_checked_in_ipam():
    ipam = MemIpam()
    pool = {keys.pool("10.65.0.0/16"): json.dumps({"cidr": "10.65.0.0/16", "vxlan": "vxlan.calico"})}
    key = keys.host_config("node1", "VXLANTunnelAddr")
    # Lost assignment: re-recorded under our handle, address kept.
    store = MemStore(dict(pool, **{key: "10.65.3.3"}))
    out = await startup.ensure_tunnel_addrs(store, "node1", lambda c: ipam)
    assert out["VXLANTunnelAddr"] == "10.65.3.3" and ipam.assigned["10.65.3.3"] == "vxlan-tunnel-addr-node1"
    # Someone else's address: never released, a fresh one allocated.
    ipam.assigned["10.65.4.4"] = "workload-x"
    store = MemStore(dict(pool, **{key: "10.65.4.4"}))
    out = await startup.ensure_tunnel_addrs(store, "node1", lambda c: ipam)
    assert out["VXLANTunnelAddr"] not in ("10.65.4.4", None)
    assert ipam.assigned["10.65.4.4"] == "workload-x" and "10.65.4.4" not in ipam.released
