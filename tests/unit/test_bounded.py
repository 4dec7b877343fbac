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
