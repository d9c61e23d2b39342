"""Choose ONE iptables backend (legacy or nft) per node, the way Calico's `auto` does.

Rules written through one backend are invisible to the other, so mixing them
would leave traffic filtered by rules Felix cannot see. `auto` picks whichever
backend already holds rules (kube-proxy, docker, an earlier Felix), else nft.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODES = ("auto", "legacy", "nft")


@dataclass(frozen=True)
class Backend:
    """Command names for one backend; `family` is 4 or 6."""

    mode: str  # "legacy" | "nft"

    def _tool(self, family: int, what: str) -> str:
        base = "iptables" if family == 4 else "ip6tables"
        return f"{base}-{self.mode}-{what}"

    def restore_cmd(self, family: int) -> str:
        return self._tool(family, "restore")

    def save_cmd(self, family: int) -> str:
        return self._tool(family, "save")


def count_rules(save_output: str) -> int:
    """Rules (`-A` lines) in iptables-save output: chains alone do not count, tables may be pre-created."""
    return sum(1 for line in save_output.splitlines() if line.startswith("-A "))


async def detect(mode: str, runner) -> Backend:
    """`legacy`/`nft` as given; `auto`: the backend with more rules (v4+v6), nft on a tie/empty host.

    `runner` is a cmd.CmdRunner for the namespace being programmed.
    """
    if mode not in MODES:
        raise ValueError(f"IptablesBackend: {mode!r} is not one of {'|'.join(MODES)}")
    if mode != "auto":
        return Backend(mode)
    async def rules(m: str, fam: int) -> int:
        try:
            r = await runner.run([Backend(m).save_cmd(fam)])
        except FileNotFoundError:
            return 0
        return count_rules(r.stdout) if r.ok else 0

    # The four saves are independent: run them at once (start-up latency, not throughput).
    modes = [(m, fam) for m in ("legacy", "nft") for fam in (4, 6)]
    found = await asyncio.gather(*(rules(m, fam) for m, fam in modes))
    counts = {"legacy": 0, "nft": 0}
    for (m, _fam), n in zip(modes, found, strict=True):
        counts[m] += n
    chosen = "legacy" if counts["legacy"] > counts["nft"] else "nft"
    log.info("iptables backend auto-detected: %s (rules: legacy=%d nft=%d)", chosen, counts["legacy"], counts["nft"])
    return Backend(chosen)
