"""Fixtures shared by every test tier. Real etcd; namespaces always removed."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from calico_testing import netns as _netns
from calico_testing.etcd import EtcdServer
from tests.reliability import profiles as _hypothesis_profiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
if os.path.isdir(VENV_BIN) and VENV_BIN not in os.environ.get("PATH", ""):
    os.environ["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")

# Hypothesis: fixed-seed `ci` profile by default, `HYPOTHESIS_PROFILE=fuzz` explores (make fuzz).
_hypothesis_profiles.register()


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} not installed: run scripts/install-deps")


@pytest.fixture
def etcd():
    """A fresh etcd per test, on a free loopback port (root namespace, loopback only)."""
    _require("etcd")
    server = EtcdServer().start()
    yield server
    server.close()


@pytest.fixture
def etcd_env(etcd, monkeypatch):
    """etcd plus ETCD_ENDPOINTS in the environment, for code that reads its settings from env."""
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    for var in ("ETCD_AUTHORITY", "ETCD_SCHEME", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE", "ETCD_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    return etcd


@pytest.fixture
def netns_factory():
    """Make namespaces with `netns_factory('tag')`; every one is removed at teardown, even on failure."""
    made: list[_netns.Netns] = []

    def make(tag: str = "ns") -> _netns.Netns:
        ns = _netns.Netns(tag)
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.close()


def pytest_sessionfinish(session, exitstatus):
    left = _netns.list_ours()
    for name in left:
        os.system(f"ip netns del {name} >/dev/null 2>&1")
    if left:
        print(f"\nERROR: tests left network namespaces behind: {left}", file=sys.stderr)
        session.exitstatus = 1
