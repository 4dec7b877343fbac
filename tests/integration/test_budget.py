"""Retry budgets and aggregated logs against real servers, through every adapter."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest
import redis
import sqlalchemy.exc

import resilient_connect as rc
from harness import FaultProxy, PostgresServer, RedisServer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis
from resilient_connect import sqlalchemy as rc_sqlalchemy
from resilient_connect._logging import (
    OUTAGE_OVER_MESSAGE,
    RETRY_MESSAGE,
    SUMMARY_MESSAGE,
    LogEvents,
)

pytestmark = pytest.mark.integration

MakeProxy = Callable[..., FaultProxy]
# Fast retries so that a small budget runs out within a few hundred milliseconds.
FAST = rc.Backoff(initial=0.01, maximum=0.05, timeout=20, probe=0.01)


def tiny() -> rc.RetryBudget:
    """A budget for three retries."""
    return rc.RetryBudget(capacity=15, retry_cost=5, success_refund=1)


def _gave_up_for_budget(error: BaseException) -> bool:
    if isinstance(error, rc.RetryExhausted):
        return error.reason == "budget"
    notes = getattr(error, "__notes__", None)
    if notes is None:  # Python 3.10: no notes; the exception type is checked by the caller
        return True
    return any("retry budget exhausted" in note for note in notes)


def test_psycopg_connect_gives_up_when_the_budget_runs_out(free_port: int) -> None:
    """connect_with_retry with a budget of three retries makes four attempts, then gives up."""
    events: list[rc.Event] = []
    with pytest.raises(rc.RetryExhausted) as caught:
        rc_psycopg.connect_with_retry(
            f"postgresql://app:pw@127.0.0.1:{free_port}/app",
            policy=FAST,
            budget=tiny(),
            hooks=[events.append],
        )
    assert caught.value.reason == "budget"
    assert caught.value.attempts == 4
    assert "retry budget exhausted" in str(caught.value)
    assert isinstance(events[-1], rc.GaveUp)
    assert events[-1].reason == "budget"


async def test_psycopg_async_shares_one_budget_between_tasks(free_port: int) -> None:
    """Five tasks against a refused port share three retries: eight attempts in all."""
    budget = tiny()
    url = f"postgresql://app:pw@127.0.0.1:{free_port}/app"
    outcomes = await asyncio.gather(
        *(
            rc_psycopg.aconnect_with_retry(url, policy=FAST, budget=budget, hooks=())
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(o, rc.RetryExhausted) and o.reason == "budget" for o in outcomes)
    assert sum(o.attempts for o in outcomes if isinstance(o, rc.RetryExhausted)) == 5 + 3


def test_sqlalchemy_reconnects_draw_from_the_budget(free_port: int) -> None:
    """An engine's pool reconnects take tokens from its budget and stop when it is empty."""
    budget = tiny()
    engine = rc_sqlalchemy.create_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app",
        lazy=True,
        reconnect=FAST,
        budget=budget,
        hooks=(),
    )
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    assert _gave_up_for_budget(caught.value.orig or caught.value)
    assert budget.retries_left == 0


async def test_sqlalchemy_async_reconnects_draw_from_the_budget(free_port: int) -> None:
    """The asyncio engine's reconnects too (inside SQLAlchemy's greenlet)."""
    budget = tiny()
    engine = await rc_sqlalchemy.create_async_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app",
        lazy=True,
        reconnect=FAST,
        budget=budget,
        hooks=(),
    )
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError):
            await engine.connect()
    finally:
        await engine.dispose()
    assert budget.retries_left == 0


def test_redis_start_up_and_runtime_bridge_draw_from_the_budget(
    make_redis: Callable[..., RedisServer],
) -> None:
    """The start-up wait (given a budget) and the client's runtime bridge share it."""
    server = make_redis()
    budget = rc.RetryBudget(capacity=20, retry_cost=5, success_refund=1)
    client = rc_redis.connect_with_retry(
        server.url, policy=FAST, reconnect=FAST, budget=budget, hooks=()
    )
    assert client.ping() is True
    server.stop()
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            client.ping()
        assert _gave_up_for_budget(caught.value)
        assert budget.retries_left == 0
        with pytest.raises(rc.RetryExhausted) as startup:
            rc_redis.connect_with_retry(server.url, policy=FAST, budget=budget, hooks=())
        assert startup.value.reason == "budget"
        assert startup.value.attempts == 1  # first attempts are never blocked
    finally:
        client.close()


def test_psycopg_pool_start_up_draws_from_a_budget(free_port: int) -> None:
    """create_pool's start-up wait takes its retries from a budget it is given."""
    with pytest.raises(rc.RetryExhausted) as caught:
        rc_psycopg.create_pool(
            f"postgresql://app:pw@127.0.0.1:{free_port}/app",
            policy=FAST,
            budget=tiny(),
            hooks=(),
        )
    assert caught.value.reason == "budget"


def test_twenty_loops_over_a_real_outage_log_a_few_lines(
    postgres: PostgresServer,
    fault_proxy: MakeProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """20 threads waiting through a 3 s PostgreSQL outage (refused at the proxy): one
    first-failure line, about one summary a second, one recovery line."""
    caplog.set_level(logging.INFO, logger="resilient_connect")
    proxy = fault_proxy(postgres.address)
    proxy.refuse()
    hook = LogEvents(summary_interval=1.0)
    url = postgres.url_for(port=proxy.port)
    start = threading.Barrier(21)
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            rc_psycopg.connect_with_retry(url, policy=rc.Backoff(timeout=20), hooks=[hook]).close()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(3.0)  # the outage being simulated, not a wait for a condition
    proxy.pass_through()
    for thread in threads:
        thread.join(30)
    assert errors == []
    lines = [r for r in caplog.records if r.name == "resilient_connect"]
    kinds = [r.msg for r in lines]
    assert kinds[0] == RETRY_MESSAGE
    assert kinds[-1] == OUTAGE_OVER_MESSAGE
    assert kinds.count(RETRY_MESSAGE) == 1
    assert kinds.count(OUTAGE_OVER_MESSAGE) == 1
    assert 2 <= kinds.count(SUMMARY_MESSAGE) <= 4
    assert len(lines) <= 10
    over = lines[-1].getMessage()
    assert "in 20 loops" in over
    print(
        f"\n20 loops, 3 s outage: {len(lines)} lines: "
        + " | ".join(r.getMessage()[:60] for r in lines)
    )
