"""Nested retry loops share the tightest deadline: the engine's rules, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import resilient_connect as rc
from resilient_connect._bounded import call_within
from resilient_connect._classify import Verdict
from resilient_connect._engine import Attempt, Retrier
from virtual_time import FakeTime

TRANSIENT = Verdict(transient=True, rule="test:transient")


def inner_retrier(time: FakeTime, events: list[rc.Event], **options: Any) -> Retrier:
    """An adapter-like loop with a long policy of its own (10 s)."""
    options.setdefault("policy", rc.Backoff(initial=0.1, maximum=0.2, timeout=10, jitter="none"))
    return Retrier(
        classify=lambda _exc: TRANSIENT,
        target="inner://db",
        hooks=[events.append],
        clock=time.clock,
        sleep=time.sleep,
        asleep=time.asleep,
        **options,
    )


def outer_options(time: FakeTime, events: list[rc.Event], timeout: float = 2.0) -> dict[str, Any]:
    return {
        "on": ConnectionError,
        "policy": rc.Backoff(initial=0.1, maximum=0.5, timeout=timeout, jitter="none"),
        "hooks": [events.append],
        "clock": time.clock,
        "sleep": time.sleep,
        "asleep": time.asleep,
        "target": "outer",
    }


def always_down(_attempt: Attempt) -> None:
    raise ConnectionError("refused")


def test_inner_loop_in_a_sync_decorated_call_stops_at_the_outer_deadline() -> None:
    """The inner loop ends at the outer 2 s deadline, and the outer gives up at once."""
    time = FakeTime()
    inner_events: list[rc.Event] = []
    outer_events: list[rc.Event] = []
    inner = inner_retrier(time, inner_events)

    @rc.retry(**outer_options(time, outer_events))
    def work() -> None:
        inner.call(always_down)

    start = time.now
    with pytest.raises(rc.RetryExhausted) as caught:
        work()
    assert time.now - start <= 2.0
    assert caught.value.reason == "deadline"
    assert caught.value.attempts == 1
    assert caught.value.nested is not None
    assert caught.value.nested[0] == "inner://db"
    assert caught.value.nested[1] > 3
    assert "inside the retry loop of inner://db" in str(caught.value)
    gave_up = [e for e in inner_events if isinstance(e, rc.GaveUp)]
    assert len(gave_up) == 1
    assert gave_up[0].reason == "deadline"
    assert [type(e) for e in outer_events] == [rc.GaveUp]


async def test_inner_loop_in_an_async_decorated_call_stops_at_the_outer_deadline() -> None:
    """The async twin: acall inside an async decorated function."""
    time = FakeTime()
    inner_events: list[rc.Event] = []
    outer_events: list[rc.Event] = []
    inner = inner_retrier(time, inner_events)

    async def always_down_async(_attempt: Attempt) -> None:
        raise ConnectionError("refused")

    @rc.retry(**outer_options(time, outer_events))
    async def work() -> None:
        await inner.acall(always_down_async)

    start = time.now
    with pytest.raises(rc.RetryExhausted) as caught:
        await work()
    assert time.now - start <= 2.0
    assert caught.value.reason == "deadline"
    assert caught.value.attempts == 1
    assert caught.value.nested is not None


def test_a_later_attempt_of_the_outer_call_bounds_the_inner_loop_too() -> None:
    """After the outer's first attempt failed on its own, its next attempt still bounds."""
    time = FakeTime()
    inner = inner_retrier(time, [])
    calls = 0

    @rc.retry(**outer_options(time, []))
    def work() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("first attempt fails by itself")
        inner.call(always_down)

    start = time.now
    with pytest.raises(rc.RetryExhausted) as caught:
        work()
    assert time.now - start <= 2.0
    assert calls == 2
    assert caught.value.attempts == 2
    assert caught.value.nested is not None


def test_inner_loop_with_its_own_tighter_deadline_leaves_the_outer_loop_retrying() -> None:
    """An inner loop that stops at its own (shorter) deadline is just one failed attempt."""
    time = FakeTime()
    inner = inner_retrier(time, [], policy=rc.Backoff(initial=0.1, timeout=0.5, jitter="none"))

    @rc.retry(**outer_options(time, [], timeout=5.0))
    def work() -> None:
        inner.call(always_down)

    with pytest.raises(rc.RetryExhausted) as caught:
        work()
    assert caught.value.attempts > 2
    assert caught.value.nested is None


