"""Name checks must cover the whole value: `$` also matches before a trailing newline."""

from __future__ import annotations

import json

import pytest

from calico_node.autodetect import EXCLUDED_IFACES
from felix import config as felix_config
from felix import names
from felix.dataplane import ipsets, iptables, sysctl


def test_chain_id_with_trailing_newline_is_hashed_not_used_verbatim():
    assert names.chain_name("felix-to-", "abc") == "felix-to-abc"
    name = names.chain_name("felix-to-", "abc\n")
    assert "\n" not in name and name.startswith("felix-to-_")
    iptables.check_chain(name)


@pytest.mark.parametrize("bad", ["felix-x\n", "felix-x\r", "felix-\nx"])
def test_check_chain_rejects_newline(bad):
    with pytest.raises(ValueError):
        iptables.check_chain(bad)


def test_ipset_id_with_trailing_newline_is_hashed():
    assert names.tag_ipset("tag1", 4) == "felix-v4-tag1"
    name = names.tag_ipset("tag1\n", 4)
    assert "\n" not in name and name.startswith("felix-v4-_")


def test_ipset_writer_rejects_name_with_trailing_newline():
    w = ipsets.IpsetWriter(4, runner=None)
    w.set_members("felix-v4-ok", ["10.0.0.1"])
    with pytest.raises(ValueError):
        w.set_members("felix-v4-ok\n", ["10.0.0.1"])


def test_interface_sysctls_reject_trailing_newline():
    assert sysctl.interface_sysctls("cali1234", v6=False)
    with pytest.raises(ValueError):
        sysctl.interface_sysctls("cali1234\n")


def test_autodetect_lo_exclusion_is_exact():
    assert EXCLUDED_IFACES.match("lo")
    assert not EXCLUDED_IFACES.match("lo\n")
    assert not EXCLUDED_IFACES.match("lo1")


@pytest.mark.parametrize("bad", ["tcp:\u00b2", "tcp:\u0662\u0662"])
def test_failsafe_ports_reject_non_ascii_digits(bad):
    with pytest.raises(ValueError):
        felix_config._ports(bad)


@pytest.mark.parametrize("port", ["١٢", "²", "٨٠:٩٠", "8٠"])
def test_ports_in_other_scripts_digits_are_refused(port):
    """`"١٢".isdigit()` is true and int() reads it as 12: a port list must be ASCII digits."""
    from felix.calc.rules import RuleError, render_rule
    from libcalico.models import parse_key_value

    with pytest.raises(ValueError):
        parse_key_value("/calico/v1/policy/profile/p/rules",
                        json.dumps({"inbound_rules": [{"protocol": "tcp", "dst_ports": [port]}],
                                    "outbound_rules": []}))
    with pytest.raises(RuleError):
        render_rule({"protocol": "tcp", "dst_ports": [port]}, 4)
