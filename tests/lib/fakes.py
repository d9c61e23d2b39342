"""Fakes for the seams production code exposes; they live with the tests, never in the package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from felix.dataplane.cmd import CmdResult


@dataclass
class ScriptedRunner:
    """Stands in for `felix.dataplane.cmd.CmdRunner`: records every call; `responder(argv, input)`
    returns (rc, stdout, stderr).

    Unit tests use it to check the exact restore text a writer produces, and to
    script failures a real kernel would only give under load or bad luck.
    """

    responder: Callable[[list[str], str | None], tuple[int, str, str]] = lambda argv, inp: (0, "", "")
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    netns: str | None = None

    async def run(self, argv: list[str], input: str | None = None, timeout: float | None = None) -> CmdResult:
        self.calls.append((list(argv), input))
        rc, out, err = self.responder(list(argv), input)
        return CmdResult(list(argv), rc, out, err)
