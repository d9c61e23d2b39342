"""Start calico-node on this host, in Docker or in the foreground."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from calicoctl.cli import (
    Action,
    ArgError,
    CliError,
    Context,
    check,
    default_hostname,
    split_options,
    usage_error,
)
from libcalico.validation import validate_asn, validate_ip, validate_name

USAGE = """\
Usage:
  calicoctl node run [--ip=<IP>] [--ip6=<IP6>] [--as=<AS_NUM>] [--name=<NAME>]
                     [--node-image=<IMAGE>] [--runtime=<RUNTIME>] [--log-dir=<LOG_DIR>]
                     [--disable-networking] [--libnetwork] [--dry-run]

Start calico-node on this host.

Options:
  --ip=<IP>              IPv4 address this node peers from [default: autodetect].
  --ip6=<IP6>            IPv6 address this node peers from (none by default).
  --as=<AS_NUM>          This node's AS number [default: the global AS].
  --name=<NAME>          The node's name [default: NODENAME, HOSTNAME, else the hostname].
  --node-image=<IMAGE>   Docker image [default: calico/node:latest].
  --runtime=<RUNTIME>    docker: a detached container named calico-node (--net=host,
                         restart always); none: run calico-node here in the foreground
                         [default: docker].
  --log-dir=<LOG_DIR>    Where the node's logs go on this host [default: /var/log/calico].
  --disable-networking   Policy only: no BGP (CALICO_NETWORKING=false).
  --libnetwork           Also run Docker's calico network and calico-ipam IPAM drivers
                         (CALICO_LIBNETWORK_ENABLED=true; sockets in /run/docker/plugins).
  --dry-run              Print the command that would run, and do nothing.
