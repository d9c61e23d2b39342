"""Fault injection helpers for reliability tests: dataplane snapshots, the xtables lock, a full disk,
a writer racing a transaction.

Everything acts only inside namespaces (or mount namespaces) the test owns,
except the xtables lock: /run/xtables.lock is one file for every network
namespace on the machine, so `hold_xtables_lock` must be held briefly and
only by a test that expects iptables to wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator

from calico_testing.netns import Netns

XTABLES_LOCK = "/run/xtables.lock"
_COUNTERS = re.compile(r"\[\d+:\d+\]")


def normalized_iptables(ns: Netns, version: int = 4, only_felix: bool = False) -> str:
    """iptables-save of both backends with counters, dates and comments removed, sorted per table.

    Two runs that programmed the same thing compare equal even though packet
    counters and the order in which chains were created differ.
    """
    tool = "iptables" if version == 4 else "ip6tables"
    out = []
    for backend in ("nft", "legacy"):
        text = ns.run(f"{tool}-{backend}-save", check=False).stdout
        table = ""
        lines: list[str] = []
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line
                lines = []
                continue
            if line == "COMMIT":
                if lines:
                    out.append(f"{backend} {table}\n" + "\n".join(sorted(lines)))
                continue
            line = _COUNTERS.sub("[0:0]", line)
            if only_felix and "felix" not in line:
                continue
            lines.append(line)
    return "\n".join(out)


def ipsets(ns: Netns) -> str:
    """`ipset save` of our sets, members sorted."""
    text = ns.run("ipset", "save", check=False).stdout
    return "\n".join(sorted(line for line in text.splitlines() if "felix-" in line))


def routes(ns: Netns) -> str:
    """Every route Felix owns (proto 80) and the neighbours it set, v4 and v6, sorted."""
    r4 = ns.run("ip", "-4", "route", "show", "proto", "80", check=False).stdout.splitlines()
    r6 = ns.run("ip", "-6", "route", "show", "proto", "80", check=False).stdout.splitlines()
    nb = ns.run("ip", "neigh", "show", "nud", "permanent", check=False).stdout.splitlines()
    return "\n".join(sorted(r4) + sorted(r6) + sorted(nb))


def dataplane(ns: Netns) -> dict[str, str]:
    """Everything Felix programs in `ns`, normalized for comparison."""
    return {"iptables4": normalized_iptables(ns, 4), "iptables6": normalized_iptables(ns, 6),
            "ipsets": ipsets(ns), "routes": routes(ns)}


@contextlib.contextmanager
def hold_xtables_lock() -> Iterator[None]:
    """Hold the machine-wide xtables lock (what a stuck `iptables -w` elsewhere does). Keep it short."""
    fd = os.open(XTABLES_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class SmallTmpfs:
    """A tiny tmpfs mounted on a temp dir, for "disk full" on a log dir; always unmounted.

    The mount is visible host-wide (it lives under a fresh temp dir nobody
    else uses), which is what lets processes in other network namespaces
    write to it.
    """

    def __init__(self, size_kb: int = 64):
        self.path = tempfile.mkdtemp(prefix="ct-tmpfs-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", self.path],
                       check=True, capture_output=True)

    def fill(self) -> None:
        """Fill it up completely."""
        with contextlib.suppress(OSError), open(os.path.join(self.path, ".filler"), "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        for _ in range(20):
            r = subprocess.run(["umount", self.path], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)

    def __enter__(self) -> SmallTmpfs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WritesBeforeTxn:
    """A real datastore client whose next transaction is preceded by other writers' puts:
    a concurrent change landing between a check and its guarded write, deterministically."""

    def __init__(self, real, writes: dict[str, str]):
        self.real, self.writes = real, dict(writes)

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    async def txn(self, *args, **kw):
        writes, self.writes = self.writes, {}
        for k, v in writes.items():
            await self.real.put(k, v)
        return await self.real.txn(*args, **kw)
