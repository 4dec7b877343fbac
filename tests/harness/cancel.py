"""Cancellation trials: cancel a task waiting in a retrying async connect, see it end.

One trial starts an adapter's async connect against a refused loopback port under a
policy that does not give up during the trial, cancels the task after a random
delay drawn from a seeded source, and checks that the task has ended with
``CancelledError`` within ``grace`` seconds. A lost cancellation (the ``wait_for`` race
of Python 3.10/3.11) shows up as a task still running: it is then cancelled again, and
counted. Used by ``tests/integration/test_cancellation.py`` and
``benchmarks/cancellation.py``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from resilient_connect import Backoff

__all__ = ["ADAPTERS", "Tally", "hot_policy", "run_trials", "slow_policy"]

#: A deadline (so each attempt is bounded by the time left, the code path of the race) that
#: a trial never reaches: a lost cancellation keeps retrying instead of giving up.
#: ``initial=0`` retries in a tight loop (the worst case for the race), which needs an
#: attempt limit; a billion attempts is "never" here.
hot_policy = Backoff(initial=0, attempts=10**9, timeout=3600)
slow_policy = Backoff(initial=0.01, maximum=0.05, timeout=3600)

Connect = Callable[[str, Backoff], Awaitable[object]]


async def _psycopg(port_url: str, policy: Backoff) -> object:
    from resilient_connect import psycopg as rc_psycopg

    return await rc_psycopg.aconnect_with_retry(port_url, policy=policy, hooks=())


async def _sqlalchemy(port_url: str, policy: Backoff) -> object:
    from resilient_connect import sqlalchemy as rc_sqlalchemy

    url = port_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return await rc_sqlalchemy.create_async_engine(url, retry=policy, hooks=())


async def _redis(port_url: str, policy: Backoff) -> object:
    from resilient_connect import redis as rc_redis

    url = port_url.replace("postgresql://", "redis://", 1).rsplit("/", 1)[0] + "/0"
    return await rc_redis.aconnect_with_retry(url, policy=policy, hooks=())


async def _core(port_url: str, policy: Backoff) -> object:
    import psycopg

    import resilient_connect as rc

    return await rc.aconnect_with_retry(
        psycopg.AsyncConnection.connect, port_url, policy=policy, hooks=()
    )


#: name -> connect(url, policy): every async entry point that retries a connect.
ADAPTERS: dict[str, Connect] = {
    "psycopg": _psycopg,
    "sqlalchemy": _sqlalchemy,
    "redis": _redis,
    "core": _core,
}


@dataclass
class Tally:
    """Trials per adapter and how many of them lost the cancellation."""

    trials: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    wrong_error: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, outcome: str) -> None:
        self.trials[name] = self.trials.get(name, 0) + 1
        if outcome == "lost":
            self.lost[name] = self.lost.get(name, 0) + 1
        elif outcome != "cancelled":
            self.wrong_error.setdefault(name, []).append(outcome)

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())


async def _one(connect: Connect, url: str, policy: Backoff, delay: float, grace: float) -> str:
    task = asyncio.ensure_future(connect(url, policy))
    await asyncio.sleep(delay)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        # Lost: the task kept retrying after cancel(). Stop it for good (it may take
        # a few more cancels), and count it.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
        return "lost"
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"finished: {type(error).__name__ if error else 'a result'}"


async def run_trials(
    url: str,
    trials: int,
    *,
    adapters: dict[str, Connect] | None = None,
    policies: tuple[Backoff, ...] = (hot_policy, slow_policy),
    seed: int = 11,
    max_delay: float = 0.03,
    grace: float = 2.0,
) -> Tally:
    """Run ``trials`` cancellations per adapter and policy against ``url`` (a refused port)."""
    rng = random.Random(seed)
    tally = Tally()
    for name, connect in (adapters or ADAPTERS).items():
        for policy in policies:
            for _ in range(trials):
                outcome = await _one(connect, url, policy, rng.uniform(0, max_delay), grace)
                tally.add(name, outcome)
    return tally
