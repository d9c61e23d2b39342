"""BGP session status in etcd: what this node's BIRD sees, where an operator can read it for every node.

The BIRD shim publishes one JSON document per address family under
`/calico/bgp/v1/host/<node>/status/v4` (and `v6`):

    {"node": "node1", "version": 4, "time": "2026-11-28T12:00:00Z",
     "sessions": [{"peer": "10.99.0.2", "name": "Global_10_99_0_2", "type": "global",
                   "state": "Established", "since": "2026-11-28 11:59:58", "info": "Established",
                   "imported": 3, "exported": 1, "rr_client": false}]}

Written only when a session changed (the report time alone never triggers a
write) and at most once per `min_interval`, so a flapping peer or a 50-node
start costs etcd a handful of writes per node.  Removed on an orderly stop,
and with the rest of the node's keys by `calicoctl node remove`.

Why a plain blocking socket to etcd's JSON gateway (`/v3/kv/put`), and not
libcalico's asyncio client the other programs use: the shim runs on every
node for the node's whole life and would nearly double its memory by
loading asyncio (and with it OpenSSL, even when etcd is not TLS) for a few
writes a minute.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bird_control.reply import BirdError, BirdProtocol, BirdUnavailable, parse_protocols, query_sync

# BIRD protocol name prefix -> session type (the names confd renders).
SESSION_TYPES = {"Mesh_": "node-to-node mesh", "Global_": "global", "Node_": "node specific",
                 "RR_": "route reflector"}
POLL_INTERVAL = 2.0
MIN_INTERVAL = 5.0
_ROUTES_RE = re.compile(r"([0-9]+) imported, (?:[0-9]+ filtered, )?([0-9]+) exported")


def status_key(host: str, version: int) -> str:
    """`/calico/bgp/v1/host/<host>/status/v<version>` (libcalico.keys.bgp_host_status, without importing
    libcalico's validation stack into the shim)."""
    return f"/calico/bgp/v1/host/{host}/status/v{version}"


def session_type(name: str, details: dict[str, str]) -> str | None:
    for prefix, kind in SESSION_TYPES.items():
        if name.startswith(prefix):
            if kind == "route reflector":
                return "rr client" if rr_client(details) else "reflector peer"
            return kind
    return None


def rr_client(details: dict[str, str]) -> bool:
    """BIRD 1.6 lists `route-reflector` in a session's `Session:` line when the peer is our client."""
    return "route-reflector" in details.get("Session", "").split()


def sessions(protocols: list[BirdProtocol]) -> list[dict[str, Any]]:
    """The BGP sessions confd configured (by protocol name), as published."""
    out = []
    for p in protocols:
        kind = session_type(p.name, p.details)
        if kind is None or p.proto.upper() != "BGP":
            continue
        imported = exported = 0
        m = _ROUTES_RE.search(p.details.get("Routes", ""))
        if m:
            imported, exported = int(m.group(1)), int(m.group(2))
        out.append({"peer": p.neighbor_address or _address_from_name(p.name), "name": p.name, "type": kind,
                    "state": p.bgp_state or p.state, "since": p.since, "info": p.info,
                    "imported": imported, "exported": exported, "rr_client": rr_client(p.details)})
    return sorted(out, key=lambda s: s["name"])


def _address_from_name(name: str) -> str:
    raw = name.split("_", 1)[1] if "_" in name else name
    return raw.replace("_", "." if raw.count("_") == 3 else ":")


class EtcdGateway:
    """put/delete through etcd v3's HTTP JSON gateway, one short connection per request.

    Endpoints are tried in order; TLS (https endpoints) uses the CA and client
    certificate of the node's etcd settings.
    """

    def __init__(self, endpoints: list[tuple[str, str, int]], ca: str | None = None, cert: str | None = None,
                 key: str | None = None, timeout: float = 5.0):
        self.endpoints = endpoints
        self.timeout = timeout
        self._tls = None
        if any(scheme == "https" for scheme, _, _ in endpoints):
            import ssl  # only nodes whose etcd speaks TLS pay for OpenSSL

            ctx = ssl.create_default_context(cafile=ca)
            if cert and key:
                ctx.load_cert_chain(cert, key)
            self._tls = ctx

    @classmethod
    def from_env(cls, env: dict[str, str]) -> EtcdGateway:
        from libcalico import etcdconf

        cfg = etcdconf.from_env(env)
        return cls([(e.scheme, e.host, e.port) for e in cfg.endpoints], cfg.ca, cfg.cert, cfg.key)

    def put(self, key: str, value: str) -> None:
        self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})

    def _call(self, path: str, body: dict[str, str]) -> dict[str, Any]:
        last: Exception | None = None
        for scheme, host, port in self.endpoints:
            try:
                return self._post(scheme, host, port, path, body)
            except (OSError, ValueError) as e:  # socket.timeout is an OSError
                last = e
        raise OSError(f"etcd unreachable at {', '.join(f'{h}:{p}' for _, h, p in self.endpoints)}: {last}")

    def _post(self, scheme: str, host: str, port: int, path: str, body: dict[str, str]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
        raw = b""
        with socket.create_connection((host, port), timeout=self.timeout) as plain:
            conn = self._tls.wrap_socket(plain, server_hostname=host) if scheme == "https" else plain
            conn.sendall(request)
            while len(raw) < (1 << 20):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise ValueError(f"etcd answered {head[:80]!r}: {payload[:200]!r}")
        if b"transfer-encoding: chunked" in head.lower():
            payload = _unchunk(payload)
        return json.loads(payload or b"{}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Publisher:
    """Poll BIRD's sessions; write them to etcd when they changed, at most once per `min_interval`.

    `clock` and `sleep` are injectable so tests can count writes per burst of changes without
    waiting on real time.
    """

    host: str
    version: int
    sock: str
    gateway: Any  # EtcdGateway or a test double with put/delete
    poll_interval: float = POLL_INTERVAL
    min_interval: float = MIN_INTERVAL
    clock: Callable[[], float] = time.monotonic
    say: Callable[[str], None] = print  # the shim's timestamped log line

    def __post_init__(self) -> None:
        self.key = status_key(self.host, self.version)
        self.published: list[dict[str, Any]] | None = None
        self.last_write: float | None = None
        self.writes = 0
        self._failing = False

    def read(self) -> list[dict[str, Any]] | None:
        try:
            return sessions(parse_protocols(query_sync(self.sock, "show protocols all", timeout=5.0)))
        except (BirdUnavailable, BirdError, OSError):
            return None  # BIRD not up yet or restarting: nothing new to say

    def step(self, current: list[dict[str, Any]] | None) -> bool:
        """Publish `current` if it differs from what etcd has and the rate limit allows; True if written."""
        if current is None or current == self.published:
            return False
        now = self.clock()
        if self.last_write is not None and now - self.last_write < self.min_interval:
            return False
        doc = {"node": self.host, "version": self.version, "time": _now(), "sessions": current}
        try:
            self.gateway.put(self.key, json.dumps(doc, separators=(",", ":")))
        except OSError as e:
            if not self._failing:
                self.say(f"cannot write BGP status to {self.key} (will retry): {e}")
            self._failing = True
            return False
        if self._failing:
            self.say(f"BGP status written to {self.key} again")
        self._failing = False
        self.published = current
        self.last_write = now
        self.writes += 1
        return True

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set (a thread of the shim)."""
        while not stop.is_set():
            self.step(self.read())
            stop.wait(self.poll_interval)

    def clear(self) -> None:
        """An orderly stop: this node's sessions are gone, so is their report."""
        try:
            self.gateway.delete(self.key)
        except OSError as e:
            self.say(f"cannot remove {self.key}: {e}")
