"""The short chaos soak (about a minute): see ``tests/soak/chaos.py``; ``scripts/soak`` runs
the long one."""

from __future__ import annotations

import os

import pytest

from soak.chaos import run_soak

pytestmark = pytest.mark.integration

#: Seconds of chaos in the test suite; RESILIENT_CONNECT_SOAK_SECONDS overrides (0 skips
#: nothing: the soak always runs at least one fault).
SOAK_SECONDS = float(os.environ.get("RESILIENT_CONNECT_SOAK_SECONDS", "50"))


@pytest.mark.timeout(SOAK_SECONDS + 240)
def test_chaos_soak_every_operation_ends_clearly_and_nothing_leaks() -> None:
    """Under restarts, crashes, blackholes, refusals and cuts, no operation hangs or fails
    unclearly, every worker recovers within the bound, and nothing is left over."""
    result = run_soak(SOAK_SECONDS, progress=lambda _line: None)
    print(result.summary())
    assert sum(result.faults.values()) >= 1
    assert sum(result.operations.values()) > 1000
    assert result.ok, result.summary()
