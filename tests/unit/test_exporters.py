"""The OpenTelemetry, Prometheus and structlog hooks against the real libraries, in virtual time.

The engine runs on a virtual clock, so durations and waits are exact numbers; the hooks
write into the OpenTelemetry SDK's in-memory metric reader and span exporter, a fresh
prometheus_client CollectorRegistry, and structlog's capture_logs.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import resilient_connect as rc
import resilient_connect.opentelemetry as rc_otel
import resilient_connect.prometheus as rc_prometheus
import resilient_connect.structlog as rc_structlog
from virtual_time import FakeTime

POLICY = rc.Backoff(initial=0.5, multiplier=2, maximum=10, jitter="none", attempts=3, timeout=None)
TARGET = "postgresql://app:hunter2@db:5432/app"


def scenario(time: FakeTime, hooks: list[Any], errors: list[Exception], cost: float) -> Any:
    """A decorated function on the virtual clock raising ``errors``; each attempt costs ``cost``."""
    pending = list(errors)

    @rc.retry(
        on=ConnectionError,
        policy=POLICY,
        target=TARGET,
        hooks=hooks,
        clock=time.clock,
        sleep=time.sleep,
        asleep=time.asleep,
    )
    def connect() -> str:
        time.now += cost
        if pending:
            raise pending.pop(0)
        return "ok"

    def run(new_errors: list[Exception] | None = None) -> str:
        pending.extend(new_errors or [])
        return connect()

    return run


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError("connection refused (password ***)")


# --------------------------------------------------------------------------- OpenTelemetry


class Otel:
    """An SDK meter provider with an in-memory reader and a tracer provider with an exporter."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.spans))

    def hook(self, **options: Any) -> rc_otel.OpenTelemetryHook:
        return rc_otel.hook(meter_provider=self.meters, tracer_provider=self.tracers, **options)

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        [resource] = data.resource_metrics
        [scope] = resource.scope_metrics
        assert scope.scope.name == "resilient_connect"
        assert scope.scope.version == rc.__version__
        return {metric.name: metric for metric in scope.metrics}

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        metric = self.metrics()[name]
        return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


@pytest.fixture
def otel() -> Iterator[Otel]:
    setup = Otel()
    yield setup
    setup.meters.shutdown()
    setup.tracers.shutdown()


def key(**attributes: str) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(attributes.items()))


SHOWN = "postgresql://app:***@db:5432/app"
RULE = "on=(ConnectionError)"


def test_otel_metric_names_units_and_attributes(otel: Otel) -> None:
    """Recovery, first-time success and give-up: attempts by outcome, durations, backoff."""
    time = FakeTime(100.0, yields=True)
    run = scenario(time, [otel.hook()], [refused()], cost=0.25)
    assert run() == "ok"  # retry, success
    assert run() == "ok"  # first-time success
    with pytest.raises(rc.RetryExhausted):
        run([refused(), refused(), refused()])  # retry, retry, gave_up
    metrics = otel.metrics()
    assert set(metrics) == {
        "resilient_connect.attempts",
        "resilient_connect.attempt.duration",
        "resilient_connect.backoff.duration",
    }
    assert metrics["resilient_connect.attempts"].unit == "{attempt}"
    assert metrics["resilient_connect.attempt.duration"].unit == "s"
    assert metrics["resilient_connect.backoff.duration"].unit == "s"
    attempts = otel.points("resilient_connect.attempts")
    assert {k: p.value for k, p in attempts.items()} == {
        key(outcome="retry", rule=RULE, target=SHOWN): 3,
        key(outcome="success", rule="", target=SHOWN): 2,
        key(outcome="gave_up", rule=RULE, target=SHOWN): 1,
    }
    durations = otel.points("resilient_connect.attempt.duration")
    retry_durations = durations[key(outcome="retry", rule=RULE, target=SHOWN)]
    assert (retry_durations.count, retry_durations.sum) == (3, 0.75)
    # Seconds buckets, not the SDK's millisecond-shaped defaults.
    assert tuple(retry_durations.explicit_bounds)[:3] == (0.005, 0.01, 0.025)
    [backoff] = otel.points("resilient_connect.backoff.duration").values()
    assert dict(backoff.attributes) == {"rule": RULE, "target": SHOWN}
    assert (backoff.count, backoff.sum) == (3, 0.5 + 0.5 + 1.0)


