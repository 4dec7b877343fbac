"""Bounding one attempt by the time left: the helper-thread handoff and the async limit."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from resilient_connect._bounded import _Handoff, await_within, call_within


class FakeConn:
    """Stands in for a connection that must be closed if nobody takes it."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_handoff_closes_a_connection_that_arrives_after_the_deadline() -> None:
    """A connection the waiting thread gave up on is closed by the helper, not leaked."""
    handoff = _Handoff(FakeConn.close)
    release = threading.Event()
    conn = FakeConn()

    def slow() -> Any:
        release.wait(5)
        return conn

    thread = threading.Thread(target=handoff.run, args=(slow,))
    thread.start()
    assert handoff.collect() == (None, None, False)
    release.set()
    thread.join(5)
    assert conn.closed


def test_handoff_delivers_error_without_traceback() -> None:
    """The helper hands over its error with no traceback (no frames, no half-open socket)."""
    handoff = _Handoff(FakeConn.close)

    def boom() -> Any:
        raise psycopg.OperationalError("Connection refused")

    handoff.run(boom)
    conn, error, finished = handoff.collect()
    assert finished
    assert conn is None
    assert isinstance(error, psycopg.OperationalError)
    assert error.__traceback__ is None


def test_handoff_race_takes_a_result_that_arrived_in_time() -> None:
    """If the connection arrives just before collect(), it is returned, not closed."""
    handoff = _Handoff(FakeConn.close)
    conn = FakeConn()
    handoff.run(lambda: conn)
    assert handoff.collect() == (conn, None, True)
    assert not conn.closed


def test_call_within_returns_result_or_raises_the_timeout_error() -> None:
    """call_within returns a quick result, re-raises its error, and times out a slow call."""
    release = threading.Event()
    assert call_within(1, lambda: 7, timeout_error=TimeoutError, discard=print) == 7
    with pytest.raises(KeyError):
        call_within(1, lambda: {}["x"], timeout_error=TimeoutError, discard=print)
    late = FakeConn()

    def slow() -> FakeConn:
        release.wait(5)
        return late

    with pytest.raises(TimeoutError, match=r"0\.05") as caught:
        call_within(
            0.05, slow, timeout_error=lambda s: TimeoutError(f"{s}"), discard=FakeConn.close
        )
    assert caught.value.__context__ is None
    release.set()


async def test_await_within_cancels_and_raises_outside_the_handler() -> None:
    """await_within cancels a slow awaitable and raises the error with no __context__."""
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError) as caught:
        await await_within(slow(), 0.01, timeout_error=TimeoutError)
    assert cancelled.is_set()
    assert caught.value.__context__ is None
    assert await await_within(asyncio.sleep(0, "done"), None, timeout_error=TimeoutError) == "done"


# ---------------------------------------------------------------------------- races
# Each test below arranges the race in one event-loop step, so it is deterministic: the
# outcome of the inner awaitable and the caller's cancellation arrive together.


async def _started(coro: Any) -> asyncio.Task[Any]:
    """Run ``coro`` as a task until it waits inside await_within."""
    task = asyncio.ensure_future(coro)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    return task


@pytest.mark.parametrize("outcome", ["result", "error"])
async def test_cancellation_arriving_with_the_inner_outcome_is_never_lost(outcome: str) -> None:
    """A cancel in the same step as the inner result or error propagates as CancelledError;
    a result nobody will get is discarded (closed), an error is dropped quietly."""
    inner: asyncio.Future[FakeConn] = asyncio.get_running_loop().create_future()
    conn = FakeConn()
    task = await _started(
        await_within(inner, 10, timeout_error=TimeoutError, discard=FakeConn.close)
    )
    if outcome == "result":
        inner.set_result(conn)
    else:
        inner.set_exception(psycopg.OperationalError("Connection refused"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.closed is (outcome == "result")


async def test_cancellation_closes_a_late_result_with_an_async_discard() -> None:
    """``discard`` may be a coroutine function (``AsyncConnection.close``): it is awaited."""
    inner: asyncio.Future[FakeConn] = asyncio.get_running_loop().create_future()
    conn = FakeConn()

    async def aclose(c: FakeConn) -> None:
        await asyncio.sleep(0)
        c.close()

    task = await _started(await_within(inner, 10, timeout_error=TimeoutError, discard=aclose))
    inner.set_result(conn)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.closed


async def test_a_result_that_is_there_at_the_deadline_wins_over_the_timeout() -> None:
    """An inner awaitable that ignores our cancel and returns is not lost: its result wins."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "connected anyway"
        return "never"

    assert await await_within(stubborn(), 0, timeout_error=TimeoutError) == "connected anyway"


async def test_an_error_that_is_there_at_the_deadline_wins_over_the_timeout() -> None:
    """An inner error raised while being cancelled is the real outcome, not our timeout."""

    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise psycopg.OperationalError("Connection refused") from None

    with pytest.raises(psycopg.OperationalError, match="refused"):
        await await_within(failing(), 0, timeout_error=TimeoutError)


async def test_cancelled_while_cancelling_the_inner_awaitable_still_propagates() -> None:
    """A caller's cancel that lands while we wait for the timed-out inner to finish wins,
    and the inner awaitable has finished when the CancelledError reaches the caller."""
    release = asyncio.Event()
    finished: list[bool] = []

    async def slow_to_stop() -> FakeConn:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await release.wait()  # cleanup that takes a while
            finished.append(True)
            raise
        return FakeConn()

    task = asyncio.ensure_future(await_within(slow_to_stop(), 0, timeout_error=TimeoutError))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()  # arrives while await_within waits for the inner to end
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()  # still waiting for the inner to finish: nothing outlives the call
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]


async def test_inner_runs_with_the_callers_context() -> None:
    """The inner task sees the caller's context variables (the attempt in scope, say)."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")

    async def read() -> str:
        return var.get()

    assert await await_within(read(), 1, timeout_error=TimeoutError) == "caller"


async def test_an_inner_cancelled_by_someone_else_propagates_cancelled_error() -> None:
    """If the inner future is cancelled by a third party, the caller sees CancelledError,
    as a plain ``await`` would."""
    inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = await _started(await_within(inner, 10, timeout_error=TimeoutError))
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
