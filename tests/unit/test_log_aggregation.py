"""The default hook aggregates per target during an outage: a few lines a person can read."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

import resilient_connect as rc
from resilient_connect._logging import (
    OUTAGE_OVER_MESSAGE,
    RETRY_MESSAGE,
    SUMMARY_MESSAGE,
    LogEvents,
)
from resilient_connect.testing import instant_waits


class FakeTime:
    """Virtual time for many concurrent tasks: a sleep waits until the clock reaches its end,
    and the clock jumps to the earliest end once every task is waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = 0

    def clock(self) -> float:
        return self.now

    async def asleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        self._order += 1
        heapq.heappush(self._waiting, (self.now + seconds, self._order, wake))
        await wake

    async def run(self, *coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        while not all(task.done() for task in tasks):
            for _ in range(3):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            if self._waiting:
                end, _, wake = heapq.heappop(self._waiting)
                self.now = max(self.now, end)
                wake.set_result(None)
        return [task.result() if not task.exception() else task.exception() for task in tasks]


def records(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "resilient_connect" and r.levelno >= level]


def outage(loops: int, down_for: float, interval: float = 5.0) -> tuple[LogEvents, FakeTime]:
    """``loops`` decorated calls against a target that is down for ``down_for`` virtual s."""
    time = FakeTime()
    hook = LogEvents(summary_interval=interval, clock=time.clock)
    back_at = time.now + down_for

    @rc.retry(
        on=ConnectionError,
        policy=rc.Backoff(initial=0.2, maximum=1.0, timeout=60),
        hooks=[hook],
        clock=time.clock,
        asleep=time.asleep,
        target="postgresql://app:***@db/app",
    )
    async def work() -> str:
        if time.now < back_at:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    results = asyncio.run(time.run(*(work() for _ in range(loops))))
    assert results == ["ok"] * loops
    return hook, time


def test_twenty_loops_over_an_outage_write_a_handful_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over 12 s: one first-failure line, a summary every 5 s, one recovery line; rest at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="resilient_connect")
    outage(loops=20, down_for=12.0)
    seen = records(caplog)
    assert [r.msg for r in seen] == [
        RETRY_MESSAGE,
        SUMMARY_MESSAGE,
        SUMMARY_MESSAGE,
        OUTAGE_OVER_MESSAGE,
    ]
    assert [r.levelno for r in seen] == [logging.WARNING] * 3 + [logging.INFO]
    summary = seen[1]
    assert summary.resilient_connect_loops == 20  # type: ignore[attr-defined]
    assert summary.resilient_connect_waiting == 20  # type: ignore[attr-defined]
    assert "still failing:" in summary.getMessage()
    assert "in 20 loops over 5." in summary.getMessage()
    over = seen[-1].getMessage()
    assert over.startswith("postgresql://app:***@db/app: recovered after 12.")
    assert "in 20 loops, first error: ConnectionRefusedError" in over
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) > 100  # every attempt is still there, at DEBUG


def test_summaries_follow_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A 2 s interval over a 10 s outage gives about five summaries."""
    caplog.set_level(logging.INFO, logger="resilient_connect")
    outage(loops=3, down_for=10.0, interval=2.0)
    summaries = [r for r in records(caplog) if r.msg == SUMMARY_MESSAGE]
    assert 4 <= len(summaries) <= 5


def test_without_debug_only_the_aggregated_lines_are_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the default WARNING level, no per-attempt line reaches the handlers."""
    caplog.set_level(logging.WARNING, logger="resilient_connect")
    outage(loops=5, down_for=3.0)
    assert [r.msg for r in records(caplog, logging.DEBUG)] == [RETRY_MESSAGE]


def test_a_new_outage_after_recovery_starts_with_a_first_failure_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the recovery line, the next failure opens a new outage."""
    caplog.set_level(logging.INFO, logger="resilient_connect")
    hook, time = outage(loops=2, down_for=1.0)
    event = rc.RetryScheduled(
        target="postgresql://app:***@db/app",
        attempt=1,
        elapsed=0.0,
        exception=None,
        cause="ConnectionRefusedError: refused",
        delay=0.5,
        rule="os-error:ConnectionRefusedError",
    )
    time.now += 60
    hook(event)
    assert [r.msg for r in records(caplog)][-1] == RETRY_MESSAGE


def test_budget_give_ups_are_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    """Many loops that give up because the budget ran out: one ERROR line, not one each."""
    caplog.set_level(logging.INFO, logger="resilient_connect")
    time = FakeTime()
    hook = LogEvents(summary_interval=5.0, clock=time.clock)
    budget = rc.RetryBudget(capacity=10, retry_cost=5, success_refund=1, clock=time.clock)

    @rc.retry(
        on=ConnectionError,
        policy=rc.Backoff(initial=0.2, timeout=60),
        hooks=[hook],
        clock=time.clock,
        asleep=time.asleep,
        budget=budget,
        target="redis://cache",
    )
    async def work() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    outcomes = asyncio.run(time.run(*(work() for _ in range(10))))
    assert all(isinstance(o, rc.RetryExhausted) and o.reason == "budget" for o in outcomes)
    errors = [r for r in records(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "retry budget exhausted" in errors[0].getMessage()


def test_instant_waits_turns_aggregation_off(caplog: pytest.LogCaptureFixture) -> None:
    """In a test suite, every retry is a WARNING line of its own, at once."""
    caplog.set_level(logging.INFO, logger="resilient_connect")
    calls = []

    def connect() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    with instant_waits():
        rc.connect_with_retry(connect, target="db")
    assert [r.levelno for r in records(caplog)] == [logging.WARNING] * 3 + [logging.INFO]


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESILIENT_CONNECT_LOG_INTERVAL sets the interval; a bad value keeps the default."""
    monkeypatch.setenv("RESILIENT_CONNECT_LOG_INTERVAL", "30")
    assert LogEvents().summary_interval == 30.0
    monkeypatch.setenv("RESILIENT_CONNECT_LOG_INTERVAL", "soon")
    assert LogEvents().summary_interval == 5.0
    assert rc.log_event.summary_interval == 5.0
