"""`calico-libnetwork`: Calico's Docker network and IPAM driver, one process, two sockets.

Docker finds a legacy plugin by the name of its socket in /run/docker/plugins,
so the network driver listens on `calico.sock` (CALICO_LIBNETWORK_SOCKET) and
the IPAM driver on `calico-ipam.sock` beside it (the classic layout).  The
network socket also answers IPAM calls, as the classic Python driver did, so
`--ipam-driver calico` works as well.  Nothing is kept in memory between calls:
what the driver knows is in etcd and the kernel, so supervisord may restart it
at any time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from calico_libnetwork.docker_api import DockerApi
from calico_libnetwork.ipam_driver import IpamDriver
from calico_libnetwork.network_driver import NetworkDriver
from calico_libnetwork.protocol import Handler, PluginServer, Request
from libcalico import etcdconf, logsafe
from libcalico.datastore import DatastoreClient
from libcalico.validation import validate_name

log = logging.getLogger("calico_libnetwork")
DEFAULT_SOCKET = "/run/docker/plugins/calico.sock"


class SettingsError(ValueError):
    """A bad environment variable; str() names it."""


@dataclass(frozen=True)
class Settings:
    host: str
    network_socket: str
    ipam_socket: str
    docker_host: str | None


def ipam_socket_for(network_socket: str) -> str:
    """`calico.sock` -> `calico-ipam.sock` in the same directory."""
    d, base = os.path.split(network_socket)
    stem = base[:-len(".sock")] if base.endswith(".sock") else base
    return os.path.join(d, f"{stem}-ipam.sock")


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    raw_host = (env.get("NODENAME") or env.get("HOSTNAME") or socket.gethostname()).strip()
    try:
        host = validate_name(raw_host, "node name")
    except ValueError as e:
        raise SettingsError(f"{'NODENAME' if env.get('NODENAME') else 'HOSTNAME'}: {e}") from None
    sock = env.get("CALICO_LIBNETWORK_SOCKET", "").strip() or DEFAULT_SOCKET
    base = os.path.basename(sock)
    if not os.path.isabs(sock) or not base.endswith(".sock") or len(base) <= 5 or "\0" in sock \
            or len(sock.encode()) > 100:
        raise SettingsError(f"CALICO_LIBNETWORK_SOCKET={sock!r}: expected an absolute path to NAME.sock "
                            "(Docker names the driver NAME), at most 100 bytes")
    docker_host = env.get("DOCKER_HOST", "").strip() or None
    if docker_host and not docker_host.startswith("unix:///"):
        raise SettingsError(f"DOCKER_HOST={docker_host!r}: the driver talks to Docker over unix:// sockets only")
    return Settings(host, os.path.normpath(sock), ipam_socket_for(os.path.normpath(sock)), docker_host)


def servers(client: DatastoreClient, settings: Settings) -> list[PluginServer]:
    """Both sockets with their routes (shared by the program and its tests)."""
    ipam = IpamDriver(client, settings.host).routes()
    net = NetworkDriver(client, settings.host, DockerApi(settings.docker_host)).routes()

    def activate(implements: list[str]) -> Handler:
        async def handler(req: Request) -> dict:
            return {"Implements": implements}
        return handler

    name = os.path.basename(settings.network_socket)[:-len(".sock")]
    return [
        PluginServer(settings.network_socket,
                     {"Plugin.Activate": activate(["NetworkDriver", "IpamDriver"]), **net, **ipam}, name),
        PluginServer(settings.ipam_socket, {"Plugin.Activate": activate(["IpamDriver"]), **ipam}, f"{name}-ipam"),
    ]


async def amain(settings: Settings) -> int:
    client = DatastoreClient.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[PluginServer] = []
    try:
        for srv in servers(client, settings):
            await srv.start()
            started.append(srv)
        log.info("calico-libnetwork on %s: network driver %s, IPAM driver %s", settings.host,
                 settings.network_socket, settings.ipam_socket)
        await stop.wait()
        log.info("stopping")
        return 0
    finally:
        for srv in started:
            await srv.close()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="calico-libnetwork", description=__doc__.splitlines()[0]).parse_args(argv)
    logsafe.basic_config(level=os.environ.get("CALICO_LIBNETWORK_LOGLEVEL", "INFO").upper(),
                         format="%(asctime)s [%(levelname)s] %(name)s: %(message)s", stream=sys.stdout)
    try:
        settings = settings_from_env()
        etcdconf.from_env()
    except (SettingsError, etcdconf.ConfigError) as e:
        print(f"calico-libnetwork: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(amain(settings)))


if __name__ == "__main__":
    main()
