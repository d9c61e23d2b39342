"""felix.driver (desired state -> writer calls) and the daemon's failure policy, without a kernel.

The writers are the real classes with a scripted command runner: these tests
check what Felix hands them, the integration tests check what the kernel gets.
"""

from __future__ import annotations

import json

import pytest

from felix.calc import CalcConfig, Calculator
from felix.config import Config
from felix.config_store import ConfigStore
from felix.dataplane.backend import Backend
from felix.dataplane.errors import DataplaneError
from felix.dataplane.routes import RouteWriter
from felix.driver import DataplaneDriver
from felix.policy_apply import MAX_APPLY_FAILURES, ApplyPolicy, FelixExit
from libcalico import keys, models
from tests.lib.fakes import ScriptedRunner


def _calc() -> Calculator:
    c = Calculator(CalcConfig("h1"))
    docs = {
        "/calico/v1/policy/profile/p/rules": {"inbound_rules": [{"src_tag": "t"}], "outbound_rules": [{}]},
        "/calico/v1/policy/profile/p/tags": ["t"],
    }
    for i in range(3):
        docs[f"/calico/v1/host/h1/workload/k/w{i}/endpoint/e"] = {
            "state": "active", "name": f"cali{i}", "profile_ids": ["p"], "mac": f"ee:ee:ee:ee:ee:0{i}",
            "ipv4_nets": [f"10.0.0.{i}/32"], "ipv6_nets": [f"fd00::{i}/128"]}
    for path, doc in docs.items():
        k, v = models.parse_key_value(path, json.dumps(doc))
        c.on_update("put", k, v)
    return c


def _driver() -> DataplaneDriver:
    return DataplaneDriver(ScriptedRunner(), Backend("nft"), RouteWriter(), ipv6=True)


def test_push_hands_over_everything_then_only_changes(monkeypatch):
    c, d = _calc(), _driver()
    first = d.push(c.desired())
    assert set(d.tables[4].chains()) == set(c.desired().v4.chains)
    assert d.ipsets[4].members("felix-v4-t") == frozenset({"10.0.0.0", "10.0.0.1", "10.0.0.2"})
    assert d.ipsets[6].members("felix-v6-t") == frozenset({"fd00::", "fd00::1", "fd00::2"})
    assert {r.ifname for r in d.routes.desired_routes().values()} == {"cali0", "cali1", "cali2"}
    assert first > 10
    assert d.push(c.desired()) == 0, "nothing changed: no writer call"

    calls: list[str] = []
    monkeypatch.setattr(d.tables[4], "set_chain", lambda name, rules: calls.append(name))
    k, _ = models.parse_key_value("/calico/v1/host/h1/workload/k/w1/endpoint/e", None)
    c.on_update("delete", k)
    d.push(c.desired())
    assert "felix-to-cali1" not in d.tables[4].chains() and "felix-to-cali1" not in calls
    assert set(calls) == {"felix-FROM-ENDPOINT", "felix-TO-ENDPOINT"}, "only the dispatch chains rewritten"
    assert d.ipsets[4].members("felix-v4-t") == frozenset({"10.0.0.0", "10.0.0.2"})
    assert "10.0.0.1/32" not in d.routes.desired_routes()


def test_apply_failures_exit_after_limit():
    retries: list[float] = []
    policy = ApplyPolicy(retries.append)
    for _ in range(MAX_APPLY_FAILURES - 1):
        policy.failed(DataplaneError("restore failed"))
    assert len(retries) == 1, "one retry timer at a time"
    with pytest.raises(FelixExit) as e:
        policy.failed(DataplaneError("restore failed"))
    assert e.value.code == 1
    p2 = ApplyPolicy(retries.append)
    p2.failed(DataplaneError("x"))
    p2.succeeded()
    assert p2.failures == 0


def test_config_keys_of_other_hosts_are_ignored(tmp_path):
    env = {"FELIX_CONFIGFILE": str(tmp_path / "none")}
    store = ConfigStore(Config.resolve({}, {}, environ=env, hostname="h1"), environ=env)

    def update(path: str, value: str) -> bool:
        return store.update("put", keys.parse(path), value)

    assert not update("/calico/v1/host/other/config/InterfacePrefix", "tap")
    assert update("/calico/v1/host/h1/config/LogSeverityScreen", "debug")
    assert update("/calico/v1/config/IptablesRefreshInterval", "5")
    cfg = store.resolve()
    assert cfg.InterfacePrefix == "cali" and cfg.LogSeverityScreen == "debug"
    assert cfg.IptablesRefreshInterval == 5.0
