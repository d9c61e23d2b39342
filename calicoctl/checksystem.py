"""`calicoctl checksystem`: can this host run calico-node?

Read-only by default: it looks at /proc, /sys and the kernel config, finds
binaries the way the node will (through PATH), and asks etcd one question.
Nothing is created, so it is safe on a production host.  Everything missing is
listed, not just the first thing, so one run tells an operator all there is to
fix.  `--fix` changes only what the node itself would change at start (the
forwarding sysctls) and loads missing kernel modules with modprobe; then it
checks again, so the report shows the state after the fixes.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from calicoctl.cli import Action, Context, split_options, table, usage_error

USAGE = """\
Usage:
  calicoctl checksystem [--no-datastore] [--fix]

Check this host for what calico-node needs: kernel features (iptables or
nftables for IPv4 and IPv6, ipset and the iptables set match, conntrack,
veth), the binaries it runs (found through PATH), the iptables backend in use,
and whether etcd answers.  Exits 1 and names what is missing when anything is.

Options:
  --no-datastore   Skip the etcd check.
  --fix            Fix what can be fixed first: enable IPv4/IPv6 forwarding
                   (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding) and load
                   missing kernel modules (modprobe); then check.
"""

BINARIES = ("ip", "iptables", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save",
            "ipset", "bird", "bird6", "birdc", "conntrack")
OK, MISSING, WARN, INFO = "OK", "MISSING", "WARNING", "INFO"


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    detail: str = ""


class Kernel:
    """What the running kernel has, from the sources that exist for built-in and modular kernels."""

    def __init__(self, proc: str = "/proc", sys: str = "/sys", modules_dir: str | None = None):
        self.proc, self.sys = proc, sys
        self.modules_dir = modules_dir or f"/lib/modules/{os.uname().release}"
        self._config: dict[str, str] | None = None
        self._mods: set[str] | None = None

    def config(self) -> dict[str, str]:
        if self._config is None:
            self._config = {}
            for path in (f"{self.proc}/config.gz", f"/boot/config-{os.uname().release}"):
                try:
                    opener = gzip.open if path.endswith(".gz") else open
                    with opener(path, "rt") as f:
                        for line in f:
                            k, sep, v = line.strip().partition("=")
                            if sep and k.startswith("CONFIG_"):
                                self._config[k] = v
                    break
                except OSError:
                    continue
        return self._config

    def modules(self) -> set[str]:
        if self._mods is None:
            mods: set[str] = set()
            try:
                mods.update(os.listdir(f"{self.sys}/module"))
            except OSError:
                pass
            try:
                with open(f"{self.proc}/modules") as f:
                    mods.update(line.split()[0] for line in f if line.strip())
            except OSError:
                pass
            for fname in ("modules.builtin", "modules.dep"):
                try:
                    with open(os.path.join(self.modules_dir, fname)) as f:
                        for line in f:
                            base = os.path.basename(line.split(":")[0].strip())
                            mods.add(base.split(".ko")[0].replace("-", "_"))
                except OSError:
                    pass
            self._mods = mods
        return self._mods

    def has(self, module: str | None = None, config: tuple[str, ...] = (), files: tuple[str, ...] = ()) -> str | None:
        """How we know the feature is there (None = no evidence)."""
        for f in files:
            if os.path.exists(f"{self.proc}/{f}"):
                return f"/proc/{f}"
        if module and module in self.modules():
            return f"module {module}"
        cfg = self.config()
        for c in config:
            if cfg.get(c) in ("y", "m"):
                return f"{c}={cfg[c]}"
        return None


def kernel_checks(k: Kernel) -> list[Check]:
    out = []
    required = [
        ("iptables (IPv4)", None, ("CONFIG_IP_NF_IPTABLES", "CONFIG_NF_TABLES"), ("net/ip_tables_names",)),
        ("ip6tables (IPv6)", None, ("CONFIG_IP6_NF_IPTABLES", "CONFIG_NF_TABLES"), ("net/ip6_tables_names",)),
        ("ipset", "ip_set", ("CONFIG_IP_SET",), ()),
        ("iptables set match", "xt_set", ("CONFIG_NETFILTER_XT_SET",), ()),
        ("conntrack", "nf_conntrack", ("CONFIG_NF_CONNTRACK",), ("net/nf_conntrack",)),
        ("veth", "veth", ("CONFIG_VETH",), ()),
    ]
    for name, mod, cfg, files in required:
        how = k.has(mod, cfg, files)
        if how is None and name == "iptables set match":
            how = _match_listed(k, "set")
        out.append(Check(f"kernel: {name}", OK if how else MISSING, how or "not found in /proc, /sys or kernel config"))
    for name, mod, cfg, note in (("vxlan", "vxlan", ("CONFIG_VXLAN",), "needed for VXLAN pools"),
                                 ("ipip", "ipip", ("CONFIG_NET_IPIP",), "needed for IPIP pools")):
        how = k.has(mod, cfg)
        out.append(Check(f"kernel: {name}", OK if how else WARN, how or f"absent: {note}"))
    try:
        with open(f"{k.proc}/sys/net/ipv4/ip_forward") as f:
            fwd = f.read().strip()
        out.append(Check("ip_forward", INFO, f"net.ipv4.ip_forward={fwd}" + (" (calico-node enables it)" if fwd != "1" else "")))
    except OSError:
        out.append(Check("ip_forward", MISSING, f"{k.proc}/sys/net/ipv4/ip_forward unreadable"))
    return out


def _match_listed(k: Kernel, match: str) -> str | None:
    try:
        with open(f"{k.proc}/net/ip_tables_matches") as f:
            if match in f.read().split():
                return "/proc/net/ip_tables_matches"
    except OSError:
        pass
    return None


def binary_checks(env: Mapping[str, str] | None = None) -> list[Check]:
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    out = []
    for b in BINARIES:
        found = shutil.which(b, path=path)
        out.append(Check(f"binary: {b}", OK if found else MISSING, found or "not in PATH"))
    return out


def iptables_backend(env: Mapping[str, str] | None = None) -> Check:
    """Which backend `iptables` is (nf_tables or legacy); the node must use one for every table."""
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    exe = shutil.which("iptables", path=path)
    if exe is None:
        return Check("iptables backend", MISSING, "iptables not in PATH")
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("iptables backend", MISSING, str(e))
    text = (r.stdout or r.stderr).strip()
    backend = "nf_tables" if "nf_tables" in text else "legacy" if "legacy" in text or r.returncode == 0 else None
    return Check("iptables backend", OK if backend else MISSING, f"{backend}: {text}" if backend else text)


async def datastore_check(timeout: float = 5.0) -> Check:
    from libcalico.datastore import DatastoreClient

    client = None
    try:
        client = DatastoreClient.from_env(timeout=timeout)
        ready = await asyncio.wait_for(client.get("/calico/v1/Ready"), timeout + 1)
        where = ",".join(client.endpoints) if hasattr(client, "endpoints") else "etcd"
        return Check("etcd", OK, f"{where} answers (Ready={ready or 'unset'})")
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable", named in the table
        return Check("etcd", MISSING, f"not reachable: {' '.join(str(e).split()) or type(e).__name__}")
    finally:
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass


async def run_checks(datastore: bool = True, env: Mapping[str, str] | None = None,
                     kernel: Kernel | None = None) -> list[Check]:
    checks = kernel_checks(kernel or Kernel()) + binary_checks(env) + [iptables_backend(env)]
    if datastore:
        checks.append(await datastore_check())
    return checks


def report(checks: list[Check]) -> tuple[str, int]:
    text = table(["CHECK", "RESULT", "DETAIL"], [[c.name, c.result, c.detail] for c in checks])
    missing = [c.name for c in checks if c.result == MISSING]
    if missing:
        return text + "\nMissing: " + ", ".join(missing), 1
    return text + "\nSystem meets the requirements of calico-node.", 0


# sysctls calico-node needs (and sets itself at start): (name, path under /proc, wanted value)
SYSCTLS = (("net.ipv4.ip_forward", "sys/net/ipv4/ip_forward", "1"),
           ("net.ipv6.conf.all.forwarding", "sys/net/ipv6/conf/all/forwarding", "1"))
# kernel features a module can provide: (check name, module)
MODULES = (("kernel: ipset", "ip_set"), ("kernel: iptables set match", "xt_set"),
           ("kernel: conntrack", "nf_conntrack"), ("kernel: veth", "veth"), ("kernel: vxlan", "vxlan"),
           ("kernel: ipip", "ipip"))


def fix(kernel: Kernel, checks: list[Check], env: Mapping[str, str] | None = None) -> list[Check]:
    """Apply the fixes; one row per thing changed or tried (nothing when all was fine).

    A fix that fails is a WARNING row: the checks that follow say whether what it
    was for is still missing."""
    out = []
    for name, rel, want in SYSCTLS:
        path = f"{kernel.proc}/{rel}"
        try:
            with open(path) as f:
                have = f.read().strip()
        except OSError:
            continue  # no IPv6 in this kernel/namespace: nothing to fix
        if have == want:
            continue
        try:
            with open(path, "w") as f:
                f.write(want)
            out.append(Check(f"fix: {name}", OK, f"{have} -> {want}"))
        except OSError as e:
            out.append(Check(f"fix: {name}", WARN, f"cannot write {path}: {e.strerror or e}"))
    bad = {c.name for c in checks if c.result in (MISSING, WARN)}
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    modprobe = shutil.which("modprobe", path=path)
    for name, mod in MODULES:
        if name not in bad:
            continue
        if modprobe is None:
            out.append(Check(f"fix: load {mod}", WARN, "modprobe not in PATH"))
            continue
        try:
            r = subprocess.run([modprobe, mod], capture_output=True, text=True, timeout=30)
            ok = r.returncode == 0
            detail = "loaded" if ok else " ".join((r.stderr or r.stdout).split())[:200]
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, detail = False, str(e)
        out.append(Check(f"fix: load {mod}", OK if ok else WARN, detail))
    return out


def parse(args: list[str]) -> Action:
    words, opts = split_options(args, flags=("--no-datastore", "--fix"), usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "checksystem")

    async def checksystem(ctx: Context) -> int:
        datastore = not opts.get("--no-datastore")
        fixes: list[Check] = []
        if opts.get("--fix"):
            kernel = Kernel()
            fixes = fix(kernel, await run_checks(datastore=False, kernel=kernel))
        text, rc = report(fixes + await run_checks(datastore=datastore))
        if opts.get("--fix") and not fixes:
            text += "\nNothing needed fixing."
        ctx.print(text)
        return rc

    return checksystem
