"""Host endpoints by address on a real kernel: `+`/quote-named interfaces never reach iptables."""

from __future__ import annotations

import logging

from felix import hostaddrs
from tests.unit.test_felix_policy import Feed

HEP = "/calico/v1/host/h1/endpoint/"


def test_real_namespace_plus_and_quote_named_interfaces_are_skipped(netns_factory, caplog):
    hostaddrs._reported.clear()
    ns = netns_factory("hadr")
    for i, name in enumerate(["eth+", 'a"b', "ok0"], 1):
        ns.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"peer{i}")
        ns.run("ip", "addr", "add", f"10.9.{i}.1/24", "dev", name)
    with caplog.at_level(logging.ERROR, logger="felix.hostaddrs"):
        addrs = hostaddrs.read_interface_addrs(ns.name)
    assert set(addrs) == {"lo", "ok0"} and addrs["ok0"] == {"10.9.3.1"}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "'eth+'" in errors[0] + errors[1]

    f = Feed()
    f.put(HEP + "plus", {"expected_ipv4_addrs": ["10.9.1.1"], "profile_ids": []})
    f.put(HEP + "ok", {"expected_ipv4_addrs": ["10.9.3.1"], "profile_ids": []})
    f.c.policy.hosts.set_interface_addrs(addrs)
    lines = [ln for lns in f.c.desired().v4.chains.values() for ln in lns]
    assert any("-i ok0 " in ln for ln in lines)
    assert not any("eth+" in ln or '"' in ln for ln in lines)