def test_otel_without_successes_counts_only_recoveries(otel: Otel) -> None:
    """successes=False: first-time successes are not sent to the hook, recoveries still are."""
    time = FakeTime(100.0, yields=True)
    hook = otel.hook(successes=False)
    assert hook.wants_successes is False
    run = scenario(time, [hook], [refused()], cost=0.0)
    run()
    run()
    attempts = otel.points("resilient_connect.attempts")
    assert attempts[key(outcome="success", rule="", target=SHOWN)].value == 1


def test_otel_one_span_per_retrying_call_with_an_event_per_attempt(otel: Otel) -> None:
    """A recovered call: one span, back-dated to its start, three attempt events, status unset;
    a first-time success makes no span."""
    time = FakeTime(100.0, yields=True)
    run = scenario(time, [otel.hook()], [refused(), refused()], cost=0.25)
    tracer = otel.tracers.get_tracer("test")
    with tracer.start_as_current_span("request") as parent:
        run()
        run()
    spans = {span.name: span for span in otel.finished()}
    assert set(spans) == {"request", f"retry {SHOWN}"}
    span = spans[f"retry {SHOWN}"]
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {"target": SHOWN, "attempts": 3, "outcome": "success"}
    assert [e.name for e in span.events] == ["attempt"] * 3
    first, second, last = (dict(e.attributes or {}) for e in span.events)
    assert first == {
        "attempt": 1,
        "outcome": "retry",
        "rule": RULE,
        "duration": 0.25,
        "delay": 0.5,
        "exception.type": "ConnectionRefusedError",
        "exception.message": "ConnectionRefusedError: connection refused (password ***)",
    }
    assert (second["attempt"], second["delay"]) == (2, 1.0)
    assert last == {"attempt": 3, "outcome": "success", "rule": "", "duration": 0.25}
    assert span.start_time is not None
    assert span.end_time is not None
    # On the engine's (virtual) clock: 3 attempts of 0.25 s and 1.5 s of waits.
    assert span.end_time - span.start_time == pytest.approx(2.25e9, abs=10)
    assert [e.timestamp - span.start_time for e in span.events] == pytest.approx(
        [0.25e9, 1.0e9, 2.25e9], abs=10
    )


def test_otel_span_status_is_error_on_give_up_and_permanent_error(otel: Otel) -> None:
    """Giving up and a permanent error set the span's status to ERROR with the reason."""
    time = FakeTime(100.0, yields=True)
    run = scenario(time, [otel.hook()], [], cost=0.0)
    with pytest.raises(rc.RetryExhausted):
        run([refused()] * 3)
    with pytest.raises(KeyError):
        run([KeyError("k")])
    gave_up, permanent = otel.finished()
    assert gave_up.status.status_code is StatusCode.ERROR
    # The same line as RetryExhausted's (one place builds it: _errors.gave_up_line).
    assert gave_up.status.description == (
        "gave up after 3 attempts in 1.50s (no attempts left); "
        "last error: ConnectionRefusedError: connection refused (password ***)"
    )
    assert (gave_up.attributes or {})["outcome"] == "gave_up"
    assert permanent.status.status_code is StatusCode.ERROR
    assert permanent.status.description == (
        "permanent error, not retried (not on=(ConnectionError)): KeyError: 'k'"
    )
    assert len(permanent.events) == 1


def test_otel_span_of_a_cancelled_call_is_ended_as_abandoned(otel: Otel) -> None:
    """A task cancelled during its backoff has its span ended (outcome "abandoned") once the
    engine drops the call, instead of leaking an open span."""
    hook = otel.hook()

    @rc.retry(on=ConnectionError, hooks=[hook], policy=rc.Backoff(initial=30, jitter="none"))
    async def forever() -> None:
        raise refused()

    async def main() -> None:
        task = asyncio.create_task(forever())
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task

    asyncio.run(main())
    gc.collect()
    [span] = otel.finished()
    assert (span.attributes or {})["outcome"] == "abandoned"
    assert len(span.events) == 1
    assert hook._open == {}


