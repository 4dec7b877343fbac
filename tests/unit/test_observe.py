"""Default hooks, Succeeded events, per-attempt event fields and statistics, in virtual time."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import resilient_connect as rc
from resilient_connect._classify import classifier_for
from resilient_connect._engine import Retrier
from resilient_connect.testing import instant_waits
from virtual_time import FakeTime


class Recorder:
    """A hook keeping every event; ``wants_successes`` as given."""

    def __init__(self, *, successes: bool = False) -> None:
        self.events: list[rc.Event] = []
        self.wants_successes = successes

    def __call__(self, event: rc.Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


class Flaky:
    """Raises the given errors in order (each attempt costs ``cost`` virtual s), then 'ok'."""

    def __init__(self, time: FakeTime, errors: list[Exception], cost: float = 0.0) -> None:
        self.time = time
        self.errors = list(errors)
        self.cost = cost
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        self.time.now += self.cost
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


FIXED = rc.Backoff(initial=1, multiplier=2, maximum=10, jitter="none", timeout=None, attempts=4)


def decorate(time: FakeTime, flaky: Flaky, mode: str, **options: Any) -> Any:
    """``flaky`` under @retry (sync or async), on the virtual clock; returns a runner and fn."""
    options.setdefault("on", ConnectionError)
    options.setdefault("policy", FIXED)
    common = {"clock": time.clock, "sleep": time.sleep, "asleep": time.asleep}
    if mode == "sync":

        @rc.retry(**common, **options)
        def call() -> str:
            return flaky()

        return call, call

    @rc.retry(**common, **options)
    async def acall() -> str:
        await asyncio.sleep(0)
        return flaky()

    return (lambda: asyncio.run(acall())), acall


modes = pytest.mark.parametrize("mode", ["sync", "async"])


@pytest.fixture(autouse=True)
def _restore_default_hooks() -> Iterator[None]:
    saved = rc.default_hooks()
    yield
    rc.set_default_hooks(*saved)


# --------------------------------------------------------------------------- default hooks


def test_default_hooks_start_as_the_logging_hook() -> None:
    """Out of the box the process-wide hooks are exactly (log_event,)."""
    assert rc.default_hooks() == (rc.log_event,)


@modes
def test_defaults_set_after_decoration_apply(mode: str) -> None:
    """A decorator built before set_default_hooks() reports to the hooks set later."""
    time = FakeTime(500.0)
    run, _ = decorate(time, Flaky(time, [ConnectionError("a")]), mode)
    recorder = Recorder()
    rc.set_default_hooks(recorder)
    assert run() == "ok"
    assert recorder.kinds() == ["RetryScheduled", "Recovered"]


@modes
def test_per_call_hooks_replace_the_defaults(mode: str) -> None:
    """hooks=[h] sends events to h only; the process-wide hooks see nothing."""
    time = FakeTime(500.0)
    mine, defaults = Recorder(), Recorder()
    rc.set_default_hooks(defaults)
    run, _ = decorate(time, Flaky(time, [ConnectionError("a")]), mode, hooks=[mine])
    assert run() == "ok"
    assert mine.kinds() == ["RetryScheduled", "Recovered"]
    assert defaults.events == []


def test_empty_hooks_silence_and_no_argument_silences_defaults() -> None:
    """hooks=() silences one loop; set_default_hooks() silences every hooks=None loop."""
    time = FakeTime(500.0)
    defaults = Recorder()
    rc.set_default_hooks(defaults)
    silent, _ = decorate(time, Flaky(time, [ConnectionError("a")]), "sync", hooks=())
    assert silent() == "ok"
    assert defaults.events == []
    rc.set_default_hooks()
    assert rc.default_hooks() == ()
    loud, _ = decorate(time, Flaky(time, [ConnectionError("a")]), "sync")
    assert loud() == "ok"
    assert defaults.events == []


def test_connect_helper_uses_the_defaults() -> None:
    """connect_with_retry(hooks=None) reports to the process-wide hooks too."""
    recorder = Recorder()
    rc.set_default_hooks(recorder)
    time = FakeTime(500.0)
    flaky = Flaky(time, [ConnectionRefusedError("refused")])
    with instant_waits():
        assert rc.connect_with_retry(flaky, policy=FIXED) == "ok"
    assert recorder.kinds() == ["RetryScheduled", "Recovered"]
    assert recorder.events[0].target == "Flaky"


def test_set_default_hooks_rejects_what_is_not_callable() -> None:
    """A non-callable hook fails at set_default_hooks(), naming it, and changes nothing."""
    before = rc.default_hooks()
    with pytest.raises(TypeError, match="'not a hook'"):
        rc.set_default_hooks(rc.log_event, "not a hook")  # type: ignore[arg-type]
    assert rc.default_hooks() == before


# --------------------------------------------------------------------------- Succeeded


@modes
def test_first_time_success_reaches_only_hooks_that_ask(mode: str) -> None:
    """A call that succeeds at once sends Succeeded to wants_successes hooks, nothing to others."""
    time = FakeTime(500.0)
    eager, plain = Recorder(successes=True), Recorder()
    run, _ = decorate(time, Flaky(time, [], cost=0.25), mode, hooks=[eager, plain])
    assert run() == "ok"
    assert plain.events == []
    [event] = eager.events
    assert isinstance(event, rc.Succeeded)
    assert (event.attempt, event.duration, event.elapsed) == (1, 0.25, 0.25)
    assert event.exception is None
    assert event.target.endswith("call")
    assert isinstance(event.call, rc.Call)


def test_default_success_hooks_get_first_time_successes() -> None:
    """A wants_successes hook installed as a default also sees first-time successes."""
    time = FakeTime(500.0)
    run, _ = decorate(time, Flaky(time, []), "sync")
    eager = Recorder(successes=True)
    rc.set_default_hooks(eager)
    run()
    run()
    assert eager.kinds() == ["Succeeded", "Succeeded"]
    assert eager.events[0].call != eager.events[1].call


def test_connect_helper_reports_first_time_success() -> None:
    """connect_with_retry sends Succeeded for a first-attempt connection, redacted target."""
    eager = Recorder(successes=True)

    def factory(url: str) -> str:
        return url

    assert rc.connect_with_retry(factory, "redis://:pw@h", hooks=[eager]) == "redis://:pw@h"
    [event] = eager.events
    assert isinstance(event, rc.Succeeded)
    assert "pw" not in event.target
    assert "***" in event.target


async def test_async_connect_helper_reports_first_time_success() -> None:
    """aconnect_with_retry sends Succeeded for a first-attempt connection."""
    eager = Recorder(successes=True)

    async def factory() -> int:
        return 3

    assert await rc.aconnect_with_retry(factory, hooks=[eager]) == 3
    assert eager.kinds() == ["Succeeded"]


@modes
def test_every_attempt_ends_in_exactly_one_event(mode: str) -> None:
    """Two failures then success: one event per attempt, each with that attempt's duration."""
    time = FakeTime(500.0)
    recorder = Recorder(successes=True)
    flaky = Flaky(time, [ConnectionError("a"), ConnectionError("b")], cost=0.5)
    run, _ = decorate(time, flaky, mode, hooks=[recorder])
    assert run() == "ok"
    assert recorder.kinds() == ["RetryScheduled", "RetryScheduled", "Recovered"]
    assert [e.attempt for e in recorder.events] == [1, 2, 3]
    assert [e.duration for e in recorder.events] == [0.5, 0.5, 0.5]
    # elapsed includes the waits (1 s, then 2 s) and every attempt's own time.
    assert [e.elapsed for e in recorder.events] == [0.5, 2.0, 4.5]
    calls = {id(e.call) for e in recorder.events}
    assert len(calls) == 1