def test_a_loop_that_owns_its_retries_gets_one_attempt_from_the_loops_inside() -> None:
    """Inside an owning loop, an inner loop tries once, unreported, and the owner retries."""
    time = FakeTime()
    inner_events: list[rc.Event] = []
    inner = inner_retrier(time, inner_events)
    tries = 0
    failures: list[Exception] = []

    def down(_attempt: Attempt) -> None:
        nonlocal tries
        tries += 1
        raise ConnectionError("refused")

    owner = Retrier(
        policy=rc.Backoff(initial=0.1, jitter="none", attempts=4),
        classify=lambda _exc: TRANSIENT,
        target="owner",
        hooks=(),
        clock=time.clock,
        sleep=time.sleep,
        owns_retries=True,
    )
    with pytest.raises(rc.RetryExhausted) as caught:
        owner.call(lambda _attempt: inner.call(down, on_failure=failures.append))
    assert caught.value.attempts == 4
    assert tries == 4
    assert len(failures) == 4  # the per-failure callback ran for every single attempt
    assert inner_events == []


def test_nested_loops_on_different_clocks_share_the_time_left() -> None:
    """An inner loop on another time base is bounded by the time left on the outer one."""
    outer_time = FakeTime(now=1000.0)
    inner_time = FakeTime(now=5.0)

    def advance(seconds: float) -> None:  # one real passage of time, seen by both clocks
        outer_time.now += seconds
        inner_time.sleep(seconds)

    inner = Retrier(
        policy=rc.Backoff(initial=0.1, maximum=0.2, timeout=10, jitter="none"),
        classify=lambda _exc: TRANSIENT,
        target="inner",
        hooks=(),
        clock=inner_time.clock,
        sleep=advance,
    )

    @rc.retry(on=ConnectionError, policy=rc.Backoff(timeout=2), hooks=(), clock=outer_time.clock)
    def work() -> None:
        inner.call(always_down)

    with pytest.raises(rc.RetryExhausted) as caught:
        work()
    assert 1.0 < sum(inner_time.sleeps) <= 2.0
    assert caught.value.nested is not None


def test_attempts_see_the_enclosing_deadline_for_their_connect_timeouts() -> None:
    """Attempt.share (every adapter's connect timeout) is cut to the enclosing time left."""
    time = FakeTime()
    seen: list[float | None] = []
    inner = inner_retrier(time, [])

    @rc.retry(**outer_options(time, [], timeout=3.0))
    def work() -> None:
        inner.call(lambda attempt: seen.append(attempt.share(10.0)))

    work()
    assert seen == [pytest.approx(3.0)]


def test_helper_threads_of_the_library_carry_the_attempt_in_scope() -> None:
    """A loop started on call_within's helper thread is bounded by the caller's attempt."""
    time = FakeTime()
    inner = inner_retrier(time, [])
    middle = inner_retrier(time, [], policy=rc.Backoff(attempts=1))

    @rc.retry(**outer_options(time, []))
    def work() -> None:
        middle.call(
            lambda _attempt: call_within(
                5.0,
                lambda: inner.call(always_down),
                timeout_error=TimeoutError,
                discard=lambda _late: None,
            )
        )

    start = time.now
    with pytest.raises(rc.RetryExhausted) as caught:
        work()
    assert time.now - start <= 2.0
    assert caught.value.reason == "deadline"


async def test_a_task_that_outlives_its_attempt_is_not_bound_by_it() -> None:
    """A task created inside an attempt and run after it ended keeps its own deadline."""
    time = FakeTime()
    inner = inner_retrier(time, [])
    release = asyncio.Event()
    background: list[asyncio.Task[None]] = []

    async def down(_attempt: Attempt) -> None:
        raise ConnectionError("refused")

    async def later() -> None:
        await release.wait()
        await inner.acall(down)

    @rc.retry(**outer_options(time, []))
    async def work() -> None:
        background.append(asyncio.get_running_loop().create_task(later()))

    await work()
    start = time.now
    release.set()
    with pytest.raises(rc.RetryExhausted) as caught:
        await background[0]
    assert time.now - start >= 9.0  # its own 10 s policy, not the ended 2 s attempt
    assert caught.value.nested is None


def test_reraise_mode_notes_the_give_up_on_the_driver_error() -> None:
    """reraise=True raises the last error itself, with a note naming target and reason."""
    time = FakeTime()
    retrier = inner_retrier(time, [], reraise=True)
    with pytest.raises(ConnectionError) as caught:
        retrier.call(always_down)
    notes = getattr(caught.value, "__notes__", None)
    if notes is not None:  # Python 3.11+
        assert any(
            note.startswith("resilient_connect: inner://db: gave up after")
            and "(deadline reached)" in note
            for note in notes
        )
