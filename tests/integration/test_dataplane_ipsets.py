"""IpsetWriter on the real kernel inside a test namespace: deltas, swap, drift repair, destroy rules."""

from __future__ import annotations

import pytest

from felix.dataplane.backend import Backend
from felix.dataplane.cmd import CmdRunner
from felix.dataplane.ipsets import IpsetWriter
from felix.dataplane.iptables import IptablesTable


def members(ns, name: str) -> set[str]:
    out = ns.run("ipset", "save", name).stdout
    return {ln.split()[2] for ln in out.splitlines() if ln.startswith("add ")}


def set_names(ns) -> set[str]:
    return set(ns.run("ipset", "list", "-n").stdout.split())


async def test_create_delta_swap_and_refresh(netns_factory):
    ns = netns_factory("ips")
    w = IpsetWriter(4, CmdRunner(ns.name))
    first = {f"10.0.{i // 250}.{i % 250}" for i in range(100)} | {"10.99.0.0/16"}
    w.set_members("felix-v4-tag", first)
    assert await w.apply_updates() is True
    assert members(ns, "felix-v4-tag") == first and w.stats["restores"] == 1
    assert "hash:net" in ns.run("ipset", "list", "felix-v4-tag").stdout
    # small change: deltas (no swap)
    second = (first - {"10.0.0.1"}) | {"10.1.1.1"}
    w.set_members("felix-v4-tag", second)
    await w.apply_updates()
    assert members(ns, "felix-v4-tag") == second and w.stats["swaps"] == 0
    # big rewrite: swap
    third = {f"10.7.0.{i}" for i in range(60)}
    w.set_members("felix-v4-tag", third)
    await w.apply_updates()
    assert members(ns, "felix-v4-tag") == third and w.stats["swaps"] == 1
    assert "felix-v4-_tmp" not in set_names(ns)
    # drift: a member deleted and a stranger added by hand both get repaired
    ns.run("ipset", "del", "felix-v4-tag", "10.7.0.5")
    ns.run("ipset", "add", "felix-v4-tag", "192.0.2.9")
    assert await w.refresh() is True
    assert members(ns, "felix-v4-tag") == third
    assert await w.refresh() is False


async def test_swap_keeps_set_usable_by_iptables_and_destroy_waits_for_references(netns_factory):
    ns = netns_factory("ips")
    runner = CmdRunner(ns.name)
    sets = IpsetWriter(4, runner, backoff=0.01, retries=1)
    ipt = IptablesTable(4, "filter", runner, Backend("nft"))
    sets.set_members("felix-v4-a", {f"10.0.0.{i}" for i in range(40)})
    sets.set_members("felix-v4-b", {"10.1.0.1"})
    await sets.apply_updates()
    ipt.set_chain("felix-x", ["-m set --match-set felix-v4-a src -j ACCEPT"])
    ipt.set_hooks("INPUT", ["-j felix-x"])
    await ipt.apply()
    sets.set_members("felix-v4-a", {f"10.5.0.{i}" for i in range(40)})  # swap while referenced
    await sets.apply_updates()
    assert members(ns, "felix-v4-a") == {f"10.5.0.{i}" for i in range(40)}
    # destroying a set still used by a rule fails; the other update in the batch still lands
    sets.remove("felix-v4-a")
    sets.set_members("felix-v4-b", {"10.1.0.2"})
    await sets.apply()
    assert "felix-v4-a" in set_names(ns) and members(ns, "felix-v4-b") == {"10.1.0.2"}
    assert sets.stats["restore_errors"] >= 1 and sets.dirty
    # the documented order: iptables drops the reference, then the destroy goes through
    ipt.set_chain("felix-x", ["-j RETURN"])
    await ipt.apply()
    await sets.apply()
    assert "felix-v4-a" not in set_names(ns) and not sets.dirty


async def test_ipv6_and_cleanup_spares_foreign_sets(netns_factory):
    ns = netns_factory("ips")
    ns.run("ipset", "create", "someone-else", "hash:ip")
    ns.run("ipset", "create", "felix-v6-stale", "hash:net", "family", "inet6")
    w6 = IpsetWriter(6, CmdRunner(ns.name))
    w4 = IpsetWriter(4, CmdRunner(ns.name))
    w6.set_members("felix-v6-tag", {"fd00::1/128", "fd00:1::/64"})
    w4.set_members("felix-v4-tag", {"10.0.0.1"})
    await w6.apply()
    await w4.apply()
    assert members(ns, "felix-v6-tag") == {"fd00::1", "fd00:1::/64"}
    assert "felix-v6-stale" in set_names(ns)  # nothing stale deleted before in-sync
    await w6.cleanup_stale()
    await w4.cleanup_stale()
    assert set_names(ns) == {"someone-else", "felix-v6-tag", "felix-v4-tag"}


async def test_bad_member_never_reaches_kernel(netns_factory):
    ns = netns_factory("ips")
    w = IpsetWriter(4, CmdRunner(ns.name))
    with pytest.raises(ValueError):
        w.set_members("felix-v4-x", {"fd00::1"})
    assert await w.apply() is False
    assert set_names(ns) == set()
