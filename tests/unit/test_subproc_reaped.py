"""A child whose deadline passes (or whose caller is cancelled) is killed and reaped, never left running."""

from __future__ import annotations

import asyncio
import os

import pytest

from felix.dataplane.cmd import CmdRunner
from libcalico import subproc


def _gone(pid: int) -> bool:
    """True once the pid no longer exists (a zombie still does: it must have been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def spawned(monkeypatch):
    """Every process asyncio starts in the test, so the test can look at the real pid afterwards."""
    procs: list[asyncio.subprocess.Process] = []
    real = asyncio.create_subprocess_exec

    async def recording(*a, **kw):
        p = await real(*a, **kw)
        procs.append(p)
        return p

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
    yield procs
    for p in procs:  # never leave a sleeper behind, even when an assertion failed
        if p.returncode is None:
            try:
                p.kill()
            except ProcessLookupError:
                pass


def test_cmdrunner_timeout_kills_and_reaps_the_child(spawned):
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await CmdRunner().run(["sleep", "60"], timeout=0.05)

    asyncio.run(main())
    assert len(spawned) == 1
    assert spawned[0].returncode is not None and _gone(spawned[0].pid)


def test_cmdrunner_cancelled_caller_kills_and_reaps_the_child(spawned):
    async def main() -> None:
        task = asyncio.create_task(CmdRunner().run(["sleep", "60"], timeout=600))
        while not spawned:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert spawned[0].returncode is not None  # reaped before the cancellation reached us

    asyncio.run(main())
    assert _gone(spawned[0].pid)


def test_subproc_communicate_timeout_reaps(spawned):
    async def main() -> None:
        p = await asyncio.create_subprocess_exec("sleep", "60", stdout=asyncio.subprocess.PIPE)
        with pytest.raises(TimeoutError):
            await subproc.communicate(p, None, 0.05)
        assert p.returncode is not None

    asyncio.run(main())
    assert _gone(spawned[0].pid)


def test_subproc_normal_exit_untouched(spawned):
    async def main() -> tuple[bytes, bytes]:
        p = await asyncio.create_subprocess_exec("sh", "-c", "echo hi; exit 3", stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
        out = await subproc.communicate(p, None, 30)
        assert p.returncode == 3
        return out

    assert asyncio.run(main())[0] == b"hi\n"


def test_confd_check_timeout_kills_and_reaps_the_checker(spawned):
    """confd's `bird -p` runner: a checker stuck past its deadline is killed, and the check fails."""
    from confd.daemon import _run

    async def main() -> tuple[bool, str]:
        return await _run(["sleep", "60"], timeout=0.05)

    ok, why = asyncio.run(main())
    assert not ok and "killed" in why
    assert len(spawned) == 1 and _gone(spawned[0].pid)
