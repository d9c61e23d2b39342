"""calico-node's Calico 3.x environment: autodetection methods, default pools, backend, router id.

Pure parsing and choosing; the same methods against a real namespace's interfaces are in
tests/integration/test_node_env_autodetect.py.
"""

from __future__ import annotations

import re

import pytest

from calico_node import autodetect, default_pools, settings, startup, supervisor
from calico_node.autodetect import Address
from libcalico import router_id

BASE = {"NODENAME": "n1", "IP": "10.0.0.1"}


def env(**kw: str) -> dict[str, str]:
    return dict(BASE, **kw)


ADDRS = [
    Address("lo", 4, "127.0.0.1", 8, "host"),
    Address("docker0", 4, "172.17.0.1", 16, "global"),
    Address("eth0", 4, "10.0.0.5", 24, "global"),
    Address("eth1", 4, "192.168.7.9", 24, "global"),
    Address("ens3", 4, "172.30.1.2", 24, "global"),
    Address("eth0", 6, "fe80::1", 64, "link"),
    Address("eth0", 6, "2001:db8::5", 64, "global"),
    Address("eth1", 6, "2001:db8:1::9", 64, "global"),
]


def method(text: str, family: int = 4) -> autodetect.Method:
    name = "IP_AUTODETECTION_METHOD" if family == 4 else "IP6_AUTODETECTION_METHOD"
    return getattr(settings.from_env(env(IP="autodetect", IP6="autodetect", **{name: text})),
                   f"autodetect{family}")


@pytest.mark.parametrize("text, family, want", [
    ("first-found", 4, "10.0.0.5"),
    ("", 4, "10.0.0.5"),
    ("interface=eth1", 4, "192.168.7.9"),
    ("interface=ens.*", 4, "172.30.1.2"),
    ("interface=nomatch,eth1", 4, "192.168.7.9"),
    ("interface=docker0", 4, "172.17.0.1"),  # asked by name: the default exclusions do not apply
    ("skip-interface=eth0", 4, "192.168.7.9"),
    ("skip-interface=eth.*,ens3", 4, None),
    ("cidr=172.30.0.0/16", 4, "172.30.1.2"),
    ("cidr=10.9.0.0/16, 192.168.0.0/16", 4, "192.168.7.9"),
    ("first-found", 6, "2001:db8::5"),
    ("interface=eth1", 6, "2001:db8:1::9"),
    ("cidr=2001:db8:1::/48", 6, "2001:db8:1::9"),
    ("skip-interface=eth0", 6, "2001:db8:1::9"),
])
def test_methods_choose_like_calico(text, family, want):
    found = autodetect.choose_by(method(text, family), ADDRS, family)
    assert (found.address if found else None) == want


def test_can_reach_picks_the_address_the_route_uses():
    asked = []

    def source(dest: str, family: int) -> str:
        asked.append((dest, family))
        return "192.168.7.9"
    m = method("can-reach=8.8.8.8")
    assert autodetect.choose_by(m, ADDRS, 4, source).ifname == "eth1"
    assert asked == [("8.8.8.8", 4)]
    assert method("can-reach=www.example.com").dest == "www.example.com"
    assert autodetect.choose_by(m, ADDRS, 4, lambda d, f: "10.1.1.1") is None  # not ours: nothing


def test_classic_interface_variable_still_matches_whole_names():
    s = settings.from_env(env(IP="autodetect", IP_AUTODETECT_INTERFACE="eth"))
    assert autodetect.choose_by(s.autodetect4, ADDRS, 4) is None  # "eth" is not a whole name
    s = settings.from_env(env(IP="autodetect", IP_AUTODETECT_INTERFACE="eth1"))
    assert autodetect.choose_by(s.autodetect4, ADDRS, 4).address == "192.168.7.9"
    assert autodetect.choose_by(s.autodetect6, ADDRS, 6).address == "2001:db8:1::9"


