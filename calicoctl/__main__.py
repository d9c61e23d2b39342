"""Console entry point `calicoctl` (and `python -m calicoctl`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from calicoctl.cli import run
from libcalico import logsafe


def main(argv: Sequence[str] | None = None) -> int:
    """Run one calicoctl command; the exit code is returned (and used by the console script)."""
    logsafe.stderr_warnings()
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `calicoctl ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
