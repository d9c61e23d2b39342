"""IptablesTable against a scripted runner: the exact restore text (only changed chains), retries, names.

The same writer runs against the real kernel in tests/integration/test_dataplane_iptables.py.
"""

from __future__ import annotations

import pytest

from felix.dataplane.backend import Backend, count_rules
from felix.dataplane.errors import DataplaneError
from felix.dataplane.iptables import MAX_CHAIN_LEN, IptablesTable, parse_save, rule_hash
from felix.names import chain_name
from tests.lib.fakes import ScriptedRunner

EMPTY_SAVE = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


class FakeIptables:
    """Answers save with `self.save`; restore with rc from `self.fail` (a count of failures to give)."""

    def __init__(self, save: str = EMPTY_SAVE):
        self.save = save
        self.fail = 0
        self.runner = ScriptedRunner(responder=self.respond)

    def respond(self, argv, inp):
        if argv[0].endswith("-save"):
            return 0, self.save, ""
        if self.fail:
            self.fail -= 1
            return 1, "", "iptables-restore: line 3 failed"
        return 0, "", ""

    def restores(self) -> list[str]:
        return [inp for argv, inp in self.runner.calls if argv[0].endswith("-restore")]


def make(fake: FakeIptables, family: int = 4, mode: str = "nft") -> IptablesTable:
    return IptablesTable(family, "filter", fake.runner, Backend(mode), backoff=0)


def test_chain_name_short_long_and_distinct():
    assert chain_name("felix-to-", "cali1234") == "felix-to-cali1234"
    long_a = chain_name("felix-to-", "x" * 60)
    long_b = chain_name("felix-to-", "x" * 59 + "y")
    assert len(long_a) <= MAX_CHAIN_LEN and len(long_b) <= MAX_CHAIN_LEN
    assert long_a != long_b and long_a.startswith("felix-to-_")
    # an id that looks like a hashed name is hashed too, so the two forms never collide
    assert chain_name("felix-to-", long_a[len("felix-to-"):]) != long_a
    assert chain_name("felix-p-", "bad name!").startswith("felix-p-_")
    with pytest.raises(ValueError):
        chain_name("cali-", "x")


def test_backend_commands_and_counting():
    assert Backend("legacy").restore_cmd(6) == "ip6tables-legacy-restore"
    assert Backend("nft").save_cmd(4) == "iptables-nft-save"
    assert count_rules(":felix-a - [0:0]\n-A felix-a -j ACCEPT\n-A INPUT -j DROP\n") == 2


async def test_first_apply_is_one_save_and_one_restore_with_everything():
    fake = FakeIptables()
    t = make(fake, mode="legacy")
    t.set_chain("felix-a", ["-p tcp --dport 80 -j ACCEPT"])
    t.set_chain("felix-b", ["-j felix-a"])
    t.set_hooks("INPUT", ["-j felix-b"])
    assert await t.apply() is True
    argvs = [c[0] for c in fake.runner.calls]
    assert argvs == [["iptables-legacy-save", "-t", "filter"],
                     ["iptables-legacy-restore", "--noflush", "--wait", "10"]]
    ha = rule_hash("felix-a", "-p tcp --dport 80 -j ACCEPT")
    hb = rule_hash("felix-b", "-j felix-a")
    hi = rule_hash("INPUT", "-j felix-b")
    assert fake.restores()[0] == (
        "*filter\n:felix-a - [0:0]\n:felix-b - [0:0]\n"
        f"-A felix-a -m comment --comment felix:{ha} -p tcp --dport 80 -j ACCEPT\n"
        f"-A felix-b -m comment --comment felix:{hb} -j felix-a\n"
        f"-I INPUT 1 -m comment --comment felix:{hi} -j felix-b\n"
        "COMMIT\n")
    assert not t.dirty
    assert await t.apply() is False
    assert len(fake.runner.calls) == 2  # nothing changed: no process at all


