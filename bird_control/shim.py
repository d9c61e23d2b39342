"""calico-bird: run BIRD (or BIRD6) in the foreground under supervisord.

Why a shim and not `bird -f` directly: BIRD must not start before confd has
written its first config (it would exit on a missing file and supervisord
would give up), its log lines need timestamps to be read beside the other
programs', and supervisord must see BIRD's death as this program's death so
it restarts both.  The shim also answers the readiness/liveness checks through
the control socket (never through birdc, whose exit code means nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import threading
import time

from libcalico.logsafe import escape

WAIT_LOG_INTERVAL = 30.0
_print_lock = threading.RLock()  # reentrant: a signal handler may say() while the main thread is in say()


def paths(ipv6: bool, env: dict[str, str] | None = None) -> tuple[str, str]:
    """(config file, control socket) for BIRD or BIRD6, from CALICO_CONF_DIR / CALICO_RUN_DIR."""
    env = os.environ if env is None else env
    run_dir = env.get("CALICO_RUN_DIR") or "/var/run/calico"
    conf_dir = env.get("CALICO_CONF_DIR") or "/etc/calico"
    name = "bird6" if ipv6 else "bird"
    return os.path.join(conf_dir, f"{name}.cfg"), os.path.join(run_dir, f"{name}.ctl")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def say(prog: str, msg: str) -> None:
    with _print_lock:  # the relay threads and the main thread share stdout: whole lines only
        sys.stdout.write(f"{_now()} {prog}: {escape(msg)}\n")
        sys.stdout.flush()


def _relay(stream, prog: str) -> None:
    """Copy BIRD's output lines (a binary pipe) to ours, timestamped and escaped, until EOF."""
    for line in iter(stream.readline, b""):
        say(prog, line.decode("utf-8", "replace").rstrip("\r\n"))


def _die_with_parent() -> None:
    """In the child: die with the shim (even when it is SIGKILLed), so BIRD never outlives it.

    SIGKILL, not SIGTERM: a shim that dies abruptly must look like a BIRD crash to the
    peers (no Cease notification), so they keep our routes under graceful restart while
    supervisord brings a new shim and BIRD (started with -R) up.  An orderly stop goes
    through the shim's own SIGTERM handler, which forwards SIGTERM for a clean shutdown.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def status_publisher(ipv6: bool, sock: str, env: dict[str, str] | None = None):
    """The publisher of this node's BGP sessions to etcd, or None without a datastore or node name."""
    env = dict(os.environ) if env is None else env
    host = env.get("NODENAME") or env.get("HOSTNAME")
    if not host or not (env.get("ETCD_ENDPOINTS") or env.get("ETCD_AUTHORITY")) \
            or env.get("CALICO_BGP_STATUS", "true").lower() == "false":
        return None
    from bird_control.status import EtcdGateway, Publisher
    from libcalico.etcdconf import ConfigError

    try:
        gateway = EtcdGateway.from_env(env)
    except ConfigError as e:
        say("calico-bird", f"not publishing BGP status: {e}")
        return None
    if "/" in host or host in (".", ".."):
        say("calico-bird", f"not publishing BGP status: {host!r} is not a valid node name")
        return None
    return Publisher(host, 6 if ipv6 else 4, sock, gateway, say=lambda m: say("calico-bird", m))


def run(ipv6: bool, wait_log_interval: float = WAIT_LOG_INTERVAL) -> int:
    """Wait for the config, run BIRD as a child until it exits; the exit status for supervisord.

    Plain blocking code with two relay threads and one status thread, not asyncio: this
    process lives as long as the node, on every node, and asyncio (with the OpenSSL it
    loads) would be most of its memory.
    """
    prog = "bird6" if ipv6 else "bird"
    cfg, sock = paths(ipv6)
    stop = threading.Event()
    child: subprocess.Popen | None = None

    def on_signal(signum: int, _frame: object) -> None:
        sig = signal.Signals(signum)
        if sig in (signal.SIGTERM, signal.SIGINT):
            stop.set()
        if child is not None and child.poll() is None:
            say("calico-bird", f"forwarding {sig.name} to {prog} (pid {child.pid})")
            child.send_signal(sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    last_log = -wait_log_interval
    while not os.path.isfile(cfg):
        if time.monotonic() - last_log >= wait_log_interval:
            say("calico-bird", f"waiting for {cfg} (written by calico-confd) before starting {prog}")
            last_log = time.monotonic()
        if stop.wait(0.2):
            say("calico-bird", "stopped before BIRD was started")
            return 0

    os.makedirs(os.path.dirname(sock), exist_ok=True)
    # -R: start in graceful-restart recovery, so the kernel protocol does not prune the
    # routes a previous BIRD left behind (persist) before BGP has relearned them.
    argv = [prog, "-f", "-R", "-s", sock, "-c", cfg]
    say("calico-bird", f"starting {' '.join(argv)}")
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=_die_with_parent)
    except OSError as e:
        say("calico-bird", f"cannot start {prog}: {e}")
        return 2
    assert child.stdout is not None and child.stderr is not None
    relays = [threading.Thread(target=_relay, args=(child.stdout, prog), daemon=True),
              threading.Thread(target=_relay, args=(child.stderr, prog), daemon=True)]
    for t in relays:
        t.start()
    publisher = status_publisher(ipv6, sock)
    done = threading.Event()
    publishing = None
    if publisher is not None:
        publishing = threading.Thread(target=publisher.run, args=(done,), daemon=True)
        publishing.start()
    rc = child.wait()  # signals interrupt the wait, run on_signal, and the wait goes on (PEP 475)
    done.set()
    for t in relays:
        t.join(5)
    if publishing is not None:
        publishing.join(10)
    if stop.is_set():
        if publisher is not None:
            publisher.clear()
        say("calico-bird", f"{prog} stopped (exit {rc})")
        return 0
    say("calico-bird", f"{prog} died (exit {rc}); exiting so supervisord restarts it")
    return rc if rc and rc > 0 else 1


async def check(ipv6: bool, ready: bool, timeout: float = 3.0) -> tuple[bool, str]:
    """Liveness: the socket answers `show status`. Readiness: also every BGP session Established."""
    from bird_control.protocol import BirdClient, BirdError, BirdUnavailable

    _, sock = paths(ipv6)
    try:
        async with BirdClient(sock, timeout) as c:
            status = await c.show_status()
            if not status.up:
                return False, f"BIRD at {sock}: {status.message}"
            if not ready:
                return True, f"BIRD at {sock} is up ({status.version})"
            protos = [p for p in await c.show_protocols() if p.proto == "BGP"]
    except (BirdUnavailable, BirdError, OSError, TimeoutError) as e:
        return False, str(e)
    down = [f"{p.name} ({p.info or p.state})" for p in protos if not p.established]
    if down:
        return False, f"BGP sessions not Established: {', '.join(down)}"
    return True, f"BIRD at {sock} is up; {len(protos)} BGP session(s) Established"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="calico-bird", description=__doc__.splitlines()[0])
    ap.add_argument("--ipv6", action="store_true", help="run BIRD6 (bird6.cfg, bird6.ctl)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check-ready", action="store_true",
                   help="exit 0 when the control socket answers and every BGP session is Established")
    g.add_argument("--check-live", action="store_true", help="exit 0 when the control socket answers")
    args = ap.parse_args(argv)
    if args.check_ready or args.check_live:
        import asyncio

        ok, msg = asyncio.run(check(args.ipv6, ready=args.check_ready))
        print(msg)
        sys.exit(0 if ok else 1)
    sys.exit(run(args.ipv6))


if __name__ == "__main__":
    main()