@pytest.mark.parametrize("var, value, words", [
    ("IP_AUTODETECTION_METHOD", "bogus", "unknown method"),
    ("IP_AUTODETECTION_METHOD", "interface=", "needs a value"),
    ("IP_AUTODETECTION_METHOD", "interface=eth(", "bad regular expression"),
    ("IP_AUTODETECTION_METHOD", "cidr=10.0.0.0/33", "not a CIDR"),
    ("IP_AUTODETECTION_METHOD", "cidr=2001:db8::/32", "not an IPv4 CIDR"),
    ("IP_AUTODETECTION_METHOD", "can-reach=2001:db8::1", "not an IPv4 address"),
    ("IP_AUTODETECTION_METHOD", "can-reach=bad host!", "neither an IP address nor a host name"),
    ("IP6_AUTODETECTION_METHOD", "cidr=10.0.0.0/8", "not an IPv6 CIDR"),
    ("IP_AUTODETECTION_METHOD", "kubernetes-internal-ip", "unknown method"),
    ("IP_AUTODETECTION_METHOD", "interface=" + "e" * 5000, "at most 1024"),
])
def test_bad_methods_name_the_variable(var, value, words):
    with pytest.raises(settings.SettingsError) as e:
        settings.from_env(env(IP="autodetect", **{var: value}))
    assert str(e.value).startswith(var) and words in str(e.value)


def test_new_and_classic_interface_variables_together_are_refused():
    with pytest.raises(settings.SettingsError, match="IP_AUTODETECTION_METHOD and IP_AUTODETECT_INTERFACE"):
        settings.from_env(env(IP_AUTODETECT_INTERFACE="eth0", IP_AUTODETECTION_METHOD="interface=eth1"))


def test_resolve_ips_uses_each_familys_method_and_names_it_when_nothing_matches():
    s = settings.from_env(env(IP="autodetect", IP6="autodetect", IP_AUTODETECTION_METHOD="interface=ens3",
                              IP6_AUTODETECTION_METHOD="interface=eth1"))
    r = startup.resolve_ips(s, lambda: ADDRS)
    assert (r.ip, r.ip6) == ("172.30.1.2", "2001:db8:1::9")
    s = settings.from_env(env(IP="autodetect", IP_AUTODETECTION_METHOD="cidr=10.200.0.0/16"))
    with pytest.raises(startup.StartupError, match=re.escape("IP_AUTODETECTION_METHOD=cidr=10.200.0.0/16")):
        startup.resolve_ips(s, lambda: ADDRS)


def test_ip_none_is_an_ipv6_only_node():
    s = settings.from_env(env(IP="none", IP6="2001:db8::5", CALICO_ROUTER_ID="hash"))
    assert s.ip == "" and s.ip6 == "2001:db8::5" and s.router_id == "hash"
    r = startup.resolve_ips(s, lambda: ADDRS)
    assert (r.ip, r.ip6) == ("", "2001:db8::5")
    assert supervisor.services_for(s, r.ip6) == ["felix", "bird6", "confd"]
    with pytest.raises(settings.SettingsError, match="^IP=none: .*needs IP6"):
        settings.from_env(env(IP="none"))
    with pytest.raises(settings.SettingsError, match="^CALICO_ROUTER_ID: an IPv6-only node"):
        settings.from_env(env(IP="none", IP6="2001:db8::5"))
    # without BGP no router id is needed
    assert settings.from_env(env(IP="none", IP6="2001:db8::5", CALICO_NETWORKING_BACKEND="vxlan")).ip == ""


def test_router_id_hash_is_calicos_and_never_multicast():
    import hashlib
    for name in ("node1", "a", "k8s-worker-17", "x" * 200):
        b = hashlib.sha256(name.encode()).digest()
        rid = router_id.hash_router_id(name)
        parts = [int(p) for p in rid.split(".")]
        assert parts[1:] == list(b[1:4])
        assert parts[0] == (b[0] - 32 if b[0] > 223 else b[0]) and parts[0] <= 223
    assert router_id.resolve("hash", "node1", None) == router_id.hash_router_id("node1")
    assert router_id.resolve("", "node1", "10.0.0.1") == "10.0.0.1"
    assert router_id.resolve(" 10.1.2.3 ", "node1", "10.0.0.1") == "10.1.2.3"
    with pytest.raises(settings.SettingsError, match="^CALICO_ROUTER_ID: 'fish'"):
        settings.from_env(env(CALICO_ROUTER_ID="fish"))


