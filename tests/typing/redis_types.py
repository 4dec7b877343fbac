"""Checked by mypy --strict: the redis adapter returns redis-py's own client types."""

from __future__ import annotations

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.retry
from typing_extensions import assert_type

import resilient_connect as rc
from resilient_connect._classify import Verdict
from resilient_connect.redis import (
    PolicyBackoff,
    aconnect_sentinel_with_retry,
    aconnect_with_retry,
    aruntime_retry,
    classify,
    connect_sentinel_with_retry,
    connect_with_retry,
    is_transient,
    runtime_retry,
)


def sync_forms() -> None:
    assert_type(connect_with_retry(), redis.Redis)
    assert_type(connect_with_retry("redis://cache:6379/0"), redis.Redis)
    assert_type(
        connect_with_retry(
            "rediss://cache:6380/0",
            policy=rc.Backoff(timeout=5),
            hooks=(),
            reconnect=rc.Backoff(timeout=10),
            decode_responses=True,
        ),
        redis.Redis,
    )
    assert_type(
        connect_with_retry("redis://node:7000/0", factory=redis.cluster.RedisCluster.from_url),
        redis.cluster.RedisCluster,
    )
    assert_type(connect_sentinel_with_retry([("s1", 26379)], "mymaster"), redis.Redis)


async def async_forms() -> None:
    assert_type(await aconnect_with_retry(), redis.asyncio.Redis)
    assert_type(await aconnect_with_retry("unix:///run/redis.sock?db=1"), redis.asyncio.Redis)
    assert_type(
        await aconnect_with_retry(
            "redis://node:7000/0", factory=redis.asyncio.cluster.RedisCluster.from_url
        ),
        redis.asyncio.cluster.RedisCluster,
    )
    assert_type(await aconnect_sentinel_with_retry([("s1", 26379)], "m"), redis.asyncio.Redis)


def bridge_forms() -> None:
    assert_type(runtime_retry(), redis.retry.Retry)
    assert_type(aruntime_retry(rc.Backoff(timeout=3), target="cache"), redis.asyncio.retry.Retry)
    redis.retry.Retry(PolicyBackoff(rc.Backoff(jitter="equal")), 3)
    assert_type(classify(ConnectionError()), Verdict)
    assert_type(is_transient(ConnectionError()), bool)
