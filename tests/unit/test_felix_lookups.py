"""Felix's name lookups (MetadataAddr, etcd host names) never block its event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from types import SimpleNamespace

import pytest

from felix import addons
from felix.config import Config


def _cfg(**env: str) -> Config:
    return Config.bootstrap({"FELIX_CONFIGFILE": "/nonexistent", **env})


@pytest.fixture
def felix(monkeypatch):
    """What the daemon hands the settings: a callback that queues "apply again" on its loop."""
    monkeypatch.setattr(addons, "_nameservers", lambda path="/etc/resolv.conf": set(), raising=False)
    f = SimpleNamespace(queue=None)
    f.settings = lambda: addons.OverlayNatSettings("h1", on_resolved=lambda: f.queue.put_nowait(("retry", None)))
    return f


def _hanging_resolver(monkeypatch, order: list[str], answers: dict[str, str]) -> threading.Event:
    """socket.getaddrinfo (what loop.getaddrinfo runs in a thread) hanging until released."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging_getaddrinfo(host, *a, **kw):
        if host not in answers:
            return real(host, *a, **kw)
        release.wait(30)  # only a safety net: the loop releases it once it has run
        order.append(f"resolved {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    return release


def test_blocking_system_resolver_does_not_block_the_loop(felix, monkeypatch):
    """The default path (loop.getaddrinfo -> socket.getaddrinfo in a thread) with a resolver that hangs."""
    order: list[str] = []
    release = _hanging_resolver(monkeypatch, order, {"metadata.example": "10.1.2.3"})

    async def main() -> None:
        felix.queue = asyncio.Queue()
        a = felix.settings()
        _, ncfg = a.configure(_cfg(FELIX_METADATAADDR="metadata.example"))
        order.append("configure returned")
        await asyncio.sleep(0)
        order.append("loop ran while resolving")
        assert ncfg.metadata_addr is None  # not known yet: no DNAT to a guess
        release.set()
        assert await asyncio.wait_for(felix.queue.get(), 30) == ("retry", None)
        assert a.nat_config().metadata_addr == "10.1.2.3"
        a.stop()

    asyncio.run(main())
    assert order == ["configure returned", "loop ran while resolving", "resolved metadata.example"]


@pytest.mark.skipif(not hasattr(addons, "protected_addrs"), reason="no NAT-protected addresses in this tree")
def test_etcd_host_name_lookup_does_not_block_the_loop(felix, monkeypatch):
    order: list[str] = []
    release = _hanging_resolver(monkeypatch, order, {"etcd.example": "10.9.9.9"})

    async def main() -> None:
        felix.queue = asyncio.Queue()
        a = felix.settings()
        _, ncfg = a.configure(_cfg(ETCD_ENDPOINTS="http://etcd.example:2379,http://10.0.0.1:2379"))
        order.append("configure returned")
        assert "10.0.0.1" in ncfg.protected  # literals protected at once
        await asyncio.sleep(0)
        order.append("loop ran while resolving")
        release.set()
        assert await asyncio.wait_for(felix.queue.get(), 30) == ("retry", None)
        assert {"10.9.9.9", "10.0.0.1"} <= a.nat_config().protected
        a.stop()

    asyncio.run(main())
    assert order == ["configure returned", "loop ran while resolving", "resolved etcd.example"]


def test_literal_addresses_need_no_lookup(felix):
    async def main() -> None:
        a = felix.settings()
        a.resolver = _never
        _, ncfg = a.configure(_cfg(FELIX_METADATAADDR="10.0.0.10", ETCD_ENDPOINTS="http://10.0.0.1:2379"))
        assert ncfg.metadata_addr == "10.0.0.10"
        assert not a.pending_lookups()
        a.stop()

    asyncio.run(main())


async def _never(*a, **kw):
    await asyncio.Event().wait()


def test_unanswered_lookup_times_out_to_no_metadata_dnat(caplog):
    async def main() -> str | None:
        return await addons._metadata_ip("metadata.example", resolver=_never, timeout=0.01)

    with caplog.at_level(logging.ERROR, logger="felix.addons"):
        assert asyncio.run(main()) is None
    assert any("timed out" in r.getMessage() for r in caplog.records)


def test_newer_config_cancels_the_older_lookup(felix):
    async def main() -> None:
        felix.queue = asyncio.Queue()
        a = felix.settings()
        a.resolver = _never
        a.configure(_cfg(FELIX_METADATAADDR="old.example"))
        assert a.pending_lookups() == {"metadata"}
        _, ncfg = a.configure(_cfg(FELIX_METADATAADDR="10.0.0.10"))
        await asyncio.sleep(0)
        assert "metadata" not in a.pending_lookups()
        assert ncfg.metadata_addr == "10.0.0.10"
        a.stop()

    asyncio.run(main())
