"""supervisord event listener: service output to the container's stdout, one prefixed line at a time.

Used when CALICO_DISABLE_FILE_LOGGING=true.  supervisord hands us raw chunks
(PROCESS_LOG events) that may split or join lines; we re-cut them into lines
and prefix each with its service, so `docker logs` stays readable.  Our stdout
is supervisord's event protocol channel; the relayed text goes to stderr,
which the service file points at /dev/stdout.
"""

from __future__ import annotations

import sys
from typing import TextIO

from supervisor import childutils


class Relay:
    """Re-cuts output chunks into whole lines per process."""

    def __init__(self, out: TextIO):
        self.out = out
        self.partial: dict[str, str] = {}

    def feed(self, name: str, data: str) -> None:
        text = self.partial.pop(name, "") + data
        *lines, rest = text.split("\n")
        for line in lines:
            self.out.write(f"{name} | {line}\n")
        if rest:
            if len(rest) > 65536:  # a runaway line without newline: flush it rather than grow forever
                self.out.write(f"{name} | {rest}\n")
            else:
                self.partial[name] = rest
        self.out.flush()


def parse_payload(payload: str) -> tuple[str, str]:
    """PROCESS_LOG payload -> (process name, data)."""
    header, _, data = payload.partition("\n")
    fields = dict(token.split(":", 1) for token in header.split() if ":" in token)
    return fields.get("processname", "?"), data


def main() -> int:
    relay = Relay(sys.stderr)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers.get("eventname", "").startswith("PROCESS_LOG"):
            name, data = parse_payload(payload)
            relay.feed(name, data)
        childutils.listener.ok(sys.stdout)
