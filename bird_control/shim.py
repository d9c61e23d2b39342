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
import asyncio
import contextlib
import datetime
import os
import signal
import sys

from bird_control.protocol import BirdClient, BirdError, BirdUnavailable
from libcalico.logsafe import escape

WAIT_LOG_INTERVAL = 30.0


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
    sys.stdout.write(f"{_now()} {prog}: {escape(msg)}\n")
    sys.stdout.flush()


async def _relay(stream: asyncio.StreamReader, prog: str) -> None:
    while True:
        line = await stream.readline()
        if not line:
            return
        say(prog, line.decode("utf-8", "replace").rstrip("\r\n"))
        sys.stdout.flush()


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


async def run(ipv6: bool, wait_log_interval: float = WAIT_LOG_INTERVAL) -> int:
    """Wait for the config, run BIRD as a child until it exits; the exit status for supervisord."""
    prog = "bird6" if ipv6 else "bird"
    cfg, sock = paths(ipv6)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    child: asyncio.subprocess.Process | None = None
    stopping = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            stop.set()
        if child is not None and child.returncode is None:
            say("calico-bird", f"forwarding {sig.name} to {prog} (pid {child.pid})")
            child.send_signal(sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(s, on_signal, s)

    last_log = -wait_log_interval
    while not os.path.isfile(cfg):
        if loop.time() - last_log >= wait_log_interval:
            say("calico-bird", f"waiting for {cfg} (written by calico-confd) before starting {prog}")
            last_log = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
        if stopping:
            say("calico-bird", "stopped before BIRD was started")
            return 0

    os.makedirs(os.path.dirname(sock), exist_ok=True)
    # -R: start in graceful-restart recovery, so the kernel protocol does not prune the
    # routes a previous BIRD left behind (persist) before BGP has relearned them.
    argv = [prog, "-f", "-R", "-s", sock, "-c", cfg]
    say("calico-bird", f"starting {' '.join(argv)}")
    try:
        child = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
    except OSError as e:
        say("calico-bird", f"cannot start {prog}: {e}")
        return 2
    assert child.stdout is not None and child.stderr is not None
    relays = [asyncio.create_task(_relay(child.stdout, prog)), asyncio.create_task(_relay(child.stderr, prog))]
    publisher = status_publisher(ipv6, sock)
    publishing = asyncio.create_task(publisher.run()) if publisher else None
    rc = await child.wait()
    if publishing is not None:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
    await asyncio.gather(*relays, return_exceptions=True)
    if stopping:
        if publisher is not None:
            await publisher.clear()
        say("calico-bird", f"{prog} stopped (exit {rc})")
        return 0
    say("calico-bird", f"{prog} died (exit {rc}); exiting so supervisord restarts it")
    return rc if rc and rc > 0 else 1


async def check(ipv6: bool, ready: bool, timeout: float = 3.0) -> tuple[bool, str]:
    """Liveness: the socket answers `show status`. Readiness: also every BGP session Established."""
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
        ok, msg = asyncio.run(check(args.ipv6, ready=args.check_ready))
        print(msg)
        sys.exit(0 if ok else 1)
    sys.exit(asyncio.run(run(args.ipv6)))


if __name__ == "__main__":
    main()