def test_otel_hook_uses_the_global_providers_by_default() -> None:
    """hook() with no provider records through the global ones (here: the API's no-op default)."""
    hook = rc_otel.hook()
    assert hook.wants_successes is True
    hook(rc.Succeeded(target="t", attempt=1, elapsed=0.1, exception=None, cause="", duration=0.1))
    assert trace.get_tracer_provider() is not None


def test_otel_ignores_events_of_unknown_kinds(otel: Otel) -> None:
    """An Event that ends no attempt (a plain Event) records nothing."""
    hook = otel.hook()
    hook(rc.Event(target="t", attempt=1, elapsed=0.0, exception=None, cause=""))
    assert otel.reader.get_metrics_data() is None or not otel.metrics()


# --------------------------------------------------------------------------- Prometheus


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_prometheus_names_and_labels_as_exported() -> None:
    """The scrape shows _total and _seconds names with outcome/rule/target labels only."""
    registry = CollectorRegistry()
    time = FakeTime(100.0, yields=True)
    run = scenario(time, [rc_prometheus.hook(registry=registry)], [refused()], cost=0.25)
    run()
    run()
    with pytest.raises(rc.RetryExhausted):
        run([refused()] * 3)
    retry = {"outcome": "retry", "rule": RULE, "target": SHOWN}
    success = {"outcome": "success", "rule": "", "target": SHOWN}
    gave_up = {"outcome": "gave_up", "rule": RULE, "target": SHOWN}
    assert sample(registry, "resilient_connect_attempts_total", **retry) == 3
    assert sample(registry, "resilient_connect_attempts_total", **success) == 2
    assert sample(registry, "resilient_connect_attempts_total", **gave_up) == 1
    assert sample(registry, "resilient_connect_attempt_duration_seconds_count", **retry) == 3
    assert sample(registry, "resilient_connect_attempt_duration_seconds_sum", **retry) == 0.75
    assert (
        sample(registry, "resilient_connect_attempt_duration_seconds_bucket", le="0.25", **retry)
        == 3
    )
    backoff = {"rule": RULE, "target": SHOWN}
    assert sample(registry, "resilient_connect_backoff_duration_seconds_count", **backoff) == 3
    assert sample(registry, "resilient_connect_backoff_duration_seconds_sum", **backoff) == 2.0
    names = {metric.name for metric in registry.collect()}
    assert names == {
        "resilient_connect_attempts",
        "resilient_connect_attempt_duration_seconds",
        "resilient_connect_backoff_duration_seconds",
    }
    labels = {frozenset(s.labels) - {"le"} for metric in registry.collect() for s in metric.samples}
    assert labels == {frozenset({"outcome", "rule", "target"}), frozenset({"rule", "target"})}
    text = "".join(str(s) for metric in registry.collect() for s in metric.samples)
    assert "hunter2" not in text


def test_prometheus_hooks_share_one_registrys_metrics() -> None:
    """Two hooks for the same registry register the metrics once and add to the same series."""
    registry = CollectorRegistry()
    first, second = rc_prometheus.hook(registry=registry), rc_prometheus.hook(registry=registry)
    event = rc.Succeeded(target="t", attempt=1, elapsed=0.1, exception=None, cause="", duration=0.1)
    first(event)
    second(event)
    labels = {"outcome": "success", "rule": "", "target": "t"}
    assert sample(registry, "resilient_connect_attempts_total", **labels) == 2
    first(rc.Event(target="t", attempt=1, elapsed=0.0, exception=None, cause=""))
    assert sample(registry, "resilient_connect_attempts_total", **labels) == 2


def test_prometheus_default_registry() -> None:
    """hook() with no registry writes to prometheus_client.REGISTRY."""
    import prometheus_client

    hook = rc_prometheus.hook(successes=False)
    assert hook.wants_successes is False
    labels = {"outcome": "success", "rule": "", "target": "default-registry-test"}
    before = prometheus_client.REGISTRY.get_sample_value("resilient_connect_attempts_total", labels)
    hook(rc.Recovered(target=labels["target"], attempt=2, elapsed=1, exception=None, cause=""))
    after = prometheus_client.REGISTRY.get_sample_value("resilient_connect_attempts_total", labels)
    assert (before or 0) + 1 == after


# --------------------------------------------------------------------------- structlog


