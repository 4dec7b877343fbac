"""The ``resilient-connect`` command line (``main(argv) -> int`` and the console script)."""

from ._main import main, run

__all__ = ["main", "run"]