@pytest.mark.parametrize("extra, backend, networking, services", [
    ({}, "bird", True, ["felix", "bird", "confd"]),
    ({"CALICO_NETWORKING_BACKEND": "bird"}, "bird", True, ["felix", "bird", "confd"]),
    ({"CALICO_NETWORKING_BACKEND": "VXLAN"}, "vxlan", False, ["felix"]),
    ({"CALICO_NETWORKING_BACKEND": "none"}, "none", False, ["felix"]),
    ({"CALICO_NETWORKING": "false"}, "none", False, ["felix"]),
    ({"CALICO_NETWORKING": "false", "CALICO_NETWORKING_BACKEND": "vxlan"}, "vxlan", False, ["felix"]),
])
def test_networking_backend_and_the_classic_switch(extra, backend, networking, services):
    s = settings.from_env(env(**extra))
    assert (s.backend, s.networking) == (backend, networking)
    assert supervisor.services_for(s, "") == services
    assert supervisor.program_env(s, "10.0.0.1", "")["CALICO_NETWORKING_BACKEND"] == backend


@pytest.mark.parametrize("extra, words", [
    ({"CALICO_NETWORKING_BACKEND": "gobgp"}, "CALICO_NETWORKING_BACKEND='gobgp': expected bird, vxlan or none"),
    ({"CALICO_NETWORKING": "false", "CALICO_NETWORKING_BACKEND": "bird"}, "contradicts CALICO_NETWORKING=false"),
])
def test_bad_backend_names_the_variable(extra, words):
    with pytest.raises(settings.SettingsError, match=re.escape(words)):
        settings.from_env(env(**extra))


def test_default_pools_follow_calicos_defaults():
    v4, v6 = settings.from_env(env()).pools
    assert (v4.cidr, v4.block_size, v4.ipip, v4.vxlan, v4.nat_outgoing) == ("192.168.0.0/16", 26, False, False, True)
    assert (v6.cidr, v6.block_size, v6.nat_outgoing) == ("fd80:24e2:f998:72d6::/64", 122, False)
    m = startup.pool_model(v4)
    assert (m.cidr, m.masquerade, m.overlay) == ("192.168.0.0/16", True, None)


def test_default_pools_from_the_environment():
    v4, v6 = settings.from_env(env(
        CALICO_IPV4POOL_CIDR="10.244.0.0/16", CALICO_IPV4POOL_BLOCK_SIZE="24", CALICO_IPV4POOL_VXLAN="Always",
        CALICO_IPV4POOL_NAT_OUTGOING="false", CALICO_IPV6POOL_CIDR="fd00:10::/48",
        CALICO_IPV6POOL_BLOCK_SIZE="120", CALICO_IPV6POOL_NAT_OUTGOING="true")).pools
    assert (v4.cidr, v4.block_size, v4.vxlan, v4.ipip, v4.nat_outgoing) == ("10.244.0.0/16", 24, True, False, False)
    assert (v6.cidr, v6.block_size, v6.nat_outgoing) == ("fd00:10::/48", 120, True)
    m = startup.pool_model(v4)
    assert (m.overlay, m.vxlan, m.masquerade, m.block_size) == ("vxlan", "vxlan.calico", False, 24)
    assert startup.pool_model(v6).block_size == 120
    ipip = startup.pool_model(settings.from_env(env(CALICO_IPV4POOL_IPIP="always")).pools[0])
    assert ipip.overlay == "ipip"
    assert settings.from_env(env(CALICO_IPV4POOL_IPIP="Never", CALICO_IPV4POOL_VXLAN="off")).pools[0].ipip is False
    # a pool smaller than the default block: one block covers it
    assert settings.from_env(env(CALICO_IPV4POOL_CIDR="10.9.0.0/28")).pools[0].block_size == 28