def test_give_up_and_permanent_events_carry_duration_and_call() -> None:
    """GaveUp and NotRetried have the failed attempt's duration and the call's identity."""
    time = FakeTime(500.0)
    recorder = Recorder()
    policy = rc.Backoff(initial=1, jitter="none", attempts=2, timeout=None)
    flaky = Flaky(time, [ConnectionError("a"), ConnectionError("b")], cost=0.125)
    run, _ = decorate(time, flaky, "sync", hooks=[recorder], policy=policy)
    with pytest.raises(rc.RetryExhausted):
        run()
    gave_up = recorder.events[-1]
    assert isinstance(gave_up, rc.GaveUp)
    assert gave_up.duration == 0.125
    assert gave_up.call is recorder.events[0].call
    recorder.events.clear()
    run, _ = decorate(time, Flaky(time, [KeyError("k")], cost=0.25), "sync", hooks=[recorder])
    with pytest.raises(KeyError):
        run()
    [not_retried] = recorder.events
    assert isinstance(not_retried, rc.NotRetried)
    assert not_retried.duration == 0.25
    assert isinstance(not_retried.call, rc.Call)


def test_calls_are_distinct_picklable_and_weakly_referenced() -> None:
    """Each retrying call has its own Call; events with it pickle; a dropped call is freed."""
    import weakref

    time = FakeTime(500.0)
    recorder = Recorder()
    flaky = Flaky(time, [ConnectionError("a")])
    run, _ = decorate(time, flaky, "sync", hooks=[recorder])
    run()
    flaky.errors = [ConnectionError("b")]
    run()
    first, second = recorder.events[0].call, recorder.events[-1].call
    assert first is not None
    assert second is not None
    assert first.id != second.id
    assert repr(first) == f"Call({first.id})"
    copy = pickle.loads(pickle.dumps(recorder.events[0]))
    assert copy.call is not None
    assert copy.call.id == first.id
    ref = weakref.ref(first)
    recorder.events.clear()
    del first, second, copy
    gc.collect()
    assert ref() is None


