"""The confd loop: syncer updates -> debounced render -> check -> atomic write -> reload.

Why each step exists:
- debounce: a burst of etcd writes (a node joining, a script adding peers)
  must cost one or two BIRD reloads, not one per key;
- write only on changed bytes: a no-op write in etcd must not reload BIRD
  (a reload can reset sessions on some changes);
- `bird -p` on a staged file, then rename: BIRD only ever sees a file it
  accepts, so a bad template or value never takes BGP down;
- `configure` through the socket with the reply code checked: the only
  reliable way to know BIRD took the new config.
A failure keeps the last good file, is logged with the inputs that changed
since it was good, and makes readiness fail until fixed.

But a failure that one key causes must not hold back every other key: when
the full render fails its check while the config without the independent
keys passes, confd searches (confd.isolate) for the keys BIRD rejects, leaves
them out, logs each with BIRD's complaint, and installs the rest.  A later
render without those keys brings everything back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bird_control.protocol import BirdClient, BirdConfigError, BirdError, BirdUnavailable
from confd import render as _render
from confd import resources as _res
from confd.isolate import isolate
from confd.settings import Settings, check_ready  # noqa: F401 - check_ready: re-exported
from confd.state import BgpStore, Finding, Node
from libcalico import keys, subproc

log = logging.getLogger("confd")

QUIET = 0.02       # render once no change arrived for this long...
MAX_DELAY = 0.1    # ...or this long after the first pending change, whichever first
RETRY_TICK = 2.0   # retry failed reloads / pending work


@dataclass
class ResourceState:
    """What confd knows about one resource's output."""

    last_good: bytes | None = None
    error: str | None = None
    changed_keys: set[str] = field(default_factory=set)   # since the last good render
    reload_pending: bool = False
    renders: int = 0
    writes: int = 0
    reloads: int = 0
    isolated: dict[tuple[str, ...], str] = field(default_factory=dict)  # key group -> BIRD's complaint
    failed_full: bytes | None = None       # the full render those groups were isolated from
    checks: int = 0                        # check commands run (isolation included)


