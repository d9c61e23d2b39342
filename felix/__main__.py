"""`calico-felix` / `python -m felix`: run Felix in the foreground until it must exit.

Exit codes: 0 on SIGTERM/SIGINT, 1 when Felix loses an invariant (bad
bootstrap settings, a writer that keeps failing, a dead task), and
`felix.config.EXIT_CONFIG_CHANGED` (129) when a parameter that cannot apply
live changed: supervisord restarts Felix in every non-zero case.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from felix.config import Config

log = logging.getLogger("felix")


async def _main(boot: Config) -> int:
    from felix.wiring import build_felix

    felix = build_felix(boot)
    task = asyncio.create_task(felix.run(), name="felix")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return task.result()
    log.info("signal received: stopping (dataplane left in place)")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


# Felix allocates millions of long-lived objects for a cluster's snapshot; with the default
# threshold (700) the cyclic collector ran hundreds of times over them while they were being
# built (~20% of a 30,000-endpoint start).  Its data has few reference cycles.
GC_THRESHOLD = (50_000, 20, 20)


def main(argv: list[str] | None = None) -> int:
    # Felix's modules are imported here, not above, so that the collector is off while they load:
    # imports allocate only long-lived objects, and collecting during them cost ~8% of the import.
    gc.disable()
    try:
        from felix import daemon, wiring  # noqa: F401 - wiring: loaded here, with the collector off
        from felix.config import Config
        from felix.daemon import setup_logging
    finally:
        gc.enable()
    gc.set_threshold(*GC_THRESHOLD)
    daemon.FREEZE_GC = True
    boot = Config.bootstrap()
    setup_logging(boot.LogSeverityScreen)
    for w in boot.warnings:
        log.warning("config: %s", w)
    if boot.errors:
        for e in boot.errors:
            log.error("config: %s", e)
        return 2
    try:
        return asyncio.run(_main(boot))
    except KeyboardInterrupt:
        return 0
    except Exception:  # noqa: BLE001 - the loop died: say why, exit non-zero for the supervisor
        log.exception("Felix main loop died")
        return 1


if __name__ == "__main__":
    sys.exit(main())