def test_structlog_lines_carry_the_default_hooks_keys() -> None:
    """Retry, recovery and give-up lines: levels, messages and keys as the stdlib hook's."""
    time = FakeTime(100.0, yields=True)
    with capture_logs() as logs:
        run = scenario(time, [rc_structlog.hook()], [refused()], cost=0.25)
        run()
        run()  # first-time success: no line
        with pytest.raises(rc.RetryExhausted):
            run([refused()] * 3)
    assert [line["log_level"] for line in logs] == [
        "warning",
        "info",
        "warning",
        "warning",
        "error",
    ]
    retry, recovered = logs[0], logs[1]
    call = retry["resilient_connect_call"]
    assert retry == {
        "event": f"{SHOWN}: attempt 1 failed: ConnectionRefusedError: connection refused "
        f"(password ***); retrying in 0.50s ({RULE}, 0.25s elapsed)",
        "log_level": "warning",
        "resilient_connect_event": "RetryScheduled",
        "resilient_connect_target": SHOWN,
        "resilient_connect_attempt": 1,
        "resilient_connect_elapsed": 0.25,
        "resilient_connect_cause": "ConnectionRefusedError: connection refused (password ***)",
        "resilient_connect_delay": 0.5,
        "resilient_connect_rule": RULE,
        "resilient_connect_duration": 0.25,
        "resilient_connect_call": call,
    }
    assert recovered["resilient_connect_event"] == "Recovered"
    assert recovered["resilient_connect_call"] == call
    assert recovered["event"] == f"{SHOWN}: succeeded on attempt 2 after 1.00s"
    gave_up = logs[-1]
    assert gave_up["resilient_connect_event"] == "GaveUp"
    assert gave_up["resilient_connect_reason"] == "attempts"
    assert gave_up["resilient_connect_call"] != call
    assert all("hunter2" not in str(line) for line in logs)


def test_structlog_permanent_error_and_given_logger() -> None:
    """A permanent error logs at error through the logger given, with its bound context."""
    time = FakeTime(100.0, yields=True)
    logger = structlog.get_logger("app").bind(service="api")
    with capture_logs() as logs:
        run = scenario(time, [rc_structlog.hook(logger=logger)], [KeyError("k")], cost=0.0)
        with pytest.raises(KeyError):
            run()
    [line] = logs
    assert line["log_level"] == "error"
    assert line["service"] == "api"
    assert line["resilient_connect_event"] == "NotRetried"
    assert line["resilient_connect_rule"] == "not on=(ConnectionError)"
    assert rc_structlog.hook().wants_successes is False


# --------------------------------------------------------------------------- shared


@pytest.mark.parametrize(
    ("make", "library", "extra"),
    [
        (rc_otel.hook, "opentelemetry", "otel"),
        (rc_prometheus.hook, "prometheus_client", "prometheus"),
        (rc_structlog.hook, "structlog", "structlog"),
    ],
)
def test_missing_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], object], library: str, extra: str
) -> None:
    """Without its library, hook() raises ImportError telling which extra to install."""
    monkeypatch.setitem(sys.modules, library, None)
    with pytest.raises(ImportError, match=rf"resilient-connect with its '{extra}' extra"):
        make()


def test_all_three_as_default_hooks_together() -> None:
    """Installed as process-wide defaults, the three hooks all see a decorated call's events."""
    registry = CollectorRegistry()
    setup = Otel()
    saved = rc.default_hooks()
    try:
        rc.set_default_hooks(
            rc.log_event,
            setup.hook(),
            rc_prometheus.hook(registry=registry),
            rc_structlog.hook(),
        )
        time = FakeTime(100.0, yields=True)
        pending = [refused()]

        @rc.retry(on=ConnectionError, clock=time.clock, sleep=time.sleep, target="cache")
        def call() -> int:
            if pending:
                raise pending.pop()
            return 1

        with capture_logs() as logs:
            call()
            call()
    finally:
        rc.set_default_hooks(*saved)
    labels = {"outcome": "success", "rule": "", "target": "cache"}
    assert sample(registry, "resilient_connect_attempts_total", **labels) == 2
    assert setup.points("resilient_connect.attempts")[key(**labels)].value == 2
    assert [line["resilient_connect_event"] for line in logs] == ["RetryScheduled", "Recovered"]
    assert len(setup.finished()) == 1
