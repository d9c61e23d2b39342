"""IpsetWriter against a scripted runner: deltas vs swap, destroy ordering, normalisation, names.

The real-kernel counterpart is tests/integration/test_dataplane_ipsets.py.
"""

from __future__ import annotations

import pytest

from felix.dataplane.errors import DataplaneError
from felix.dataplane.ipsets import MAX_SET_NAME, IpsetWriter, normalize_members, parse_save
from felix.names import tag_ipset
from tests.lib.fakes import ScriptedRunner


class FakeIpset:
    def __init__(self, save: str = ""):
        self.save = save
        self.fail = 0
        self.runner = ScriptedRunner(responder=self.respond)

    def respond(self, argv, inp):
        if argv == ["ipset", "save"]:
            return 0, self.save, ""
        if self.fail:
            self.fail -= 1
            return 1, "", "ipset v7.17: Error in line 2: Set cannot be destroyed: it is in use"
        return 0, "", ""

    def restores(self) -> list[str]:
        return [inp for argv, inp in self.runner.calls if "restore" in argv]


def test_names_fit_and_do_not_collide():
    assert tag_ipset("tag1", 4) == "felix-v4-tag1"
    a, b = tag_ipset("t" * 40, 6), tag_ipset("t" * 39 + "u", 6)
    assert a != b and len(a) <= MAX_SET_NAME and a.startswith("felix-v6-_")
    assert tag_ipset(a[len("felix-v6-"):], 6) != a


def test_members_normalised_like_ipset_save():
    assert normalize_members(4, ["10.0.0.1/32", "10.1.2.3/16", "0.0.0.0/0"]) == {
        "10.0.0.1", "10.1.0.0/16", "0.0.0.0/1", "128.0.0.0/1"}
    assert normalize_members(6, ["fd00::1/128", "FD00:0::/64"]) == {"fd00::1", "fd00::/64"}
    with pytest.raises(ValueError):
        normalize_members(4, ["fd00::1"])


async def test_create_then_small_delta_then_swap_for_big_rewrite():
    fake = FakeIpset()
    w = IpsetWriter(4, fake.runner, backoff=0)
    members = [f"10.0.0.{i}" for i in range(20)]
    w.set_members("felix-v4-a", members)
    await w.apply_updates()
    assert fake.restores()[0].splitlines() == (
        ["create felix-v4-a hash:net family inet maxelem 1048576"]
        + [f"add felix-v4-a {m}" for m in sorted(members)])
    assert fake.runner.calls[1][0] == ["ipset", "-exist", "restore"]
    # small change: deltas only
    w.set_members("felix-v4-a", members[1:] + ["10.0.1.1"])
    await w.apply_updates()
    assert fake.restores()[1] == "del felix-v4-a 10.0.0.0\nadd felix-v4-a 10.0.1.1\n"
    # big rewrite: fill a temporary set, swap, destroy the temporary
    new = [f"10.9.0.{i}" for i in range(20)]
    w.set_members("felix-v4-a", new)
    await w.apply_updates()
    lines = fake.restores()[2].splitlines()
    assert lines[:2] == ["create felix-v4-_tmp hash:net family inet maxelem 1048576", "flush felix-v4-_tmp"]
    assert lines[-2:] == ["swap felix-v4-_tmp felix-v4-a", "destroy felix-v4-_tmp"]
    assert len(lines) == 2 + 20 + 2 and w.stats["swaps"] == 1
    assert await w.apply() is False  # in sync: no process


async def test_destroy_only_in_apply_not_apply_updates():
    fake = FakeIpset("create felix-v4-old hash:net family inet hashsize 1024 maxelem 1048576\n"
                     "add felix-v4-old 10.0.0.1\ncreate other hash:ip family inet\n")
    w = IpsetWriter(4, fake.runner, backoff=0)
    w.set_members("felix-v4-new", ["10.0.0.2"])
    w.remove("felix-v4-old")
    await w.apply_updates()
    assert "destroy" not in fake.restores()[0]
    await w.apply()
    assert fake.restores()[1] == "destroy felix-v4-old\n"


