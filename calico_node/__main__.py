"""`calico-node`: prepare the host, then become supervisord; or answer a health check.

    calico-node                 startup, then exec supervisord (the container's entrypoint)
    calico-node --init-only     startup only (registration, pools, tunnel addresses), then exit
    calico-node -ready|--ready  exit 0 when every service is ready (BGP sessions up with networking)
    calico-node -live|--live    exit 0 when every service is alive
    calico-node -felix-ready -felix-live -bird-ready -bird-live -bird6-ready -bird6-live
                                Calico's per-service probes, in any combination: exit 0 when each holds
                                (-bird-live holds while BIRD answers, even with its BGP peers down)
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from libcalico import logsafe

# Each path imports only what it runs: a probe (exec'd every few seconds by a
# runtime's health check) needs neither the datastore nor pydantic, and the
# start-up never needs the supervisord XML-RPC client the probes use.

log = logging.getLogger("calico-node")


def _setup_logging() -> None:
    logsafe.basic_config(level=logging.INFO, stream=sys.stderr,
                         format="%(asctime)s.%(msecs)03d [%(levelname)s] calico-node: %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")


def _stop_during_startup(signum: int, frame: object) -> None:
    """`docker stop` while still waiting for etcd is a clean stop, not a crash."""
    log.info("%s during startup: exiting", signal.Signals(signum).name)
    sys.exit(0)


def run_node(init_only: bool = False) -> int:
    import asyncio
    import gc

    gc.disable()  # these imports allocate only long-lived objects: collecting during them is wasted
    try:
        from libcalico import etcdconf

        from . import settings, startup, supervisor
    finally:
        gc.enable()
    _setup_logging()
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")  # as for the services (supervisor.program_env)
    signal.signal(signal.SIGTERM, _stop_during_startup)
    try:
        cfg = settings.from_env()
        etcdconf.from_env(cfg.env)  # before autodetection or any host change: fail on settings alone
    except (settings.SettingsError, etcdconf.ConfigError) as e:
        log.error("Invalid environment: %s", e)
        return 1
    try:
        result = asyncio.run(startup.run(cfg))
    except startup.StartupError as e:
        log.error("%s", e)
        return 1
    except startup.DatastoreError as e:
        log.error("Datastore error during startup (%s): %s", startup.endpoints_text(cfg.env), e)
        return 1
    except KeyboardInterrupt:
        return 130
    if init_only:
        return 0
    try:
        conf = supervisor.write_config(cfg, result.ip, result.ip6)
    except (OSError, KeyError) as e:
        log.error("Cannot write the supervisord configuration in %s: %s", cfg.run_dir, e)
        return 1
    log.info("Starting supervisord (%s): %s", conf, ", ".join(supervisor.services_for(cfg, result.ip6)))
    supervisor.exec_supervisord(conf, supervisor.program_env(cfg, result.ip, result.ip6))
    return 1  # not reached


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        return run_node()
    if args == ["--init-only"]:
        return run_node(init_only=True)
    from . import health

    if args[0] in ("-ready", "--ready") and len(args) == 1:
        return health.main("ready")
    if args[0] in ("-live", "--live") and len(args) == 1:
        return health.main("live")
    probes = health.probe_flags(args)
    if probes is not None:
        return health.probe_main(probes)
    if args == ["--log-relay"]:
        from . import logrelay
        return logrelay.main()
    if args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    print(f"calico-node: unknown arguments {' '.join(args)!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
