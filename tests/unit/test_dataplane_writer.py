"""The writer protocol, typed stats, and what a failed restore tells the operator.

The restore tests run the real iptables-restore / ipset in a throwaway
namespace: the line numbers come from the tools' own stderr, which is exactly
what a fake would get wrong.
"""

from __future__ import annotations

import logging

import pytest

from felix.dataplane.backend import Backend
from felix.dataplane.cmd import CmdRunner
from felix.dataplane.errors import DataplaneError
from felix.dataplane.ipsets import IpsetStats, IpsetWriter
from felix.dataplane.iptables import IptablesTable
from felix.dataplane.overlay import OverlayDataplane
from felix.dataplane.routes import RouteWriter
from felix.dataplane.writer import StagedWriter, Writer, failed_line, restore_context
from tests.lib.fakes import ScriptedRunner

# stderr as the tools print it (iptables 1.8.9, ipset 7.17)
NFT_ERR = ("iptables-restore v1.8.9 (nf_tables): Couldn't load match `bogus':No such file or directory\n\n"
           "Error occurred at line: 4\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.")
DELETE_ERR = "iptables-restore: line 2 failed: Bad rule (does a matching rule exist in that chain?)."
IPSET_ERR = "ipset v7.17: Error in line 3: Syntax error: cannot parse bogus: resolving to IPv4 address failed"


def test_failed_line_from_each_tool():
    assert failed_line(NFT_ERR) == 4
    assert failed_line(DELETE_ERR) == 2
    assert failed_line(IPSET_ERR) == 3
    assert failed_line("iptables-restore: unable to initialize table 'filter'") is None


def test_restore_context_numbers_and_marks_the_line():
    text = "".join(f"l{i}\n" for i in range(1, 11))
    out = restore_context(text, 5).splitlines()
    assert len(out) == 7 and out[3].startswith(">") and out[3].endswith("l5")
    assert out[0].split() == ["2", "l2"]
    assert restore_context(text, 1).splitlines()[0].startswith(">")  # no lines before the first


def test_stats_are_typed_and_read_by_name():
    s = IpsetStats()
    s.restores += 2
    assert s["restores"] == 2 and s.get("swaps") == 0 and "last_apply_seconds" in s
    assert s.get("nope", 7) == 7 and "nope" not in s
    with pytest.raises(KeyError):
        s["nope"]
    assert dict(s)["applies"] == 0


def test_every_writer_follows_the_protocol():
    runner = ScriptedRunner()
    routes = RouteWriter()
    try:
        assert isinstance(IptablesTable(4, "filter", runner, Backend("nft")), Writer)
        assert isinstance(IpsetWriter(4, runner), StagedWriter)
        assert isinstance(routes, Writer)
        assert isinstance(OverlayDataplane(routes=routes), Writer)
    finally:
        routes.close()


async def test_apply_is_timed_and_counted():
    t = IptablesTable(4, "filter", ScriptedRunner(), Backend("nft"), retries=0, backoff=0)
    t.set_chain("felix-a", ["-j RETURN"])
    assert await t.apply() is True
    assert t.stats.applies == 1 and t.stats.failures == 0 and t.stats.last_apply_seconds >= 0
    t.runner.responder = lambda argv, inp: (0, "", "") if "save" in argv[0] else (1, "", "boom")
    t.set_chain("felix-a", ["-j ACCEPT"])
    with pytest.raises(DataplaneError):
        await t.apply()
    assert t.stats.applies == 2 and t.stats.failures == 1 and t.dirty


@pytest.mark.parametrize("mode", ["legacy", "nft"])
async def test_failed_iptables_restore_logs_the_refused_line(netns_factory, mode, caplog):
    ns = netns_factory("wr")
    t = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode), retries=0, backoff=0)
    t.set_chain("felix-a", ["-j RETURN"])
    t.set_chain("felix-b", ["-p tcp -j ACCEPT", "-m nosuchmatch -j ACCEPT", "-p udp -j ACCEPT"])
    with caplog.at_level(logging.WARNING, logger="felix.dataplane.iptables"), pytest.raises(DataplaneError) as e:
        await t.apply()
    msg = "\n".join(r.getMessage() for r in caplog.records)
    refused = [ln for ln in msg.splitlines() if ln.startswith(">")]
    assert len(refused) == 1 and "-m nosuchmatch -j ACCEPT" in refused[0]
    numbered = [ln.split()[0] for ln in msg.splitlines() if ln.startswith("  ")]
    assert numbered == ["3", "4", "5", "7", "8"]  # its neighbours, three either side
    assert "nosuchmatch" in str(e.value)  # the error Felix reports names the line too


async def test_failed_ipset_restore_logs_the_refused_line(netns_factory, caplog):
    ns = netns_factory("wr")
    # a set of the wrong type must be recreated, but an iptables rule still uses it
    ns.run("ipset", "create", "felix-v4-x", "hash:ip")
    ns.run("iptables", "-A", "INPUT", "-m", "set", "--match-set", "felix-v4-x", "src", "-j", "ACCEPT")
    w = IpsetWriter(4, CmdRunner(ns.name), retries=0, backoff=0)
    w.set_members("felix-v4-a", {"10.0.0.1", "10.0.0.2"})
    w.set_members("felix-v4-x", {"10.0.0.3"})
    with caplog.at_level(logging.WARNING, logger="felix.dataplane.ipsets"), pytest.raises(DataplaneError):
        await w.apply()
    msg = "\n".join(r.getMessage() for r in caplog.records)
    refused = [ln for ln in msg.splitlines() if ln.startswith(">")]
    assert len(refused) == 1 and refused[0].endswith("destroy felix-v4-x")
    assert "add felix-v4-a 10.0.0.2" in msg and "in use by a kernel component" in msg
