"""resilient_connect.redis against real Redis servers, sentinels and a one-node cluster.

Each scenario is a plain test run once per flavour of the ``api`` fixture (harness.api):
the sync functions and clients, then the asyncio twins on one event loop kept for the whole
test (an asyncio client belongs to the loop it was created on). Servers change state from
timer threads while the client waits or works.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.backoff
import redis.cluster
import redis.exceptions as rx
import redis.retry

from harness import FaultProxy, RedisSentinel, RedisServer, free_port
from harness.api import RedisApi, api_fixture
from resilient_connect import (
    Backoff,
    GaveUp,
    NotRetried,
    Recovered,
    RetryExhausted,
    RetryScheduled,
)
from resilient_connect._events import Event
from resilient_connect.redis import (
    DEFAULT_RECONNECT,
)

pytestmark = pytest.mark.integration

MakeRedis = Callable[..., RedisServer]
MakeSentinel = Callable[..., RedisSentinel]
MakeProxy = Callable[..., FaultProxy]

FAST = Backoff(initial=0.02, maximum=0.1, timeout=20)
RUNTIME = Backoff(initial=0.05, maximum=0.5, timeout=20)
# "Fails at once" on this shared 2-core machine: generous, yet far below redis-py's ~4 s.
FAIL_FAST_LIMIT = 1.0
OVERSHOOT_LIMIT = 0.5
PASSWORD = "S3cr3t-PW 7f@1c:/%"


class Recorder:
    """A hook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def rules(self) -> set[str]:
        return {e.rule for e in self.events if isinstance(e, (RetryScheduled, GaveUp, NotRetried))}

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


api = api_fixture(RedisApi)


@contextmanager
def later(seconds: float, action: Callable[[], object]) -> Iterator[threading.Timer]:
    """Run ``action`` in a timer thread after ``seconds``; join it when the block ends."""
    timer = threading.Timer(seconds, action)
    timer.start()
    try:
        yield timer
    finally:
        timer.join(30)
        timer.cancel()


def _bridge_policy(client: Any) -> Backoff | None:
    retry = client.get_retry() if hasattr(client, "get_retry") else client.retry
    return getattr(retry, "policy", None)


# --------------------------------------------------------------------------------------
# Start-up


def test_late_start(api: RedisApi, make_redis: MakeRedis) -> None:
    """A server launched after the client began waiting is reached; the wait is logged."""
    server = make_redis(start=False)
    recorder = Recorder()
    with later(0.3, server.start):
        client = api.connect(server.url, policy=FAST, hooks=[recorder])
    assert api.do(client, "ping") is True
    assert "redis:connection" in recorder.rules()
    assert isinstance(recorder.events[-1], Recovered)


def test_returned_client_keeps_its_probe_connection_and_bridge(
    api: RedisApi, redis_server: RedisServer
) -> None:
    """The client has answered PING on a pooled connection that carries the runtime bridge."""
    client = api.connect(redis_server.url, hooks=())
    assert _bridge_policy(client) == DEFAULT_RECONNECT
    pooled = client.connection_pool._available_connections
    assert len(pooled) == 1
    assert getattr(pooled[0].retry, "policy", None) == DEFAULT_RECONNECT
    assert pooled[0].socket_timeout == 5


def test_own_retry_is_kept(api: RedisApi, redis_server: RedisServer) -> None:
    """With redis-py's own retry=, the probe is still one attempt and the client keeps theirs."""
    retry_class = api.pick(redis.retry.Retry, redis.asyncio.retry.Retry)
    own = retry_class(redis.backoff.ConstantBackoff(0.01), 3)
    client = api.connect(redis_server.url, hooks=(), retry=own)
    assert api.do(client, "ping") is True
    assert client.get_retry() is own
    connection = client.connection_pool._available_connections[0]
    assert connection.retry.get_retries() == 3


def test_unix_socket_late_start_and_kwargs_pass_through(
    api: RedisApi, make_redis: MakeRedis, tmp_path: Path
) -> None:
    """unix:// URLs, their ?db= query and from_url keywords pass through; a missing socket
    file (server not started yet) is waited for."""
    path = tmp_path / "redis.sock"
    server = make_redis(start=False, extra_args=["--unixsocket", str(path)])
    recorder = Recorder()
    with later(0.3, server.start):
        client = api.connect(
            f"unix://{path}?db=2", policy=FAST, hooks=[recorder], decode_responses=True
        )
    api.do(client, "set", "k", "v")
    assert api.do(client, "get", "k") == "v"
    assert client.connection_pool.connection_kwargs["db"] == 2
    assert "redis:connection" in recorder.rules()


def test_rediss_url_speaks_tls(api: RedisApi, redis_server: RedisServer) -> None:
    """rediss:// and ssl_* keywords reach redis-py: the port that answers redis:// times out
    a TLS handshake (transient), and the deadline ends the wait."""
    plain = f"redis://{redis_server.host}:{redis_server.port}/0"
    assert api.do(api.connect(plain, hooks=()), "ping") is True
    start = time.monotonic()
    with pytest.raises(RetryExhausted) as info:
        api.connect(
            "rediss" + plain[5:], policy=Backoff(timeout=1.0), hooks=(), ssl_cert_reqs="none"
        )
    elapsed = time.monotonic() - start
    assert isinstance(info.value.last_exception, rx.TimeoutError)
    assert elapsed <= 1.0 + OVERSHOOT_LIMIT