"""

DEFAULT_IMAGE = "calico/node:latest"
DEFAULT_LOG_DIR = "/var/log/calico"
DEFAULT_RUN_DIR = "/var/run/calico"
CONTAINER_NAME = "calico-node"
CERT_DIR = "/etc/calico/certs"
# --privileged fails on some kernels (platform notes); these are what the node's
# programs need: netlink/iptables/ipset (NET_ADMIN, NET_RAW), mounts and
# namespaces (SYS_ADMIN), kernel modules where loadable (SYS_MODULE).
CAPABILITIES = ("NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_MODULE")
TLS_VARS = {"ETCD_CA_CERT_FILE": "ca.pem", "ETCD_CERT_FILE": "cert.pem", "ETCD_KEY_FILE": "key.pem"}


@dataclass
class RunOptions:
    name: str
    ip: str | None = None
    ip6: str | None = None
    as_num: int | None = None
    image: str = DEFAULT_IMAGE
    runtime: str = "docker"
    log_dir: str = DEFAULT_LOG_DIR
    networking: bool = True
    libnetwork: bool = False
    dry_run: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def etcd_env(env: Mapping[str, str]) -> dict[str, str]:
    """The datastore settings the node needs, as this CLI sees them."""
    out = {}
    if env.get("ETCD_ENDPOINTS"):
        out["ETCD_ENDPOINTS"] = env["ETCD_ENDPOINTS"]
    else:
        out["ETCD_AUTHORITY"] = env.get("ETCD_AUTHORITY", "127.0.0.1:2379")
        out["ETCD_SCHEME"] = env.get("ETCD_SCHEME", "http")
    return out


def node_env(opts: RunOptions, env: Mapping[str, str]) -> dict[str, str]:
    """Environment variables for calico-node (names as calico_node.settings reads them)."""
    out = {"HOSTNAME": opts.name, "NODENAME": opts.name, "IP": opts.ip or "autodetect"}
    if opts.ip6:
        out["IP6"] = opts.ip6
    if opts.as_num is not None:
        out["AS"] = str(opts.as_num)
    if not opts.networking:
        out["CALICO_NETWORKING"] = "false"
    if opts.libnetwork:
        out["CALICO_LIBNETWORK_ENABLED"] = "true"
    out.update(etcd_env(env))
    out.update(opts.extra_env)
    return out


def docker_argv(opts: RunOptions, env: Mapping[str, str]) -> list[str]:
    """The `docker run` command line of the classic calicoctl (pure: tested without Docker).

    TLS files are bind-mounted read-only at fixed paths and the variables
    point there; the environment's own values never reach the argv otherwise.
    """
    argv = ["docker", "run", "-d", "--net=host", "--restart=always", f"--name={CONTAINER_NAME}"]
    for cap in CAPABILITIES:
        argv += ["--cap-add", cap]
    node = node_env(opts, env)
    mounts = [f"{opts.log_dir}:/var/log/calico", f"{DEFAULT_RUN_DIR}:{DEFAULT_RUN_DIR}",
              "/lib/modules:/lib/modules:ro"]
    if opts.libnetwork:  # the driver's sockets where dockerd looks, and Docker's API (network names)
        mounts += ["/run/docker/plugins:/run/docker/plugins", "/var/run/docker.sock:/var/run/docker.sock"]
    for var, fname in TLS_VARS.items():
        if env.get(var):
            inside = f"{CERT_DIR}/{fname}"
            mounts.append(f"{os.path.abspath(env[var])}:{inside}:ro")
            node[var] = inside
    for k in sorted(node):
        argv += ["-e", f"{k}={node[k]}"]
    for m in mounts:
        argv += ["-v", m]
    argv.append(opts.image)
    return argv


def foreground_env(opts: RunOptions, env: Mapping[str, str]) -> dict[str, str]:
    """The full environment for `--runtime=none` (ours, plus the node's settings)."""
    out = dict(env)
    out.update(node_env(opts, env))
    out["CALICO_LOG_DIR"] = opts.log_dir
    out.setdefault("CALICO_RUN_DIR", DEFAULT_RUN_DIR)
    for var in TLS_VARS:
        if env.get(var):
            out[var] = env[var]
    return out


def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def run_docker(ctx: Context, opts: RunOptions) -> int:
    argv = docker_argv(opts, os.environ)
    if opts.dry_run:
        ctx.print(" ".join(argv))
        return 0
    if shutil.which("docker") is None:
        raise CliError("docker not found in PATH (use --runtime=none to run calico-node here)")
    state = _docker("inspect", "-f", "{{.State.Running}}", CONTAINER_NAME)
    if state.returncode == 0 and state.stdout.strip() == "true":
        ctx.print(f"{CONTAINER_NAME} is already running")
        return 0
    if state.returncode == 0:
        _docker("rm", "-f", CONTAINER_NAME)
    os.makedirs(opts.log_dir, exist_ok=True)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise CliError(f"docker run failed: {r.stderr.strip() or r.stdout.strip()}")
    ctx.print(f"Started {CONTAINER_NAME} ({r.stdout.strip()[:12]}) from {opts.image}")
    return 0


def run_foreground(ctx: Context, opts: RunOptions) -> int:
    env = foreground_env(opts, os.environ)
    prog = shutil.which("calico-node") or shutil.which("calico-node", path=os.path.dirname(sys.executable))
    if opts.dry_run:
        ctx.print(" ".join(f"{k}={env[k]}" for k in sorted(node_env(opts, os.environ))) + " calico-node")
        return 0
    if prog is None:
        raise CliError("calico-node not found in PATH")
    os.makedirs(opts.log_dir, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(prog, [prog], env)  # the node replaces us: its exit code is the command's
    return 0  # pragma: no cover


def parse_options(args: list[str]) -> RunOptions:
    words, o = split_options(
        args, flags=("--disable-networking", "--libnetwork", "--dry-run"),
        valued=("--ip", "--ip6", "--as", "--name", "--node-image", "--runtime", "--log-dir"), usage=USAGE)
    if words:
        raise usage_error(USAGE, words, "node run")
    opts = RunOptions(name=check(validate_name, o.get("--name") or default_hostname(), "node name",
                                 what="--name"))
    ip = o.get("--ip")
    if ip and ip.lower() != "autodetect":
        opts.ip = check(validate_ip, ip, 4, what="--ip")
    if o.get("--ip6"):
        opts.ip6 = check(validate_ip, o["--ip6"], 6, what="--ip6")
    if o.get("--as"):
        opts.as_num = check(validate_asn, o["--as"], what="--as")
    image = o.get("--node-image", DEFAULT_IMAGE)
    if not image or image.startswith("-") or any(c.isspace() for c in image):
        raise ArgError(f"invalid --node-image: {image!r}")
    opts.image = image
    opts.runtime = o.get("--runtime", "docker")
    if opts.runtime not in ("docker", "none"):
        raise ArgError(f"invalid --runtime: {opts.runtime!r} (docker or none)")
    log_dir = o.get("--log-dir", DEFAULT_LOG_DIR)
    if not os.path.isabs(log_dir) or ":" in log_dir or "\n" in log_dir:
        raise ArgError(f"invalid --log-dir: {log_dir!r} (an absolute path without ':')")
    opts.log_dir = os.path.normpath(log_dir)
    opts.networking = not o.get("--disable-networking", False)
    opts.libnetwork = bool(o.get("--libnetwork", False))
    opts.dry_run = bool(o.get("--dry-run", False))
    return opts


def parse(args: list[str]) -> Action:
    opts = parse_options(args)

    async def run(ctx: Context) -> int:
        if opts.runtime == "docker":
            return run_docker(ctx, opts)
        return run_foreground(ctx, opts)

    return run
