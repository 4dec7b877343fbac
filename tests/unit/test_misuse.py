"""Policies that would loop or crash are refused at construction; bugs in ``on=``
predicates and hooks never hide the error they were handling."""

from __future__ import annotations

import traceback

import pytest

import resilient_connect as rc
from resilient_connect._policy import MAX_SECONDS, PolicyError


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"maximum": 0}, "maximum"),
        ({"initial": 0}, "initial"),
        ({"initial": 0, "maximum": 0, "timeout": None, "attempts": None}, "maximum"),
    ],
)
def test_a_policy_that_never_waits_needs_an_attempt_limit(
    fields: dict[str, object], field: str
) -> None:
    """Every delay 0 and no attempt limit is a tight loop: refused, naming the field."""
    with pytest.raises(PolicyError, match="never waits") as caught:
        rc.Backoff(**fields)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"Backoff.{field}: ")


def test_a_policy_that_never_waits_is_fine_with_an_attempt_limit() -> None:
    """``initial=0, attempts=N`` (tests, benchmarks) stays allowed: it ends by itself."""
    policy = rc.Backoff(initial=0, maximum=0, attempts=3, jitter="none")
    assert list(policy.delays()) == [0.0, 0.0]


@pytest.mark.parametrize("field", ["initial", "maximum", "timeout"])
def test_durations_beyond_max_seconds_are_refused(field: str) -> None:
    """A duration the platform's sleep cannot take (OverflowError) is refused up front."""
    with pytest.raises(PolicyError, match="<= 1e\\+09 seconds") as caught:
        rc.Backoff(**{field: 1e300})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert rc.Backoff(**{field: MAX_SECONDS}).replace()  # type: ignore[arg-type]


def test_from_env_names_the_variable_of_a_never_waiting_policy() -> None:
    """RESILIENT_CONNECT_MAXIMUM=0 is a ValueError naming the variable."""
    with pytest.raises(ValueError, match="RESILIENT_CONNECT_MAXIMUM='0'"):
        rc.Backoff.from_env(environ={"RESILIENT_CONNECT_MAXIMUM": "0"})


def test_a_raising_predicate_keeps_the_real_error_as_its_cause() -> None:
    """A bug in ``on=`` propagates, chained from the error it was asked about."""

    def buggy(exc: BaseException) -> bool:
        raise KeyError("predicate bug")

    @rc.retry(on=buggy, hooks=())
    def connect() -> None:
        raise ConnectionRefusedError("refused by the server")

    with pytest.raises(KeyError) as caught:
        connect()
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    text = "".join(traceback.format_exception(caught.value))
    assert "refused by the server" in text
    assert "predicate bug" in text


@pytest.mark.parametrize("event_type", [rc.RetryScheduled, rc.GaveUp, rc.NotRetried])
def test_a_raising_hook_keeps_the_real_error_as_its_cause(event_type: type) -> None:
    """A hook that raises on a retry, a give-up or a permanent error propagates, chained
    from the attempt's error (which would otherwise vanish)."""

    def hook(event: rc.Event) -> None:
        if isinstance(event, event_type):
            raise RuntimeError("hook bug")

    permanent = event_type is rc.NotRetried

    @rc.retry(
        on=(lambda exc: not permanent),
        hooks=[hook],
        policy=rc.Backoff(attempts=2),
        sleep=lambda _s: None,
    )
    def connect() -> None:
        raise ConnectionRefusedError("refused by the server")

    with pytest.raises(RuntimeError, match="hook bug") as caught:
        connect()
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