def test_loading_is_waited_through(api: RedisApi, make_redis: MakeRedis) -> None:
    """A real LOADING window (dataset read at start-up) is retried until the data is there."""
    server = make_redis()
    server.populate_and_save(1000)
    server.start_loading(key_load_delay_us=1000)
    recorder = Recorder()
    client = api.connect(server.url, policy=FAST, hooks=[recorder])
    assert "redis:loading" in recorder.rules()
    assert api.do(client, "dbsize") == 1000


@pytest.mark.parametrize("form", ["wrong in URL", "missing", "wrong keyword"])
def test_bad_or_missing_password_fails_on_first_attempt(
    api: RedisApi, redis_auth: RedisServer, form: str
) -> None:
    """Wrong and missing passwords raise AuthenticationError after one attempt, in milliseconds."""
    recorder = Recorder()
    kwargs: dict[str, Any] = {"policy": FAST, "hooks": [recorder]}
    if form == "wrong in URL":
        url = redis_auth.url_for(password="not-the-password")
    elif form == "missing":
        url = redis_auth.url_for(password="")
    else:
        url = redis_auth.url_for(password="")
        kwargs["password"] = "not-the-password"
    start = time.monotonic()
    with pytest.raises(rx.AuthenticationError):
        api.connect(url, **kwargs)
    elapsed = time.monotonic() - start
    assert elapsed < FAIL_FAST_LIMIT
    assert [type(e) for e in recorder.events] == [NotRetried]
    assert recorder.events[0].attempt == 1
    assert recorder.rules() == {"redis:auth-failed"}


def test_blackhole_bounded_by_deadline(
    api: RedisApi, redis_server: RedisServer, fault_proxy: MakeProxy
) -> None:
    """A server that accepts and never answers costs the deadline, not 5 s per attempt,
    even when the URL asks for 30 s socket timeouts (URL options beat keywords in from_url)."""
    proxy = fault_proxy(redis_server.address)
    proxy.blackhole()
    url = f"redis://{proxy.host}:{proxy.port}/0?socket_timeout=30&socket_connect_timeout=30"
    start = time.monotonic()
    with pytest.raises(RetryExhausted) as info:
        api.connect(url, policy=Backoff(timeout=1.5), hooks=())
    elapsed = time.monotonic() - start
    assert info.value.reason == "deadline"
    assert isinstance(info.value.last_exception, rx.TimeoutError)
    assert elapsed <= 1.5 + OVERSHOOT_LIMIT


# --------------------------------------------------------------------------------------
# Runtime bridge


def test_runtime_bridge_absorbs_kill_and_restart(api: RedisApi, make_redis: MakeRedis) -> None:
    """SIGKILL while the client is in use, restart 0.4 s later: the next command waits with
    our backoff, logs, and succeeds on the restarted server."""
    server = make_redis(password=PASSWORD)
    recorder = Recorder()
    client = api.connect(server.url, hooks=[recorder], reconnect=RUNTIME)
    assert api.do(client, "set", "k", "1") is True
    recorder.events.clear()
    server.kill()
    start = time.monotonic()
    with later(0.4, server.start):
        assert api.do(client, "set", "k", "2") is True
    elapsed = time.monotonic() - start
    assert api.do(client, "get", "k") == b"2"
    assert recorder.of(RetryScheduled)
    assert "redis:connection" in recorder.rules()
    assert isinstance(recorder.events[-1], Recovered)
    assert all("***" in e.target and PASSWORD not in e.target for e in recorder.events)
    assert 0.3 <= elapsed < RUNTIME.timeout  # type: ignore[operator]


def test_runtime_bridge_gives_up_with_the_redis_error(api: RedisApi, make_redis: MakeRedis) -> None:
    """When the server stays away, the command ends at the runtime deadline with redis-py's
    own ConnectionError (so `except redis.ConnectionError` keeps working)."""
    server = make_redis()
    recorder = Recorder()
    policy = Backoff(initial=0.05, maximum=0.2, timeout=1.0)
    client = api.connect(server.url, hooks=[recorder], reconnect=policy)
    server.kill()
    start = time.monotonic()
    with pytest.raises(rx.ConnectionError):
        api.do(client, "ping")
    elapsed = time.monotonic() - start
    assert isinstance(recorder.events[-1], GaveUp)
    assert elapsed <= 1.0 + OVERSHOOT_LIMIT


# --------------------------------------------------------------------------------------
# Sentinel and Cluster


