"""Kernel interface names reach iptables only when they are safe there (host endpoints by address)."""

from __future__ import annotations

import json
import logging

import pytest

from felix import hostaddrs
from tests.unit.test_felix_policy import Feed

HEP = "/calico/v1/host/h1/endpoint/"
BAD = ["eth+", 'a"b', "q'z", "x@y", "a#b", "toolongname12345", ".."]


def _links(names_addrs: dict[str, str]) -> str:
    return json.dumps([{"ifindex": i, "ifname": n,
                        "addr_info": [{"family": "inet", "local": a, "prefixlen": 24}]}
                       for i, (n, a) in enumerate(names_addrs.items(), 2)])


@pytest.fixture(autouse=True)
def _fresh_reports():
    hostaddrs._reported.clear()
    yield
    hostaddrs._reported.clear()


def test_json_parse_skips_unsafe_names_with_one_error_each(caplog):
    text = _links({"eth0": "192.0.2.1", **{n: f"198.51.100.{i}" for i, n in enumerate(BAD, 1)}})
    with caplog.at_level(logging.ERROR, logger="felix.hostaddrs"):
        assert hostaddrs.parse_ip_addr_json(text) == {"eth0": {"192.0.2.1"}}
        assert hostaddrs.parse_ip_addr_json(text) == {"eth0": {"192.0.2.1"}}  # next push: no new lines
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == len(BAD)
    for name in BAD:
        assert sum(repr(name) in m for m in errors) == 1


def test_text_parse_skips_unsafe_names():
    text = ("3: eth+    inet 10.9.1.1/24 scope global eth+\\  x\n"
            '5: a"b    inet 10.9.2.1/24 scope global a"b\\  x\n'
            "7: ok0    inet 10.9.3.1/24 scope global ok0\\  x\n")
    assert hostaddrs.parse_ip_addr(text) == {"ok0": {"10.9.3.1"}}


def test_wildcard_interface_never_becomes_a_host_endpoint_rule():
    f = Feed()
    f.put(HEP + "byaddr", {"expected_ipv4_addrs": ["10.9.1.1"], "profile_ids": []})
    f.c.policy.hosts.set_interface_addrs(
        hostaddrs.parse_ip_addr_json(_links({"eth+": "10.9.1.1"})))
    chains = f.c.desired().v4.chains
    assert not any("eth+" in line for lines in chains.values() for line in lines)
    assert not any(c.startswith("felix-h") for c in chains)
