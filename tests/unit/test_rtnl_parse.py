"""felix.dataplane.rtnl's encoder and dump parsers on hand-built netlink bytes (the real-kernel
comparison with pyroute2 is tests/integration/test_dataplane_routes.py::test_raw_dumps_match_pyroute2)."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from felix.dataplane import rtnl


def _msg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 7, 0) + body + b"\0" * (-len(body) % 4)


def test_encoded_route_parses_back():
    op = rtnl.RouteOp("replace", "10.65.1.0/26", 12, 80, 0, 1000, gateway="192.168.1.9", onlink=True)
    raw = bytearray(rtnl.encode(op, 5))
    struct.pack_into("=H", raw, 4, rtnl.RTM_NEWROUTE)  # as a dump would deliver it
    got = rtnl.parse_routes(bytes(raw) + _msg(rtnl.NLMSG_DONE, b"\0" * 4))
    assert got == [{"family": socket.AF_INET, "dst": "10.65.1.0", "dst_len": 26, "proto": 80, "scope": 0,
                    "table": 1000, "oif": 12, "gateway": "192.168.1.9"}, None]


def test_neighbour_and_unknown_messages():
    nd = struct.pack("=BBHiHBB", socket.AF_INET6, 0, 0, 3, 0x80, 0, 0)
    nd += rtnl._rta(rtnl.NDA_DST, socket.inet_pton(socket.AF_INET6, "fd00::5"))
    nd += rtnl._rta(rtnl.NDA_LLADDR, bytes.fromhex("0200000000ab"))
    data = _msg(99, b"\0" * 12) + _msg(rtnl.RTM_NEWNEIGH, nd)
    assert rtnl.parse_neighbours(data) == [
        {"family": socket.AF_INET6, "ifindex": 3, "state": 0x80, "dst": "fd00::5", "lladdr": "02:00:00:00:00:ab"}]


def test_dump_error_raises_with_its_errno():
    with pytest.raises(OSError) as info:
        rtnl.parse_routes(_msg(rtnl.NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + b"\0" * 16))
    assert info.value.errno == errno.EPERM and "route dump" in str(info.value)
