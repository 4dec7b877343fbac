"""Pacing by cost: what a failure cost the server decides how soon the next attempt comes."""

from __future__ import annotations

import errno
import random
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient_connect as rc
from resilient_connect import Backoff
from resilient_connect._classify import Verdict, classifier_for, cost_of, os_error_verdict
from resilient_connect._engine import Retrier
from resilient_connect._policy import PROBE_SPREAD, SERVER_PAUSE, SERVER_SPREAD
from strategies import policies
from virtual_time import FakeTime


def _raised_while_refused(wrapper: type[Exception]) -> Exception:
    """A driver error raised while handling a refused connect, as redis-py does."""
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except OSError as exc:
            raise wrapper(f"Error {exc.errno} connecting to 127.0.0.1:1.")  # noqa: B904
    except wrapper as outer:
        return outer
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- cost_of


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        ConnectionRefusedError("raised by hand, no errno"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ],
)
def test_kernel_and_resolver_answers_are_free(exc: OSError) -> None:
    """Refused, unreachable and unresolvable connects cost the server nothing."""
    assert cost_of(exc) == "free"
    verdict = os_error_verdict(exc)
    assert verdict is not None
    assert verdict.cost == "free"


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("timed out"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        OSError("no errno"),
        ValueError("not an OS error"),
    ],
)
def test_other_errors_cost_is_unknown(exc: Exception) -> None:
    """A reset or a timeout may have cost the server a process: nothing is assumed."""
    assert cost_of(exc) == "unknown"


def test_cost_follows_the_chain_of_a_wrapping_driver_error() -> None:
    """A driver error raised while handling a refusal is free too."""
    assert cost_of(_raised_while_refused(RuntimeError)) == "free"


def test_user_classifiers_learn_the_cost_from_the_error() -> None:
    """``on=`` types and predicates keep their rule names and gain the cost."""
    by_type = classifier_for(OSError)
    assert by_type(ConnectionRefusedError()) == Verdict(
        transient=True, rule="on=(OSError)", cost="free"
    )
    assert by_type(TimeoutError()).cost == "unknown"
    by_predicate = classifier_for(lambda exc: isinstance(exc, OSError))
    assert by_predicate(ConnectionRefusedError()).cost == "free"
    assert not by_predicate(ValueError()).transient


def test_psycopg_rules_carry_their_cost() -> None:
    """Refused and DNS rules are free; 57P03 and 53300 cost the server a process."""
    pytest.importorskip("psycopg")
    import psycopg

    from resilient_connect.psycopg import classify

    def pg(message: str) -> Verdict:
        return classify(psycopg.OperationalError(message))

    assert pg('connection to server at "127.0.0.1", port 1 failed: Connection refused').cost == (
        "free"
    )
    assert pg("failed to resolve host 'db': [Errno -2] Name or service not known").cost == "free"
    assert pg("FATAL:  the database system is starting up").cost == "server"
    assert pg("FATAL:  sorry, too many clients already").cost == "server"
    assert pg("server closed the connection unexpectedly").cost == "unknown"
    assert pg("password authentication failed for user").cost == "unknown"


def test_redis_rules_carry_their_cost() -> None:
    """LOADING is the server's answer; a refusal inside a ConnectionError is free."""
    pytest.importorskip("redis")
    import redis

    from resilient_connect.redis import classify

    assert classify(redis.BusyLoadingError("LOADING")).cost == "server"
    assert classify(redis.ConnectionError("max number of clients reached")).cost == "server"
    assert classify(redis.ConnectionError("Connection reset by peer")).cost == "unknown"
    verdict = classify(_raised_while_refused(redis.ConnectionError))
    assert verdict == Verdict(transient=True, rule="redis:connection", cost="free")


# ---------------------------------------------------------------------------- the policy


def test_free_failures_probe_at_a_steady_pace() -> None:
    """After a free failure the wait is probe +/- 50%, whatever the retry number."""
    policy = Backoff()
    rng = random.Random(7)
    probe = policy.probe
    assert probe is not None
    waits = [policy.delay(retry, 0.1, rng, "free") for retry in range(2000)]
    assert min(waits) >= probe * (1 - PROBE_SPREAD)
    assert max(waits) <= probe * (1 + PROBE_SPREAD)
    assert sum(waits) / len(waits) == pytest.approx(probe, rel=0.03)
    assert max(waits[1000:]) > probe  # no growth, but the spread remains late in a call


def test_free_probe_modes() -> None:
    """'none' is lock-step, a float sets the spread, the cap still caps."""
    rng = random.Random(1)
    assert Backoff(jitter="none").delay(9, 0.1, rng, "free") == 0.4
    narrow = [Backoff(jitter=0.1).delay(3, 0.1, rng, "free") for _ in range(500)]
    assert 0.36 <= min(narrow) <= max(narrow) <= 0.44
    capped = [Backoff(maximum=0.3).delay(3, 0.1, rng, "free") for _ in range(500)]
    assert max(capped) <= 0.3


def test_attempt_limit_keeps_the_backoff_for_free_failures() -> None:
    """With attempts=N the count is spent by the backoff, not by fast probes."""
    policy = Backoff(attempts=6, jitter="none")
    assert list(policy.delays(cost="free")) == [0.1, 0.2, 0.4, 0.8, 1.6]


