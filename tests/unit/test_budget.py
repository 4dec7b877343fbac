"""The retry budget: token arithmetic, sharing under threads and tasks, and the engine's use."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_connect as rc
from resilient_connect import _budget
from resilient_connect.testing import instant_waits
from virtual_time import FakeTime


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(1, 1000),
    cost=st.floats(0.1, 50),
    refund=st.floats(0, 10),
    steps=st.lists(st.sampled_from(["spend", "refund"]), max_size=200),
)
def test_tokens_stay_within_the_bucket(
    capacity: float, cost: float, refund: float, steps: list[str]
) -> None:
    """Whatever the order of retries and successes, 0 <= tokens <= capacity, and a retry is
    allowed exactly when a whole retry's worth of tokens is there."""
    budget = rc.RetryBudget(capacity=capacity, retry_cost=cost, success_refund=refund)
    expected = capacity
    for step in steps:
        if step == "spend":
            allowed = budget.spend()
            assert allowed == (expected >= cost)
            if allowed:
                expected -= cost
        else:
            budget.refund()
            expected = min(capacity, expected + refund)
        assert budget.tokens == pytest.approx(expected)
        assert 0 <= budget.tokens <= capacity


def test_threads_never_spend_more_than_the_bucket_holds() -> None:
    """16 threads spending at once get exactly capacity / cost retries between them."""
    budget = rc.RetryBudget(capacity=1000, retry_cost=5, success_refund=1)
    granted: list[int] = []
    start = threading.Barrier(16)

    def spend_all() -> None:
        start.wait()
        granted.append(sum(budget.spend() for _ in range(100)))

    threads = [threading.Thread(target=spend_all) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 200
    assert budget.tokens == 0


async def test_tasks_share_one_budget() -> None:
    """Retrying tasks draw from one bucket: the budget ends them, the first attempts still run."""
    budget = rc.RetryBudget(capacity=50, retry_cost=5, success_refund=1)
    attempts = 0

    async def fast(_seconds: float) -> None:
        await asyncio.sleep(0)

    @rc.retry(
        on=ConnectionError,
        policy=rc.Backoff(timeout=None, attempts=None),
        hooks=(),
        budget=budget,
        asleep=fast,
    )
    async def work() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError(111, "refused")

    outcomes = await asyncio.gather(*(work() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(o, rc.RetryExhausted) and o.reason == "budget" for o in outcomes)
    assert attempts == 20 + 10  # every first attempt, and the 10 retries the bucket held
    assert "retry budget exhausted" in str(outcomes[0])


def test_successes_refill_and_time_refills() -> None:
    """A success gives success_refund back; refill_per_second adds tokens with time."""
    time = FakeTime(0.0)
    budget = rc.RetryBudget(
        capacity=10, retry_cost=5, success_refund=1, refill_per_second=2, clock=time.clock
    )
    assert budget.spend()
    assert budget.spend()
    assert not budget.spend()
    budget.refund()
    assert budget.tokens == pytest.approx(1)
    time.now += 2.0
    assert budget.tokens == pytest.approx(5)
    assert budget.retries_left == 1
    time.now += 100
    assert budget.tokens == pytest.approx(10)


def test_first_attempts_are_never_blocked() -> None:
    """An empty budget still lets every call try once; the call then gives up as "budget"."""
    time = FakeTime(0.0)
    budget = rc.RetryBudget(capacity=5, retry_cost=5)
    assert budget.spend()
    calls = 0

    @rc.retry(on=ConnectionError, hooks=(), budget=budget, clock=time.clock, sleep=time.sleep)
    def work() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    with pytest.raises(rc.RetryExhausted) as caught:
        work()
    assert calls == 1
    assert caught.value.reason == "budget"
    assert work() == "ok"  # the next call's first attempt goes through, and refunds
    assert budget.tokens == pytest.approx(1)


def test_validation_names_the_field() -> None:
    """Bad sizes are refused at construction with the field's name."""
    with pytest.raises(ValueError, match=r"RetryBudget\.capacity"):
        rc.RetryBudget(capacity=0)
    with pytest.raises(ValueError, match=r"RetryBudget\.retry_cost"):
        rc.RetryBudget(retry_cost=-1)
    with pytest.raises(ValueError, match=r"RetryBudget\.success_refund"):
        rc.RetryBudget(success_refund=float("nan"))
    with pytest.raises(TypeError):
        rc.set_default_budget("off")  # type: ignore[arg-type]


def test_default_budget_can_be_replaced_and_turned_off() -> None:
    """set_default_budget swaps the process-wide budget; None turns it off."""
    original = rc.default_budget()
    assert original is not None
    assert original.capacity == 500
    try:
        mine = rc.RetryBudget(capacity=10)
        rc.set_default_budget(mine)
        assert rc.default_budget() is mine
        assert _budget.resolve("default") is mine
        rc.set_default_budget(None)
        assert _budget.resolve("default") is None
    finally:
        rc.set_default_budget(original)


def test_instant_waits_makes_budgets_unlimited() -> None:
    """Under instant_waits a budget never stops a retry."""
    budget = rc.RetryBudget(capacity=5, retry_cost=5)
    with instant_waits():
        assert all(budget.spend() for _ in range(100))
    assert budget.spend()
    assert not budget.spend()


async def test_loops_sharing_a_budget_share_what_they_learn() -> None:
    """While one loop just found the target down, the others' retries wait for their next
    turn: no attempt, no token, no event; a success lets everyone try again at once."""
    budget = rc.RetryBudget(capacity=1000, retry_cost=5, hold=0.1)
    attempts: list[float] = []
    events: list[rc.Event] = []
    clock = asyncio.get_running_loop().time
    back_at = clock() + 0.6

    @rc.retry(
        on=ConnectionError,
        policy=rc.Backoff(initial=0.01, maximum=0.02, timeout=10, probe=None, jitter="none"),
        hooks=[events.append],
        budget=budget,
        target="db",
    )
    async def work() -> str:
        attempts.append(clock())
        if clock() < back_at:
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    assert await asyncio.gather(*(work() for _ in range(30))) == ["ok"] * 30
    during = [t for t in attempts if t < back_at]
    # Without sharing: 30 loops x 0.6 s / 0.02 s = about 900 attempts; with it, about one
    # attempt per hold (0.1 s) besides the 30 first ones.
    assert len(during) < 30 + 30
    retries = [e for e in events if isinstance(e, rc.RetryScheduled)]
    assert len(retries) == len(during)  # a hold is not an attempt and sends no event
    # Failed retries took 5 tokens each; the successful retries gave theirs back.
    assert budget.tokens == pytest.approx(1000)
    assert max(attempts) - back_at < 0.2  # everyone came back within a few waits


def test_a_lone_loop_is_not_held_back_by_its_own_failures() -> None:
    """Only other loops' failures hold a retry back."""
    time = FakeTime(0.0)
    budget = rc.RetryBudget(hold=10.0, clock=time.clock)
    calls = 0

    @rc.retry(
        on=ConnectionError,
        policy=rc.Backoff(initial=0.01, jitter="none", probe=None),
        hooks=(),
        budget=budget,
        clock=time.clock,
        sleep=time.sleep,
    )
    def work() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    assert work() == "ok"
    assert calls == 4
    assert time.now == pytest.approx(0.01 + 0.02 + 0.04)


def test_only_failed_retries_drain_the_bucket() -> None:
    """A retry that succeeds gives its cost back, and a retry made after another loop's
    success with the same target costs nothing."""
    time = FakeTime(0.0)
    budget = rc.RetryBudget(capacity=100, retry_cost=10, success_refund=0, clock=time.clock)
    budget.failed("db", loop=1)
    assert budget.spend()
    assert budget.tokens == pytest.approx(90)
    budget.succeeded("db", retried=True)
    assert budget.tokens == pytest.approx(100)
    assert not budget.is_down("db")
    while budget.spend():  # empty it: a charged retry would now give up
        pass
    attempts = 0

    def other_loop_succeeds(seconds: float) -> None:
        time.sleep(seconds)
        budget.succeeded("db")  # ...until another loop reached it while we waited

    @rc.retry(
        on=ConnectionError,
        hooks=(),
        budget=budget,
        clock=time.clock,
        sleep=other_loop_succeeds,
        target="db",
    )
    def work() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            budget.failed("db", loop=2)  # another loop's failure: the target is down...
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    assert work() == "ok"
    assert attempts == 2
