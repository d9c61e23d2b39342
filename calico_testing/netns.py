"""Network namespaces for tests: created with a unique, recognisable name and always removed.

Every namespace a test makes is named `ct<pid>-<tag>` so a session-end check
can prove none were left behind, and so parallel test runs never collide.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time

PREFIX = f"ct{os.getpid()}-"
_counter = itertools.count()


def sh(*cmd: str, check: bool = True, ns: str | None = None, timeout: float = 60, input: str | None = None
       ) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def list_ours() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


class Netns:
    """One namespace; `with Netns('host') as h:` or call close(). Names stay within 15 chars for veths."""

    def __init__(self, tag: str = "ns"):
        self.name = f"{PREFIX}{tag}{next(_counter)}"
        sh("ip", "netns", "add", self.name)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        return sh(*cmd, check=check, ns=self.name, timeout=timeout, input=input)

    def popen(self, cmd: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name] + cmd, env=env, **kw)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            if pids and sig == signal.SIGTERM:
                time.sleep(0.3)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_veth_counter = itertools.count()


def veth(ns_a: Netns, name_a: str, ns_b: Netns | None, name_b: str) -> None:
    """A veth pair with one end in each namespace (ns_b None = root namespace, avoid in tests)."""
    tmp = f"vt{os.getpid() % 10000}x{next(_veth_counter)}"
    sh("ip", "link", "add", tmp, "type", "veth", "peer", "name", name_b,
       *(["netns", ns_b.name] if ns_b else []))
    sh("ip", "link", "set", tmp, "netns", ns_a.name)
    ns_a.run("ip", "link", "set", tmp, "name", name_a)
    ns_a.run("ip", "link", "set", name_a, "up")
    if ns_b:
        ns_b.run("ip", "link", "set", name_b, "up")


def wait_for(pred, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll `pred` until it returns truthy; returns its value or raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the predicate may fail while things converge
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))