def test_server_answers_wait_at_least_the_pause_and_back_off() -> None:
    """At most one attempt a second while the server answers; growing while it repeats."""
    policy = Backoff(jitter="none")
    assert list(Backoff(attempts=6, jitter="none").delays(cost="server")) == [1, 2, 4, 5, 5]
    rng = random.Random(3)
    for _ in range(500):
        first = policy.replace(jitter="full").delay(40, 0.3, rng, "server")
        assert SERVER_PAUSE <= first <= SERVER_SPREAD * SERVER_PAUSE
    previous = 0.45
    for _ in range(30):
        previous = Backoff().delay(50, previous, rng, "server")
        assert SERVER_PAUSE <= previous <= 5.0
    assert Backoff(maximum=0.5).delay(0, 0.1, rng, "server") == 0.5  # the cap wins


def test_server_pause_with_float_jitter_stays_in_bounds() -> None:
    """Proportional jitter spreads the aim but never below the pause or above the cap."""
    rng = random.Random(5)
    waits = [Backoff(jitter=0.5, maximum=3).delay(5, 2.5, rng, "server") for _ in range(500)]
    assert min(waits) >= SERVER_PAUSE
    assert max(waits) <= 3


def test_probe_none_ignores_the_cost() -> None:
    """probe=None backs off from every failure alike (the schedule before pacing by cost)."""
    policy = Backoff(probe=None, attempts=6, jitter="none")
    expected = [0.1, 0.2, 0.4, 0.8, 1.6]
    assert list(policy.delays(cost="free")) == expected
    assert list(policy.delays(cost="server")) == expected


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "fast", True])
def test_probe_is_validated(bad: object) -> None:
    """A probe pace must be a positive number or None."""
    with pytest.raises(ValueError, match=r"^Backoff\.probe: "):
        Backoff(probe=bad)  # type: ignore[arg-type]


def test_probe_from_env() -> None:
    """RESILIENT_CONNECT_PROBE sets the pace; 'none' or 'off' turns pacing off."""
    assert Backoff.from_env(environ={"RESILIENT_CONNECT_PROBE": "0.3"}).probe == 0.3
    assert Backoff.from_env(environ={"RESILIENT_CONNECT_PROBE": "off"}).probe is None
    assert Backoff.from_env(environ={"RESILIENT_CONNECT_PROBE": "none"}).probe is None
    with pytest.raises(ValueError, match="RESILIENT_CONNECT_PROBE='soon': expected a number"):
        Backoff.from_env(environ={"RESILIENT_CONNECT_PROBE": "soon"})


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    costs=st.lists(st.sampled_from(["free", "server", "unknown"]), min_size=1, max_size=40),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_paced_delay_is_within_zero_and_cap(
    policy: Backoff, costs: list[Any], seed: int
) -> None:
    """Whatever the mix of costs, every delay lies in [0, maximum]; server waits >= the pause."""
    rng = random.Random(seed)
    previous = policy.initial
    for retry, cost in enumerate(costs):
        previous = policy.delay(retry, previous, rng, cost)
        assert 0 <= previous <= policy.maximum
        if cost == "server" and policy.probe is not None:
            assert previous >= min(SERVER_PAUSE, policy.maximum)


# ---------------------------------------------------------------------------- the engine


def _run(errors: list[Exception], policy: Backoff) -> FakeTime:
    time = FakeTime(0.0)
    pending = list(errors)

    @rc.retry(on=OSError, policy=policy, hooks=(), clock=time.clock, sleep=time.sleep)
    def step() -> str:
        if pending:
            raise pending.pop(0)
        return "ok"

    assert step() == "ok"
    return time


def test_engine_passes_the_verdict_cost_to_the_policy() -> None:
    """Refusals are probed at the steady pace, resets back off as before."""
    refusals = _run([ConnectionRefusedError() for _ in range(8)], Backoff(jitter="none"))
    assert refusals.sleeps == [0.4] * 8
    resets = _run([ConnectionResetError() for _ in range(4)], Backoff(jitter="none"))
    assert resets.sleeps == [0.1, 0.2, 0.4, 0.8]


def test_engine_server_answers_are_paced() -> None:
    """A classifier that says 'server' gets waits of at least a second."""
    time = FakeTime(0.0)
    verdict = Verdict(transient=True, rule="test:busy", cost="server")
    retrier = Retrier(
        policy=Backoff(jitter="none"),
        classify=lambda exc: verdict,
        target="t",
        hooks=(),
        clock=time.clock,
        sleep=time.sleep,
    )
    failures = iter(range(3))

    def attempt(_: object) -> str:
        if next(failures, None) is not None:
            raise RuntimeError("busy")
        return "ok"

    assert retrier.call(attempt) == "ok"
    assert time.sleeps == [1.0, 2.0, 4.0]


def test_zero_delays_skip_the_sleep() -> None:
    """A zero wait does not call sleep at all (time.sleep(0) is a system call)."""
    time = _run(
        [ConnectionResetError() for _ in range(3)], Backoff(initial=0, jitter="none", attempts=10)
    )
    assert time.sleeps == []
