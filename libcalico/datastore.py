"""The etcd v3 client every program of the node uses (over etcd's JSON gateway).

A node must survive etcd restarts, fail over between members, speak TLS with
client certificates and never hang.  So every call has a deadline, calls that
are safe to repeat get bounded retries with backoff, and the client moves to
the next endpoint whenever one is unreachable.  Keys and values are ``str``
at this API; bytes (base64 on the wire) stay inside.

The wire is etcd's own v3 HTTP/JSON gateway (libcalico.etcd_http), not gRPC
through aetcd: importing grpc + aetcd + protobuf made each process ~70 ms
slower to start and ~14 MB bigger (``/usr/bin/time -f "%e s %M KB" python -c
"import libcalico.datastore"``: 0.19 s / 35.0 MB with them, 0.11 s / 21.4 MB
without), paid by Felix, confd and calico-node on every node and by the CNI
plugin on every container ADD.  Same API, same semantics, measured reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from libcalico import etcd_http, etcdconf
from libcalico.etcdconf import ConfigError, EtcdConfig
from libcalico.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "KV", "WatchEvent", "Lease", "DatastoreClient", "DatastoreError", "DatastoreUnavailable",
    "CompactedError", "ConfigError", "run_sync", "mod", "value", "version", "create",
    "op_put", "op_delete", "op_get", "unchanged_since", "Compare", "Put", "Delete", "Get",
    "prefix_range_end",
]

# A watch that heard nothing this long has its endpoint asked for the store revision; no
# answer within PROBE_TIMEOUT ends the watch (DatastoreUnavailable).  The gateway cannot carry
# pings on a stream and TCP keepalive is answered by the kernel of a hung (stopped) etcd, so
# this is what notices one under an idle watch, within ~15 s as gRPC's keepalive did.
WATCH_IDLE_PROBE = 10.0
PROBE_TIMEOUT = 5.0
# Keys per range request of a prefix read (etcd's own clients page lists too).
PAGE_SIZE = 5000
_RETRYABLE = {etcd_http.UNAVAILABLE, etcd_http.DEADLINE_EXCEEDED}


class DatastoreError(Exception):
    """A datastore operation failed (the message names the operation and key)."""


class DatastoreUnavailable(DatastoreError):
    """No etcd endpoint answered in time."""


class CompactedError(DatastoreError):
    """The requested revision has been compacted away: take a fresh snapshot."""

    def __init__(self, message: str, compact_revision: int = 0):
        super().__init__(message)
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "put" | "delete"
    key: str
    value: str | None
    mod_revision: int
    create_revision: int = 0  # 0 for deletes


class Lease:
    """A granted lease; keys put with it vanish when it is neither refreshed nor revoked."""

    def __init__(self, client: DatastoreClient, lease_id: int, ttl: int):
        self.client = client
        self.id = lease_id
        self.ttl = ttl

    async def refresh(self) -> int:
        """Keep the lease alive; returns the new TTL, raises DatastoreError once it has expired
        (its keys are gone: grant a new lease and rewrite them)."""
        ttl = await self.client.refresh_lease(self.id)
        if ttl <= 0:
            raise DatastoreError(f"lease {self.id:x} has expired")
        return ttl

    async def revoke(self) -> None:
        await self.client.revoke_lease(self.id)


# ---- transaction builders (str in, gateway JSON out) ---------------------------
# The dicts are the JSON mapping of etcd's v3 messages (etcdserverpb rpc.proto):
# bytes base64, int64 as strings, enums by name.

def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd range_end that makes a range request cover every key starting with `prefix`."""
    s = bytearray(prefix)
    for i in reversed(range(len(s))):
        if s[i] < 0xFF:
            s[i] += 1
            return bytes(s[:i + 1])
    return b"\0"  # all 0xff: etcd reads "\0" as "to the end of the keyspace"


