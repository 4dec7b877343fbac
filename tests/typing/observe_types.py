"""Checked by mypy --strict in CI: default hooks, exporters and statistics are typed."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from typing_extensions import assert_type

import resilient_connect as rc
import resilient_connect.opentelemetry as rc_otel
import resilient_connect.prometheus as rc_prometheus
import resilient_connect.structlog as rc_structlog


@rc.retry(on=ConnectionError)
def fetch(url: str) -> bytes:
    return url.encode()


def hooks() -> None:
    otel = rc_otel.hook(successes=False)
    prometheus = rc_prometheus.hook(registry=CollectorRegistry())
    structlog = rc_structlog.hook()
    rc.set_default_hooks(rc.log_event, otel, prometheus, structlog)
    assert_type(rc.default_hooks(), tuple[Callable[[rc.Event], object], ...])
    assert_type(otel.wants_successes, bool)
    rc.connect_with_retry(fetch, "x", hooks=[otel, prometheus])


def statistics() -> None:
    stats = rc.RetryStatistics.of(fetch)
    assert_type(stats.retries, int)
    assert_type(stats.waited, float)
    assert_type(stats.last_error, type[BaseException] | None)
    assert_type(stats.snapshot(), rc.RetryStatistics)
    with rc.collect_statistics() as collected:
        assert_type(collected, rc.RetryStatistics)
    assert_type(fetch("x"), bytes)


def events(event: rc.Event) -> None:
    assert_type(event.duration, float)
    assert_type(event.call, rc.Call | None)
    if event.call is not None:
        assert_type(event.call.id, int)
