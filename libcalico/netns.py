"""Act inside a network namespace given by name or by path.

Every program that wires workloads (calicoctl, the CNI plugin, the libnetwork
driver) reaches into namespaces the same way, so it lives in libcalico.
Everything goes through `nsenter --net=<file>` + iproute2 so the same code
accepts a name from `ip netns add` (`/var/run/netns/<name>`) and any other
namespace file (`/proc/<pid>/ns/net`, a bind mount), and never creates a
namespace by accident (unlike pyroute2's `IPRoute(netns=...)` default).
It forks `ip` instead of importing pyroute2 because the CNI plugin is exec'd
per container and pyroute2 alone costs more to import than a dozen forks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

NETNS_DIRS = ("/var/run/netns", "/run/netns")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")


class NetnsError(RuntimeError):
    """A namespace that cannot be used, or a command inside it that failed."""


@dataclass(frozen=True)
class NamespaceRef:
    """A workload namespace: `path` is what we enter, `workload_id` the etcd key segment for it."""

    arg: str
    path: str
    workload_id: str


def resolve(arg: str) -> NamespaceRef:
    """Turn a CLI NAMESPACE argument into a namespace file; raise NetnsError naming the argument.

    A bare name must be a file under /var/run/netns; a path (anything with '/')
    must exist.  The workload id is the name, or the path flattened into one
    key segment so `container remove <path>` finds what `add <path>` wrote.
    """
    if not arg:
        raise NetnsError("NAMESPACE: empty namespace name")
    if "/" not in arg:
        if not _NAME_RE.match(arg) or arg in (".", ".."):
            raise NetnsError(f"NAMESPACE: {arg!r} is not a valid namespace name")
        for d in NETNS_DIRS:
            path = os.path.join(d, arg)
            if os.path.exists(path):
                return NamespaceRef(arg, path, arg)
        raise NetnsError(f"NAMESPACE: no network namespace named {arg!r} (not in {NETNS_DIRS[0]})")
    path = os.path.abspath(arg)
    if not os.path.exists(path):
        raise NetnsError(f"NAMESPACE: {arg!r} does not exist")
    for d in NETNS_DIRS:
        if os.path.dirname(path) == d:
            return NamespaceRef(arg, path, os.path.basename(path))
    wid = re.sub(r"[^A-Za-z0-9_.-]", "_", path.strip("/"))
    if not _NAME_RE.match(wid):
        raise NetnsError(f"NAMESPACE: cannot derive a workload id from {arg!r}")
    return NamespaceRef(arg, path, wid)


def _prefix(ns: NamespaceRef | None) -> list[str]:
    if ns is None:
        return []
    nsenter = shutil.which("nsenter") or "nsenter"
    return [nsenter, f"--net={ns.path}"]


def run(ns: NamespaceRef | None, argv: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run argv in `ns` (None = the current namespace); failures raise NetnsError with stderr."""
    full = _prefix(ns) + list(argv)
    try:
        r = subprocess.run(full, capture_output=True, text=True, input=input, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"{' '.join(argv)}: {e}") from None
    if check and r.returncode != 0:
        where = f" in namespace {ns.arg}" if ns else ""
        raise NetnsError(f"{' '.join(argv)}{where} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def ip_batch(ns: NamespaceRef | None, lines: Sequence[str]) -> None:
    """Several `ip` commands in one process: one fork instead of one per step."""
    if lines:
        run(ns, ["ip", "-batch", "-"], input="\n".join(lines) + "\n")


def link(ns: NamespaceRef | None, ifname: str) -> dict | None:
    """`ip -j -d link show` for one interface, or None when it does not exist."""
    r = run(ns, ["ip", "-j", "-d", "link", "show", "dev", ifname], check=False)
    if r.returncode != 0:
        return None
    data = json.loads(r.stdout or "[]")
    return data[0] if data else None


def links(ns: NamespaceRef | None) -> list[dict]:
    return json.loads(run(ns, ["ip", "-j", "link", "show"]).stdout or "[]")


def addresses(ns: NamespaceRef | None, ifname: str | None = None) -> list[dict]:
    """Address entries (`local`, `prefixlen`, `family`, `scope`, `ifname`, flags) in `ns`."""
    argv = ["ip", "-j", "addr", "show"] + (["dev", ifname] if ifname else [])
    out: list[dict] = []
    for entry in json.loads(run(ns, argv).stdout or "[]"):
        for a in entry.get("addr_info", []):
            out.append(dict(a, ifname=entry.get("ifname")))
    return out


def routes(ns: NamespaceRef | None, family: int = 4) -> list[dict]:
    return json.loads(run(ns, ["ip", "-j", f"-{family}", "route", "show"]).stdout or "[]")


def eui64_link_local(mac: str) -> str:
    """The fe80:: address the kernel derives from a MAC (addr_gen_mode eui64)."""
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    eui = b[:3] + [0xFF, 0xFE] + b[3:]
    groups = [f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2)]
    return "fe80::" + ":".join(groups)