class Compare:
    """One guard of a transaction; written `mod(k) == rev`, `version(k) > 0`, ...

    The comparison operators record the operator (etcd's CompareResult name)
    and operand and return the guard itself, so the builders read like the
    condition they express.
    """

    _TARGETS = {"mod": ("MOD", "mod_revision"), "create": ("CREATE", "create_revision"),
                "version": ("VERSION", "version"), "value": ("VALUE", "value")}

    def __init__(self, target: str, key: bytes, range_end: bytes | None = None):
        self.target = target
        self.key = key
        self.range_end = range_end
        self.op: str | None = None
        self.value: int | str | bytes | None = None

    def _set(self, op: str, other: object) -> Compare:
        self.op, self.value = op, other  # type: ignore[assignment]
        return self

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._set("EQUAL", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._set("NOT_EQUAL", other)

    def __lt__(self, other: object) -> Compare:
        return self._set("LESS", other)

    def __gt__(self, other: object) -> Compare:
        return self._set("GREATER", other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        span = self.key if self.range_end is None else f"[{self.key!r}, {self.range_end!r})"
        return f"{self.target}({span}) op={self.op} {self.value!r}"

    def build_message(self) -> dict[str, Any]:
        if self.op is None:
            raise ValueError(f"{self!r}: no comparison operator given")
        target, field = self._TARGETS[self.target]
        msg: dict[str, Any] = {"key": _b64(self.key), "result": self.op, "target": target}
        if self.range_end is not None:
            msg["range_end"] = _b64(self.range_end)
        if self.target == "value":
            msg[field] = _b64(_b(self.value))  # type: ignore[arg-type]
        else:
            msg[field] = str(int(self.value))  # type: ignore[arg-type]
        return msg


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def build_message(self) -> dict[str, Any]:
        req: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            req["lease"] = str(self.lease)
        return {"request_put": req}


@dataclass(frozen=True)
class Delete:
    key: bytes
    range_end: bytes | None = None

    def build_message(self) -> dict[str, Any]:
        req = {"key": _b64(self.key)}
        if self.range_end is not None:
            req["range_end"] = _b64(self.range_end)
        return {"request_delete_range": req}


@dataclass(frozen=True)
class Get:
    key: bytes
    range_end: bytes | None = None

    def build_message(self) -> dict[str, Any]:
        req = {"key": _b64(self.key)}
        if self.range_end is not None:
            req["range_end"] = _b64(self.range_end)
        return {"request_range": req}


def mod(key: str) -> Compare:
    """`mod(k) == rev` compares the key's mod_revision (0 = absent)."""
    return Compare("mod", _b(key))


def create(key: str) -> Compare:
    """`create(k) == 0` holds when the key does not exist."""
    return Compare("create", _b(key))


def unchanged_since(prefix: str, revision: int) -> Compare:
    """Holds when no key under `prefix` was created or changed after `revision`.

    A check-then-write (no overlapping pool, no other node on this IP) made of
    a read at `revision` and a transaction guarded by this compare is atomic:
    a concurrent writer makes the transaction fail and the caller re-reads.
    """
    kb = _b(prefix)
    return Compare("mod", kb, range_end=prefix_range_end(kb)) < revision + 1


def version(key: str) -> Compare:
    return Compare("version", _b(key))


def value(key: str) -> Compare:
    return Compare("value", _b(key))


def op_put(key: str, val: str, lease: Lease | int | None = None) -> Put:
    lease_id = lease.id if isinstance(lease, Lease) else (lease or 0)
    return Put(_b(key), _b(val), lease_id)


def op_delete(key: str, prefix: bool = False) -> Delete:
    kb = _b(key)
    return Delete(kb, range_end=prefix_range_end(kb) if prefix else None)


def op_get(key: str, prefix: bool = False) -> Get:
    kb = _b(key)
    return Get(kb, range_end=prefix_range_end(kb) if prefix else None)


# Keys that are not UTF-8 are skipped where they are read, in every program: one such key
# must not end a snapshot or a watch (a crash loop on every node), nor flood the log.
_bad_key_log = RateLimitedLog(log)


def _decode_key(raw: bytes) -> str | None:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        _bad_key_log.log("undecodable key", logging.WARNING,
                         "skipping etcd key that is not valid UTF-8: %s", ascii(raw)[1:])
        _bad_key_log.flush()
        return None


def _int(msg: dict[str, Any], field: str) -> int:
    """An int64 field of a gateway message (a JSON string, absent when zero)."""
    return int(msg.get(field) or 0)


_unb64 = binascii.a2b_base64  # etcd's base64 is canonical: the strict wrapper's checks cost ~20% of a snapshot


def _kv(kv: dict[str, Any]) -> KV | None:
    key = _decode_key(_unb64(kv.get("key", "")))
    if key is None:
        return None
    get = kv.get
    return KV(key, _unb64(get("value", "")).decode(errors="replace"), int(get("mod_revision") or 0),
              int(get("create_revision") or 0), int(get("lease") or 0))


def _kvs(raw: list[dict[str, Any]] | None) -> list[KV]:
    return [kv for kv in map(_kv, raw or []) if kv is not None]


def _watch_event(ev: dict[str, Any]) -> WatchEvent | None:
    kv = ev.get("kv") or {}
    key = _decode_key(_unb64(kv.get("key", "")))
    if key is None:
        return None
    if ev.get("type") == "DELETE":
        return WatchEvent("delete", key, None, _int(kv, "mod_revision"))
    return WatchEvent("put", key, _unb64(kv.get("value", "")).decode(errors="replace"),
                      _int(kv, "mod_revision"), _int(kv, "create_revision"))


def _revision(resp: dict[str, Any]) -> int:
    return _int(resp.get("header") or {}, "revision")


class _Conn:
    """The connections to one endpoint (TLS when its scheme asks), for the loop that made them.

    Requests share a small pool of keep-alive connections; each stream (watch,
    lease keepalive) gets a connection of its own.
    """

    def __init__(self, endpoint: etcdconf.Endpoint, tls: Any, timeout: float,
                 max_response: int = etcd_http.MAX_RESPONSE):
        self.endpoint = endpoint
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.pool = etcd_http.Pool(endpoint.host, endpoint.port, tls, max_response=max_response)

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            return await self.pool.post(path, payload)

    def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self.pool.stream(path, payload)

    async def close(self) -> None:
        self.pool.close()


class DatastoreClient:
    """asyncio etcd v3 client: str keys/values, deadlines, retries, endpoint failover, TLS."""

    def __init__(self, endpoints: Iterable[str] | None = None, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, timeout: float = 5.0,
                 retries: int = 3, config: EtcdConfig | None = None):
        if config is None:
            eps = tuple(etcdconf.parse_endpoint(e, "endpoints")
                        for e in (endpoints or [f"http://{etcdconf.DEFAULT_AUTHORITY}"]))
            if not eps:
                raise ConfigError("endpoints: no endpoint given")
            if bool(cert) != bool(key):
                raise ConfigError("cert and key must be given together")
            config = EtcdConfig(eps, ca, cert, key)
        if timeout <= 0:
            raise ConfigError(f"timeout: {timeout} must be > 0")
        self.config = config
        self.timeout = float(timeout)
        self.retries = max(1, int(retries))
        self.watch_idle_probe = WATCH_IDLE_PROBE
        self.page_size = PAGE_SIZE
        self.max_response = etcd_http.MAX_RESPONSE  # a bigger answer is refused (DatastoreError)
        self._idx = 0
        self._gen = 0
        self._conn: _Conn | None = None
        self._tls: Any = None
        self._closing: set[asyncio.Task] = set()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, timeout: float = 5.0) -> DatastoreClient:
        """Build from ETCD_* variables; raises ConfigError naming the bad variable."""
        return cls(config=etcdconf.from_env(env), timeout=timeout)

    @property
    def endpoints(self) -> list[str]:
        return [str(e) for e in self.config.endpoints]

    # ---- connection management ------------------------------------------

    def _credentials(self, ep: etcdconf.Endpoint) -> Any:
        """The TLS context for https endpoints (made once; None for http)."""
        if not ep.tls:
            return None
        if self._tls is not None:
            return self._tls
        import ssl

        def check(path: str | None, what: str) -> None:
            if not path:
                return
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:  # the path is fine to log, the contents never are
                raise ConfigError(f"{what}: cannot read {path!r}: {e.strerror}") from None

        check(self.config.ca, "ETCD_CA_CERT_FILE")
        check(self.config.cert, "ETCD_CERT_FILE")
        check(self.config.key, "ETCD_KEY_FILE")
        try:
            ctx = ssl.create_default_context(cafile=self.config.ca)
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(f"ETCD_CA_CERT_FILE: {self.config.ca!r} holds no usable CA certificate: "
                              f"{getattr(e, 'reason', None) or e}") from None
        if self.config.cert and self.config.key:
            try:
                ctx.load_cert_chain(self.config.cert, self.config.key)
            except (ssl.SSLError, ValueError) as e:
                raise ConfigError(f"ETCD_CERT_FILE/ETCD_KEY_FILE: {self.config.cert!r} and {self.config.key!r} "
                                  f"are not a matching certificate and key: "
                                  f"{getattr(e, 'reason', None) or type(e).__name__}") from None
        self._tls = ctx
        return ctx

    async def _connection(self) -> tuple[_Conn, int]:
        loop = asyncio.get_running_loop()
        if self._conn is not None and self._conn.loop is not loop:
            # Connections belong to the loop that made them (run_sync makes a loop per call).
            self._conn.pool.close()
            self._conn = None
        if self._conn is None:
            ep = self.config.endpoints[self._idx]
            self._conn = _Conn(ep, self._credentials(ep), self.timeout, self.max_response)
        return self._conn, self._gen

    def _failover(self, gen: int) -> None:
        """Drop the connections that failed and move to the next endpoint (once per failure)."""
        if gen != self._gen:
            return
        self._gen += 1
        old, self._conn = self._conn, None
        self._idx = (self._idx + 1) % len(self.config.endpoints)
        if old is not None and old.loop is asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(self._close_conn(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _slow(self, gen: int) -> None:
        """A call timed out.  With other endpoints, try the next one; with only one, keep
        the connections: it may just be a slow answer, and dropping them would also
        break every healthy watch stream."""
        if len(self.config.endpoints) > 1:
            self._failover(gen)

    @staticmethod
    async def _close_conn(conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)

    def _hint(self) -> str:
        if any(e.tls for e in self.config.endpoints) and not self.config.cert:
            return (" (no client certificate configured: if etcd uses --client-cert-auth, "
                    "set ETCD_CERT_FILE and ETCD_KEY_FILE)")
        return ""

    async def _call(self, what: str, fn: Callable[[_Conn], Awaitable[T]], retry: bool = True) -> T:
        """Run one request with a deadline; retry (reads, idempotent writes) across endpoints."""
        attempts = max(self.retries, len(self.config.endpoints) + 1) if retry else 1
        delay = 0.1
        last = ""
        for attempt in range(attempts):
            conn, gen = await self._connection()
            try:
                return await asyncio.wait_for(fn(conn), self.timeout + 1)
            except TimeoutError:
                last = f"no answer within {self.timeout:g}s from {conn.endpoint}"
                self._slow(gen)
            except etcd_http.GatewayError as e:
                if e.code == 11 and "compacted" in e.message:
                    raise CompactedError(f"{what}: {e.message}") from None
                if e.code not in _RETRYABLE:
                    raise DatastoreError(f"{what}: {e.name}: {e.message}") from None
                last = f"{conn.endpoint}: {e.name}: {e.message}"
                if e.code == etcd_http.DEADLINE_EXCEEDED:
                    self._slow(gen)
                else:
                    self._failover(gen)
            except etcd_http.ResponseTooLarge as e:
                raise DatastoreError(f"{what}: {e}") from None
            except OSError as e:  # refused, reset, TLS refused, not HTTP: this endpoint is no good now
                last = f"{conn.endpoint}: {e.strerror or e}"
                self._failover(gen)
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise DatastoreUnavailable(f"{what}: etcd unavailable ({last}){self._hint()}")

    async def _post(self, what: str, path: str, payload: dict[str, Any], retry: bool = True) -> dict[str, Any]:
        async def fn(c: _Conn) -> dict[str, Any]:
            return await c.post(path, payload)
        return await self._call(what, fn, retry)

    # ---- reads ------------------------------------------------------------

    async def _range(self, what: str, key: str, prefix: bool, revision: int = 0,
                     keys_only: bool = False, limit: int = 0, range_end: bytes | None = None,
                     start: bytes | None = None) -> dict[str, Any]:
        kb = key.encode()
        req: dict[str, Any] = {"key": _b64(start if start is not None else kb)}
        if prefix:
            req["range_end"] = _b64(range_end if range_end is not None else prefix_range_end(kb))
        if revision:
            req["revision"] = str(revision)
        if keys_only:
            req["keys_only"] = True
        if limit:
            req["limit"] = str(limit)
        return await self._post(what, "/v3/kv/range", req)

    async def get_kv(self, key: str) -> KV | None:
        resp = await self._range(f"get {key}", key, False)
        kvs = resp.get("kvs")
        return _kv(kvs[0]) if kvs else None  # None too when the key is not UTF-8

    async def get(self, key: str) -> str | None:
        kv = await self.get_kv(key)
        return kv.value if kv else None

    async def get_prefix(self, prefix: str, revision: int = 0) -> tuple[int, list[KV]]:
        """All keys under prefix (sorted by key) and the store revision they were read at.

        With ``revision`` the read is of that past revision (CompactedError if gone),
        which lets a syncer read several prefixes as one consistent snapshot.
        """
        kb = prefix.encode()
        end = prefix_range_end(kb)
        kvs: list[KV] = []
        start = kb
        while True:
            # In pages, all at the first page's revision: one answer for 50,000 endpoints is
            # ~60 MB of JSON, and holding it and its parse at once would double a Felix's peak RSS.
            resp = await self._range(f"get prefix {prefix}", prefix, True, revision,
                                     limit=self.page_size, range_end=end, start=start)
            revision = revision or _revision(resp)
            raw = resp.get("kvs") or []
            kvs.extend(_kvs(raw))
            if not resp.get("more") or not raw:
                break
            start = _unb64(raw[-1].get("key", "")) + b"\0"
        kvs.sort(key=lambda kv: kv.key)
        return revision, kvs

    async def current_revision(self) -> int:
        resp = await self._range("get revision", "/", False, keys_only=True)
        return _revision(resp)

    # ---- writes -----------------------------------------------------------

    async def put(self, key: str, val: str, lease: Lease | int | None = None) -> int:
        """Write key=value; returns the new store revision (repeating a put is harmless)."""
        if not isinstance(val, str):
            raise TypeError(f"put {key}: value must be str, not {type(val).__name__}")
        req = op_put(key, val, lease).build_message()["request_put"]
        return _revision(await self._post(f"put {key}", "/v3/kv/put", req))

    async def delete(self, key: str) -> bool:
        req = {"key": _b64(key.encode())}
        return _int(await self._post(f"delete {key}", "/v3/kv/deleterange", req), "deleted") > 0

    async def delete_prefix(self, prefix: str) -> int:
        req = op_delete(prefix, prefix=True).build_message()["request_delete_range"]
        return _int(await self._post(f"delete prefix {prefix}", "/v3/kv/deleterange", req), "deleted")

    async def txn(self, compare: list, success: list | None = None, failure: list | None = None,
                  what: str = "txn") -> tuple[bool, list]:
        """One etcd transaction (builders: mod/create/value/version, op_put/op_delete/op_get).

        Never retried: a repeat after a lost reply could report a conflict for a
        change that did apply.  Returns (succeeded, responses) where a get
        response is a list[KV], a delete the number deleted, a put None.
        """
        req = {"compare": [c.build_message() for c in compare],
               "success": [op.build_message() for op in success or []],
               "failure": [op.build_message() for op in failure or []]}
        resp = await self._post(what, "/v3/kv/txn", req, retry=False)
        out: list = []
        for r in resp.get("responses") or []:
            if "response_range" in r:
                out.append(_kvs(r["response_range"].get("kvs")))
            elif "response_delete_range" in r:
                out.append(_int(r["response_delete_range"], "deleted"))
            else:
                out.append(None)
        return bool(resp.get("succeeded")), out

    async def put_if_absent(self, key: str, val: str, lease: Lease | int | None = None) -> bool:
        ok, _ = await self.txn([create(key) == 0], [op_put(key, val, lease)], [],
                               what=f"put_if_absent {key}")
        return ok

    async def cas(self, key: str, expected_mod_revision: int, new_value: str | None) -> bool:
        """Write (or delete, with None) only if the key is still at that mod_revision (0 = absent)."""
        op = op_delete(key) if new_value is None else op_put(key, new_value)
        ok, _ = await self.txn([mod(key) == expected_mod_revision], [op], [], what=f"cas {key}")
        return ok

    async def compact(self, revision: int, physical: bool = True) -> None:
        await self._post(f"compact {revision}", "/v3/kv/compaction",
                         {"revision": str(revision), "physical": physical})

    # ---- leases -----------------------------------------------------------

    async def lease(self, ttl: int) -> Lease:
        resp = await self._post(f"lease {ttl}s", "/v3/lease/grant", {"TTL": str(int(ttl))}, retry=False)
        if resp.get("error"):
            raise DatastoreError(f"lease {ttl}s: {resp['error']}")
        return Lease(self, _int(resp, "ID"), _int(resp, "TTL"))

    async def refresh_lease(self, lease_id: int) -> int:
        async def fn(c: _Conn) -> int:
            async with contextlib.aclosing(c.stream("/v3/lease/keepalive", {"ID": str(lease_id)})) as it:
                async for resp in it:
                    return _int(resp, "TTL")  # absent (0) once the lease is gone
            return 0
        return await self._call(f"refresh lease {lease_id:x}", fn)

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._post(f"revoke lease {lease_id:x}", "/v3/lease/revoke", {"ID": str(lease_id)})
        except DatastoreError as e:
            if "not found" not in str(e):
                raise

    # ---- watch ------------------------------------------------------------

    async def _probe(self, conn: _Conn) -> bool:
        """Does the watch's endpoint still answer (a cheap read, one attempt, short deadline)?"""
        try:
            async with asyncio.timeout(min(PROBE_TIMEOUT, self.timeout)):
                await conn.pool.post("/v3/kv/range", {"key": _b64(b"/"), "keys_only": True, "limit": "1"})
            return True
        except (TimeoutError, OSError, etcd_http.GatewayError, etcd_http.ResponseTooLarge):
            return False

    async def watch_batches(self, prefix: str, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]:
        """Events under prefix from start_revision on, one list per etcd response (a revision's changes together).

        Raises CompactedError when start_revision is gone, DatastoreUnavailable
        when the stream breaks (or its endpoint stops answering while it is
        idle); it never resumes by itself, so the caller decides between
        re-watching and resnapshotting.
        """
        conn, gen = await self._connection()
        kb = prefix.encode()
        create_req: dict[str, Any] = {"key": _b64(kb), "range_end": _b64(prefix_range_end(kb)),
                                      "progress_notify": True}
        if start_revision:
            create_req["start_revision"] = str(start_revision)
        what = f"watch {prefix} from {start_revision}"
        stream = conn.stream("/v3/watch", {"create_request": create_req})
        it = stream.__aiter__()
        nxt: asyncio.Future | None = None
        try:
            try:
                resp = await asyncio.wait_for(it.__anext__(), self.timeout)
            except TimeoutError:
                self._slow(gen)
                raise DatastoreUnavailable(f"{what}: no answer within {self.timeout:g}s "
                                           f"from {conn.endpoint}{self._hint()}") from None
            while True:
                if _int(resp, "compact_revision"):
                    rev = _int(resp, "compact_revision")
                    raise CompactedError(f"{what}: revision compacted (oldest is {rev})", rev)
                if resp.get("canceled"):
                    raise DatastoreUnavailable(f"{what}: watch canceled by etcd: {resp.get('cancel_reason', '')}")
                events = [_watch_event(ev) for ev in resp.get("events") or []]
                events = [ev for ev in events if ev is not None]
                if events:
                    yield events
                nxt = asyncio.ensure_future(it.__anext__())
                while not nxt.done():
                    await asyncio.wait({nxt}, timeout=self.watch_idle_probe)
                    if nxt.done():
                        break
                    # Idle: is the peer still there?  The read goes on meanwhile.
                    probe = asyncio.ensure_future(self._probe(conn))
                    try:
                        await asyncio.wait({nxt, probe}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not probe.done():
                            probe.cancel()
                    if not nxt.done() and probe.done() and not probe.cancelled() and not probe.result():
                        self._failover(gen)
                        raise DatastoreUnavailable(f"{what}: {conn.endpoint} stopped answering "
                                                   f"(idle watch probe){self._hint()}")
                resp, nxt = nxt.result(), None
        except StopAsyncIteration:
            raise DatastoreUnavailable(f"{what}: stream closed by {conn.endpoint}") from None
        except etcd_http.GatewayError as e:
            if e.code == 11 and "compacted" in e.message:
                raise CompactedError(f"{what}: {e.message}") from None
            self._failover(gen)
            raise DatastoreUnavailable(f"{what}: {conn.endpoint}: {e.name}: {e.message}{self._hint()}") from None
        except etcd_http.ResponseTooLarge as e:
            self._failover(gen)
            raise DatastoreUnavailable(f"{what}: {conn.endpoint}: {e}") from None
        except OSError as e:
            self._failover(gen)
            raise DatastoreUnavailable(f"{what}: {conn.endpoint}: {e}{self._hint()}") from None
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        async for batch in self.watch_batches(prefix, start_revision):
            for ev in batch:
                yield ev

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close_conn(conn)  # connections of another (finished) loop are ended too
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task

    async def __aenter__(self) -> DatastoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion from synchronous (CLI) code."""
    return asyncio.run(coro)
