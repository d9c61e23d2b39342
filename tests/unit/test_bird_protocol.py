"""bird_control.protocol against transcripts captured from BIRD 1.6.8 (real BIRD: tests/integration)."""

from __future__ import annotations

import asyncio
import os

import pytest

from bird_control.protocol import (
    BirdClient,
    BirdConfigError,
    BirdError,
    BirdUnavailable,
    ReplyLine,
    parse_line,
    parse_protocols,
)

# Verbatim from BIRD 1.6.8 (`show protocols all` with a device and an idle BGP protocol).
SHOW_PROTOCOLS_ALL = (
    "2002-name     proto    table    state  since       info\n"
    "1002-device1  Device   master   up     20:30:39    \n"
    "1006-  Preference:     240\n"
    "   Input filter:   ACCEPT\n"
    "   Output filter:  REJECT\n"
    "   Routes:         0 imported, 0 exported, 0 preferred\n"
    " \n"
    "1002-Mesh_10_99_0_2 BGP      master   up     20:30:43    Established   \n"
    "1006-  Description:    Connection to BGP peer\n"
    "   Preference:     100\n"
    "   BGP state:          Established\n"
    "     Neighbor address: 10.99.0.2\n"
    "     Neighbor AS:      64511\n"
    "     Neighbor ID:      10.99.0.2\n"
    " \n"
    "1002-Global_10_99_0_77 BGP      master   start  2026-11-20  Connect       Socket: Connection refused\n"
    "1006-  BGP state:          Connect\n"
    "     Neighbor address: 10.99.0.77\n"
    "     Neighbor AS:      64777\n"
    " \n"
    "0000 \n"
)
SHOW_STATUS = (
    "1000-BIRD 1.6.8\n1011-Router ID is 10.0.0.1\n Current server time is 2026-11-22 20:30:40\n"
    " Last reboot on 2026-11-22 20:30:39\n Last reconfiguration on 2026-11-22 20:30:39\n"
    "0013 Daemon is up and running\n"
)


def _lines(text: str) -> list[ReplyLine]:
    out, prev = [], None
    for raw in text.splitlines():
        line, _ = parse_line(raw, prev)
        out.append(line)
        prev = line.code
    return out


def test_parse_line_codes_and_continuations():
    assert parse_line("0001 BIRD 1.6.8 ready.", None) == (ReplyLine(1, "BIRD 1.6.8 ready."), True)
    assert parse_line("1002-device1 Device", None) == (ReplyLine(1002, "device1 Device"), False)
    assert parse_line("   Input filter: ACCEPT", 1006) == (ReplyLine(1006, "  Input filter: ACCEPT"), False)
    with pytest.raises(BirdError):
        parse_line("garbage", None)
    with pytest.raises(BirdError):
        parse_line(" continuation without a code", None)


def test_parse_protocols_all():
    protos = parse_protocols(_lines(SHOW_PROTOCOLS_ALL))
    assert [p.name for p in protos] == ["device1", "Mesh_10_99_0_2", "Global_10_99_0_77"]
    dev, mesh, glob = protos
    assert (dev.proto, dev.table, dev.state, dev.since, dev.info) == ("Device", "master", "up", "20:30:39", "")
    assert mesh.established and mesh.bgp_state == "Established"
    assert (mesh.neighbor_address, mesh.neighbor_as) == ("10.99.0.2", 64511)
    assert not glob.established
    assert glob.info == "Connect       Socket: Connection refused"
    assert (glob.neighbor_address, glob.neighbor_as, glob.since) == ("10.99.0.77", 64777, "2026-11-20")


class FakeBird:
    """A unix socket speaking BIRD's reply protocol from a fixed table (unit tests only)."""

    def __init__(self, path: str, replies: dict[str, str]):
        self.path, self.replies, self.received = path, replies, []

    async def start(self) -> FakeBird:
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"0001 BIRD 1.6.8 ready.\n")
        while line := await r.readline():
            cmd = line.decode().strip()
            self.received.append(cmd)
            reply = self.replies.get(cmd)
            if reply is None:
                w.close()
                return
            w.write(reply.encode())
            await w.drain()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_client_commands(tmp_path):
    bird = await FakeBird(str(tmp_path / "b.ctl"), {
        "show status": SHOW_STATUS,
        "show protocols all": SHOW_PROTOCOLS_ALL,
        "configure": "0002-Reading configuration from /x/bird.cfg\n0003 Reconfigured\n",
        'configure check "/x/bad.cfg"': "0002-Reading configuration from /x/bad.cfg\n8002 /x/bad.cfg:3:5 syntax error\n",
        "show nonsense": "9001 syntax error\n",
    }).start()
    try:
        async with BirdClient(bird.path, timeout=2) as c:
            assert c.greeting == "BIRD 1.6.8 ready."
            st = await c.show_status()
            assert st.up and st.router_id == "10.0.0.1" and st.version == "BIRD 1.6.8"
            assert st.last_reconfiguration == "2026-11-22 20:30:39"
            assert len(await c.show_protocols(all=True)) == 3
            res = await c.configure()
            assert res.ok and res.code == 3
            with pytest.raises(BirdConfigError) as ei:
                await c.configure_check("/x/bad.cfg")
            assert ei.value.code == 8002 and "syntax error" in ei.value.text
            with pytest.raises(BirdError) as ei:
                await c.command("show nonsense")
            assert ei.value.code == 9001
            with pytest.raises(BirdUnavailable):
                await c.command("unknown to the fake")  # the fake hangs up: mid-reply close
    finally:
        await bird.close()


async def test_configure_rejects_unexpected_success_code(tmp_path):
    bird = await FakeBird(str(tmp_path / "b.ctl"), {"configure": "0006 Reconfiguration ignored, shutting down\n"}
                          ).start()
    try:
        async with BirdClient(bird.path, timeout=2) as c:
            with pytest.raises(BirdConfigError) as ei:
                await c.configure()
            assert ei.value.code == 6
    finally:
        await bird.close()


async def test_missing_socket_is_unavailable(tmp_path):
    with pytest.raises(BirdUnavailable, match="cannot connect"):
        await BirdClient(os.path.join(tmp_path, "none.ctl"), timeout=1).connect()


async def test_command_must_be_one_line(tmp_path):
    with pytest.raises(ValueError):
        await BirdClient(str(tmp_path / "x"), timeout=1).command("show status\nconfigure")
