"""Pacing by cost against real drivers: refusals are probed steadily, server answers paced."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import resilient_connect as rc
from harness import FaultProxy, PostgresServer, RedisServer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis

pytestmark = pytest.mark.integration

MakeProxy = Callable[..., FaultProxy]


class Waits:
    """A hook keeping (rule, cost-driven delay) of every scheduled retry."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, float]] = []

    def __call__(self, event: rc.Event) -> None:
        if isinstance(event, rc.RetryScheduled):
            self.retries.append((event.rule, event.delay))


def test_psycopg_refusals_are_probed_at_the_steady_pace(free_port: int) -> None:
    """Connection refused is pg:refused, and every wait is probe +/- 50%."""
    waits = Waits()
    with pytest.raises(rc.RetryExhausted):
        rc_psycopg.connect_with_retry(
            f"host=127.0.0.1 port={free_port} user=app dbname=app",
            policy=rc.Backoff(timeout=1.5),
            hooks=(waits,),
        )
    assert len(waits.retries) >= 2
    # The last wait may be the engine's "last call" (half the time left).
    for rule, delay in waits.retries[:-1]:
        assert rule == "pg:refused"
        assert 0.2 <= delay <= 0.6


def test_psycopg_starting_up_waits_at_least_a_second(
    postgres: PostgresServer, fault_proxy: MakeProxy
) -> None:
    """A real 57P03 'starting up' answer is paced to at most one attempt a second."""
    proxy = fault_proxy(postgres.address)
    proxy.replay_pg_fatal("57P03", "the database system is starting up")
    waits = Waits()
    with pytest.raises(rc.RetryExhausted):
        rc_psycopg.connect_with_retry(
            postgres.url_for(port=proxy.port), policy=rc.Backoff(timeout=2.5), hooks=(waits,)
        )
    assert waits.retries
    assert waits.retries[0][0] == "pg:starting-up"
    assert 1.0 <= waits.retries[0][1] <= 1.5
    assert proxy.accepted <= 3  # 2.5 s: at most one attempt a second plus the last call


def test_redis_refusals_are_free(free_port: int) -> None:
    """redis-py's ConnectionError for a refused connect is probed at the steady pace."""
    waits = Waits()
    with pytest.raises(rc.RetryExhausted):
        rc_redis.connect_with_retry(
            f"redis://127.0.0.1:{free_port}/0", policy=rc.Backoff(timeout=1.5), hooks=(waits,)
        )
    assert len(waits.retries) >= 2
    for rule, delay in waits.retries[:-1]:
        assert rule == "redis:connection"
        assert 0.2 <= delay <= 0.6


def test_redis_loading_is_paced(redis_server: RedisServer, fault_proxy: MakeProxy) -> None:
    """LOADING is the server's own answer: at least a second before the next attempt."""
    from harness import resp_error

    proxy = fault_proxy(redis_server.address)
    proxy.replay(resp_error("LOADING Redis is loading the dataset in memory"))
    waits = Waits()
    with pytest.raises(rc.RetryExhausted):
        rc_redis.connect_with_retry(
            redis_server.url_for(port=proxy.port), policy=rc.Backoff(timeout=2.0), hooks=(waits,)
        )
    assert waits.retries
    assert waits.retries[0][0] == "redis:loading"
    assert waits.retries[0][1] >= 1.0
