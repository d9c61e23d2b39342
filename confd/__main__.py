"""calico-confd: keep BIRD's config in step with etcd (see confd.daemon for the loop)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from confd.settings import Settings, check_ready
from libcalico import etcdconf, logsafe, router_id
from libcalico.validation import validate_ip, validate_name

if TYPE_CHECKING:
    import asyncio

    from confd.daemon import Confd

# The daemon (templates engine, datastore client, validators) is imported by
# amain only: `--check-ready` is exec'd on every `calico-node -ready` probe.

log = logging.getLogger("confd")


def settings_from_env(env: dict[str, str] | None = None) -> Settings:
    """Identity and paths: NODENAME wins over HOSTNAME; IP/IP6 optional (etcd's value wins)."""
    env = dict(os.environ) if env is None else env
    host = env.get("NODENAME") or env.get("HOSTNAME") or socket.gethostname()
    validate_name(host, "hostname (NODENAME/HOSTNAME)")
    ips: dict[int, str | None] = {}
    for v, var in ((4, "IP"), (6, "IP6")):
        raw = (env.get(var) or "").strip()
        ips[v] = None
        if raw and raw.lower() not in ("autodetect", "none"):
            try:
                ips[v] = validate_ip(raw, v)
            except ValueError as e:
                log.error("ignoring %s: %s", var, e)
    try:
        rid = router_id.resolve(env.get("CALICO_ROUTER_ID") or "", host, None)
    except ValueError as e:
        log.error("ignoring CALICO_ROUTER_ID: %s", e)
        rid = None
    return Settings(host=host, ip4=ips[4], ip6=ips[6], router_id=rid,
                    run_dir=env.get("CALICO_RUN_DIR") or "/var/run/calico",
                    conf_dir=env.get("CALICO_CONF_DIR") or "/etc/calico")


def _watch_conf_dir(confd: Confd, loop: asyncio.AbstractEventLoop):
    """Operator edits of conf.d/ or templates/ reload them live (watchdog, inotify)."""
    import asyncio

    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's type
            if event.event_type in ("opened", "closed_no_write"):
                return
            loop.call_soon_threadsafe(changed.set)

    changed = asyncio.Event()
    obs = Observer()
    obs.schedule(Handler(), confd.s.confd_dir, recursive=True)
    obs.daemon = True
    obs.start()

    async def reloader() -> None:
        while True:
            await changed.wait()
            await asyncio.sleep(0.05)  # editors write in several steps
            changed.clear()
            log.info("templates/resources changed under %s: reloading", confd.s.confd_dir)
            confd.load()

    return obs, reloader()


async def amain(settings: Settings) -> int:
    import asyncio
    import signal

    from confd.daemon import Confd
    from libcalico.bgp_values import parse_key_value
    from libcalico.datastore import DatastoreClient
    from libcalico.syncer import Syncer

    confd = Confd(settings)
    confd.load()
    confd.write_status()
    log.info("confd for host %s (IP %s, IP6 %s), conf dir %s, run dir %s", settings.host, settings.ip4,
             settings.ip6, settings.conf_dir, settings.run_dir)
    loop = asyncio.get_running_loop()
    obs, reloader = _watch_conf_dir(confd, loop)
    client = DatastoreClient.from_env()
    syncer = Syncer(client, settings.prefixes(), parser=parse_key_value, wait_for_ready=True)

    async def consume() -> None:
        async for batch in syncer.batches():
            confd.apply(batch)

    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    tasks = [asyncio.create_task(consume()), asyncio.create_task(confd.render_loop()),
             asyncio.create_task(reloader)]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(tasks + [stopper], return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    for t in done:
        if t is not stopper and t.exception() is not None:
            log.error("confd task failed: %r", t.exception())
            rc = 1
    for t in tasks + [stopper]:
        t.cancel()
    await asyncio.gather(*tasks, stopper, return_exceptions=True)
    obs.stop()
    await client.close()
    return rc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="calico-confd", description=__doc__)
    ap.add_argument("--check-ready", action="store_true",
                    help="exit 0 when the running confd is in sync and its last render/check/reload succeeded")
    args = ap.parse_args(argv)
    logsafe.basic_config(level=os.environ.get("CONFD_LOGLEVEL", "INFO").upper(),
                         format="%(asctime)s [%(levelname)s] %(name)s: %(message)s", stream=sys.stdout)
    try:
        settings = settings_from_env()
    except ValueError as e:
        print(f"calico-confd: {e}", file=sys.stderr)
        sys.exit(2)
    if args.check_ready:
        ok, msg = check_ready(settings.status_path)
        print(msg)
        sys.exit(0 if ok else 1)
    try:
        etcdconf.from_env()  # a bad ETCD_* setting is one clear line, not a traceback from the loop
    except etcdconf.ConfigError as e:
        print(f"calico-confd: {e}", file=sys.stderr)
        sys.exit(2)
    import asyncio
    import gc

    gc.disable()  # the daemon's imports allocate only long-lived objects: collecting during them is wasted
    try:
        import confd.daemon  # noqa: F401 - loaded here, with the collector off
    finally:
        gc.enable()
    sys.exit(asyncio.run(amain(settings)))


if __name__ == "__main__":
    main()
