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
import re
from dataclasses import dataclass, field

__all__ = [
    "BirdError", "BirdConfigError", "BirdUnavailable", "ReplyLine", "BirdStatus", "BirdProtocol",
    "ConfigureResult", "BirdClient", "query",
]

_CODE_RE = re.compile(r"([0-9]{4})([ -])(.*)\Z", re.S)
# 0003 Reconfigured; 0004 in progress (removed protocols still shutting down);
# 0005 queued behind a running reconfiguration; 0019 nothing to do. All mean
# BIRD accepted the new file.
CONFIGURE_APPLIED = {3: "reconfigured", 4: "in progress", 5: "queued", 19: "nothing to do"}


class BirdError(Exception):
    """BIRD answered with an error code (8xxx/9xxx), or something unexpected."""

    def __init__(self, code: int, text: str):
        super().__init__(f"BIRD error {code:04d}: {text}")
        self.code = code
        self.text = text


class BirdConfigError(BirdError):
    """`configure` was refused (syntax error, unreadable file): BIRD kept its old config."""


class BirdUnavailable(Exception):
    """The control socket could not be reached or closed mid-reply."""


@dataclass(frozen=True)
class ReplyLine:
    code: int
    text: str


@dataclass(frozen=True)
class BirdStatus:
    version: str
    router_id: str | None
    server_time: str | None
    last_reboot: str | None
    last_reconfiguration: str | None
    message: str

    @property
    def up(self) -> bool:
        return self.message.startswith("Daemon is up")


@dataclass(frozen=True)
class BirdProtocol:
    """One row of `show protocols`; the bgp_* fields come from `show protocols all`."""

    name: str
    proto: str
    table: str
    state: str
    since: str
    info: str
    details: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def bgp_state(self) -> str | None:
        return self.details.get("BGP state")

    @property
    def neighbor_address(self) -> str | None:
        return self.details.get("Neighbor address")

    @property
    def neighbor_as(self) -> int | None:
        v = self.details.get("Neighbor AS")
        return int(v) if v and v.isascii() and v.isdigit() else None

    @property
    def established(self) -> bool:
        return self.info.split()[:1] == ["Established"] or self.bgp_state == "Established"


@dataclass(frozen=True)
class ConfigureResult:
    code: int
    message: str
    lines: list[ReplyLine]

    @property
    def ok(self) -> bool:
        return self.code in CONFIGURE_APPLIED


def parse_line(line: str, prev_code: int | None) -> tuple[ReplyLine, bool]:
    """Parse one reply line into (line, is_last)."""
    m = _CODE_RE.match(line)
    if m:
        return ReplyLine(int(m.group(1)), m.group(3)), m.group(2) == " "
    if line.startswith(" ") and prev_code is not None:
        return ReplyLine(prev_code, line[1:]), False
    raise BirdError(0, f"unparseable reply line {line!r}")


def _raise_for_error(lines: list[ReplyLine], cls: type[BirdError] = BirdError) -> None:
    last = lines[-1]
    if last.code >= 8000:
        raise cls(last.code, last.text)


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
        lines: list[ReplyLine] = []
        prev: int | None = None
        while True:
            raw = await asyncio.wait_for(self._reader.readline(), self.timeout)
            if not raw:
                raise BirdUnavailable(f"BIRD at {self.path} closed the connection mid-reply")
            line, last = parse_line(raw.decode("utf-8", "replace").rstrip("\n"), prev)
            lines.append(line)
            prev = line.code
            if last:
                return lines

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


def parse_protocols(lines: list[ReplyLine]) -> list[BirdProtocol]:
    """Turn `show protocols [all]` reply lines into rows (1002 = row, 1006 = its details)."""
    out: list[BirdProtocol] = []
    row: list[str] | None = None
    details: dict[str, str] = {}

    def flush() -> None:
        if row is not None:
            name, proto, table, state, since, info = (row + [""] * 6)[:6]
            out.append(BirdProtocol(name, proto, table, state, since, info.strip(), dict(details)))

    for ln in lines:
        if ln.code == 1002:
            flush()
            row = ln.text.split(None, 5)
            # `since` may be "YYYY-MM-DD HH:MM:SS" with a custom timeformat.
            if len(row) == 6 and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", row[4]) \
                    and re.match(r"[0-9]{2}:[0-9]{2}", row[5]):
                t, _, rest = row[5].partition(" ")
                row = row[:4] + [f"{row[4]} {t}", rest]
            details = {}
        elif ln.code == 1006 and row is not None:
            key, sep, val = ln.text.strip().partition(":")
            if sep and val.strip():
                details.setdefault(key.strip(), val.strip())
    flush()
    return out


async def query(path: str, cmd: str, timeout: float = 5.0) -> list[ReplyLine]:
    """Connect, run one command, disconnect: for checks and the CLI."""
    async with BirdClient(path, timeout) as c:
        return await c.command(cmd)
