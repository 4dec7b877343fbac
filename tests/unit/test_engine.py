"""The retry engine: decorator and connect helpers, sync and async, in virtual time."""

from __future__ import annotations

import asyncio
import pickle
import random
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_connect as rc
from resilient_connect._classify import Verdict, classifier_for, default_classifier
from resilient_connect._engine import Attempt, Retrier
from resilient_connect.testing import instant_waits
from virtual_time import FakeTime


class Flaky:
    """Fails with the given errors in order, then returns 'ok'; each call takes `cost` s."""

    def __init__(self, time: FakeTime, errors: list[BaseException], cost: float = 0.0) -> None:
        self.time = time
        self.errors = list(errors)
        self.cost = cost
        self.calls = 0

    def step(self) -> str:
        self.calls += 1
        self.time.now += self.cost
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(mode: str, flaky: Flaky, time: FakeTime, **options: Any) -> str:
    """Run flaky.step under @retry, as a sync or an async function."""
    options.setdefault("hooks", ())
    options.setdefault("on", ConnectionError)
    common = {"clock": time.clock, "sleep": time.sleep, "asleep": time.asleep}
    if mode == "sync":

        @rc.retry(**common, **options)
        def call() -> str:
            return flaky.step()

        return call()

    @rc.retry(**common, **options)
    async def acall() -> str:
        await asyncio.sleep(0)
        return flaky.step()

    return asyncio.run(acall())


modes = pytest.mark.parametrize("mode", ["sync", "async"])


@modes
def test_success_first_time_calls_once(mode: str) -> None:
    """A call that succeeds at once runs once and never sleeps."""
    time = FakeTime()
    flaky = Flaky(time, [])
    assert run(mode, flaky, time) == "ok"
    assert flaky.calls == 1
    assert time.sleeps == []


@modes
def test_retries_transient_errors_then_returns(mode: str) -> None:
    """Transient failures are retried with the policy's delays until success."""
    time = FakeTime()
    flaky = Flaky(time, [ConnectionError("a"), ConnectionError("b")])
    policy = rc.Backoff(initial=1, multiplier=3, jitter="none")
    assert run(mode, flaky, time, policy=policy) == "ok"
    assert flaky.calls == 3
    assert time.sleeps == [1, 3]


@modes
def test_permanent_error_propagates_unchanged(mode: str) -> None:
    """An error `on` does not match propagates as the same object after one attempt."""
    time = FakeTime()
    error = ValueError("bad password")
    flaky = Flaky(time, [error])
    with pytest.raises(ValueError, match="bad password") as caught:
        run(mode, flaky, time)
    assert caught.value is error
    assert caught.value.__context__ is None
    assert flaky.calls == 1


@modes
def test_permanent_error_after_retries_propagates(mode: str) -> None:
    """A permanent error on a later attempt ends the call with that error."""
    time = FakeTime()
    flaky = Flaky(time, [ConnectionError("a"), KeyError("k")])
    with pytest.raises(KeyError):
        run(mode, flaky, time)
    assert flaky.calls == 2


@modes
def test_gives_up_after_attempts(mode: str) -> None:
    """With attempts=N the Nth failure raises RetryExhausted from the last error."""
    time = FakeTime()
    errors = [ConnectionError(f"refused {i}") for i in range(5)]
    flaky = Flaky(time, errors[:], cost=0.5)
    policy = rc.Backoff(attempts=3, initial=1, jitter="none")
    with pytest.raises(rc.RetryExhausted) as caught:
        run(mode, flaky, time, policy=policy, target="db")
    exhausted = caught.value
    assert flaky.calls == 3
    assert exhausted.attempts == 3
    assert exhausted.reason == "attempts"
    assert exhausted.last_exception is errors[2]
    assert exhausted.__cause__ is errors[2]
    assert exhausted.elapsed == pytest.approx(1.5 + 1 + 2)
    assert exhausted.target == "db"
    assert str(exhausted) == (
        "db: gave up after 3 attempts in 4.50s (no attempts left); "
        "last error: ConnectionError: refused 2"
    )