async def test_restart_in_sync_writes_nothing_and_cleanup_spares_others():
    save = ("create felix-v4-a hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12\n"
            "add felix-v4-a 10.0.0.1\nadd felix-v4-a 10.1.0.0/16\n"
            "create felix-v4-stale hash:net family inet hashsize 1024 maxelem 1048576\n"
            "create felix-v6-a hash:net family inet6 hashsize 1024 maxelem 1048576\n"
            "create kube-x hash:ip family inet\n")
    fake = FakeIpset(save)
    w = IpsetWriter(4, fake.runner)
    w.set_members("felix-v4-a", ["10.0.0.1/32", "10.1.0.0/16"])
    assert await w.apply() is False and fake.restores() == []
    await w.cleanup_stale()
    assert fake.restores() == ["destroy felix-v4-stale\n"]


async def test_wrong_type_is_recreated():
    fake = FakeIpset("create felix-v4-a hash:ip family inet hashsize 1024 maxelem 65536\n")
    w = IpsetWriter(4, fake.runner)
    w.set_members("felix-v4-a", ["10.0.0.1"])
    await w.apply_updates()
    assert fake.restores()[0].splitlines()[:2] == [
        "destroy felix-v4-a", "create felix-v4-a hash:net family inet maxelem 1048576"]


async def test_failure_rereads_kernel_and_defers_destroy():
    fake = FakeIpset("create felix-v4-x hash:net family inet maxelem 1048576\n")
    w = IpsetWriter(4, fake.runner, backoff=0)
    w.set_members("felix-v4-y", ["10.0.0.5"])
    w.remove("felix-v4-x")
    fake.fail = w.retries
    await w.apply()
    assert sum(1 for argv, _ in fake.runner.calls if argv == ["ipset", "save"]) == 1 + w.retries
    assert "destroy" not in fake.restores()[-1] and "add felix-v4-y 10.0.0.5" in fake.restores()[-1]
    fake.fail = 100
    w.set_members("felix-v4-y", ["10.0.0.6"])
    with pytest.raises(DataplaneError):
        await w.apply_updates()
    assert w.stats["restore_errors"] >= w.retries + 1


def test_bad_names_rejected():
    w = IpsetWriter(6, FakeIpset().runner)
    for bad in ("felix-v4-a", "felix-v6-" + "a" * 30, "felix-v6-a b", "felix-v6-_tmp"):
        with pytest.raises(ValueError):
            w.set_members(bad, [])
    assert parse_save("create felix-v6-a hash:net family inet6\nadd felix-v6-a fd00::1\n", "felix-v6-") == (
        {"felix-v6-a": {"fd00::1"}}, {"felix-v6-a": "hash:net family inet6"})


class ListingIpset(FakeIpset):
    """Also answers `ipset list -n` with the sets of its save text plus `extra`."""

    def __init__(self, save: str = ""):
        super().__init__(save)
        self.extra: list[str] = []

    def respond(self, argv, inp):
        if argv == ["ipset", "list", "-n"]:
            names = [ln.split()[1] for ln in self.save.splitlines() if ln.startswith("create ")]
            return 0, "".join(f"{n}\n" for n in names + self.extra), ""
        return super().respond(argv, inp)


async def test_cleanup_lists_names_and_reads_members_only_when_the_sets_differ():
    fake = ListingIpset("create felix-v4-a hash:net family inet hashsize 1024 maxelem 1048576\n"
                        "add felix-v4-a 10.0.0.1\ncreate kube-x hash:ip family inet\n")
    w = IpsetWriter(4, fake.runner)
    w.set_members("felix-v4-a", ["10.0.0.1"])
    assert await w.apply() is False
    saves = sum(argv == ["ipset", "save"] for argv, _ in fake.runner.calls)
    await w.cleanup_stale()    # the kernel has exactly our sets: no second save, nothing destroyed
    assert sum(argv == ["ipset", "save"] for argv, _ in fake.runner.calls) == saves
    assert fake.restores() == []
    # a set of ours appeared behind our back: read everything again and destroy it
    fake.save += "create felix-v4-stale hash:net family inet hashsize 1024 maxelem 1048576\n"
    await w.cleanup_stale()
    assert sum(argv == ["ipset", "save"] for argv, _ in fake.runner.calls) == saves + 1
    assert fake.restores() == ["destroy felix-v4-stale\n"]