def test_sentinel_late_start_then_failover(
    api: RedisApi, make_redis: MakeRedis, make_redis_sentinel: MakeSentinel
) -> None:
    """Waits for a sentinel that starts late; after the master is killed, the client's next
    command rides out the failover and writes to the promoted replica."""
    master = make_redis(password=PASSWORD)
    replica = make_redis(password=PASSWORD, replicaof=master)
    sentinel = make_redis_sentinel(master, start=False)
    recorder = Recorder()
    with later(0.3, sentinel.start):
        client = api.sentinel(
            [sentinel.address],
            sentinel.name,
            password=PASSWORD,
            sentinel_kwargs={"socket_timeout": 2.0},
            policy=FAST,
            reconnect=RUNTIME,
            hooks=[recorder],
        )
    assert "redis:master-not-found" in recorder.rules()
    assert api.do(client, "set", "before", "1") is True
    sentinel_clients = client.connection_pool.sentinel_manager.sentinels
    assert [c.get_retry().get_retries() for c in sentinel_clients] == [0]  # no nested loop

    replica.wait_replication_synced()
    sentinel.wait_for_replicas(1)
    recorder.events.clear()
    master.kill()
    assert api.do(client, "set", "after", "2") is True
    assert replica.command("GET", "after") == b"2"
    assert sentinel.master_address() == replica.address
    assert recorder.of(RetryScheduled)
    assert isinstance(recorder.events[-1], Recovered)
    assert (
        recorder.events[-1].target == f"redis+sentinel://{sentinel.host}:{sentinel.port}/mymaster"
    )


def test_cluster_factory_waits_for_slots(api: RedisApi, make_redis: MakeRedis) -> None:
    """factory=RedisCluster.from_url waits until the cluster covers its slots, then the
    client carries the runtime retry and serves commands."""
    # The cluster bus listens on port + 10000 unless told otherwise, which is past 65535
    # for many of the ephemeral ports the harness picks: give it its own free port.
    bus = str(free_port())
    options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    server = make_redis(extra_args=[*options, "--cluster-port", bus])
    recorder = Recorder()

    def assign_slots() -> None:
        server.command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)

    with later(0.3, assign_slots):
        factory = api.pick(
            redis.cluster.RedisCluster.from_url, redis.asyncio.cluster.RedisCluster.from_url
        )
        client = api.connect(server.url, factory=factory, policy=FAST, hooks=[recorder])
    assert "redis:cluster-unreachable" in recorder.rules()
    assert api.do(client, "set", "k", "v") is True
    assert api.do(client, "get", "k") == b"v"
    assert getattr(client.retry, "policy", None) == DEFAULT_RECONNECT


# --------------------------------------------------------------------------------------
# Passwords


def _leaks(secret: str, texts: list[str]) -> list[str]:
    variants = {secret, quote(secret, safe=""), quote(secret)}
    return [t for t in texts if any(v in t for v in variants)]


def _log_texts(records: list[logging.LogRecord]) -> list[str]:
    texts = []
    for record in records:
        texts.append(record.getMessage())
        texts.extend(str(v) for k, v in vars(record).items() if k.startswith("resilient_connect"))
    return texts


@pytest.mark.parametrize("form", ["url", "keyword"])
def test_password_never_leaks(
    api: RedisApi,
    redis_auth: RedisServer,
    free_port: int,
    form: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither the password nor a wrong one appears in logs, events, errors or reprs."""
    secret = redis_auth.password
    assert secret is not None
    wrong = "Wr0ng-" + secret

    def target(password: str, port: int | None = None) -> tuple[str, dict[str, Any]]:
        if form == "url":
            return redis_auth.url_for(password=password, port=port), {}
        return redis_auth.url_for(password="", port=port), {"password": password}

    recorder = Recorder()
    texts: list[str] = []
    caplog.set_level(logging.DEBUG, logger="resilient_connect")
    hooks = [recorder, *_default_hooks()]

    url, kwargs = target(secret, port=free_port)
    with pytest.raises(RetryExhausted) as gave_up:
        api.connect(
            url, policy=Backoff(initial=0.01, maximum=0.05, timeout=0.3), hooks=hooks, **kwargs
        )
    texts += [str(gave_up.value), repr(gave_up.value), gave_up.value.target, gave_up.value.cause]
    texts += traceback.format_exception(gave_up.value)

    url, kwargs = target(wrong)
    with pytest.raises(rx.AuthenticationError) as refused:
        api.connect(url, hooks=hooks, **kwargs)
    texts += [str(refused.value), repr(refused.value), *traceback.format_exception(refused.value)]

    url, kwargs = target(secret)
    client = api.connect(url, hooks=hooks, **kwargs)
    assert api.do(client, "ping") is True
    pooled = client.connection_pool._available_connections
    texts += [repr(client), repr(client.connection_pool), repr(client.get_retry())]
    texts += [repr(c) for c in pooled] + [repr(c.retry) for c in pooled]

    texts += [e.target for e in recorder.events] + [e.cause for e in recorder.events]
    texts += [repr(e) for e in recorder.events]
    texts += _log_texts(caplog.records)
    assert recorder.of(RetryScheduled)
    assert recorder.of(NotRetried)
    assert caplog.records
    assert _leaks(secret, texts) == []
    assert _leaks(wrong, texts) == []


def _default_hooks() -> list[Callable[[Event], object]]:
    from resilient_connect import log_event

    return [log_event]
