"""One log record, one line: control characters from the datastore never reach a log as-is.

Keys, values, interface names and peer addresses come from etcd or the kernel
and are logged verbatim in many places.  A newline in one of them would let
whoever can write to etcd forge whole log lines (a fake "Programmed ..." or a
fake error), and a carriage return, an ANSI escape or a bidi override would
let them hide or reorder text on a terminal.  Escaping at every call site
would be forgotten at the next one, so every program installs this formatter
on its handlers instead: the formatted message and the exception's own text
are escaped, whatever was passed as arguments.  Tracebacks keep their
structure (their frames are our code, not input).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback

# C0, DEL, C1 (NEL U+0085 included), the Unicode line/paragraph separators and
# the bidi marks/overrides/isolates that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape(text: str) -> str:
    """`text` with every unsafe character written as a visible escape (`\\n`, `\\x1b`, `\\u2028`)."""
    return _UNSAFE.sub(_one, text)


def _escape_tb(te: traceback.TracebackException, seen: set[int]) -> None:
    """Escape the exception strings (not the frames) of a whole cause/context/group chain."""
    if id(te) in seen:
        return
    seen.add(id(te))
    if isinstance(getattr(te, "_str", None), str):
        te._str = escape(te._str)
    notes = getattr(te, "__notes__", None)
    if isinstance(notes, list):
        te.__notes__ = [escape(str(n)) for n in notes]
    for nxt in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if nxt is not None:
            _escape_tb(nxt, seen)


class SafeFormatter(logging.Formatter):
    """A `logging.Formatter` whose message part can never span lines or carry terminal controls."""

    def format(self, record: logging.LogRecord) -> str:
        # Formatter.format caches the exception text on the record; a cache
        # filled by another (unescaping) formatter must not be reused.
        cached = record.exc_text
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's API)
        return escape(super().formatMessage(record))

    def formatException(self, ei) -> str:  # noqa: N802 (logging's API)
        _, value, tb = ei
        if value is None:
            return super().formatException(ei)
        te = traceback.TracebackException(type(value), value, tb, compact=True)
        _escape_tb(te, set())
        text = "".join(te.format())
        return text[:-1] if text.endswith("\n") else text


def safe_formatter(old: logging.Formatter | None) -> SafeFormatter:
    """A SafeFormatter with the same format, date format and style as `old`."""
    if old is None:
        return SafeFormatter()
    if isinstance(old, SafeFormatter):
        return old
    style = next((k for k, v in logging._STYLES.items() if isinstance(old._style, v[0])), "%")
    f = SafeFormatter(old._fmt, old.datefmt, style=style)
    f.default_msec_format = old.default_msec_format
    f.default_time_format = old.default_time_format
    f.converter = old.converter
    return f


def install(logger: logging.Logger | None = None) -> None:
    """Put a SafeFormatter (same layout) on every handler of `logger` (the root logger by default).

    Call it right after `logging.basicConfig`, so each program keeps its own
    layout and only gains the escaping.
    """
    logger = logging.getLogger() if logger is None else logger
    for h in logger.handlers:
        h.setFormatter(safe_formatter(h.formatter))


def basic_config(**kwargs) -> None:
    """`logging.basicConfig(**kwargs)`, then `install()`: the one call a program's setup makes."""
    logging.basicConfig(**kwargs)
    install()


def stderr_warnings(logger: logging.Logger | None = None) -> None:
    """For a CLI that never configured logging: what `logging.lastResort` would print, escaped."""
    logger = logging.getLogger() if logger is None else logger
    if logger.handlers:
        return
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(logging.WARNING)
    h.setFormatter(SafeFormatter("%(message)s"))
    logger.addHandler(h)