@modes
def test_deadline_is_never_slept_into(mode: str) -> None:
    """The engine gives up instead of sleeping past the deadline; sleeps stay inside it."""
    time = FakeTime()
    flaky = Flaky(time, [ConnectionError()] * 100, cost=0.2)
    policy = rc.Backoff(initial=1, multiplier=2, maximum=4, timeout=10, jitter="none")
    with pytest.raises(rc.RetryExhausted) as caught:
        run(mode, flaky, time, policy=policy)
    assert caught.value.reason == "deadline"
    # 0.2 + 1 + 0.2 + 2 + 0.2 + 4 + 0.2 = 7.8; the next 4 s sleep would cross 10 s,
    # so one last attempt starts halfway through the 2.2 s left, then the engine gives up.
    assert time.sleeps == pytest.approx([1, 2, 4, 1.1])
    assert caught.value.elapsed == pytest.approx(9.1)
    assert caught.value.elapsed <= policy.timeout  # type: ignore[operator]


@modes
def test_keyboard_interrupt_is_never_retried(mode: str) -> None:
    """BaseException subclasses propagate at once, even with on=BaseException."""
    time = FakeTime()
    flaky = Flaky(time, [KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        run(mode, flaky, time, on=BaseException)
    assert flaky.calls == 1


@pytest.mark.parametrize("error", [SystemExit(3), GeneratorExit()])
def test_system_exit_and_generator_exit_propagate(error: BaseException) -> None:
    """SystemExit and GeneratorExit pass through a predicate that would accept anything."""
    time = FakeTime()
    flaky = Flaky(time, [error])
    with pytest.raises(type(error)):
        run("sync", flaky, time, on=lambda _exc: True)
    assert flaky.calls == 1


def test_cancelled_error_is_never_retried() -> None:
    """asyncio.CancelledError raised by an attempt propagates at once."""
    time = FakeTime()
    flaky = Flaky(time, [asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        run("async", flaky, time, on=BaseException)
    assert flaky.calls == 1


async def test_cancelling_during_backoff_sleep_ends_the_task() -> None:
    """Cancelling a task while it waits between attempts ends it promptly."""
    attempts = 0
    sleeping = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        sleeping.set()
        await asyncio.sleep(3600)

    @rc.retry(on=ConnectionError, hooks=(), asleep=slow_sleep)
    async def connect() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError

    task = asyncio.create_task(connect())
    await asyncio.wait_for(sleeping.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert attempts == 1


def test_predicate_and_tuple_classifiers() -> None:
    """on= accepts a tuple of types and a predicate."""
    time = FakeTime()
    flaky = Flaky(time, [TimeoutError(), ConnectionError()])
    assert run("sync", flaky, time, on=(TimeoutError, ConnectionError)) == "ok"
    flaky = Flaky(time, [OSError(111, "refused"), OSError(13, "denied")])
    with pytest.raises(OSError, match="denied"):
        run("sync", flaky, time, on=lambda exc: getattr(exc, "errno", None) == 111)
    assert flaky.calls == 2


@pytest.mark.parametrize("bad", [(), (ValueError, 3), 3, "OSError", int])
def test_bad_on_values_are_rejected_at_decoration(bad: object) -> None:
    """on= must be an exception type, a non-empty tuple of them, or a predicate."""
    with pytest.raises(TypeError, match="on= must be"):
        rc.retry(on=bad)  # type: ignore[arg-type]


def test_events_reach_hooks_in_order() -> None:
    """Hooks receive RetryScheduled per retry, then Recovered, with accurate fields."""
    time = FakeTime()
    events: list[rc.Event] = []
    flaky = Flaky(time, [ConnectionError("x"), ConnectionError("y")], cost=1)
    policy = rc.Backoff(initial=2, jitter="none")
    run("sync", flaky, time, policy=policy, hooks=[events.append], target="t")
    assert [type(e) for e in events] == [rc.RetryScheduled, rc.RetryScheduled, rc.Recovered]
    first, second, recovered = events
    assert isinstance(first, rc.RetryScheduled)
    assert (first.attempt, first.delay, first.elapsed, first.cause) == (
        1,
        2,
        1,
        "ConnectionError: x",
    )
    assert first.rule == "on=(ConnectionError)"
    assert isinstance(second, rc.RetryScheduled)
    assert (second.attempt, second.delay, second.elapsed) == (2, 4, 4)
    assert (recovered.attempt, recovered.elapsed, recovered.exception) == (3, 9, None)
    assert {e.target for e in events} == {"t"}


def test_gave_up_and_not_retried_events() -> None:
    """GaveUp precedes RetryExhausted; NotRetried names the rule for permanent errors."""
    time = FakeTime()
    events: list[rc.Event] = []
    flaky = Flaky(time, [ConnectionError()] * 3)
    with pytest.raises(rc.RetryExhausted):
        run("sync", flaky, time, policy=rc.Backoff(attempts=2), hooks=[events.append])
    assert isinstance(events[-1], rc.GaveUp)
    assert events[-1].reason == "attempts"
    events.clear()
    flaky = Flaky(time, [ValueError("v")])
    with pytest.raises(ValueError, match="v"):
        run("sync", flaky, time, hooks=[events.append])
    (event,) = events
    assert isinstance(event, rc.NotRetried)
    assert event.rule == "not on=(ConnectionError)"
    assert event.cause == "ValueError: v"


def test_hook_errors_propagate() -> None:
    """A hook that raises is a bug in the caller's code and is not hidden."""
    time = FakeTime()

    def broken(event: rc.Event) -> None:
        raise RuntimeError("hook broke")

    flaky = Flaky(time, [ConnectionError()])
    with pytest.raises(RuntimeError, match="hook broke"):
        run("sync", flaky, time, hooks=[broken])


def test_target_and_causes_are_redacted() -> None:
    """Passwords in the target and echoed in error texts never reach events or errors."""
    time = FakeTime()
    events: list[rc.Event] = []
    flaky = Flaky(time, [ConnectionError("cannot reach postgresql://app:s3cret@db/app")] * 3)
    with pytest.raises(rc.RetryExhausted) as caught:
        run(
            "sync",
            flaky,
            time,
            policy=rc.Backoff(attempts=2),
            hooks=[events.append],
            target="postgresql://app:s3cret@db/app",
        )
    texts = [str(caught.value), repr(caught.value), *(repr(e) for e in events)]
    assert all("s3cret" not in text for text in texts)
    assert caught.value.target == "postgresql://app:***@db/app"


def test_retry_exhausted_pickles() -> None:
    """RetryExhausted survives pickling with its fields and message."""
    error = rc.RetryExhausted(
        target="redis://h:6379", attempts=1, elapsed=0.5, last_exception=OSError("down")
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (
        str(copy)
        == str(error)
        == (
            "redis://h:6379: gave up after 1 attempt in 0.50s (no attempts left); "
            "last error: OSError: down"
        )
    )
    assert (copy.attempts, copy.elapsed, copy.reason, copy.cause) == (
        1,
        0.5,
        "attempts",
        error.cause,
    )


def test_long_multiline_causes_become_one_line() -> None:
    """Causes are one line, whitespace collapsed, and truncated when huge."""
    error = rc.RetryExhausted(
        target="t", attempts=2, elapsed=1, last_exception=OSError("a\n\tb " + "x" * 1000)
    )
    assert "\n" not in str(error)
    assert error.cause.startswith("OSError: a b x")
    assert error.cause.endswith("...")
    assert len(error.cause) <= 520


def test_thread_safety_keeps_per_call_state() -> None:
    """One decorated function called from many threads counts attempts per call."""
    local = threading.local()
    results: list[int] = []
    barrier = threading.Barrier(8)

    @rc.retry(on=ConnectionError, hooks=(), sleep=lambda _s: None, policy=rc.Backoff(attempts=5))
    def connect(fails: int) -> int:
        local.calls = getattr(local, "calls", 0) + 1
        if local.calls <= fails:
            raise ConnectionError
        return local.calls

    def worker(fails: int) -> None:
        barrier.wait()
        results.append(connect(fails))

    threads = [threading.Thread(target=worker, args=(i % 4,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [1, 1, 2, 2, 3, 3, 4, 4]


def test_decorator_preserves_identity_and_kind() -> None:
    """The wrapper keeps name, doc and __wrapped__, and async stays a coroutine function."""
    import inspect

    def plain(x: int) -> int:
        """Doc."""
        return x

    async def coro() -> None:
        """Async doc."""

    wrapped = rc.retry(on=OSError)(plain)
    awrapped = rc.retry(on=OSError)(coro)
    assert (wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__) == ("plain", "Doc.", plain)  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(awrapped)
    assert not inspect.iscoroutinefunction(wrapped)
    assert wrapped(4) == 4


async def test_async_callable_objects_and_methods_are_detected() -> None:
    """Async bound methods and objects with an async __call__ are wrapped as async."""

    class Client:
        async def connect(self) -> str:
            return "method"

        async def __call__(self) -> str:
            return "object"

    client = Client()
    assert await rc.retry(on=OSError)(client.connect)() == "method"
    assert await rc.retry(on=OSError)(client)() == "object"


def test_connect_with_retry_passes_arguments_and_redacts_target() -> None:
    """connect_with_retry forwards arguments and names the factory and redacted URL."""
    events: list[rc.Event] = []
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def factory(url: str, *, password: str) -> str:
        calls.append(((url,), {"password": password}))
        if len(calls) == 1:
            raise ConnectionRefusedError(f"refused, password was {password}")
        return "conn"

    with instant_waits() as waits:
        result = rc.connect_with_retry(
            factory, "redis://:pw@h:1/0", password="hunter22", hooks=[events.append]
        )
    assert result == "conn"
    assert len(waits.sleeps) == 1
    assert calls[0] == (("redis://:pw@h:1/0",), {"password": "hunter22"})
    retry_event = events[0]
    assert retry_event.target.endswith("factory('redis://:***@h:1/0')")
    assert "hunter22" not in retry_event.cause
    assert retry_event.cause == "ConnectionRefusedError: refused, password was ***"


async def test_aconnect_with_retry_gives_up_by_deadline() -> None:
    """The async helper retries OSError by default and gives up at the deadline."""
    calls = 0

    async def factory() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(111, "Connection refused")

    with instant_waits() as waits, pytest.raises(rc.RetryExhausted) as caught:
        await rc.aconnect_with_retry(factory, policy=rc.Backoff(timeout=3), hooks=())
    assert caught.value.reason == "deadline"
    assert calls == len(waits.sleeps) + 1
    assert waits.total < 3


def test_connect_with_retry_custom_on_and_target() -> None:
    """on= and target= override the defaults."""
    with pytest.raises(LookupError):
        rc.connect_with_retry(
            lambda: {}["x"], on=ValueError, target="my-db", hooks=(), policy=rc.Backoff()
        )


def test_default_classifier() -> None:
    """OSError is transient by default; other errors are permanent."""
    assert default_classifier(ConnectionResetError()).transient
    assert default_classifier(TimeoutError()).transient
    assert not default_classifier(ValueError()).transient
    assert classifier_for(None) is default_classifier


def test_retrier_call_exposes_the_time_left() -> None:
    """Each attempt sees the time left before the deadline, to bound its own timeouts."""
    time = FakeTime()
    seen: list[tuple[int, float | None, float | None]] = []

    def attempt_fn(attempt: Attempt) -> str:
        seen.append((attempt.number, attempt.remaining(), attempt.bound(5)))
        time.now += 1
        if attempt.number < 3:
            raise OSError
        return "done"

    retrier = Retrier(
        policy=rc.Backoff(initial=2, jitter="none", timeout=10),
        classify=lambda _e: Verdict(transient=True, rule="test"),
        target="x",
        hooks=(),
        clock=time.clock,
        sleep=time.sleep,
    )
    assert retrier.call(attempt_fn) == "done"
    assert seen == [(1, 10, 5), (2, 7, 5), (3, 2, 2)]
    assert "remaining" in repr(Attempt(1, None, time.clock))
    assert Attempt(1, None, time.clock).bound(None) is None
    assert Attempt(1, None, time.clock).bound(3) == 3


async def test_retrier_acall_and_unbounded_policy() -> None:
    """acall retries until success; without a deadline remaining() is None."""
    remaining: list[float | None] = []

    async def attempt_fn(attempt: Attempt) -> int:
        remaining.append(attempt.remaining())
        if attempt.number < 4:
            raise OSError
        return attempt.number

    retrier = Retrier(
        policy=rc.Backoff(attempts=None, timeout=None),
        classify=default_classifier,
        target="x",
        hooks=(),
        rng=random.Random(3),
    )
    with instant_waits():
        assert await retrier.acall(attempt_fn) == 4
    assert remaining == [None] * 4


def test_instant_waits_cannot_nest_the_same_object() -> None:
    """Entering one instant_waits object twice is an error."""
    waits = instant_waits()
    with waits, pytest.raises(RuntimeError, match="already active"), waits:
        pass


async def test_instant_waits_async_sleep_is_virtual() -> None:
    """Under instant_waits, async retries advance the virtual clock."""
    calls = 0

    @rc.retry(on=OSError, hooks=(), policy=rc.Backoff(initial=10, maximum=10, jitter="none"))
    async def connect() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise OSError
        return calls

    with instant_waits() as waits:
        before = waits.clock()
        assert await connect() == 3
        assert waits.clock() - before >= 20
    assert waits.sleeps == [10, 10]


def test_no_last_call_when_almost_no_time_is_left() -> None:
    """With less than LAST_CALL_MINIMUM left, the engine gives up without sleeping."""
    time = FakeTime()
    flaky = Flaky(time, [ConnectionError()] * 5, cost=0.95)
    policy = rc.Backoff(initial=1, maximum=1, timeout=1, jitter="none")
    with pytest.raises(rc.RetryExhausted) as caught:
        run("sync", flaky, time, policy=policy)
    assert time.sleeps == []
    assert caught.value.attempts == 1
    assert caught.value.reason == "deadline"


async def test_real_asyncio_sleep_is_the_default() -> None:
    """Without injection or instant_waits, async waits use asyncio.sleep (real, tiny here)."""
    calls = 0

    @rc.retry(on=OSError, hooks=(), policy=rc.Backoff(initial=0.001, maximum=0.001))
    async def connect() -> int:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise OSError
        return calls

    assert await connect() == 2


@settings(deadline=None)  # timing on a shared machine is not what these pin
@given(
    policy=st.builds(
        rc.Backoff,
        initial=st.floats(min_value=0.001, max_value=10),
        multiplier=st.floats(min_value=1, max_value=10),
        maximum=st.floats(min_value=0, max_value=30, exclude_min=True),
        attempts=st.one_of(st.none(), st.integers(min_value=1, max_value=30)),
        timeout=st.floats(min_value=0.01, max_value=120),
        jitter=st.one_of(
            st.sampled_from(["none", "full", "equal", "decorrelated"]),
            st.floats(min_value=0, max_value=1),
        ),
    ),
    costs=st.lists(st.floats(min_value=0.001, max_value=3), min_size=1, max_size=50),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_property_deadline_and_attempts_hold(
    policy: rc.Backoff, costs: list[float], seed: int
) -> None:
    """Property: sleeps never pass the deadline and attempts never exceed the limit."""
    time = FakeTime()
    start = time.now
    calls = 0

    def attempt_fn(attempt: Attempt) -> None:
        nonlocal calls
        calls += 1
        # Attempts started before the deadline; our time at the start of each attempt:
        assert time.now - start < policy.timeout  # type: ignore[operator]
        time.now += min(costs[(attempt.number - 1) % len(costs)], attempt.remaining() or 0.0)
        raise ConnectionError

    retrier = Retrier(
        policy=policy,
        classify=lambda _e: Verdict(transient=True, rule="t"),
        target="x",
        hooks=(),
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(seed),
    )
    with pytest.raises(rc.RetryExhausted) as caught:
        retrier.call(attempt_fn)
    limit = policy.timeout + 1e-6  # type: ignore[operator]  # float rounding of the clock
    assert time.now - start <= limit
    assert caught.value.elapsed <= limit
    if policy.attempts is not None:
        assert calls <= policy.attempts
    assert caught.value.attempts == calls
    assert all(0 <= s <= policy.maximum for s in time.sleeps)


def test_reraise_gives_up_with_the_last_error_itself() -> None:
    """reraise=True ends a failed call with the last error, after a GaveUp event."""
    time = FakeTime()
    events: list[rc.Event] = []
    errors = [ConnectionError("one"), ConnectionError("two")]
    retrier = Retrier(
        policy=rc.Backoff(attempts=2),
        classify=default_classifier,
        target="bridge",
        hooks=[events.append],
        clock=time.clock,
        sleep=time.sleep,
        reraise=True,
    )

    def attempt_fn(attempt: Attempt) -> None:
        raise errors[attempt.number - 1]

    with pytest.raises(ConnectionError) as caught:
        retrier.call(attempt_fn)
    assert caught.value is errors[1]
    assert [type(e) for e in events] == [rc.RetryScheduled, rc.GaveUp]


def test_unreported_verdicts_and_per_call_classifier() -> None:
    """A per-call classifier overrides the retrier's; report=False propagates silently."""
    time = FakeTime()
    events: list[rc.Event] = []
    retrier = Retrier(
        policy=rc.Backoff(),
        classify=lambda _e: Verdict(transient=True, rule="always"),
        target="t",
        hooks=[events.append],
        clock=time.clock,
        sleep=time.sleep,
    )
    quiet = Verdict(transient=False, rule="not ours", report=False)
    application_error = KeyError("app")

    errors: list[Exception] = [OSError("first"), application_error]

    def attempt_fn(attempt: Attempt) -> None:
        raise errors.pop(0)

    with pytest.raises(KeyError) as caught:
        retrier.call(
            attempt_fn,
            classify=lambda e: quiet if isinstance(e, KeyError) else default_classifier(e),
        )
    assert caught.value is application_error
    assert [type(e) for e in events] == [rc.RetryScheduled]


def test_give_up_on_a_cut_off_attempt_names_what_earlier_attempts_said() -> None:
    """When the last attempt only timed out, the message also names the earlier cause."""
    time = FakeTime()
    errors: list[Exception] = [
        ConnectionError("server login has been failing, try again later"),
        TimeoutError("connection timeout expired: no connection within 0.00s"),
    ]

    def classify(exc: Exception) -> Verdict:
        rule = "os-error:TimeoutError" if isinstance(exc, TimeoutError) else "pgbouncer:login"
        return Verdict(transient=True, rule=rule)

    retrier = Retrier(
        policy=rc.Backoff(attempts=2, jitter="none"),
        classify=classify,
        target="db",
        hooks=(),
        clock=time.clock,
        sleep=time.sleep,
    )

    def attempt(_attempt: Attempt) -> None:
        raise errors.pop(0)

    with pytest.raises(rc.RetryExhausted) as caught:
        retrier.call(attempt)
    assert caught.value.cause == (
        "TimeoutError: connection timeout expired: no connection within 0.00s; "
        "earlier attempts: ConnectionError: server login has been failing, try again later"
    )
    assert "earlier attempts: ConnectionError" in str(caught.value)
