"""IptablesTable on the real kernel, inside namespaces the test creates, for both backends."""

from __future__ import annotations

import re

import pytest

from felix.dataplane.backend import Backend, detect
from felix.dataplane.cmd import CmdRunner
from felix.dataplane.errors import DataplaneError
from felix.dataplane.iptables import IptablesTable

BACKENDS = ["legacy", "nft"]


def save(ns, mode: str, family: int = 4, table: str = "filter") -> str:
    tool = ("iptables" if family == 4 else "ip6tables") + f"-{mode}-save"
    out = ns.run(tool, "-t", table).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith("#"))


def rules_of(text: str, chain: str) -> list[str]:
    return [ln.split(" ", 2)[2] for ln in text.splitlines() if ln.startswith(f"-A {chain} ")]


def strip_comment(rule: str) -> str:
    return re.sub(r' ?-m comment --comment "felix:[^"]+"', "", rule).strip()


def ipt(ns, mode: str, *args: str, family: int = 4, check: bool = True):
    tool = ("iptables" if family == 4 else "ip6tables") + f"-{mode}"
    return ns.run(tool, "-w", "5", *args, check=check)


def base_model(t: IptablesTable) -> None:
    t.set_chain("felix-leaf", ["-p tcp --dport 80 -j ACCEPT", "! -s 10.0.0.0/8 -j DROP"])
    t.set_chain("felix-mid", ["-j felix-leaf", "-j RETURN"])
    t.set_chain("felix-spare", ["-j RETURN"])
    t.set_hooks("INPUT", ["-j felix-mid"])
    t.set_hooks("FORWARD", ["-i cali+ -j felix-mid", "-o cali+ -j felix-mid"])


@pytest.mark.parametrize("mode", BACKENDS)
async def test_apply_one_restore_hooks_on_top_others_untouched(netns_factory, mode):
    ns = netns_factory("ipt")
    ipt(ns, mode, "-A", "INPUT", "-s", "192.0.2.7", "-j", "ACCEPT")  # someone else's rule
    ipt(ns, mode, "-N", "OTHER")
    ipt(ns, mode, "-A", "FORWARD", "-j", "OTHER")
    t = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode))
    base_model(t)
    assert await t.apply() is True
    assert t.stats["restores"] == 1 and t.stats["saves"] == 1
    text = save(ns, mode)
    assert [strip_comment(r) for r in rules_of(text, "INPUT")] == ["-j felix-mid", "-s 192.0.2.7/32 -j ACCEPT"]
    assert [strip_comment(r) for r in rules_of(text, "FORWARD")] == [
        "-i cali+ -j felix-mid", "-o cali+ -j felix-mid", "-j OTHER"]
    assert [strip_comment(r) for r in rules_of(text, "felix-leaf")] == [
        "-p tcp -m tcp --dport 80 -j ACCEPT", "! -s 10.0.0.0/8 -j DROP"]
    # idempotent: nothing changes, no process runs
    assert await t.apply() is False and t.stats["restores"] == 1
    # a second writer (restarted Felix) with the same model finds the kernel right and writes nothing
    t2 = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode))
    base_model(t2)
    assert await t2.apply() is False and t2.stats["restores"] == 0


@pytest.mark.parametrize("mode", BACKENDS)
async def test_refresh_repairs_deleted_chain_rule_and_hook(netns_factory, mode):
    ns = netns_factory("ipt")
    t = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode))
    base_model(t)
    await t.apply()
    good = save(ns, mode)
    ipt(ns, mode, "-D", "INPUT", "1")                # our hook, by hand
    ipt(ns, mode, "-I", "INPUT", "1", "-j", "ACCEPT")  # someone else's, now on top
    ipt(ns, mode, "-D", "felix-leaf", "2")           # one of our rules
    ipt(ns, mode, "-F", "felix-spare")               # a whole chain
    ipt(ns, mode, "-X", "felix-spare")
    assert await t.refresh() is True
    text = save(ns, mode)
    assert rules_of(text, "felix-leaf") == rules_of(good, "felix-leaf")
    assert rules_of(text, "felix-spare") == rules_of(good, "felix-spare") and ":felix-spare" in text
    assert [strip_comment(r) for r in rules_of(text, "INPUT")] == ["-j felix-mid", "-j ACCEPT"]
    assert rules_of(text, "felix-mid") == rules_of(good, "felix-mid")
    assert await t.refresh() is False  # now in sync


@pytest.mark.parametrize("mode", BACKENDS)
async def test_chain_removal_and_cleanup_stale(netns_factory, mode):
    ns = netns_factory("ipt")
    ipt(ns, mode, "-N", "felixish")  # not ours (no felix- prefix): must survive cleanup
    t = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode))
    base_model(t)
    await t.apply()
    t.set_chain("felix-mid", ["-j RETURN"])  # drop the reference first...
    t.remove_chain("felix-leaf")              # ...in the same transaction as the delete
    assert await t.apply() is True
    text = save(ns, mode)
    assert ":felix-leaf" not in text and ":felix-mid" in text
    # a new writer that no longer wants felix-spare nor the FORWARD hooks: kept until cleanup_stale
    t2 = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode))
    t2.set_chain("felix-mid", ["-j RETURN"])
    t2.set_hooks("INPUT", ["-j felix-mid"])
    await t2.apply()
    assert ":felix-spare" in save(ns, mode)
    await t2.cleanup_stale()
    text = save(ns, mode)
    assert ":felix-spare" not in text and ":felixish" in text
    assert rules_of(text, "FORWARD") == []
    assert [strip_comment(r) for r in rules_of(text, "INPUT")] == ["-j felix-mid"]


