"""Which addresses get their conntrack entries deleted, and how failures stay contained (no kernel).

The endpoints come from the real calculator (so "owner" means what Felix
programs), the commands go to a scripted runner; the kernel side is proved in
tests/integration/test_felix_conntrack.py.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from felix.calc import CalcConfig, Calculator
from felix.dataplane.conntrack import ConntrackFlusher, flush_argvs
from libcalico import models
from libcalico.ratelimit import RateLimitedLog
from tests.lib.fakes import ScriptedRunner


def _key(w: str) -> str:
    return f"/calico/v1/host/h1/workload/k/{w}/endpoint/e"


def _put(c: Calculator, w: str, iface: str, v4: list[str], v6: list[str] = (), host: str = "h1") -> None:
    path = _key(w).replace("/h1/", f"/{host}/")
    doc = {"state": "active", "name": iface, "profile_ids": ["p"], "ipv4_nets": v4, "ipv6_nets": list(v6)}
    k, v = models.parse_key_value(path, json.dumps(doc))
    c.on_update("put", k, v, len(c.endpoints) + 1)


def _delete(c: Calculator, w: str) -> None:
    k, _ = models.parse_key_value(_key(w), None)
    c.on_update("delete", k, None)


def _flushed(runner: ScriptedRunner) -> list[tuple[str, ...]]:
    return sorted(tuple(argv[1:]) for argv, _ in runner.calls)


def _setup(responder=None):
    c = Calculator(CalcConfig("h1"))
    runner = ScriptedRunner(responder) if responder else ScriptedRunner()
    ct = ConntrackFlusher(runner)
    _put(c, "a", "calia", ["10.0.0.1/32", "10.0.0.11/32"], ["fd00::1/128"])
    _put(c, "b", "calib", ["10.0.0.2/32"])
    ct.set_endpoints(c.desired().endpoints)
    return c, runner, ct


def _v4(addr: str) -> list[tuple[str, ...]]:
    return [("-f", "ipv4", "-D", "--orig-src", addr), ("-f", "ipv4", "-D", "--reply-src", addr)]


def test_first_batch_and_unchanged_batches_flush_nothing():
    c, runner, ct = _setup()
    assert not ct.dirty
    ct.set_endpoints(c.desired().endpoints)
    assert asyncio.run(ct.apply()) is False
    assert runner.calls == []


def test_removed_endpoint_flushes_each_address_both_directions():
    c, runner, ct = _setup()
    _delete(c, "a")
    assert ct.set_endpoints(c.desired().endpoints) == 3
    assert asyncio.run(ct.apply()) is True
    assert _flushed(runner) == sorted(_v4("10.0.0.1") + _v4("10.0.0.11") + [
        ("-f", "ipv6", "-D", "--orig-src", "fd00::1"), ("-f", "ipv6", "-D", "--reply-src", "fd00::1")])
    assert all(argv[0] == "conntrack" for argv, _ in runner.calls)
    assert not ct.dirty and ct.stats.flushed_addresses == 3


def _moved_to_new_endpoint(c):
    """The Docker case: the old workload goes and a new one gets its address before Felix applies."""
    _delete(c, "b")
    _put(c, "n", "calin", ["10.0.0.2/32"])


@pytest.mark.parametrize("change, flushed", [
    (lambda c: _put(c, "a", "calia", ["10.0.0.1/32", "10.0.0.12/32"], ["fd00::1/128"]), "10.0.0.11"),
    (_moved_to_new_endpoint, "10.0.0.2"),
    (lambda c: _put(c, "b", "calib2", ["10.0.0.2/32"]), "10.0.0.2"),     # same endpoint, new interface
], ids=["address-removed", "address-to-new-endpoint", "endpoint-on-new-interface"])
def test_only_addresses_that_changed_owner_are_flushed(change, flushed):
    c, runner, ct = _setup()
    change(c)
    ct.set_endpoints(c.desired().endpoints)
    asyncio.run(ct.apply())
    assert _flushed(runner) == sorted(_v4(flushed))


def test_losing_claimant_taking_over_flushes_but_its_arrival_does_not():
    c, runner, ct = _setup()
    _put(c, "late", "calil", ["10.0.0.2/32"])          # claims b's address: loses, b keeps it
    ct.set_endpoints(c.desired().endpoints)
    assert not ct.dirty
    _delete(c, "b")                                     # now the late one gets it: b's flows must not follow
    ct.set_endpoints(c.desired().endpoints)
    assert ct.pending() == {"10.0.0.2/32"}


def test_address_taken_again_after_an_unowned_batch_is_flushed_again():
    """While nobody owned it, packets to it took the default route and may have left entries."""
    c, runner, ct = _setup()
    _delete(c, "b")
    ct.set_endpoints(c.desired().endpoints)
    asyncio.run(ct.apply())
    _put(c, "n", "calin", ["10.0.0.2/32", "10.0.0.99/32"])    # 10.0.0.99 was never ours: nothing to flush
    assert ct.set_endpoints(c.desired().endpoints) == 1
    assert ct.pending() == {"10.0.0.2/32"}
    asyncio.run(ct.apply())
    ct.set_endpoints(c.desired().endpoints)
    assert not ct.dirty


def test_released_addresses_are_remembered_within_a_bound():
    ct = ConntrackFlusher(ScriptedRunner(), max_unowned=2)
    ct.set_owners({f"10.0.0.{i}/32": ("k", "cali") for i in range(4)})
    ct.set_owners({})
    assert len(ct._unowned) == 2


def test_remote_endpoints_are_not_ours():
    c, runner, ct = _setup()
    _put(c, "r", "calir", ["10.0.0.50/32"], host="h2")
    ct.set_endpoints(c.desired().endpoints)
    k, _ = models.parse_key_value(_key("r").replace("/h1/", "/h2/"), None)
    c.on_update("delete", k, None)
    ct.set_endpoints(c.desired().endpoints)
    assert not ct.dirty


def test_ipv4_only_felix_leaves_v6_alone():
    c = Calculator(CalcConfig("h1"))
    runner = ScriptedRunner()
    ct = ConntrackFlusher(runner)
    _put(c, "a", "calia", ["10.0.0.1/32"], ["fd00::1/128"])
    ct.set_endpoints(c.desired().endpoints, (4,))
    _delete(c, "a")
    ct.set_endpoints(c.desired().endpoints, (4,))
    asyncio.run(ct.apply())
    assert _flushed(runner) == sorted(_v4("10.0.0.1"))


def test_no_matching_entry_is_success_without_retry():
    def responder(argv, inp):
        return 1, "", "conntrack v1.4.5 (conntrack-tools): 0 flow entries have been deleted.\n"
    c, runner, ct = _setup(responder)
    _delete(c, "b")
    ct.set_endpoints(c.desired().endpoints)
    assert asyncio.run(ct.apply()) is True
    assert len(runner.calls) == 2 and ct.stats.run_errors == 0


def test_one_failing_address_is_retried_then_dropped_and_hurts_nobody(caplog):
    def responder(argv, inp):
        if "10.0.0.1" in argv:
            return 1, "", "conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters\n"
        if "10.0.0.11" in argv:
            raise FileNotFoundError("conntrack")
        return 0, "", ""
    c, runner, ct = _setup(responder)
    ct._ratelog = RateLimitedLog(logging.getLogger("felix.dataplane.conntrack"), burst=2,
                                 clock=lambda: 0.0)
    _delete(c, "a")
    _delete(c, "b")
    ct.set_endpoints(c.desired().endpoints)
    with caplog.at_level(logging.WARNING, logger="felix.dataplane.conntrack"):
        assert asyncio.run(ct.apply()) is True            # never raises; b and fd00::1 were flushed
    tries = [argv for argv, _ in runner.calls if "10.0.0.1" in argv]
    assert len(tries) == 2 * ct.retries                   # both directions, every attempt
    assert ct.stats.flushed_addresses == 2 and ct.stats.given_up == 2
    assert not ct.dirty                                   # dropped: the entries time out on their own
    lines = [r for r in caplog.records if r.name == "felix.dataplane.conntrack"]
    assert 0 < len(lines) <= 2 + 2                        # burst per kind, not one line per failure
    assert any("10.0.0.1" in r.getMessage() for r in lines)


def test_bad_address_is_logged_not_raised():
    ct = ConntrackFlusher(ScriptedRunner())
    ct.set_owners({"not-an-ip": ("k", "cali1")})
    ct.set_owners({})
    assert asyncio.run(ct.apply()) is False
    assert ct.stats.given_up == 1


def test_wider_net_uses_masks():
    assert flush_argvs("10.1.0.0/30") == [
        ["conntrack", "-f", "ipv4", "-D", "--orig-src", "10.1.0.0", "--mask-src", "255.255.255.252"],
        ["conntrack", "-f", "ipv4", "-D", "--orig-dst", "10.1.0.0", "--mask-dst", "255.255.255.252"]]
    assert flush_argvs("fd00::5/128")[1] == ["conntrack", "-f", "ipv6", "-D", "--reply-src", "fd00::5"]


def test_stale_routes_after_a_restart_release_only_unowned_host_addresses():
    ct = ConntrackFlusher(ScriptedRunner())
    ct.set_owners({"10.0.0.1/32": ("k", "cali1"), "fd00::1/128": ("k", "cali1")})
    assert ct.release_unowned({"10.0.0.1/32", "fd00:0::1/128", "10.0.0.5/32", "10.65.0.0/26", "junk"}) == 1
    assert ct.pending() == {"10.0.0.5/32"}
