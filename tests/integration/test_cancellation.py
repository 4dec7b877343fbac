"""Cancelling a task that waits in an async connect always ends it, on every Python.

The old ``asyncio.wait_for`` race (Python 3.10/3.11) swallowed a cancellation that
arrived together with the inner connect's error: the task kept retrying after
``task.cancel()``. Here, many seeded trials per adapter cancel at random moments against
a refused loopback port (each connect fails within a millisecond, so cancellations often
land right on an attempt's end). ``benchmarks/cancellation.py`` runs hundreds.
"""

from __future__ import annotations

import sys

import pytest

from harness.cancel import run_trials

pytestmark = pytest.mark.integration

#: Per adapter and policy; about 2 s in all. The benchmark script runs more.
TRIALS = 25


async def test_cancellation_is_never_lost(free_port: int) -> None:
    """Every cancelled task ends with CancelledError promptly; none keeps retrying."""
    url = f"postgresql://app:pw@127.0.0.1:{free_port}/app"
    tally = await run_trials(url, TRIALS, seed=sys.version_info.minor)
    assert tally.wrong_error == {}
    assert tally.lost == {}, f"cancellations lost: {tally.lost} of {tally.trials}"
    assert all(count == 2 * TRIALS for count in tally.trials.values())
