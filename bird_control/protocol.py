"""An asyncio client for BIRD 1.6's control socket.

`birdc` exits 0 even when BIRD rejects a configuration, so nothing in the node
may rely on it: confd, the shim and the CLI talk to the socket through this
module and judge every reply by its numeric code.

Reply protocol: lines `DDDD-text` (more follows) or `DDDD text` (last line of
the reply); a line starting with a space continues the previous code.
`0001` is the greeting; codes 8xxx/9xxx are errors.
"""

from __future__ import annotations

import asyncio

from bird_control.reply import (
    CONFIGURE_APPLIED,
    BirdConfigError,
    BirdError,
    BirdProtocol,
    BirdStatus,
    BirdUnavailable,
    ConfigureResult,
    ReplyCollector,
    ReplyLine,
    _raise_for_error,
    parse_line,
    parse_protocols,
)

__all__ = [
    "BirdError", "BirdConfigError", "BirdUnavailable", "ReplyLine", "BirdStatus", "BirdProtocol",
    "ConfigureResult", "BirdClient", "query", "parse_line", "parse_protocols", "CONFIGURE_APPLIED",
]


class BirdClient:
    """One connection to a control socket; commands are serialized on it."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.greeting: str | None = None

    async def connect(self) -> BirdClient:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path, limit=1 << 24), self.timeout)
            lines = await self._read_reply()
        except (TimeoutError, OSError) as e:
            await self.close()
            raise BirdUnavailable(f"cannot connect to BIRD at {self.path}: {e}") from e
        if lines[-1].code != 1:
            raise BirdError(lines[-1].code, f"unexpected greeting {lines[-1].text!r}")
        self.greeting = lines[-1].text
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None

    async def __aenter__(self) -> BirdClient:
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _read_reply(self) -> list[ReplyLine]:
        assert self._reader is not None
        reply = ReplyCollector()
        while True:
            raw = await asyncio.wait_for(self._reader.readline(), self.timeout)
            if not raw:
                raise BirdUnavailable(f"BIRD at {self.path} closed the connection mid-reply")
            if reply.feed(raw):
                return reply.lines

    async def command(self, cmd: str) -> list[ReplyLine]:
        """Send one command and return every line of its reply (errors raise BirdError)."""
        if "\n" in cmd:
            raise ValueError("a BIRD command is a single line")
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        async with self._lock:
            try:
                self._writer.write(cmd.encode() + b"\n")
                await self._writer.drain()
                lines = await self._read_reply()
            except (TimeoutError, OSError) as e:
                await self.close()
                raise BirdUnavailable(f"BIRD at {self.path} did not answer {cmd!r}: {e}") from e
        _raise_for_error(lines)
        return lines

    async def show_status(self) -> BirdStatus:
        lines = await self.command("show status")
        version = router_id = server_time = reboot = reconf = None
        for ln in lines:
            t = ln.text.strip()
            if ln.code == 1000:
                version = t
            elif t.startswith("Router ID is "):
                router_id = t[len("Router ID is "):]
            elif t.startswith("Current server time is "):
                server_time = t[len("Current server time is "):]
            elif t.startswith("Last reboot on "):
                reboot = t[len("Last reboot on "):]
            elif t.startswith("Last reconfiguration on "):
                reconf = t[len("Last reconfiguration on "):]
        return BirdStatus(version or "", router_id, server_time, reboot, reconf, lines[-1].text)

    async def show_protocols(self, all: bool = False) -> list[BirdProtocol]:  # noqa: A002 - birdc's word
        lines = await self.command("show protocols all" if all else "show protocols")
        return parse_protocols(lines)

    async def configure(self, path: str | None = None) -> ConfigureResult:
        """Reload BIRD's config; raises BirdConfigError with BIRD's message when refused."""
        return await self._configure("configure", path)

    async def configure_check(self, path: str | None = None) -> ConfigureResult:
        """Parse a config in the running BIRD without applying it (`0020 Configuration OK`)."""
        return await self._configure("configure check", path)

    async def _configure(self, cmd: str, path: str | None) -> ConfigureResult:
        if path is not None:
            if '"' in path or "\n" in path:
                raise ValueError(f"unusable config path {path!r}")
            cmd = f'{cmd} "{path}"'
        try:
            lines = await self.command(cmd)
        except BirdError as e:
            raise BirdConfigError(e.code, e.text) from None
        last = lines[-1]
        expected = {20} if cmd.startswith("configure check") else set(CONFIGURE_APPLIED)
        if last.code not in expected:
            raise BirdConfigError(last.code, last.text)
        return ConfigureResult(last.code, last.text, lines)


async def query(path: str, cmd: str, timeout: float = 5.0) -> list[ReplyLine]:
    """Connect, run one command, disconnect: for checks and the CLI."""
    async with BirdClient(path, timeout) as c:
        return await c.command(cmd)