# --------------------------------------------------------------------------- statistics


@modes
def test_statistics_count_calls_attempts_retries_and_waits(mode: str) -> None:
    """fn.statistics adds up successes, retries, give-ups, permanent errors and waiting."""
    time = FakeTime(500.0)
    flaky = Flaky(time, [ConnectionError("a"), ConnectionError("b")])
    run, fn = decorate(time, flaky, mode, hooks=())
    assert run() == "ok"  # 3 attempts, waits of 1 s and 2 s
    assert run() == "ok"  # first-time success
    flaky.errors = [ConnectionError("c")] * 4
    with pytest.raises(rc.RetryExhausted):
        run()  # 4 attempts, waits 1, 2, 4
    flaky.errors = [KeyError("k")]
    with pytest.raises(KeyError):
        run()  # one attempt, permanent
    stats = rc.RetryStatistics.of(fn)
    assert stats is fn.statistics
    assert (stats.calls, stats.successes, stats.attempts) == (4, 2, 9)
    assert (stats.retries, stats.gave_up, stats.not_retried) == (5, 1, 1)
    assert stats.waited == 1 + 2 + 1 + 2 + 4
    assert stats.last_error is KeyError


def test_statistics_snapshot_is_detached_and_reset_zeroes() -> None:
    """snapshot() keeps its numbers while the original changes; reset() zeroes everything."""
    time = FakeTime(500.0)
    run, fn = decorate(time, Flaky(time, [ConnectionError("a")]), "sync", hooks=())
    run()
    snapshot = fn.statistics.snapshot()
    run()
    assert (snapshot.calls, snapshot.attempts, snapshot.retries) == (1, 2, 1)
    assert snapshot.last_error is ConnectionError
    assert fn.statistics.calls == 2
    assert "calls=1, successes=1, attempts=2, retries=1" in repr(snapshot)
    assert "last_error=ConnectionError" in repr(snapshot)
    fn.statistics.reset()
    assert repr(fn.statistics) == (
        "RetryStatistics(calls=0, successes=0, attempts=0, retries=0, gave_up=0, "
        "not_retried=0, waited=0.000, last_error=None)"
    )
    run()
    assert (fn.statistics.calls, fn.statistics.successes) == (1, 1)


def test_statistics_of_an_undecorated_function_is_a_type_error() -> None:
    """RetryStatistics.of() refuses a callable that retry() did not decorate."""
    with pytest.raises(TypeError, match="not decorated"):
        rc.RetryStatistics.of(print)


