"""Bulk route replace/delete and the route/neighbour dumps over a raw rtnetlink socket.

Why not pyroute2 for these paths: pyroute2 spends ~0.3-0.5 ms of Python per
route message encoding it, so 1,000 endpoints cost ~10x `ip -batch`; and
importing it costs ~80 ms of CPU, which on Felix's cold start would sit
between the datastore snapshot and the first route.  Route and neighbour
messages are tiny fixed structs; packing and parsing them here keeps the
whole first apply free of pyroute2.  pyroute2 still does neighbour and fdb
writes, the fdb dump and link events, off the start-up critical path (why
both stacks remain: see routes.py).

The socket is opened inside the target namespace by an NsThread and used only
from that thread.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NLM_F_DUMP = 0x300
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
CHUNK = 256  # messages per sendmsg: keeps acks well inside the receive buffer


@dataclass(frozen=True)
class RouteOp:
    """One route message: `replace` or `delete` dst (CIDR) on ifindex `oif`."""

    op: str  # "replace" | "delete"
    dst: str
    oif: int
    proto: int
    scope: int
    table: int = 254
    gateway: str | None = None
    onlink: bool = False


def _rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def encode(op: RouteOp, seq: int) -> bytes:
    """nlmsghdr + rtmsg + attributes for one RouteOp."""
    net = ipaddress.ip_network(op.dst, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    flags = RTNH_F_ONLINK if op.onlink else 0
    body = struct.pack("=BBBBBBBBI", family, net.prefixlen, 0, 0, op.table if op.table < 256 else 252,
                       op.proto, op.scope, RTN_UNICAST, flags)
    body += _rta(RTA_TABLE, struct.pack("=I", op.table))
    if net.prefixlen:
        body += _rta(RTA_DST, net.network_address.packed)
    body += _rta(RTA_OIF, struct.pack("=i", op.oif))
    if op.gateway:
        body += _rta(RTA_GATEWAY, ipaddress.ip_address(op.gateway).packed)
    if op.op == "replace":
        kind, nlflags = RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    elif op.op == "delete":
        kind, nlflags = RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK
    else:
        raise ValueError(f"unknown route op {op.op!r}")
    return struct.pack("=IHHII", 16 + len(body), kind, nlflags, seq, 0) + body


def parse_acks(data: bytes) -> list[tuple[int, int]]:
    """(seq, errno) for every NLMSG_ERROR (ack) message in a datagram; errno 0 = success."""
    out = []
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if kind == NLMSG_ERROR and length >= 20:
            (err,) = struct.unpack_from("=i", data, off + 16)
            out.append((seq, -err))
        off += (length + 3) & ~3
    return out


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """rtattr type -> payload for the attributes in data[off:end] (first one wins)."""
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out.setdefault(kind & 0x3FFF, data[off + 4:off + length])
        off += (length + 3) & ~3
    return out


def _addr(family: int, raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return socket.inet_ntop(family, raw)


def _parse_dump(data: bytes, kind_wanted: int, what: str, decode) -> list:
    """decode(data, off, end) for each `kind_wanted` message of one dump datagram; NLMSG_DONE
    ends the list with a None entry; an NLMSG_ERROR raises OSError."""
    out: list = []
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if kind == NLMSG_DONE:
            out.append(None)
        elif kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, off + 16)
            raise OSError(-err, f"{what} dump: {os.strerror(-err)}")
        elif kind == kind_wanted and length >= 28:
            out.append(decode(data, off, off + length))
        off += (length + 3) & ~3
    return out


def _route(data: bytes, off: int, end: int) -> dict:
    fam, dst_len, _src_len, _tos, table, proto, scope, _rtype, _flags = struct.unpack_from(
        "=BBBBBBBBI", data, off + 16)
    a = _attrs(data, off + 28, end)
    if RTA_TABLE in a:
        (table,) = struct.unpack("=I", a[RTA_TABLE][:4])
    oif = struct.unpack("=i", a[RTA_OIF][:4])[0] if RTA_OIF in a else None
    return {"family": fam, "dst": _addr(fam, a.get(RTA_DST)), "dst_len": dst_len, "proto": proto,
            "scope": scope, "table": table, "oif": oif, "gateway": _addr(fam, a.get(RTA_GATEWAY))}


def _neighbour(data: bytes, off: int, end: int) -> dict:
    fam, _p1, _p2, ifindex, state, _flags, _ntype = struct.unpack_from("=BBHiHBB", data, off + 16)
    a = _attrs(data, off + 28, end)
    ll, dst = a.get(NDA_LLADDR), a.get(NDA_DST)
    ip = _addr(fam, dst) if dst is not None and fam in (socket.AF_INET, socket.AF_INET6) else None
    return {"family": fam, "ifindex": ifindex, "state": state, "dst": ip,
            "lladdr": ":".join(f"{b:02x}" for b in ll) if ll else None}


def parse_routes(data: bytes) -> list:
    """RTM_NEWROUTE messages of one dump datagram as dicts (family, dst, dst_len, proto, scope,
    table, oif, gateway); NLMSG_DONE ends the list with a None entry."""
    return _parse_dump(data, RTM_NEWROUTE, "route", _route)


def parse_neighbours(data: bytes) -> list:
    """RTM_NEWNEIGH messages of one dump datagram as dicts (family, ifindex, state, dst, lladdr);
    NLMSG_DONE ends the list with a None entry."""
    return _parse_dump(data, RTM_NEWNEIGH, "neighbour", _neighbour)


class RouteSocket:
    """A raw NETLINK_ROUTE socket; create and use it from one NsThread (its namespace is fixed at open)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        try:  # acks without the echoed request: smaller, never truncated
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        self.sock.bind((0, 0))
        self.sock.settimeout(10)
        self._seq = 0

    def run(self, ops: list[RouteOp]) -> list[int]:
        """Send every op, return errno per op (0 = done). Errors do not stop later ops."""
        result = [errno.ETIMEDOUT] * len(ops)
        for start in range(0, len(ops), CHUNK):
            chunk = ops[start:start + CHUNK]
            by_seq = {}
            payload = bytearray()
            for i, op in enumerate(chunk, start):
                self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
                by_seq[self._seq] = i
                payload += encode(op, self._seq)
            self.sock.send(bytes(payload))
            while by_seq:
                for seq, err in parse_acks(self.sock.recv(1 << 20)):
                    i = by_seq.pop(seq, None)
                    if i is not None:
                        result[i] = err
        return result

    def _dump(self, kind: int, body: bytes, parse) -> list[dict]:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        seq = self._seq
        self.sock.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[dict] = []
        while True:
            data = self.sock.recv(1 << 20)
            for item in parse(data):
                if item is None:
                    return out
                out.append(item)

    def dump_routes(self, family: int = socket.AF_UNSPEC) -> list[dict]:
        """Every route of every table (see parse_routes for the fields)."""
        return self._dump(RTM_GETROUTE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0), parse_routes)

    def dump_neighbours(self, family: int = socket.AF_UNSPEC) -> list[dict]:
        """Every neighbour entry (see parse_neighbours for the fields)."""
        return self._dump(RTM_GETNEIGH, struct.pack("=BBHiHBB", family, 0, 0, 0, 0, 0, 0), parse_neighbours)

    def close(self) -> None:
        self.sock.close()
