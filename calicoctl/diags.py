"""`calicoctl diags`: everything support needs about this node, in one tar.gz.

Every section is collected independently: a missing binary, a stopped BIRD
or an unreachable etcd becomes a note in that section's file (and in
index.txt), never a failed archive.  The environment is not collected and
the etcd dump covers only /calico (no TLS material lives there; the client
key files are never read), so the archive holds no secrets.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field

from calicoctl.cli import Action, ArgError, Context, split_options, usage_error

USAGE = """\
Usage:
  calicoctl diags [--log-dir=<LOG_DIR>]

Save diagnostics to a tar.gz in a new temporary directory and print its path:
routes, addresses, iptables-save and ip6tables-save (nft and legacy), ipset list,
BIRD protocols (from the control sockets in $CALICO_RUN_DIR), supervisorctl
status, the node's logs and a dump of /calico from etcd.

Options:
  --log-dir=<LOG_DIR>  Where the node's logs are [default: $CALICO_LOG_DIR or /var/log/calico].
"""

DEFAULT_LOG_DIR = "/var/log/calico"
DEFAULT_RUN_DIR = "/var/run/calico"
MAX_LOG_BYTES = 50 * 1024 * 1024  # per file; the tail is what matters

COMMANDS: list[tuple[str, list[str]]] = [
    ("network/ip-addr.txt", ["ip", "addr", "show"]),
    ("network/ip-link.txt", ["ip", "-d", "link", "show"]),
    ("network/ip-route.txt", ["ip", "route", "show", "table", "all"]),
    ("network/ip6-route.txt", ["ip", "-6", "route", "show", "table", "all"]),
    ("network/ip-rule.txt", ["ip", "rule", "show"]),
    ("network/ip-neigh.txt", ["ip", "neigh", "show"]),
    ("iptables/iptables-save-nft.txt", ["iptables-nft-save", "-c"]),
    ("iptables/ip6tables-save-nft.txt", ["ip6tables-nft-save", "-c"]),
    ("iptables/iptables-save-legacy.txt", ["iptables-legacy-save", "-c"]),
    ("iptables/ip6tables-save-legacy.txt", ["ip6tables-legacy-save", "-c"]),
    ("iptables/iptables-save.txt", ["iptables-save", "-c"]),
    ("iptables/ip6tables-save.txt", ["ip6tables-save", "-c"]),
    ("ipset/ipset-list.txt", ["ipset", "list"]),
    ("system/conntrack-stats.txt", ["conntrack", "-S"]),
]


@dataclass
class Collector:
    files: dict[str, bytes] = field(default_factory=dict)
    index: list[str] = field(default_factory=list)

    def add(self, name: str, data: bytes | str, note: str) -> None:
        self.files[name] = data.encode() if isinstance(data, str) else data
        self.index.append(f"{name}: {note}")


def run_command(argv: list[str], timeout: float = 30) -> tuple[str, str]:
    """(output, note); a failure is described in both so the file itself explains the gap."""
    if shutil.which(argv[0]) is None:
        msg = f"{argv[0]} not found in PATH"
        return f"# {' '.join(argv)}: {msg}\n", msg
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"# {' '.join(argv)}: {e}\n", str(e)
    out = f"# {' '.join(argv)} (exit {r.returncode})\n{r.stdout}"
    if r.stderr.strip():
        out += f"\n# stderr:\n{r.stderr}"
    return out, "ok" if r.returncode == 0 else f"exit {r.returncode}"


async def bird_section(run_dir: str) -> dict[str, tuple[str, str]]:
    from bird_control.protocol import BirdClient, BirdError, BirdUnavailable

    out = {}
    for sock in ("bird.ctl", "bird6.ctl"):
        path = os.path.join(run_dir, sock)
        name = f"bird/{sock.replace('.ctl', '')}-protocols.txt"
        try:
            async with BirdClient(path, timeout=5.0) as c:
                lines = []
                for cmd in ("show status", "show protocols all", "show route count"):
                    lines.append(f"# {cmd}")
                    lines += [f"{ln.code:04d} {ln.text}" for ln in await c.command(cmd)]
            out[name] = ("\n".join(lines) + "\n", "ok")
        except (BirdUnavailable, BirdError, OSError) as e:
            out[name] = (f"# {path}: {e}\n", f"unavailable: {e}")
    return out


def supervisor_section(run_dir: str) -> tuple[str, str]:
    conf = os.path.join(run_dir, "supervisord.conf")
    if not os.path.exists(conf):
        return f"# {conf} does not exist (calico-node not started here?)\n", "no supervisord.conf"
    text, note = run_command(["supervisorctl", "-c", conf, "status"])
    # exit 3 = some program not RUNNING: still a valid status listing
    return text, "ok" if note in ("ok", "exit 3") else note


async def etcd_dump() -> tuple[str, str]:
    from libcalico.datastore import DatastoreClient

    client = None
    try:
        client = DatastoreClient.from_env(timeout=10)
        rev, kvs = await client.get_prefix("/calico")
        lines = [json.dumps({"revision": rev, "keys": len(kvs)})]
        lines += [json.dumps({"key": kv.key, "value": kv.value, "mod_revision": kv.mod_revision}) for kv in kvs]
        return "\n".join(lines) + "\n", f"{len(kvs)} keys at revision {rev}"
    except Exception as e:  # noqa: BLE001 - an unreachable etcd is a finding, not a crash
        msg = " ".join(str(e).split()) or type(e).__name__
        return f"# etcd dump failed: {msg}\n", f"failed: {msg}"
    finally:
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass


def _read_tail(path: str) -> bytes:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size > MAX_LOG_BYTES:
            f.seek(size - MAX_LOG_BYTES)
        return f.read()


def log_files(log_dir: str) -> list[tuple[str, str]]:
    """(archive name, path) of every regular file under the log dir (no symlinks followed)."""
    out = []
    for root, dirs, files in os.walk(log_dir, followlinks=False):
        dirs.sort()
        for fname in sorted(files):
            path = os.path.join(root, fname)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(("logs/" + os.path.relpath(path, log_dir), path))
    return out


async def collect(log_dir: str, run_dir: str) -> Collector:
    col = Collector()
    now = datetime.datetime.now(datetime.UTC).isoformat()
    col.add("system/info.txt", f"date: {now}\nhostname: {socket.gethostname()}\nuname: {' '.join(os.uname())}\n"
            f"log_dir: {log_dir}\nrun_dir: {run_dir}\n", "ok")
    loop = asyncio.get_running_loop()
    for name, argv in COMMANDS:
        text, note = await loop.run_in_executor(None, run_command, argv)
        col.add(name, text, note)
    for name, (text, note) in (await bird_section(run_dir)).items():
        col.add(name, text, note)
    text, note = await loop.run_in_executor(None, supervisor_section, run_dir)
    col.add("supervisor/status.txt", text, note)
    text, note = await etcd_dump()
    col.add("etcd/calico-dump.jsonl", text, note)
    logs = log_files(log_dir) if os.path.isdir(log_dir) else []
    for name, path in logs:
        try:
            col.add(name, _read_tail(path), "ok")
        except OSError as e:
            col.add(name, f"# {path}: {e}\n", str(e))
    if not logs:
        col.add("logs/README.txt", f"# no log files under {log_dir}\n", "no logs")
    return col


def write_archive(col: Collector, dest_dir: str, host: str) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    top = f"diags-{host}-{stamp}"
    path = os.path.join(dest_dir, f"{top}.tar.gz")
    files = dict(col.files)
    files["index.txt"] = ("\n".join(col.index) + "\n").encode()
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mtime = int(datetime.datetime.now().timestamp())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return path


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, valued=("--log-dir",), usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "diags")
    log_dir = opts.get("--log-dir") or os.environ.get("CALICO_LOG_DIR") or DEFAULT_LOG_DIR
    if not os.path.isabs(log_dir):
        raise ArgError(f"invalid --log-dir: {log_dir!r} (an absolute path)")

    async def diags(ctx: Context) -> int:
        run_dir = os.environ.get("CALICO_RUN_DIR") or DEFAULT_RUN_DIR
        col = await collect(log_dir, run_dir)
        dest = tempfile.mkdtemp(prefix="calico-diags-")
        path = write_archive(col, dest, socket.gethostname())
        ctx.print(f"Diags saved to {path}")
        return 0

    return diags
