"""``python -m resilient_connect``: the command-line waiter."""

from resilient_connect._cli import run

run()