async def test_only_changed_chain_is_rewritten_and_removed_chain_deleted_last():
    fake = FakeIptables()
    t = make(fake)
    for i in range(5):
        t.set_chain(f"felix-c{i}", [f"-s 10.0.0.{i} -j ACCEPT"])
    t.set_chain("felix-top", [f"-j felix-c{i}" for i in range(5)])
    await t.apply()
    t.set_chain("felix-c2", ["-s 10.0.0.99 -j ACCEPT"])
    t.set_chain("felix-top", [f"-j felix-c{i}" for i in range(4)])
    t.remove_chain("felix-c4")
    await t.apply()
    text = fake.restores()[-1].splitlines()
    assert text[0] == "*filter" and text[-1] == "COMMIT"
    assert [ln for ln in text if ln.startswith(":")] == [":felix-c2 - [0:0]", ":felix-top - [0:0]", ":felix-c4 - [0:0]"]
    assert not any("felix-c1 -m" in ln or ln.startswith("-A felix-c0") for ln in text)
    assert text[-2] == "-X felix-c4"
    assert sum(1 for ln in text if ln.startswith("-A felix-top")) == 4


async def test_restart_with_matching_kernel_rewrites_nothing():
    first = FakeIptables()
    t1 = make(first)
    t1.set_chain("felix-a", ["-j ACCEPT"])
    t1.set_hooks("FORWARD", ["-j felix-a"])
    await t1.apply()
    ha, hf = rule_hash("felix-a", "-j ACCEPT"), rule_hash("FORWARD", "-j felix-a")
    # what iptables-save would print after that restore (plus someone else's rule below ours)
    save = (":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:felix-a - [0:0]\n"
            f'-A FORWARD -m comment --comment "felix:{hf}" -j felix-a\n-A FORWARD -j DOCKER\n'
            f'-A felix-a -m comment --comment "felix:{ha}" -j ACCEPT\nCOMMIT\n')
    fake = FakeIptables("*filter\n" + save)
    t2 = make(fake)
    t2.set_chain("felix-a", ["-j ACCEPT"])
    t2.set_hooks("FORWARD", ["-j felix-a"])
    assert await t2.apply() is False
    assert fake.restores() == []


async def test_refresh_repairs_flushed_chain_and_moved_hook_only():
    fake = FakeIptables()
    t = make(fake)
    t.set_chain("felix-a", ["-j ACCEPT"])
    t.set_chain("felix-b", ["-j DROP"])
    t.set_hooks("INPUT", ["-j felix-a"])
    await t.apply()
    ha, hb = rule_hash("felix-a", "-j ACCEPT"), rule_hash("felix-b", "-j DROP")
    hi = rule_hash("INPUT", "-j felix-a")
    # felix-b was flushed by hand, someone inserted a rule above our hook
    fake.save = ("*filter\n:INPUT ACCEPT [0:0]\n:felix-a - [0:0]\n:felix-b - [0:0]\n"
                 f"-A INPUT -s 1.2.3.4/32 -j ACCEPT\n-A INPUT -m comment --comment \"felix:{hi}\" -j felix-a\n"
                 f"-A felix-a -m comment --comment \"felix:{ha}\" -j ACCEPT\nCOMMIT\n")
    assert await t.refresh() is True
    text = fake.restores()[-1]
    assert ":felix-b - [0:0]" in text and ":felix-a" not in text
    assert f"-A felix-b -m comment --comment felix:{hb} -j DROP" in text
    assert f'-D INPUT -m comment --comment "felix:{hi}" -j felix-a\n' in text
    assert f"-I INPUT 1 -m comment --comment felix:{hi} -j felix-a\n" in text
    assert "1.2.3.4" not in text  # others' rules are never touched


async def test_failed_restore_is_retried_then_raises_and_stays_dirty():
    fake = FakeIptables()
    t = make(fake)
    t.set_chain("felix-a", ["-j ACCEPT"])
    fake.fail = 1
    assert await t.apply() is True
    assert t.stats["restore_errors"] == 1 and not t.dirty
    t.set_chain("felix-a", ["-j DROP"])
    fake.fail = 100
    with pytest.raises(DataplaneError):
        await t.apply()
    assert t.dirty
    fake.fail = 0
    assert await t.apply() is True and not t.dirty


