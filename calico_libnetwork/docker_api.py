"""Ask the calling dockerd about a network: its name and labels.

Docker's CreateNetwork carries neither the network's name nor its labels, yet
the name is what makes a `local` network the same network on every host (it
names the Calico profile) and the labels may attach extra profiles.  So the
driver asks Docker's API, as the classic Go driver did, on the first
CreateEndpoint (by then Docker has stored the network).

Which Docker?  DOCKER_HOST when set; otherwise the one calling us: the peer
of the plugin socket (SO_PEERCRED) is dockerd, its command line names its API
socket (`-H unix://...`, default /var/run/docker.sock), and the path is
opened through /proc/<pid>/root so a dockerd in its own mount namespace is
found too.  That keeps one driver per node correct even when several nodes
(each with its own dockerd) share a machine.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import quote

from calico_libnetwork.protocol import DriverError

DEFAULT_SOCKET = "/var/run/docker.sock"
MAX_REPLY = 4 << 20
TIMEOUT = 10.0
_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def unix_path(host: str) -> str | None:
    """The socket path of a `unix://` Docker host; None for anything else (tcp, ssh)."""
    if host.startswith("unix://"):
        return host[len("unix://"):] or None
    return None


def socket_from_cmdline(argv: list[str]) -> str:
    """dockerd's first unix API socket from its arguments (-H/--host), else Docker's default."""
    hosts: list[str] = []
    it = iter(argv[1:])
    for arg in it:
        if arg in ("-H", "--host"):
            hosts.append(next(it, ""))
        elif arg.startswith("--host="):
            hosts.append(arg.split("=", 1)[1])
        elif arg.startswith("-H") and len(arg) > 2:
            hosts.append(arg[2:].lstrip("="))
    for h in hosts:
        path = unix_path(h)
        if path:
            return path
    return DEFAULT_SOCKET


def caller_socket(pid: int) -> str:
    """The API socket of the dockerd with this pid, as a path we can open from our mount namespace."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError as e:
        raise DriverError(f"cannot find the calling Docker daemon (pid {pid}): {e.strerror}; "
                          "set DOCKER_HOST for calico-node") from None
    path = socket_from_cmdline(argv)
    return f"/proc/{pid}/root{path}" if path.startswith("/") else path


class DockerApi:
    def __init__(self, docker_host: str | None = None):
        """docker_host: DOCKER_HOST (unix:// only); None = ask whichever dockerd is calling."""
        self.fixed = None
        if docker_host:
            self.fixed = unix_path(docker_host)
            if self.fixed is None:
                raise ValueError(f"DOCKER_HOST={docker_host!r}: only unix:// sockets are supported")

    def _socket(self, pid: int | None) -> str:
        if self.fixed:
            return self.fixed
        if pid is None:
            return DEFAULT_SOCKET
        return caller_socket(pid)

    async def network(self, network_id: str, pid: int | None) -> NetworkInfo:
        """Name and labels of a network, from Docker; DriverError when Docker cannot tell us."""
        if not _ID.match(network_id):
            raise DriverError(f"network id {network_id[:80]!r} is not a Docker network id")
        path = self._socket(pid)
        try:
            status, body = await asyncio.to_thread(self._get, path, f"/networks/{quote(network_id)}")
        except (OSError, http.client.HTTPException) as e:
            raise DriverError(f"cannot ask Docker (at {path}) for network {network_id[:12]}: {e}; "
                              "set DOCKER_HOST for calico-node if Docker listens elsewhere") from None
        if status != 200:
            raise DriverError(f"Docker does not know network {network_id[:12]} (HTTP {status})")
        try:
            data = json.loads(body)
            name = data["Name"]
            labels = data.get("Labels") or {}
            if not isinstance(name, str) or not isinstance(labels, dict):
                raise TypeError("unexpected types")
        except (ValueError, KeyError, TypeError) as e:
            raise DriverError(f"Docker's description of network {network_id[:12]} is unreadable ({e})") from None
        return NetworkInfo(name, {str(k): str(v) for k, v in labels.items()})

    @staticmethod
    def _get(path: str, url: str) -> tuple[int, bytes]:
        conn = _UnixConnection(path, TIMEOUT)
        try:
            conn.request("GET", url, headers={"Host": "docker"})
            resp = conn.getresponse()
            return resp.status, resp.read(MAX_REPLY)
        finally:
            conn.close()