@pytest.mark.parametrize("mode", BACKENDS)
async def test_failed_restore_leaves_table_as_it_was(netns_factory, mode):
    ns = netns_factory("ipt")
    t = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode), retries=1, backoff=0.01)
    base_model(t)
    await t.apply()
    before = save(ns, mode)
    t.set_chain("felix-leaf", ["-j DROP"])  # a fine change...
    t.set_chain("felix-new", ["-m set --match-set felix-v4-missing src -j ACCEPT"])  # ...and one the kernel rejects
    with pytest.raises(DataplaneError):
        await t.apply()
    assert save(ns, mode) == before
    assert t.stats["restore_errors"] == 2 and t.dirty
    t.remove_chain("felix-new")
    assert await t.apply() is True
    assert [strip_comment(r) for r in rules_of(save(ns, mode), "felix-leaf")] == ["-j DROP"]


PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.settimeout(1.0)
try:
    s.connect((sys.argv[1], 7777))
except ConnectionRefusedError:
    print('refused')   # packet went out and the closed port answered RST
except TimeoutError:
    print('dropped')   # our DROP rule ate the SYN
"""


def probe(ns, addr: str) -> str:
    return ns.run("python3", "-c", PROBE, addr).stdout.strip()


@pytest.mark.parametrize("mode", BACKENDS)
async def test_rules_filter_real_packets_v4_and_v6(netns_factory, mode):
    ns = netns_factory("ipt")
    ns.run("ip", "addr", "add", "fd00:99::1/128", "dev", "lo", "nodad")
    tables = {fam: IptablesTable(fam, "filter", CmdRunner(ns.name), Backend(mode)) for fam in (4, 6)}
    for t in tables.values():
        t.set_chain("felix-out", ["-p tcp --dport 7777 -j DROP"])
        t.set_hooks("OUTPUT", ["-j felix-out"])
        await t.apply()
    assert probe(ns, "127.0.0.1") == "dropped"
    assert probe(ns, "fd00:99::1") == "dropped"
    for t in tables.values():
        t.set_chain("felix-out", ["-p tcp --dport 7778 -j DROP"])
        await t.apply()
    assert probe(ns, "127.0.0.1") == "refused"
    assert probe(ns, "fd00:99::1") == "refused"


@pytest.mark.parametrize("mode", BACKENDS)
async def test_nat_and_raw_tables_hook_prerouting_postrouting(netns_factory, mode):
    ns = netns_factory("ipt")
    for table, builtin in (("nat", "POSTROUTING"), ("raw", "PREROUTING"), ("mangle", "PREROUTING")):
        t = IptablesTable(4, table, CmdRunner(ns.name), Backend(mode))
        t.set_chain(f"felix-{table}", ["-s 10.65.0.0/16 -j RETURN"])
        t.set_hooks(builtin, [f"-j felix-{table}"])
        await t.apply()
        text = save(ns, mode, table=table)
        assert [strip_comment(r) for r in rules_of(text, builtin)] == [f"-j felix-{table}"]


async def test_backend_auto_detection(netns_factory):
    ns = netns_factory("ipt")
    runner = CmdRunner(ns.name)
    assert (await detect("auto", runner)).mode == "nft"  # empty host: nft
    ipt(ns, "legacy", "-A", "INPUT", "-j", "ACCEPT")
    assert (await detect("auto", runner)).mode == "legacy"  # legacy already in use
    assert (await detect("nft", runner)).mode == "nft"  # override wins
    with pytest.raises(ValueError):
        await detect("iptables", runner)


@pytest.mark.parametrize("mode", BACKENDS)
async def test_small_edits_to_long_chain_are_in_place_and_exact(netns_factory, mode):
    ns = netns_factory("ipt")
    t = IptablesTable(4, "filter", CmdRunner(ns.name), Backend(mode))
    rules = [f"-o cali{i:04d} -j RETURN" for i in range(40)]
    t.set_chain("felix-disp", rules + ["-j DROP"])
    await t.apply()
    assert await t.refresh() is False  # the next edit deletes by the rule text iptables-save printed
    edits = [
        rules[:1] + ["-o caliNEW1 -j RETURN"] + rules[1:],           # insert near the top
        rules[:20] + rules[21:],                                      # delete from the middle
        rules[:39] + ["-o caliX -j ACCEPT"],                          # replace the last, DROP gone
        ["-o caliFIRST -j RETURN"] + rules + ["-j DROP", "-j LOG"],   # both ends
    ]
    for want in edits:
        t.set_chain("felix-disp", want)
        text, *_ = t.render()
        assert ":felix-disp" not in text  # edited in place, not flushed and rewritten
        await t.apply()
        got = [strip_comment(r) for r in rules_of(save(ns, mode), "felix-disp")]
        assert got == want
    assert await t.refresh() is False  # the kernel matches the model exactly, hashes included
