"""BIRD 1.6 control-socket replies: their parsing, and a blocking one-shot query.

Split from the asyncio client (bird_control.protocol) so that a long-lived
process that only needs a few queries a minute (the calico-bird shim) does not
load asyncio for them.  Reply protocol: lines `DDDD-text` (more follows) or
`DDDD text` (last line of the reply); a line starting with a space continues
the previous code.  `0001` is the greeting; codes 8xxx/9xxx are errors.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

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




def query_sync(path: str, cmd: str, timeout: float = 5.0) -> list[ReplyLine]:
    """Connect, run one command, disconnect, blocking; errors as the asyncio client raises them."""
    if "\n" in cmd:
        raise ValueError("a BIRD command is a single line")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            f = s.makefile("rb")
            greeting = _read_reply_sync(f, path)
            if greeting[-1].code != 1:
                raise BirdError(greeting[-1].code, f"unexpected greeting {greeting[-1].text!r}")
            s.sendall(cmd.encode() + b"\n")
            lines = _read_reply_sync(f, path)
    except OSError as e:  # socket.timeout is an OSError
        raise BirdUnavailable(f"BIRD at {path} did not answer {cmd!r}: {e}") from e
    _raise_for_error(lines)
    return lines


class ReplyCollector:
    """The lines of one reply as they arrive; shared by the blocking and the asyncio reader."""

    def __init__(self) -> None:
        self.lines: list[ReplyLine] = []
        self._prev: int | None = None

    def feed(self, raw: bytes) -> bool:
        """Take one raw line; True when it was the reply's last."""
        line, last = parse_line(raw.decode("utf-8", "replace").rstrip("\n"), self._prev)
        self.lines.append(line)
        self._prev = line.code
        return last


def _read_reply_sync(f, path: str) -> list[ReplyLine]:
    reply = ReplyCollector()
    while True:
        raw = f.readline()
        if not raw:
            raise BirdUnavailable(f"BIRD at {path} closed the connection mid-reply")
        if reply.feed(raw):
            return reply.lines
