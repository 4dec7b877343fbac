"""The exporters and statistics driven by real failures of the psycopg and redis adapters.

Real PostgreSQL and Redis servers on loopback (and the fault proxy) fail for real; the three
hooks are installed as the process-wide defaults, as a framework would, and write into the
OpenTelemetry SDK's in-memory reader and exporter, a CollectorRegistry and structlog's
capture. Each scenario runs sync and async.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis.exceptions as rx
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
import resilient_connect.psycopg as rc_psycopg
import resilient_connect.redis as rc_redis
import resilient_connect.structlog as rc_structlog
from harness import FaultProxy, PostgresServer, RedisServer

pytestmark = pytest.mark.integration

MakeProxy = Callable[..., FaultProxy]
MakeRedis = Callable[..., RedisServer]
FAST = rc.Backoff(initial=0.02, maximum=0.1, timeout=20)
REDIS_PASSWORD = "S3cr3t-PW 7f@1c:/%"


class Exporters:
    """The three hooks, installed as the process-wide defaults, and what they wrote."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.span_exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.registry = CollectorRegistry()
        self.hooks = (
            rc_otel.hook(meter_provider=self.meters, tracer_provider=self.tracers),
            rc_prometheus.hook(registry=self.registry),
            rc_structlog.hook(),
        )

    def otel_attempts(self) -> dict[tuple[str, str], int]:
        """OpenTelemetry attempt counts by (outcome, rule)."""
        data = self.reader.get_metrics_data()
        assert data is not None
        counts: dict[tuple[str, str], int] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "resilient_connect.attempts":
                        continue
                    for point in metric.data.data_points:
                        attributes = point.attributes
                        key = (str(attributes["outcome"]), str(attributes["rule"]))
                        counts[key] = counts.get(key, 0) + int(point.value)
        return counts

    def prometheus_attempts(self) -> dict[tuple[str, str], int]:
        """Prometheus attempt counts by (outcome, rule), from the registry's samples."""
        counts: dict[tuple[str, str], int] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "resilient_connect_attempts_total":
                    key = (sample.labels["outcome"], sample.labels["rule"])
                    counts[key] = counts.get(key, 0) + int(sample.value)
        return counts

    def targets(self) -> set[str]:
        return {
            sample.labels["target"]
            for metric in self.registry.collect()
            for sample in metric.samples
            if "target" in sample.labels
        }

    def spans(self) -> list[ReadableSpan]:
        return list(self.span_exporter.get_finished_spans())

    def everything(self) -> str:
        """All text the exporters produced: metric labels, span data."""
        texts = [repr(self.otel_attempts()), repr(self.targets())]
        for metric in self.registry.collect():
            texts.extend(repr(sample) for sample in metric.samples)
        texts.extend(span.to_json() for span in self.spans())
        return "\n".join(texts)


