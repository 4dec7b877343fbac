"""What the exporters (OpenTelemetry, Prometheus, structlog) share: outcomes and buckets.

Every attempt ends in exactly one event, so counting events by outcome counts
attempts. Labels stay low-cardinality: the outcome, the classification rule
and the (redacted) target; never the attempt number or the error text.
"""

from __future__ import annotations

from ._events import GaveUp, NotRetried, Recovered, RetryScheduled, Succeeded

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._events import Event

#: ``outcome`` label of the attempt an event ends.
OUTCOMES: dict[type, str] = {
    RetryScheduled: "retry",
    GaveUp: "gave_up",
    NotRetried: "not_retried",
    Recovered: "success",
    Succeeded: "success",
}

#: Histogram bucket upper bounds in seconds, for attempt durations and backoff waits: from
#: a quick refusal (milliseconds) to a hung connect or the 5 s default cap, and beyond.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def outcome_of(event: Event) -> str | None:
    """The outcome of the attempt ``event`` ends, or ``None`` for an event of another kind."""
    return OUTCOMES.get(type(event))


def rule_of(event: Event) -> str:
    """The classification rule of a failed attempt; ``""`` for a success."""
    rule = getattr(event, "rule", "")
    return rule if isinstance(rule, str) else ""


def missing_extra(library: str, extra: str) -> ImportError:
    """The error for an exporter whose library is not installed, naming the extra."""
    # Not "pip install resilient-connect[...]": the package is not on PyPI.
    msg = f"this hook needs {library}: install it, or resilient-connect with its {extra!r} extra"
    return ImportError(msg)
