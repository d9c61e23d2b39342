"""The etcd v3 client every program of the node uses (over aetcd).

aetcd alone only dials one host over an insecure channel and lets calls wait
forever; a node must survive etcd restarts, fail over between members, speak
TLS with client certificates and never hang.  So this wraps aetcd: one gRPC
channel per endpoint (secure when the scheme is https), a deadline on every
call, bounded retries with backoff for calls that are safe to repeat, and a
move to the next endpoint whenever one is unreachable.  Keys and values are
``str`` at this API; bytes stay inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from libcalico import etcdconf
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

# A dead peer is noticed by keepalive pings even on an idle watch stream; etcd
# refuses pings more often than every 5 s, so 10 s is the floor here.
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2_000,
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
}
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


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


# ---- transaction builders (str in, protobuf out) ------------------------------
# Built here on aetcd's generated protobuf messages (`aetcd.rpc`, the etcd v3 API
# itself) rather than on aetcd's client helpers, whose private request builders
# changed shape between releases: an aetcd upgrade must not break the node.

def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode()


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

    The comparison operators record the operator and operand and return the
    guard itself, so the builders read like the condition they express.
    """

    _TARGETS = {"mod": rpc.Compare.MOD, "create": rpc.Compare.CREATE,
                "version": rpc.Compare.VERSION, "value": rpc.Compare.VALUE}

    def __init__(self, target: str, key: bytes, range_end: bytes | None = None):
        self.target = target
        self.key = key
        self.range_end = range_end
        self.op: int | None = None
        self.value: int | str | bytes | None = None

    def _set(self, op: int, other: object) -> Compare:
        self.op, self.value = op, other  # type: ignore[assignment]
        return self

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._set(rpc.Compare.EQUAL, other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._set(rpc.Compare.NOT_EQUAL, other)

    def __lt__(self, other: object) -> Compare:
        return self._set(rpc.Compare.LESS, other)

    def __gt__(self, other: object) -> Compare:
        return self._set(rpc.Compare.GREATER, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        span = self.key if self.range_end is None else f"[{self.key!r}, {self.range_end!r})"
        return f"{self.target}({span}) op={self.op} {self.value!r}"

    def build_message(self) -> Any:
        if self.op is None:
            raise ValueError(f"{self!r}: no comparison operator given")
        msg = rpc.Compare(key=self.key, result=self.op, target=self._TARGETS[self.target])
        if self.range_end is not None:
            msg.range_end = self.range_end
        if self.target == "value":
            msg.value = _b(self.value)  # type: ignore[arg-type]
        else:
            setattr(msg, f"{self.target}_revision" if self.target != "version" else "version",
                    int(self.value))  # type: ignore[arg-type]
        return msg


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def build_message(self) -> Any:
        return rpc.RequestOp(request_put=rpc.PutRequest(key=self.key, value=self.value, lease=self.lease))


@dataclass(frozen=True)
class Delete:
    key: bytes
    range_end: bytes | None = None

    def build_message(self) -> Any:
        req = rpc.DeleteRangeRequest(key=self.key)
        if self.range_end is not None:
            req.range_end = self.range_end
        return rpc.RequestOp(request_delete_range=req)


@dataclass(frozen=True)
class Get:
    key: bytes
    range_end: bytes | None = None

    def build_message(self) -> Any:
        req = rpc.RangeRequest(key=self.key)
        if self.range_end is not None:
            req.range_end = self.range_end
        return rpc.RequestOp(request_range=req)


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


def _kv(kv: Any) -> KV | None:
    key = _decode_key(kv.key)
    if key is None:
        return None
    return KV(key, kv.value.decode(errors="replace"), kv.mod_revision, kv.create_revision, kv.lease)


def _kvs(raw: Any) -> list[KV]:
    return [kv for kv in map(_kv, raw) if kv is not None]


def _watch_event(ev: Any) -> WatchEvent | None:
    key = _decode_key(ev.kv.key)
    if key is None:
        return None
    if ev.type == rpc.Event.DELETE:
        return WatchEvent("delete", key, None, ev.kv.mod_revision)
    return WatchEvent("put", key, ev.kv.value.decode(errors="replace"), ev.kv.mod_revision,
                      ev.kv.create_revision)


class _Conn:
    """One gRPC channel to one endpoint (TLS when its scheme asks) and the etcd service stubs on it.

    Only aetcd's generated stubs are used (they are the etcd API): aetcd's own
    client dials insecure only and keeps private state this must not depend on.
    """

    metadata = None  # no etcd user authentication: calls carry no token

    def __init__(self, endpoint: etcdconf.Endpoint, creds: grpc.ChannelCredentials | None, timeout: float):
        self.endpoint = endpoint
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        opts = list(_CHANNEL_OPTIONS.items())
        if creds is not None:
            self.channel = grpc.aio.secure_channel(endpoint.target, creds, options=opts)
        else:
            self.channel = grpc.aio.insecure_channel(endpoint.target, options=opts)
        self.kvstub = rpc.KVStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.watchstub = rpc.WatchStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


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
        self._idx = 0
        self._gen = 0
        self._conn: _Conn | None = None
        self._closing: set[asyncio.Task] = set()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, timeout: float = 5.0) -> DatastoreClient:
        """Build from ETCD_* variables; raises ConfigError naming the bad variable."""
        return cls(config=etcdconf.from_env(env), timeout=timeout)

    @property
    def endpoints(self) -> list[str]:
        return [str(e) for e in self.config.endpoints]

    # ---- connection management ------------------------------------------

    def _credentials(self, ep: etcdconf.Endpoint) -> grpc.ChannelCredentials | None:
        if not ep.tls:
            return None

        def read(path: str | None, what: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:  # the path is fine to log, the contents never are
                raise ConfigError(f"{what}: cannot read {path!r}: {e.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.config.ca, "ETCD_CA_CERT_FILE"),
            private_key=read(self.config.key, "ETCD_KEY_FILE"),
            certificate_chain=read(self.config.cert, "ETCD_CERT_FILE"))

    async def _connection(self) -> tuple[_Conn, int]:
        loop = asyncio.get_running_loop()
        if self._conn is not None and self._conn.loop is not loop:
            # A channel belongs to the loop that made it (run_sync makes a loop per call).
            self._conn = None
        if self._conn is None:
            ep = self.config.endpoints[self._idx]
            self._conn = _Conn(ep, self._credentials(ep), self.timeout)
        return self._conn, self._gen

    def _failover(self, gen: int) -> None:
        """Drop the channel that failed and move to the next endpoint (once per failure)."""
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
        the channel: it may just be a slow answer, and dropping the channel would also
        break every healthy watch stream on it."""
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
        """Run one RPC with a deadline; retry (reads, idempotent writes) across endpoints."""
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
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (e.details() or ""):
                    raise CompactedError(f"{what}: {e.details()}") from None
                if code in _RETRYABLE or (code == grpc.StatusCode.CANCELLED and gen != self._gen):
                    last = f"{conn.endpoint}: {code.name}: {e.details()}"
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        self._slow(gen)
                    else:
                        self._failover(gen)
                else:
                    raise DatastoreError(f"{what}: {code.name}: {e.details()}") from None
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise DatastoreUnavailable(f"{what}: etcd unavailable ({last}){self._hint()}")

    # ---- reads ------------------------------------------------------------

    async def _range(self, what: str, key: str, prefix: bool, revision: int = 0,
                     keys_only: bool = False) -> Any:
        kb = key.encode()
        req = rpc.RangeRequest(key=kb, revision=revision, keys_only=keys_only)
        if prefix:
            req.range_end = prefix_range_end(kb)

        async def fn(c: _Conn) -> Any:
            return await c.kvstub.Range(req, timeout=self.timeout, metadata=c.metadata)
        return await self._call(what, fn)

    async def get_kv(self, key: str) -> KV | None:
        resp = await self._range(f"get {key}", key, False)
        return _kv(resp.kvs[0]) if resp.kvs else None  # None too when the key is not UTF-8

    async def get(self, key: str) -> str | None:
        kv = await self.get_kv(key)
        return kv.value if kv else None

    async def get_prefix(self, prefix: str, revision: int = 0) -> tuple[int, list[KV]]:
        """All keys under prefix (sorted by key) and the store revision they were read at.

        With ``revision`` the read is of that past revision (CompactedError if gone),
        which lets a syncer read several prefixes as one consistent snapshot.
        """
        resp = await self._range(f"get prefix {prefix}", prefix, True, revision)
        kvs = sorted(_kvs(resp.kvs), key=lambda kv: kv.key)
        return (revision or resp.header.revision), kvs

    async def current_revision(self) -> int:
        resp = await self._range("get revision", "/", False, keys_only=True)
        return resp.header.revision

    # ---- writes -----------------------------------------------------------

    async def put(self, key: str, val: str, lease: Lease | int | None = None) -> int:
        """Write key=value; returns the new store revision (repeating a put is harmless)."""
        if not isinstance(val, str):
            raise TypeError(f"put {key}: value must be str, not {type(val).__name__}")
        lease_id = lease.id if isinstance(lease, Lease) else (lease or 0)
        req = rpc.PutRequest(key=key.encode(), value=val.encode(), lease=lease_id)

        async def fn(c: _Conn) -> Any:
            return await c.kvstub.Put(req, timeout=self.timeout, metadata=c.metadata)
        return (await self._call(f"put {key}", fn)).header.revision

    async def delete(self, key: str) -> bool:
        req = rpc.DeleteRangeRequest(key=key.encode())

        async def fn(c: _Conn) -> Any:
            return await c.kvstub.DeleteRange(req, timeout=self.timeout, metadata=c.metadata)
        return (await self._call(f"delete {key}", fn)).deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        kb = prefix.encode()
        req = rpc.DeleteRangeRequest(key=kb, range_end=prefix_range_end(kb))

        async def fn(c: _Conn) -> Any:
            return await c.kvstub.DeleteRange(req, timeout=self.timeout, metadata=c.metadata)
        return (await self._call(f"delete prefix {prefix}", fn)).deleted

    async def txn(self, compare: list, success: list | None = None, failure: list | None = None,
                  what: str = "txn") -> tuple[bool, list]:
        """One etcd transaction (builders: mod/create/value/version, op_put/op_delete/op_get).

        Never retried: a repeat after a lost reply could report a conflict for a
        change that did apply.  Returns (succeeded, responses) where a get
        response is a list[KV], a delete the number deleted, a put None.
        """
        req = rpc.TxnRequest(compare=[c.build_message() for c in compare],
                             success=[op.build_message() for op in success or []],
                             failure=[op.build_message() for op in failure or []])

        async def fn(c: _Conn) -> Any:
            return await c.kvstub.Txn(req, timeout=self.timeout, metadata=c.metadata)
        resp = await self._call(what, fn, retry=False)
        out: list = []
        for r in resp.responses:
            kind = r.WhichOneof("response")
            if kind == "response_range":
                out.append(_kvs(r.response_range.kvs))
            elif kind == "response_delete_range":
                out.append(r.response_delete_range.deleted)
            else:
                out.append(None)
        return resp.succeeded, out

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
        req = rpc.CompactionRequest(revision=revision, physical=physical)

        async def fn(c: _Conn) -> Any:
            return await c.kvstub.Compact(req, timeout=self.timeout, metadata=c.metadata)
        await self._call(f"compact {revision}", fn)

    # ---- leases -----------------------------------------------------------

    async def lease(self, ttl: int) -> Lease:
        req = rpc.LeaseGrantRequest(TTL=int(ttl))

        async def fn(c: _Conn) -> Any:
            return await c.leasestub.LeaseGrant(req, timeout=self.timeout, metadata=c.metadata)
        resp = await self._call(f"lease {ttl}s", fn, retry=False)
        if resp.error:
            raise DatastoreError(f"lease {ttl}s: {resp.error}")
        return Lease(self, resp.ID, resp.TTL)

    async def refresh_lease(self, lease_id: int) -> int:
        async def fn(c: _Conn) -> int:
            call = c.leasestub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                              timeout=self.timeout, metadata=c.metadata)
            try:
                async for resp in call:
                    return resp.TTL
                return 0
            finally:
                call.cancel()
        return await self._call(f"refresh lease {lease_id:x}", fn)

    async def revoke_lease(self, lease_id: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease_id)

        async def fn(c: _Conn) -> Any:
            return await c.leasestub.LeaseRevoke(req, timeout=self.timeout, metadata=c.metadata)
        try:
            await self._call(f"revoke lease {lease_id:x}", fn)
        except DatastoreError as e:
            if "not found" not in str(e):
                raise

    # ---- watch ------------------------------------------------------------

    async def watch_batches(self, prefix: str, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]:
        """Events under prefix from start_revision on, one list per etcd response (a revision's changes together).

        Raises CompactedError when start_revision is gone, DatastoreUnavailable
        when the stream breaks; it never resumes by itself, so the caller
        decides between re-watching and resnapshotting.
        """
        conn, gen = await self._connection()
        kb = prefix.encode()
        create_req = rpc.WatchCreateRequest(key=kb, range_end=prefix_range_end(kb),
                                            start_revision=start_revision, progress_notify=True)
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create_req)
            await done.wait()

        call = conn.watchstub.Watch(requests(), metadata=conn.metadata)
        what = f"watch {prefix} from {start_revision}"
        try:
            it = call.__aiter__()
            try:
                first = await asyncio.wait_for(it.__anext__(), self.timeout)
            except TimeoutError:
                self._slow(gen)
                raise DatastoreUnavailable(f"{what}: no answer within {self.timeout:g}s "
                                           f"from {conn.endpoint}{self._hint()}") from None
            resp = first
            while True:
                if resp.compact_revision:
                    raise CompactedError(f"{what}: revision compacted (oldest is {resp.compact_revision})",
                                         resp.compact_revision)
                if resp.canceled:
                    raise DatastoreUnavailable(f"{what}: watch canceled by etcd: {resp.cancel_reason}")
                events = [_watch_event(ev) for ev in resp.events]
                events = [ev for ev in events if ev is not None]
                if events:
                    yield events
                resp = await it.__anext__()
        except StopAsyncIteration:
            raise DatastoreUnavailable(f"{what}: stream closed by {conn.endpoint}") from None
        except grpc.aio.AioRpcError as e:
            self._failover(gen)
            raise DatastoreUnavailable(f"{what}: {conn.endpoint}: {e.code().name}: {e.details()}"
                                       f"{self._hint()}") from None
        finally:
            done.set()
            call.cancel()

    async def watch_prefix(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        async for batch in self.watch_batches(prefix, start_revision):
            for ev in batch:
                yield ev

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.loop is asyncio.get_running_loop():
            await self._close_conn(conn)
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