async def test_failing_delete_is_deferred_so_other_updates_land():
    fake = FakeIptables()
    t = make(fake, mode="legacy")
    t.set_chain("felix-a", ["-j ACCEPT"])
    t.set_chain("felix-b", ["-j ACCEPT"])
    await t.apply()
    fake.save = fake.save.replace("COMMIT", ":felix-a - [0:0]\n:felix-b - [0:0]\nCOMMIT")
    t.remove_chain("felix-b")
    t.set_chain("felix-a", ["-j DROP"])
    fake.fail = t.retries  # every attempt with the delete fails (e.g. still referenced elsewhere)
    assert await t.apply() is True
    last = fake.restores()[-1]
    assert "-X felix-b" not in last and "-j DROP" in last
    assert t.dirty  # the deletion is still pending


def test_rules_and_names_are_checked():
    t = make(FakeIptables())
    with pytest.raises(ValueError):
        t.set_chain("felix-a", ["-j ACCEPT\n-A INPUT -j DROP"])
    with pytest.raises(ValueError):
        t.set_chain("felix-" + "x" * 30, [])
    with pytest.raises(ValueError):
        t.set_chain("INPUT", [])
    with pytest.raises(ValueError):
        t.set_hooks("PREROUTING", ["-j felix-a"])  # not a filter builtin
    with pytest.raises(ValueError):
        IptablesTable(4, "security", FakeIptables().runner, Backend("nft"))
    nat = IptablesTable(6, "nat", FakeIptables().runner, Backend("nft"))
    nat.set_hooks("POSTROUTING", ["-j felix-POSTROUTING"])


def test_parse_save_ignores_other_tables_and_chains():
    text = ("*nat\n:felix-x - [0:0]\n-A felix-x -j ACCEPT\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n"
            ":DOCKER - [0:0]\n:felix-y - [0:0]\n-A DOCKER -j ACCEPT\n-A felix-y -j ACCEPT\n"
            "-A INPUT -j DOCKER\nCOMMIT\n")
    kt = parse_save(text, "filter")
    assert kt.chains == {"felix-y": [None]}
    assert kt.builtin_rules == {"INPUT": [(None, "-j DOCKER")]}


async def test_small_change_to_long_chain_is_an_in_place_edit():
    fake = FakeIptables()
    t = make(fake)
    rules = [f"-o cali{i} -g felix-tw-cali{i}" for i in range(20)]
    t.set_chain("felix-to-wl-dispatch", rules + ["-j DROP"])
    await t.apply()
    t.set_chain("felix-to-wl-dispatch", rules[:5] + ["-o caliN -g felix-tw-caliN"] + rules[6:] + ["-j DROP"])
    await t.apply()
    old_h = rule_hash("felix-to-wl-dispatch", rules[5])
    new_h = rule_hash("felix-to-wl-dispatch", "-o caliN -g felix-tw-caliN")
    assert fake.restores()[-1] == (
        "*filter\n"
        f"-D felix-to-wl-dispatch -m comment --comment felix:{old_h} {rules[5]}\n"
        f"-I felix-to-wl-dispatch 6 -m comment --comment felix:{new_h} -o caliN -g felix-tw-caliN\n"
        "COMMIT\n")
    # appending at the end uses -A (an insert position past the end is an error)
    t.set_chain("felix-to-wl-dispatch", rules[:5] + ["-o caliN -g felix-tw-caliN"] + rules[6:] + ["-j DROP", "-j LOG"])
    await t.apply()
    assert fake.restores()[-1].splitlines()[1].startswith("-A felix-to-wl-dispatch -m comment")
    # a big change is a rewrite
    t.set_chain("felix-to-wl-dispatch", ["-j ACCEPT"])
    await t.apply()
    assert ":felix-to-wl-dispatch - [0:0]" in fake.restores()[-1]


async def test_chain_with_duplicate_rules_is_rewritten_not_edited():
    fake = FakeIptables()
    t = make(fake)
    rules = [f"-o cali{i} -j RETURN" for i in range(10)] + ["-j LOG"] + [f"-o x{i} -j RETURN" for i in range(10)]
    rules.append("-j LOG")  # the same rule twice: deleting "the second -j LOG" by spec would hit the first
    t.set_chain("felix-d", rules)
    await t.apply()
    t.set_chain("felix-d", rules[:-1])
    await t.apply()
    assert ":felix-d - [0:0]" in fake.restores()[-1]
