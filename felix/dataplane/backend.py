"""Choose ONE iptables backend (legacy or nft) per node, the way Calico's `auto` does.

Rules written through one backend are invisible to the other, so mixing them
would leave traffic filtered by rules Felix cannot see. `auto` picks whichever
backend already holds rules (kube-proxy, docker, an earlier Felix), else nft.
"""

from __future__ import annotations

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
    counts = {}
    for m in ("legacy", "nft"):
        b = Backend(m)
        total = 0
        for fam in (4, 6):
            try:
                r = await runner.run([b.save_cmd(fam)])
            except FileNotFoundError:
                continue
            if r.ok:
                total += count_rules(r.stdout)
        counts[m] = total
    chosen = "legacy" if counts["legacy"] > counts["nft"] else "nft"
    log.info("iptables backend auto-detected: %s (rules: legacy=%d nft=%d)", chosen, counts["legacy"], counts["nft"])
    return Backend(chosen)