class Confd:
    def __init__(self, settings: Settings, store: BgpStore | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        """`clock` and `sleep` time the debounce; tests pass fakes to count renders per burst."""
        self.s = settings
        self._clock = clock
        self._sleep = sleep
        self.store = store or BgpStore(Node(settings.host, settings.ip4, settings.ip6, settings.router_id))
        self.resources: list[_res.Resource] = []
        self.load_errors: list[str] = []
        self.env = None
        self.states: dict[str, ResourceState] = {}
        self.in_sync = False
        self._dirty: set[str] = set()          # resource names to re-render
        self._wake = asyncio.Event()
        self._first_pending: float | None = None
        self._last_change = 0.0
        self._status_written: Any = None
        self.reloaded = asyncio.Condition()    # notified after every reload attempt (benchmarks, tests)
        self._unknown_logged: set[str] = set()
        self.findings: list[Finding] = []      # keys the store's rules left out at the last render

    # ---- resources and templates ---------------------------------------------

    def load(self) -> None:
        """(Re)load conf.d/ and templates/; errors are kept for readiness and logged once each."""
        for d in _res.install_defaults(self.s.confd_dir):
            log.info("installed default %s", d)
        resources, errors = _res.load_resources(os.path.join(self.s.confd_dir, "conf.d"),
                                                self.s.placeholders())
        for e in errors:
            if e not in self.load_errors:
                log.error("resource rejected: %s", e)
        self.load_errors = errors
        self.resources = resources
        self.env = _render.environment(os.path.join(self.s.confd_dir, "templates"))
        for r in resources:
            st = self.states.setdefault(r.name, ResourceState())
            if st.last_good is None:
                with contextlib.suppress(OSError):
                    with open(r.dest, "rb") as f:
                        st.last_good = f.read()
        self._dirty.update(r.name for r in resources)
        self._poke()

    # ---- datastore side ----------------------------------------------------------

    def apply(self, batch: list[Any]) -> None:
        """Feed one syncer batch into the store and mark the resources that depend on it."""
        self.store.reject_log.flush()
        for u in batch:
            if u.kind == "in_sync":
                if not self.in_sync:
                    log.info("in sync with the datastore")
                self.in_sync = True
                self._dirty.update(r.name for r in self.resources)
                continue
            key = u.key
            if u.kind == "unknown":
                if key not in self._unknown_logged:
                    self._unknown_logged.add(key)
                    self.store.reject_log.log("unknown key", logging.ERROR,
                                   "rejected %s: not a key of the datamodel (bad address or name in the key?)", key)
                continue
            rev = u.create_revision or 0
            if u.kind == "put":
                if self.store.is_claim(u.parsed_key):
                    if self.store.put_claim(u.parsed_key, u.value, rev) and self.store.claim_matters(u.parsed_key):
                        self._dirty.update(r.name for r in self.resources)
                    continue
                if not self.store.relevant(u.parsed_key):
                    continue
                changed = self.store.put(u.parsed_key, u.value, rev)
            elif u.kind == "invalid":
                parsed = keys.parse(key)
                if parsed is not None and self.store.is_claim(parsed):
                    if self.store.delete(key) and self.store.claim_matters(parsed):
                        self._dirty.update(r.name for r in self.resources)
                    continue
                if parsed is not None and not self.store.relevant(parsed):
                    continue  # another host's business (the syncer logged it)
                reason = u.error or "invalid"
                if reason.startswith(f"{key}: "):
                    reason = reason[len(key) + 2:]
                changed = self.store.reject(key, reason)
            elif u.kind == "delete":
                parsed = keys.parse(key)
                if parsed is not None and self.store.is_claim(parsed):
                    if self.store.delete(key) and self.store.claim_matters(parsed):
                        self._dirty.update(r.name for r in self.resources)
                    continue
                changed = self.store.delete(key)
            else:
                continue
            for r in self.resources:
                if r.watches(key):
                    self.states[r.name].changed_keys.add(key)
                    if changed or u.kind == "invalid":
                        self._dirty.add(r.name)
        if self._dirty:
            self._poke()
        self.write_status()

    def _poke(self) -> None:
        now = self._clock()
        if self._first_pending is None:
            self._first_pending = now
        self._last_change = now
        self._wake.set()

    # ---- render loop ------------------------------------------------------------

    async def render_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_TICK)
            self._wake.clear()
            await self._settle()
            if not self.in_sync:
                continue
            dirty, self._dirty = self._dirty, set()
            for r in self.resources:
                st = self.states[r.name]
                try:
                    if r.name in dirty:
                        await self.process(r)
                    elif st.reload_pending:
                        await self.reload(r)
                except Exception as e:  # noqa: BLE001 - a bug in one resource must not stop the others
                    log.exception("%s: internal error", r.name)
                    self._fail(r, f"internal error: {e.__class__.__name__}: {e}")
            self.write_status()

    async def _settle(self) -> None:
        """Debounce: wait for a quiet gap, bounded by MAX_DELAY from the first change."""
        while self._first_pending is not None:
            now = self._clock()
            due = min(self._last_change + QUIET, self._first_pending + MAX_DELAY)
            if now >= due:
                break
            await self._sleep(due - now)
        self._first_pending = None

    async def process(self, r: _res.Resource) -> None:
        """Render one resource and, when its bytes changed, check, install and reload it."""
        st = self.states[r.name]
        st.renders += 1
        text = self._render_resource(r)
        if text is None:
            return
        data = text.encode()
        if st.isolated and data == st.failed_full:
            # Same inputs as when the culprits were found: leave them out again without re-checking.
            text = self._render_without(r, st.isolated)
            data = text.encode()
        elif data == st.last_good:
            self._set_isolated(r, {})
        if self._unchanged(r, data):
            return
        stage = self._stage_path(r)
        if not self._staged(r, stage, data):
            return
        if r.check_argv(stage):
            data = await self._checked(r, stage, text, data)
            if data is None:
                return
        await self._install(r, stage, data)

    def _render_resource(self, r: _res.Resource) -> str | None:
        """The rendered text, or None when there is nothing to install (a failure is recorded)."""
        st = self.states[r.name]
        try:
            blocked = self.store.blocking_rejections()
            if blocked:
                raise _render.RenderError("required value rejected: " + "; ".join(blocked))
            ctx, self.findings = self.store.resolve()
            self.store.note(self.findings)
            text = _render.render(self.env, r.src, ctx)
        except _render.RenderError as e:
            self._fail(r, f"{r.src}: {e}")
            return None
        if not text.strip():
            if st.error:
                log.info("%s: nothing to render for this node now", r.name)
            st.error = None
            self._set_isolated(r, {})
            return None  # e.g. bird6.cfg on a node without IPv6: not written
        return text

    def _unchanged(self, r: _res.Resource, data: bytes) -> bool:
        """True (and the resource healthy again) when `data` is what is already installed."""
        st = self.states[r.name]
        if data != st.last_good or not os.path.exists(r.dest):
            return False
        if st.error:
            log.info("%s: back to the last good config", r.name)
        st.error = None
        st.changed_keys.clear()
        return True

    def _staged(self, r: _res.Resource, stage: str, data: bytes) -> bool:
        try:
            self._write_stage(r, stage, data)
        except OSError as e:
            self._fail(r, f"cannot write {stage}: {e}")
            return False
        return True

    async def _checked(self, r: _res.Resource, stage: str, text: str, data: bytes) -> bytes | None:
        """What to install after the checker saw the staged file: the full render when it passes,
        else the render without the keys the checker rejects; None when nothing is to be installed
        (the staged file is gone then)."""
        st = self.states[r.name]
        ok, out = await self._check(r, stage, text)
        if ok:
            if st.isolated:
                log.info("%s: the full config passes its check again; nothing left out", r.name)
                self._set_isolated(r, {})
            return data
        isolated = await self._isolate(r, stage, out)
        if isolated is None:
            self._set_isolated(r, {})
            _unlink(stage)
            return None
        st.failed_full = data
        self._set_isolated(r, isolated)
        text = self._render_without(r, isolated)
        data = text.encode()
        if self._unchanged(r, data):
            _unlink(stage)
            return None
        if not self._staged(r, stage, data):
            return None
        ok, out = await self._check(r, stage, text)
        if not ok:  # the search's own result failed: never install an unchecked file
            self._fail(r, f"check `{' '.join(r.check_argv(stage))}` failed: {out}")
            _unlink(stage)
            return None
        return data

    async def _install(self, r: _res.Resource, stage: str, data: bytes) -> None:
        """Swap the checked file in atomically, then reload."""
        st = self.states[r.name]
        try:
            with open(stage, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(stage, r.dest)
        except OSError as e:
            self._fail(r, f"cannot install {r.dest}: {e}")
            return
        st.writes += 1
        st.last_good = data
        if st.error:
            log.info("%s: fixed, new config installed", r.name)
        st.error = None
        log.info("wrote %s (%d bytes; changed: %s)", r.dest, len(data), _short(st.changed_keys))
        st.changed_keys.clear()
        st.reload_pending = True
        await self.reload(r)

    # ---- leaving out what BIRD rejects -------------------------------------------

    @staticmethod
    def _stage_path(r: _res.Resource) -> str:
        return os.path.join(os.path.dirname(r.dest), f".{os.path.basename(r.dest)}.stage")

    @staticmethod
    def _write_stage(r: _res.Resource, stage: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(r.dest), exist_ok=True)
        with open(stage, "wb") as f:
            f.write(data)
        os.chmod(stage, r.mode)

    async def _check(self, r: _res.Resource, stage: str, text: str) -> tuple[bool, str]:
        """Run the resource's check on the staged file; the complaint quotes the offending line."""
        argv = r.check_argv(stage) or []
        self.states[r.name].checks += 1
        ok, out = await _run(argv)
        return ok, ("" if ok else f"{out}{_offending_line(out, stage, text)}")

    def _render_without(self, r: _res.Resource, isolated: dict[tuple[str, ...], str]) -> str:
        exclude = frozenset(p for g in isolated for p in g)
        return _render.render(self.env, r.src, self.store.context(exclude))

    async def _isolate(self, r: _res.Resource, stage: str, full_error: str) -> dict[tuple[str, ...], str] | None:
        """The key groups to leave out so the rest passes the check; None (after failing the resource)
        when the fault is not in any of them or the search ran over its budget."""
        st = self.states[r.name]
        argv = r.check_argv(stage) or []
        groups = [g for g in self.store.groups() if any(r.watches(p) for p in g)]

        async def check(exclude: frozenset[str]) -> tuple[bool, str]:
            try:
                text = _render.render(self.env, r.src, self.store.context(exclude))
            except _render.RenderError as e:
                return False, str(e)
            self._write_stage(r, stage, text.encode())
            return await self._check(r, stage, text)

        res = None
        before = {p for g in st.isolated for p in g}
        suspects = [g for g in groups if before.intersection(g)]
        if suspects and len(suspects) < len(groups):
            # Usually the culprits are the ones found last time: one check confirms that the rest
            # passes, and the search then runs among them only.
            res = await isolate(suspects, check, full_error)
            if not res.ok:
                res = None
        if res is None:
            res = await isolate(groups, check, full_error)
        if not res.ok:
            self._fail(r, f"check `{' '.join(argv)}` failed: {full_error}; could not single out the keys "
                          f"responsible: {res.error}")
            return None
        log.warning("%s: `%s` rejects the full config; leaving out %d key group(s) found in %d checks",
                    r.name, " ".join(argv), len(res.bad), res.checks)
        return dict(res.bad)

    def _set_isolated(self, r: _res.Resource, isolated: dict[tuple[str, ...], str]) -> None:
        st = self.states[r.name]
        for g, why in sorted(isolated.items()):
            if st.isolated.get(g) != why:
                self.store.finding_log.log(
                    "bird rejects", logging.ERROR if any(self.store.mine(p) for p in g) else logging.WARNING,
                    "%s: left out %s: the check rejects the config with it: %s", r.name, ", ".join(g), why)
        for g in st.isolated.keys() - isolated.keys():
            log.info("%s: %s no longer left out", r.name, ", ".join(g))
        st.isolated = isolated
        if not isolated:
            st.failed_full = None

    async def reload(self, r: _res.Resource) -> None:
        st = self.states[r.name]
        sock = r.bird_socket()
        try:
            if sock is not None:
                if not os.path.exists(sock):
                    # BIRD not started yet: it reads the file when it starts. Retried on the
                    # next tick in case it was starting right now (configure is harmless).
                    log.info("%s: %s not there yet; BIRD will read %s when it starts", r.name, sock, r.dest)
                    return
                async with BirdClient(sock, timeout=10) as c:
                    res = await c.configure()
                log.info("%s: BIRD reconfigured (%04d %s)", r.name, res.code, res.message)
            elif r.reload_argv():
                ok, out = await _run(r.reload_argv() or [])
                if not ok:
                    raise BirdError(0, f"`{r.reload_cmd}` failed: {out}")
            st.reload_pending = False
            st.reloads += 1
        except BirdConfigError as e:
            st.reload_pending = False
            self._fail(r, f"BIRD refused {r.dest}: {e.text}")
        except (BirdUnavailable, BirdError, OSError, TimeoutError) as e:
            log.warning("%s: reload failed, will retry: %s", r.name, e)
        finally:
            async with self.reloaded:
                self.reloaded.notify_all()

    def _fail(self, r: _res.Resource, msg: str) -> None:
        st = self.states[r.name]
        inputs = _short(st.changed_keys) if st.changed_keys else "no datastore change (template or resource edit?)"
        full = f"{msg}; kept the last good {r.dest}; inputs changed since it was good: {inputs}"
        if st.error != full:
            log.error("%s: %s", r.name, full)
        st.error = full

    # ---- readiness ----------------------------------------------------------------

    def problems(self) -> list[str]:
        out = []
        if not self.in_sync:
            out.append("not in sync with the datastore yet")
        out += [f"resource: {e}" for e in self.load_errors]
        out += [f"{n}: {st.error}" for n, st in sorted(self.states.items()) if st.error]
        out += [f"rejected {k}: {v}" for k, v in sorted(self.store.rejected.items()) if self.store.concerns_me(k)]
        out += [f"left out {e}" for e in self.left_out(mine=True)]
        return out

    def left_out(self, mine: bool | None = None) -> list[str]:
        """Keys missing from the configs and why; `mine`: only those this node answers for (True), only
        other hosts' (False).  Another host's bad key never makes this node unready."""
        out = set()
        for f in self.findings:
            if mine is None or f.mine == mine:
                out.add(f"{f.path}: {f.reason}")
        for n, st in self.states.items():
            for g, why in st.isolated.items():
                if mine is None or any(self.store.mine(p) for p in g) == mine:
                    out.add(f"{', '.join(g)} ({n}): rejected by the check: {why}")
        return sorted(out)

    def write_status(self) -> None:
        problems = self.problems()
        status = {"pid": os.getpid(), "ready": not problems, "problems": problems,
                  "left_out": self.left_out()}
        if status == self._status_written:
            return
        path = self.s.status_path
        try:
            os.makedirs(self.s.run_dir, exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(status, f)
            os.replace(tmp, path)
            self._status_written = status
        except OSError as e:
            log.warning("cannot write %s: %s", path, e)


async def _run(argv: list[str], timeout: float = 30.0) -> tuple[bool, str]:
    try:
        p = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                 stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT)
        out, _ = await subproc.communicate(p, None, timeout)   # killed and reaped past the deadline
    except TimeoutError:
        return False, f"{argv[0]}: no answer within {timeout:g}s (killed)"
    except OSError as e:
        return False, str(e)
    text = out.decode("utf-8", "replace").strip()
    return p.returncode == 0, text or f"exit {p.returncode}"


def _offending_line(out: str, stage: str, text: str) -> str:
    """Quote the rendered line BIRD complained about (`file:LINE:COL msg`)."""
    m = re.search(re.escape(stage) + r":(\d+):", out)
    if not m:
        return ""
    lines = text.splitlines()
    n = int(m.group(1))
    return f" (line {n}: {lines[n - 1].strip()!r})" if 0 < n <= len(lines) else ""


def _short(keys: set[str], limit: int = 5) -> str:
    ks = sorted(keys)
    return ", ".join(ks[:limit]) + (f" and {len(ks) - limit} more" if len(ks) > limit else "") if ks else "none"


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
