"""Console entry point `calicoctl` (and `python -m calicoctl`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from calicoctl.cli import run


def main(argv: Sequence[str] | None = None) -> int:
    """Run one calicoctl command; the exit code is returned (and used by the console script)."""
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