@pytest.mark.parametrize("var, value, words", [
    ("CALICO_IPV4POOL_CIDR", "10.0.0.0/33", "not a CIDR"),
    ("CALICO_IPV4POOL_CIDR", "fd00::/64", "not an IPv4 CIDR"),
    ("CALICO_IPV6POOL_CIDR", "10.0.0.0/8", "not an IPv6 CIDR"),
    ("CALICO_IPV4POOL_BLOCK_SIZE", "19", "from 20 to 32"),
    ("CALICO_IPV4POOL_BLOCK_SIZE", "twenty", "from 20 to 32"),
    ("CALICO_IPV6POOL_BLOCK_SIZE", "64", "from 116 to 128"),
    ("CALICO_IPV4POOL_IPIP", "sometimes", "expected Always, Never or CrossSubnet"),
    ("CALICO_IPV4POOL_IPIP", "CrossSubnet", "CrossSubnet is not supported"),
    ("CALICO_IPV4POOL_VXLAN", "cross-subnet", "CrossSubnet is not supported"),
    ("CALICO_IPV6POOL_IPIP", "Always", "IPIP carries IPv4 only"),
    ("CALICO_IPV6POOL_VXLAN", "Always", "not supported by this Felix"),
    ("CALICO_IPV4POOL_NAT_OUTGOING", "maybe", "expected true or false"),
])
def test_bad_pool_variables_name_the_variable(var, value, words):
    with pytest.raises(settings.SettingsError) as e:
        settings.from_env(env(**{var: value}))
    assert str(e.value).startswith(var) and words in str(e.value)


def test_both_overlays_on_one_pool_is_refused_naming_both():
    with pytest.raises(settings.SettingsError, match="CALICO_IPV4POOL_IPIP and CALICO_IPV4POOL_VXLAN"):
        settings.from_env(env(CALICO_IPV4POOL_IPIP="Always", CALICO_IPV4POOL_VXLAN="Always"))


def test_block_size_larger_than_the_pool_is_refused():
    with pytest.raises(settings.SettingsError, match="^CALICO_IPV4POOL_BLOCK_SIZE=24: larger than the pool"):
        settings.from_env(env(CALICO_IPV4POOL_CIDR="10.9.0.0/28", CALICO_IPV4POOL_BLOCK_SIZE="24"))


def test_pool_env_module_alone_matches_the_settings():
    assert default_pools.from_env({}) == settings.from_env(env()).pools


def test_confd_renders_an_ipv6_only_node_with_the_hashed_router_id(tmp_path):
    """confd reads CALICO_ROUTER_ID itself (as Calico's does) and BIRD6 accepts the config."""
    import shutil
    import subprocess

    from confd.__main__ import settings_from_env
    from confd.render import PACKAGE_TEMPLATES, render_text
    from confd.state import BgpStore, Node
    from libcalico import keys

    s = settings_from_env({"NODENAME": "v6only", "IP": "none", "IP6": "fd00::1", "CALICO_ROUTER_ID": "hash"})
    assert (s.ip4, s.router_id) == (None, router_id.hash_router_id("v6only"))
    store = BgpStore(Node(s.host, s.ip4, s.ip6, s.router_id)).load_raw({
        keys.bgp_node_mesh(): '{"enabled": true}', keys.bgp_host_ip("v6only", 6): "fd00::1", keys.bgp_host_ip("other", 6): "fd00::2",
        keys.bgp_host_ip("other", 4): "10.0.0.2"})
    v6 = render_text(PACKAGE_TEMPLATES, "bird6.cfg.j2", store.context())
    assert f"router id {s.router_id};" in v6 and "fd00::2" in v6
    assert not render_text(PACKAGE_TEMPLATES, "bird.cfg.j2", store.context()).strip()  # no IPv4: no bird.cfg
    path = tmp_path / "bird6.cfg"
    path.write_text(v6)
    r = subprocess.run([shutil.which("bird6") or "bird6", "-p", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # without a router id an IPv6-only node renders nothing (BIRD would refuse the file)
    bare = BgpStore(Node("v6only", None, "fd00::1")).load_raw({keys.bgp_host_ip("v6only", 6): "fd00::1"})
    assert not render_text(PACKAGE_TEMPLATES, "bird6.cfg.j2", bare.context()).strip()
    # an explicit IPv4 router id wins over the node's address; a bad one is ignored, not fatal
    assert settings_from_env({"NODENAME": "n", "IP": "10.0.0.1", "CALICO_ROUTER_ID": "1.2.3.4"}).router_id == "1.2.3.4"
    assert settings_from_env({"NODENAME": "n", "IP": "10.0.0.1", "CALICO_ROUTER_ID": "x"}).router_id is None
