"""Export retries as OpenTelemetry metrics and traces: ``hook()`` returns the hook.

Needs the ``[otel]`` extra (``opentelemetry-api``); you bring the SDK and its
exporters as usual. The library is imported when :func:`hook` is called, not
when this module is.

Metrics, on the meter ``resilient_connect``:

* ``resilient_connect.attempts`` (counter, ``{attempt}``): one per attempt
  that ended, with attributes ``outcome`` (``"success"``, ``"retry"``,
  ``"gave_up"``, ``"not_retried"``), ``rule`` (the classification rule, ``""``
  for a success) and ``target`` (redacted);
* ``resilient_connect.attempt.duration`` (histogram, ``s``): how long each
  attempt took, same attributes;
* ``resilient_connect.backoff.duration`` (histogram, ``s``): each wait
  scheduled before a retry, attributes ``rule`` and ``target``.

No attribute has per-attempt values (no attempt number, no error text), so the
number of series stays bounded by targets x rules.

Traces, on the tracer ``resilient_connect``: one span per call that failed at
least once, named ``retry <target>``, started when that call started (back-dated
from the first event) as a child of the span current then, with one span event
``attempt`` per attempt (number, outcome, rule, duration, delay, error type and
redacted message). Its status is set to ERROR when the call gives up or meets a
permanent error, with the reason as description; a recovery leaves it unset. A
call cancelled or interrupted mid-way (no final event) gets its span ended with
``outcome="abandoned"`` once the engine drops the call.
"""

from __future__ import annotations

from ._errors import gave_up_line
from ._events import GaveUp, NotRetried, RetryScheduled, Succeeded
from ._exporting import DURATION_BUCKETS, missing_extra, outcome_of, rule_of
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from opentelemetry.metrics import Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from ._events import Call, Event

__all__ = ["OpenTelemetryHook", "hook"]

SCOPE_NAME = "resilient_connect"
ATTEMPTS = "resilient_connect.attempts"
ATTEMPT_DURATION = "resilient_connect.attempt.duration"
BACKOFF_DURATION = "resilient_connect.backoff.duration"


def hook(
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    successes: bool = True,
) -> OpenTelemetryHook:
    """A hook that records every event as OpenTelemetry metrics and spans.

    ``meter_provider`` / ``tracer_provider`` default to the global providers
    (which may be configured after this call). ``successes=True`` also counts
    calls whose first attempt succeeded (``outcome="success"``), which costs a
    few microseconds per such call; ``False`` keeps the success path free and
    counts successes only after retries.
    """
    try:
        from opentelemetry import metrics, trace
    except ImportError as exc:
        raise missing_extra("opentelemetry-api", "otel") from exc
    meter = metrics.get_meter(SCOPE_NAME, __version__, meter_provider)
    tracer = trace.get_tracer(SCOPE_NAME, __version__, tracer_provider)
    return OpenTelemetryHook(meter, tracer, successes=successes)


class OpenTelemetryHook:
    """The hook :func:`hook` returns; call it with an :class:`~resilient_connect.Event`.

    ``wants_successes`` tells the engine whether to send it
    :class:`~resilient_connect.Succeeded` events. Safe to share between
    threads, tasks and any number of retry loops.
    """

    __slots__ = (
        "_attempt_duration",
        "_attempts",
        "_backoff",
        "_open",
        "_tracer",
        "wants_successes",
    )

    def __init__(self, meter: Meter, tracer: Tracer, *, successes: bool = True) -> None:
        self.wants_successes = successes
        self._tracer = tracer
        self._attempts = meter.create_counter(
            ATTEMPTS, unit="{attempt}", description="Attempts of retrying calls, by outcome."
        )
        self._attempt_duration = meter.create_histogram(
            ATTEMPT_DURATION,
            unit="s",
            description="Duration of each attempt of a retrying call.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._backoff = meter.create_histogram(
            BACKOFF_DURATION,
            unit="s",
            description="Wait scheduled before each retry.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        # Open spans by call id: the span, its start (ns since the epoch) and the finalizer
        # that ends it if the engine drops its call without a final event.
        self._open: dict[int, tuple[Span, int, Any]] = {}

    def __call__(self, event: Event) -> None:
        outcome = outcome_of(event)
        if outcome is None:
            return
        rule = rule_of(event)
        attributes = {"outcome": outcome, "rule": rule, "target": event.target}
        self._attempts.add(1, attributes)
        self._attempt_duration.record(event.duration, attributes)
        if isinstance(event, RetryScheduled):
            self._backoff.record(event.delay, {"rule": rule, "target": event.target})
        if event.call is not None and not isinstance(event, Succeeded):
            self._trace(event, event.call, outcome, rule)

    def _trace(self, event: Event, call: Call, outcome: str, rule: str) -> None:
        entry = self._open.get(call.id)
        if entry is None:
            entry = self._start(event, call)
        span, started, finalizer = entry
        # Times follow the engine's clock (virtual in tests), anchored at the span's start.
        at = started + int(event.elapsed * 1e9)
        details: dict[str, str | int | float] = {
            "attempt": event.attempt,
            "outcome": outcome,
            "rule": rule,
            "duration": event.duration,
        }
        if isinstance(event, RetryScheduled):
            details["delay"] = event.delay
        if event.exception is not None:
            details["exception.type"] = type(event.exception).__qualname__
            details["exception.message"] = event.cause
        span.add_event("attempt", details, timestamp=at)
        if outcome == "retry":
            return
        self._open.pop(call.id, None)
        finalizer.detach()
        span.set_attribute("attempts", event.attempt)
        span.set_attribute("outcome", outcome)
        if isinstance(event, (GaveUp, NotRetried)):
            from opentelemetry.trace import StatusCode

            span.set_status(StatusCode.ERROR, _failure(event))
        span.end(end_time=at)

    def _start(self, event: Event, call: Call) -> tuple[Span, int, Any]:
        import time
        import weakref

        started = time.time_ns() - int(event.elapsed * 1e9)
        span = self._tracer.start_span(
            f"retry {event.target}", attributes={"target": event.target}, start_time=started
        )
        finalizer = weakref.finalize(call, _abandon, self._open, call.id)
        finalizer.atexit = False
        entry = (span, started, finalizer)
        self._open[call.id] = entry
        return entry


def _failure(event: GaveUp | NotRetried) -> str:
    if isinstance(event, GaveUp):
        line = gave_up_line(event.attempt, event.elapsed, event.reason, event.nested)
        return f"{line}; last error: {event.cause}"
    return f"permanent error, not retried ({event.rule}): {event.cause}"


def _abandon(open_spans: dict[int, tuple[Span, int, Any]], call_id: int) -> None:
    """End the span of a call that the engine dropped without a final event."""
    entry = open_spans.pop(call_id, None)
    if entry is not None:
        entry[0].set_attribute("outcome", "abandoned")
        entry[0].end()