@pytest.fixture
def exporters() -> Iterator[Exporters]:
    """The three hooks as the process-wide defaults for the test, restored afterwards."""
    setup = Exporters()
    saved = rc.default_hooks()
    rc.set_default_hooks(*setup.hooks)
    try:
        yield setup
    finally:
        rc.set_default_hooks(*saved)
        setup.meters.shutdown()
        setup.tracers.shutdown()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run the scenario with the sync entry points and with their asyncio twins."""
    return str(request.param)


@contextmanager
def later(seconds: float, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` on a timer thread after ``seconds``; always joined at the end."""
    timer = threading.Timer(seconds, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join(30)


def pg_query(mode: str, conninfo: str, **kwargs: Any) -> Any:
    if mode == "sync":
        with rc_psycopg.connect_with_retry(conninfo, **kwargs) as conn:
            return conn.execute("select 1").fetchone()

    async def run() -> Any:
        async with await rc_psycopg.aconnect_with_retry(conninfo, **kwargs) as conn:
            cursor = await conn.execute("select 1")
            return await cursor.fetchone()

    return asyncio.run(run())


def redis_ping(mode: str, url: str, **kwargs: Any) -> Any:
    if mode == "sync":
        client = rc_redis.connect_with_retry(url, **kwargs)
        try:
            return client.ping()
        finally:
            client.close()

    async def run() -> Any:
        client = await rc_redis.aconnect_with_retry(url, **kwargs)
        try:
            return await client.ping()
        finally:
            await client.aclose()

    return asyncio.run(run())


def password_forms(password: str) -> set[str]:
    return {password, quote(password, safe=""), quote(password)}


# --------------------------------------------------------------------------- psycopg


def test_postgres_starting_up_then_ready(
    mode: str, exporters: Exporters, postgres: PostgresServer, fault_proxy: MakeProxy
) -> None:
    """The server's real "starting up" FATAL, then a connection: every exporter tells the same
    story (retries under pg:starting-up, one success) and collected statistics agree."""
    proxy = fault_proxy(postgres.address)
    proxy.replay_pg_fatal("57P03", "the database system is starting up")
    url = postgres.url_for(port=proxy.port)
    with capture_logs() as logs, rc.collect_statistics() as stats, later(0.3, proxy.pass_through):
        assert pg_query(mode, url, policy=FAST) == (1,)
    retries = stats.retries
    assert retries >= 1
    assert (stats.calls, stats.successes, stats.attempts) == (1, 1, retries + 1)
    assert stats.last_error is psycopg.OperationalError
    expected = {("retry", "pg:starting-up"): retries, ("success", ""): 1}
    assert exporters.otel_attempts() == expected
    assert exporters.prometheus_attempts() == expected
    [target] = exporters.targets()
    assert target == rc.redact(url)
    [span] = exporters.spans()
    assert span.status.status_code is StatusCode.UNSET
    assert len(span.events) == retries + 1
    assert [line["resilient_connect_event"] for line in logs] == ["RetryScheduled"] * retries + [
        "Recovered"
    ]
    assert {line["resilient_connect_rule"] for line in logs[:-1]} == {"pg:starting-up"}
    text = exporters.everything() + repr(logs)
    for secret in password_forms(postgres.password):
        assert secret not in text


def test_postgres_wrong_password_is_not_retried(
    mode: str, exporters: Exporters, postgres: PostgresServer
) -> None:
    """A real authentication failure: one not_retried attempt, an ERROR span, an error line."""
    with capture_logs() as logs, pytest.raises(psycopg.OperationalError):
        pg_query(mode, postgres.url_for(password="wrong-password"), policy=FAST)
    assert exporters.otel_attempts() == {("not_retried", "pg:auth-failed"): 1}
    assert exporters.prometheus_attempts() == {("not_retried", "pg:auth-failed"): 1}
    [span] = exporters.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None
    assert span.status.description.startswith("permanent error, not retried (pg:auth-failed)")
    [line] = logs
    assert (line["log_level"], line["resilient_connect_event"]) == ("error", "NotRetried")
    assert "wrong-password" not in exporters.everything() + repr(logs)


def test_postgres_refused_until_the_deadline(
    mode: str, exporters: Exporters, postgres: PostgresServer, free_port: int
) -> None:
    """Nothing listening: refused attempts, then gave_up with reason deadline everywhere."""
    policy = rc.Backoff(initial=0.02, maximum=0.05, timeout=0.5)
    with capture_logs() as logs, pytest.raises(rc.RetryExhausted):
        pg_query(mode, postgres.url_for(port=free_port), policy=policy)
    counts = exporters.prometheus_attempts()
    assert set(counts) == {("retry", "pg:refused"), ("gave_up", "pg:refused")}
    assert counts[("gave_up", "pg:refused")] == 1
    assert exporters.otel_attempts() == counts
    [span] = exporters.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert "deadline reached" in (span.status.description or "")
    assert logs[-1]["resilient_connect_reason"] == "deadline"


# --------------------------------------------------------------------------- redis


def test_redis_late_start_and_runtime_restart(
    exporters: Exporters, make_redis: MakeRedis, fault_proxy: MakeProxy
) -> None:
    """Refused until Redis listens (start-up wait), then a restart under a live client (the
    runtime bridge): both loops reach every exporter, the password in none."""
    server = make_redis(password=REDIS_PASSWORD)
    proxy = fault_proxy(server.address)
    proxy.refuse()
    url = server.url_for(port=proxy.port)
    with capture_logs() as logs, later(0.3, proxy.pass_through):
        client = rc_redis.connect_with_retry(
            url, policy=FAST, reconnect=rc.Backoff(initial=0.05, maximum=0.2, timeout=20)
        )
    try:
        startup = exporters.prometheus_attempts()
        assert startup[("success", "")] == 1
        assert {rule for outcome, rule in startup if outcome == "retry"} <= {
            "redis:connection",
            "redis:timeout",
        }
        proxy.cut_all()
        proxy.refuse()
        with capture_logs() as runtime_logs, later(0.3, proxy.pass_through):
            assert client.set("k", "v") is True
    finally:
        client.close()
    assert exporters.otel_attempts() == exporters.prometheus_attempts()
    assert [line["resilient_connect_event"] for line in runtime_logs][-1] == "Recovered"
    spans = exporters.spans()
    assert len(spans) == 2  # one per retrying call: the start-up wait, the runtime command
    assert all(span.status.status_code is StatusCode.UNSET for span in spans)
    text = exporters.everything() + repr(logs) + repr(runtime_logs)
    for secret in password_forms(REDIS_PASSWORD):
        assert secret not in text


def test_redis_wrong_password(mode: str, exporters: Exporters, redis_auth: RedisServer) -> None:
    """A real AUTH failure: one not_retried attempt under redis:auth-failed."""
    with pytest.raises(rx.AuthenticationError):
        redis_ping(mode, redis_auth.url_for(password="not-the-password"), policy=FAST)
    assert exporters.prometheus_attempts() == {("not_retried", "redis:auth-failed"): 1}
    assert exporters.otel_attempts() == {("not_retried", "redis:auth-failed"): 1}


def test_redis_first_time_success_counts(
    mode: str, exporters: Exporters, redis_server: RedisServer
) -> None:
    """A connect that works at once counts one success and makes no span and no log line."""
    with capture_logs() as logs:
        assert redis_ping(mode, redis_server.url) is True
    assert exporters.prometheus_attempts() == {("success", ""): 1}
    assert exporters.otel_attempts() == {("success", ""): 1}
    assert exporters.spans() == []
    assert logs == []
