"""The ``resilient-connect`` command line (placeholder until the CLI lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    del argv
    sys.stderr.write("resilient-connect: the command line is not available yet\n")
    return 2


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