def test_statistics_of_a_method_through_the_instance() -> None:
    """A decorated method's statistics are reachable from the bound method."""

    class Client:
        @rc.retry(on=ConnectionError, hooks=())
        def ping(self) -> str:
            return "pong"

    client = Client()
    client.ping()
    assert rc.RetryStatistics.of(client.ping).calls == 1
    assert rc.RetryStatistics.of(Client.ping) is rc.RetryStatistics.of(client.ping)


def test_statistics_are_exact_under_threads() -> None:
    """Eight threads calling one function: every call, success and retry is counted once."""
    lock = threading.Lock()
    count = [0]

    @rc.retry(on=ConnectionError, hooks=(), sleep=lambda _s: None)
    def sometimes() -> None:
        with lock:
            count[0] += 1
            fail = count[0] % 5 == 0
        if fail:
            raise ConnectionError("every fifth attempt")

    def work() -> None:
        for _ in range(2000):
            sometimes()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = sometimes.statistics.snapshot()  # type: ignore[attr-defined]
    assert stats.calls == stats.successes == 16000
    assert stats.attempts == count[0]
    assert stats.retries == count[0] - 16000


async def test_statistics_under_concurrent_tasks() -> None:
    """Tasks interleaving their retries on one loop are all counted."""
    failures: dict[int, int] = {}

    @rc.retry(on=ConnectionError, hooks=(), asleep=lambda _s: asyncio.sleep(0))
    async def job(n: int) -> int:
        failures[n] = failures.get(n, 0) + 1
        if failures[n] <= n % 3:
            raise ConnectionError(str(n))
        await asyncio.sleep(0)
        return n

    assert await asyncio.gather(*(job(n) for n in range(30))) == list(range(30))
    stats = rc.RetryStatistics.of(job)
    assert (stats.calls, stats.retries) == (30, sum(n % 3 for n in range(30)))
    assert stats.attempts == 30 + stats.retries


def test_collect_statistics_around_connect_helpers() -> None:
    """collect_statistics() counts connect_with_retry calls made inside the block only."""

    def factory() -> str:
        return "conn"

    time = FakeTime(500.0)
    flaky = Flaky(time, [ConnectionRefusedError("r")] * 2)
    with instant_waits() as waits, rc.collect_statistics() as stats:
        rc.connect_with_retry(flaky, hooks=())
        rc.connect_with_retry(factory, hooks=())
    rc.connect_with_retry(factory, hooks=())
    assert (stats.calls, stats.successes, stats.attempts, stats.retries) == (2, 2, 4, 2)
    assert stats.waited == pytest.approx(waits.total)
    assert stats.last_error is ConnectionRefusedError


def test_collect_statistics_nests_and_sees_decorated_calls() -> None:
    """Blocks nest (inner calls count outside too); decorated first-time successes count."""
    time = FakeTime(500.0)
    run, fn = decorate(time, Flaky(time, []), "sync", hooks=())
    with rc.collect_statistics() as outer:
        run()
        with rc.collect_statistics() as inner:
            run()
        with rc.collect_statistics(outer):  # the same object again: not counted twice
            run()
    assert (outer.calls, inner.calls, fn.statistics.calls) == (3, 1, 3)
    with rc.collect_statistics(fn.statistics):
        run()
    assert fn.statistics.calls == 4


async def test_collect_statistics_reaches_tasks_started_inside() -> None:
    """Tasks created inside the block inherit it; calls outside it are not counted."""

    @rc.retry(on=ConnectionError, hooks=())
    async def job() -> int:
        return 1

    with rc.collect_statistics() as stats:
        await asyncio.gather(*(asyncio.create_task(job()) for _ in range(5)))
    await job()
    assert stats.calls == 5


def test_statistics_ignore_hooks_setting_and_retrier_without_statistics() -> None:
    """hooks=() does not silence statistics; a bare Retrier records only into collectors."""
    retrier = Retrier(policy=FIXED, classify=classifier_for(ConnectionError), target="t", hooks=())
    with rc.collect_statistics() as stats:
        assert retrier.call(lambda _attempt: 1) == 1
    assert stats.calls == 1
    assert retrier.statistics is None
