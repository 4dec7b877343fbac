"""The redis-py rule table and the runtime bridge, with real redis-py exception objects.

Server replies are turned into exceptions by redis-py's own parser (``parse_error``), and
client-side errors are built with the texts redis-py produces (see the fact sheet), so the
table is tested against what the driver really raises. No server is needed here.
"""

from __future__ import annotations

import asyncio
import copy
import random
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.exceptions as rx
import redis.retry
import redis.sentinel
from redis._parsers.base import BaseParser

import resilient_connect as rc
from resilient_connect import GaveUp, NotRetried, Recovered, RetryScheduled
from resilient_connect._classify import default_classifier
from resilient_connect._engine import Attempt
from resilient_connect.redis import (
    DEFAULT_RECONNECT,
    RULES,
    PolicyBackoff,
    aruntime_retry,
    classify,
    connect_with_retry,
    is_transient,
    runtime_retry,
)
from resilient_connect.testing import instant_waits

DOCS = Path(__file__).resolve().parents[2] / "docs" / "redis.md"


def _reply(text: str) -> BaseException:
    """The exception redis-py's parser makes from an error reply (without the leading '-')."""
    error = BaseParser.parse_error(text)
    assert isinstance(error, BaseException)
    return error


def _sentinel_message(*errors: BaseException) -> str:
    """The text of MasterNotFoundError as Sentinel.discover_master() builds it."""
    entries = ", ".join(f"<redis.client.Redis(...)> - {error!r}" for error in errors)
    return f"No master found for 'mymaster' : {entries}"


def _from_url_error(url: str) -> BaseException:
    """The ValueError redis-py's from_url raises for a malformed URL."""
    with pytest.raises(ValueError) as info:
        redis.Redis.from_url(url)
    return info.value


CASES: list[tuple[str, BaseException, str]] = [
    # Server replies, through redis-py's parser.
    (
        "wrong password",
        _reply("WRONGPASS invalid username-password pair or user is disabled."),
        "redis:auth-failed",
    ),
    (
        "no password, RESP3",
        _reply(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO AUTH <user> <pass> option can be used to authenticate the client and "
            "select the RESP protocol version at the same time"
        ),
        "redis:auth-failed",
    ),
    ("no password, RESP2", _reply("NOAUTH Authentication required."), "redis:auth-failed"),
    ("old server, wrong password", _reply("ERR invalid password"), "redis:auth-failed"),
    (
        "password but none configured",
        _reply(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        ),
        "redis:auth-failed",
    ),
    (
        "username to Redis < 6",
        _reply("ERR wrong number of arguments for 'auth' command"),
        "redis:auth-syntax",
    ),
    (
        "ACL denies PING",
        _reply("NOPERM this user has no permissions to run the 'ping' command"),
        "redis:no-permission",
    ),
    ("loading", _reply("LOADING Redis is loading the dataset in memory"), "redis:loading"),
    ("max clients", _reply("ERR max number of clients reached"), "redis:max-clients"),
    (
        "replica lost master",
        _reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        "redis:master-down",
    ),
    (
        "demoted master",
        _reply("READONLY You can't write against a read only replica."),
        "redis:readonly",
    ),
    ("cluster down", _reply("CLUSTERDOWN The cluster is down"), "redis:cluster-down"),
    (
        "cluster resharding",
        _reply("TRYAGAIN Multiple keys request during rehashing of slot"),
        "redis:cluster-down",
    ),
    (
        "unknown command",
        _reply("ERR unknown command 'FOO', with args beginning with: "),
        "redis:response-error",
    ),
    (
        "wrong type",
        _reply("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "redis:response-error",
    ),
    # Client-side errors, with redis-py's texts.
    (
        "refused",
        rx.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        "redis:connection",
    ),
    (
        "refused, asyncio",
        rx.ConnectionError(
            "Error 111 connecting to 127.0.0.1:6379. Connect call failed ('127.0.0.1', 6379)."
        ),
        "redis:connection",
    ),
    ("closed by server", rx.ConnectionError("Connection closed by server."), "redis:connection"),
    (
        "unix socket not there yet",
        rx.ConnectionError("Error 2 connecting to /tmp/redis.sock. No such file or directory."),
        "redis:connection",
    ),
    (
        "NXDOMAIN",
        rx.ConnectionError(
            "Error -2 connecting to nonexistent.invalid:6379. Name or service not known."
        ),
        "redis:name-resolution",
    ),
    (
        "no DNS",
        rx.ConnectionError(
            "Error -3 connecting to nonexistent.invalid:6379. Temporary failure in name resolution."
        ),
        "redis:name-resolution",
    ),
    ("read timeout", rx.TimeoutError("Timeout reading from socket"), "redis:timeout"),
    ("TLS handshake timeout", rx.TimeoutError("Timeout connecting to server"), "redis:timeout"),
    (
        "bad certificate",
        rx.ConnectionError(
            "Error 1 connecting to 127.0.0.1:6380. [SSL: CERTIFICATE_VERIFY_FAILED] "
            "certificate verify failed: self-signed certificate (_ssl.c:1006)."
        ),
        "redis:tls-certificate",
    ),
    (
        "unix socket mode",
        rx.ConnectionError("Error 13 connecting to /run/redis.sock. Permission denied."),
        "redis:permission-denied",
    ),
    ("pool exhausted", rx.MaxConnectionsError("Too many connections"), "redis:pool-exhausted"),
    ("authorization", rx.AuthorizationError("token rejected"), "redis:authorization"),
    ("bad scheme", _from_url_error("http://localhost:6379/0"), "redis:bad-url"),
    ("bad port", _from_url_error("redis://localhost:notaport/0"), "redis:bad-url"),
    (
        "no master yet",
        redis.sentinel.MasterNotFoundError("No master found for 'mymaster'"),
        "redis:master-not-found",
    ),
    ("no replica", redis.sentinel.SlaveNotFoundError(), "redis:master-not-found"),
    (
        "no master, asyncio",
        redis.asyncio.sentinel.MasterNotFoundError("No master found for 'mymaster'"),
        "redis:master-not-found",
    ),
    (
        "sentinels down and one refusing auth",
        redis.sentinel.MasterNotFoundError(
            _sentinel_message(rx.AuthenticationError("x"), rx.ConnectionError("y"))
        ),
        "redis:master-not-found",
    ),
    (
        "every sentinel refuses auth",
        redis.sentinel.MasterNotFoundError(
            _sentinel_message(rx.AuthenticationError("x"), rx.AuthenticationError("y"))
        ),
        "redis:sentinel-auth-failed",
    ),
    (
        "cluster not reachable",
        rx.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: None"
        ),
        "redis:cluster-unreachable",
    ),
    (
        "cluster forming",
        rx.RedisClusterException(
            "All slots are not covered after query all startup_nodes. 0 of 16384 covered..."
        ),
        "redis:cluster-unreachable",
    ),
    (
        "cluster misconfigured",
        rx.RedisClusterException(
            "RedisCluster requires at least one node to discover the cluster."
        ),
        "redis:other",
    ),
    ("escaped OSError", ConnectionResetError(104, "Connection reset by peer"), "redis:os-error"),
    (
        "lock misuse (also a ValueError)",
        rx.LockError("Cannot release an unlocked lock"),
        "redis:other",
    ),
    ("data error", rx.DataError("Invalid input of type: 'dict'."), "redis:other"),
    ("a bug", RuntimeError("boom"), "redis:other"),
]


@pytest.mark.parametrize(("exc", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_for_real_exception(exc: BaseException, rule: str) -> None:
    """Each real redis-py error lands on the intended rule, and is_transient agrees with it."""
    verdict = classify(exc)
    assert verdict.rule == rule
    assert is_transient(exc) is verdict.transient
    assert verdict.transient is {r.name: r.transient for r in RULES}[rule]


def test_every_rule_is_exercised() -> None:
    """The cases above reach every row of the table (no untested rule)."""
    assert {c[2] for c in CASES} == {r.name for r in RULES}


def test_auth_errors_are_connection_errors_yet_permanent() -> None:
    """redis-py files auth failures under ConnectionError; our table still refuses to retry them."""
    wrong = _reply("WRONGPASS invalid username-password pair or user is disabled.")
    assert isinstance(wrong, rx.ConnectionError)
    assert not is_transient(wrong)
    assert isinstance(_reply("LOADING Redis is loading the dataset in memory"), rx.ConnectionError)


def test_core_default_classifier_delegates_to_this_table() -> None:
    """resilient_connect's default classifier (used by rc.retry/on=None) applies the redis table."""
    verdict = default_classifier(
        _reply("WRONGPASS invalid username-password pair or user is disabled.")
    )
    assert verdict == classify(
        _reply("WRONGPASS invalid username-password pair or user is disabled.")
    )
    assert default_classifier(rx.BusyLoadingError("loading")).rule == "redis:loading"


def _docs_table() -> list[tuple[str, bool]]:
    text = DOCS.read_text()
    start = text.index("<!-- rules:start -->")
    end = text.index("<!-- rules:end -->")
    rows: list[tuple[str, bool]] = []
    for line in text[start:end].splitlines():
        match = re.match(r"\|\s*\d+\s*\|\s*`([^`]+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            rows.append((match.group(1), match.group(2) == "retry"))
    return rows


def test_docs_table_matches_code_table() -> None:
    """docs/redis.md lists the same rules, in the same order, with the same verdicts."""
    assert _docs_table() == [(r.name, r.transient) for r in RULES]


# --------------------------------------------------------------------------------------
# PolicyBackoff


def test_policy_backoff_computes_the_policy_delays() -> None:
    """compute(n) follows Backoff.delays() for the same random draws, jitter mode included."""
    for jitter in ("none", "full", "equal", "decorrelated", 0.25):
        policy = rc.Backoff(initial=0.1, maximum=2.0, attempts=8, jitter=jitter)
        backoff = PolicyBackoff(policy, rng=random.Random(7))
        backoff.reset()
        got = [backoff.compute(n) for n in range(1, 8)]
        assert got == pytest.approx(list(policy.delays(rng=random.Random(7))))
        assert all(0 <= d <= 2.0 for d in got)


def test_policy_backoff_reset_restarts_decorrelated_chain() -> None:
    """reset() (called by Retry before each operation) restarts the decorrelated sequence."""
    policy = rc.Backoff(initial=0.1, maximum=5.0, jitter="decorrelated")
    backoff = PolicyBackoff(policy, rng=random.Random(1))
    first = [backoff.compute(n) for n in range(1, 5)]
    backoff.reset()
    backoff._rng = random.Random(1)
    assert [backoff.compute(n) for n in range(1, 5)] == first


def test_policy_backoff_plugs_into_plain_redis_retry() -> None:
    """A plain redis Retry with PolicyBackoff sleeps our delays between its own retries."""
    policy = rc.Backoff(initial=0.0, attempts=3, jitter="none")
    retry = redis.retry.Retry(PolicyBackoff(policy), 2)
    calls: list[int] = []

    def do() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise rx.ConnectionError("refused")
        return "ok"

    assert retry.call_with_retry(do, lambda _e: None) == "ok"
    assert len(calls) == 3
    assert PolicyBackoff(policy) == PolicyBackoff(policy)
    assert hash(PolicyBackoff(policy)) == hash(PolicyBackoff(policy))
    assert PolicyBackoff(policy) != PolicyBackoff(policy.replace(initial=1.0))
    assert PolicyBackoff(policy) != redis.backoff.NoBackoff()
    assert repr(PolicyBackoff(policy)) == f"PolicyBackoff({policy!r})"


def test_reported_retry_counts() -> None:
    """get_retries() is attempts-1, an estimate from the deadline, or -1 when unbounded."""
    assert runtime_retry(rc.Backoff(attempts=4)).get_retries() == 3
    assert runtime_retry(rc.Backoff(attempts=None, timeout=None)).get_retries() == -1
    estimated = runtime_retry(rc.Backoff(initial=1.0, multiplier=1.0, timeout=5.0)).get_retries()
    assert estimated == 5
    assert runtime_retry().get_retries() >= 1


# --------------------------------------------------------------------------------------
# The bridge Retry (sync)


class _Script:
    """A `do` callable that raises the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def acall(self) -> str:
        return self()


class _Fails:
    """Records redis-py failure callbacks (the ones that disconnect)."""

    def __init__(self) -> None:
        self.seen: list[tuple[BaseException, int]] = []

    def __call__(self, error: BaseException, count: int) -> None:
        self.seen.append((error, count))

    async def acall(self, error: BaseException, count: int) -> None:
        self(error, count)


FAST = rc.Backoff(initial=0.1, maximum=1.0, timeout=5.0)


def _bridge(policy: rc.Backoff = FAST, **kw: Any) -> tuple[Any, list[rc.Event]]:
    events: list[rc.Event] = []
    return runtime_retry(policy, target="redis://:pw@host:1/0", hooks=[events.append], **kw), events


def test_bridge_retries_transient_errors_with_events() -> None:
    """Two refused attempts then success: fail() runs twice, events say retry, retry, recovered."""
    retry, events = _bridge()
    do, fail = _Script(rx.ConnectionError("refused"), rx.TimeoutError("slow")), _Fails()
    with instant_waits() as waits:
        assert retry.call_with_retry(do, fail, with_failure_count=True) == "ok"
    assert do.calls == 3
    assert [count for _e, count in fail.seen] == [1, 2]
    assert [type(e) for e in events] == [RetryScheduled, RetryScheduled, Recovered]
    assert [e.rule for e in events[:2]] == ["redis:connection", "redis:timeout"]
    assert waits.sleeps == [e.delay for e in events[:2]]
    assert all(e.target == "redis://:***@host:1/0" for e in events)


def test_bridge_does_not_retry_auth_errors() -> None:
    """A wrong password at reconnect is raised at once (same object), after one fail() call."""
    retry, events = _bridge()
    wrong = _reply("WRONGPASS invalid username-password pair or user is disabled.")
    do, fail = _Script(wrong), _Fails()
    with pytest.raises(rx.AuthenticationError) as info:
        retry.call_with_retry(do, fail, with_failure_count=True)
    assert info.value is wrong
    assert do.calls == 1
    assert len(fail.seen) == 1
    assert [type(e) for e in events] == [NotRetried]
    assert events[0].rule == "redis:auth-failed"  # type: ignore[attr-defined]


def test_bridge_ignores_errors_redis_py_does_not_retry() -> None:
    """Errors outside supported_errors pass through untouched: no fail(), no event."""
    retry, events = _bridge()
    wrongtype = _reply("WRONGTYPE Operation against a key holding the wrong kind of value")
    do, fail = _Script(wrongtype), _Fails()
    with pytest.raises(rx.ResponseError) as info:
        retry.call_with_retry(do, fail, with_failure_count=True)
    assert info.value is wrongtype
    assert fail.seen == []
    assert events == []


def test_bridge_respects_is_retryable() -> None:
    """is_retryable() False (redis-py's WATCH case) raises without fail() or waiting."""
    retry, events = _bridge()
    do, fail = _Script(rx.ConnectionError("refused")), _Fails()
    with pytest.raises(rx.ConnectionError):
        retry.call_with_retry(do, fail, is_retryable=lambda _e: False, with_failure_count=True)
    assert (do.calls, fail.seen, events) == (1, [], [])


def test_bridge_gives_up_at_the_deadline_with_the_redis_error() -> None:
    """At the deadline the last redis error (not RetryExhausted) reaches the application."""
    retry, events = _bridge(rc.Backoff(initial=0.5, maximum=1.0, timeout=3.0, jitter="none"))
    errors = [rx.ConnectionError(f"refused {n}") for n in range(100)]
    do = _Script(*errors)
    with instant_waits(), pytest.raises(rx.ConnectionError) as info:
        retry.call_with_retry(do, lambda _e: None)
    assert info.value is errors[do.calls - 1]
    assert not isinstance(info.value.__context__, rc.RetryExhausted)
    assert isinstance(events[-1], GaveUp)
    assert events[-1].reason == "deadline"
    assert do.calls >= 4  # waits 0.5 + 1 + 1 at least
    assert events[-1].elapsed < 3.0  # never slept into the deadline


def test_bridge_counts_attempts_like_the_policy() -> None:
    """attempts=3 means three calls of do() and three fail() callbacks, then the error."""
    retry, _events = _bridge(rc.Backoff(initial=0.0, attempts=3, timeout=None))
    do, fail = _Script(*[rx.ConnectionError("x")] * 5), _Fails()
    with instant_waits(), pytest.raises(rx.ConnectionError):
        retry.call_with_retry(do, fail, with_failure_count=True)
    assert do.calls == 3
    assert len(fail.seen) == 3


def test_no_retry_inside_a_retry() -> None:
    """A bridge entered inside another bridge's loop makes one attempt; only the outer waits."""
    outer, outer_events = _bridge()
    inner, inner_events = _bridge()
    inner_do = _Script(*[rx.ConnectionError("refused")] * 3)
    inner_fail = _Fails()

    def outer_do() -> str:
        return str(inner.call_with_retry(inner_do, inner_fail, with_failure_count=True))

    with instant_waits():
        assert outer.call_with_retry(outer_do, lambda _e: None) == "ok"
    assert inner_do.calls == 4
    assert [count for _e, count in inner_fail.seen] == [1, 1, 1]
    assert inner_events == []
    assert [type(e) for e in outer_events] == [RetryScheduled] * 3 + [Recovered]


def test_unsupported_error_after_a_retry_passes_through() -> None:
    """An application error on the retried attempt leaves unchanged: the server is back."""
    retry, events = _bridge()
    wrongtype = _reply("WRONGTYPE Operation against a key holding the wrong kind of value")
    do, fail = _Script(rx.ConnectionError("refused"), wrongtype), _Fails()
    with instant_waits(), pytest.raises(rx.ResponseError) as info:
        retry.call_with_retry(do, fail, with_failure_count=True)
    assert info.value is wrongtype
    assert len(fail.seen) == 1
    assert [type(e) for e in events] == [RetryScheduled]  # the application error is not ours


def test_retry_on_error_extends_what_is_retried() -> None:
    """An error type added by redis-py's retry_on_error is retried even without a table rule."""
    retry, events = _bridge()
    retry.update_supported_errors([rx.ResponseError])
    do = _Script(_reply("ERR something odd"))
    with instant_waits():
        assert retry.call_with_retry(do, lambda _e: None) == "ok"
    assert events[0].rule == "redis:retry-on-error:ResponseError"  # type: ignore[attr-defined]


def test_retry_on_error_cannot_force_retrying_a_wrong_password() -> None:
    """Even if listed in supported errors, specific permanent rules still stop the loop."""
    retry, _events = _bridge()
    retry.update_supported_errors([rx.ResponseError])
    do = _Script(_reply("NOPERM this user has no permissions to run the 'get' command"))
    with pytest.raises(rx.NoPermissionError):
        retry.call_with_retry(do, lambda _e: None)
    assert do.calls == 1


class _Hook:
    """A hook holding a lock: deep-copying it would fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[rc.Event] = []

    def __call__(self, event: rc.Event) -> None:
        with self.lock:
            self.events.append(event)


def test_deepcopy_shares_policy_and_hooks_but_not_supported_errors() -> None:
    """redis-py deep-copies retry into each connection; copies keep hooks, own their error list."""
    hook = _Hook()
    retry = runtime_retry(FAST, target="t", hooks=[hook])
    clone = copy.deepcopy(retry)
    clone.update_supported_errors([rx.ResponseError])
    assert rx.ResponseError not in retry._supported_errors
    assert rx.ResponseError in clone._supported_errors
    assert copy.deepcopy(retry) == retry  # redis-py's equality: backoff, retries, errors
    assert clone != retry
    with instant_waits():
        clone.call_with_retry(_Script(rx.ConnectionError("x")), lambda _e: None)
    assert [type(e) for e in hook.events] == [RetryScheduled, Recovered]


def test_clients_built_with_the_bridge_carry_copies_of_it() -> None:
    """from_url(retry=..., retry_on_error=...) gives each connection its own bridge copy."""
    retry = runtime_retry(FAST, target="redis://localhost:6379/0", hooks=())
    client = redis.Redis.from_url(
        "redis://localhost:6379/0", retry=retry, retry_on_error=[rx.ResponseError]
    )
    connection = client.connection_pool.make_connection()
    assert type(connection.retry) is type(retry)
    assert connection.retry is not retry
    assert rx.ResponseError in connection.retry._supported_errors
    client.close()


def test_bridge_repr_hides_the_password() -> None:
    """The bridge's repr (shown inside redis-py's client repr) never shows a password."""
    retry = runtime_retry(FAST, target="redis://:S3cr3t-PW@localhost:6379/0", hooks=())
    assert "S3cr3t-PW" not in repr(retry)
    assert "redis://:***@localhost:6379/0" in repr(retry)


def test_default_runtime_policy_is_bounded() -> None:
    """The default runtime policy has a deadline (a command never waits forever) and is the
    one runtime default of every adapter."""
    assert DEFAULT_RECONNECT.timeout is not None
    assert runtime_retry().policy == DEFAULT_RECONNECT  # type: ignore[attr-defined]
    assert DEFAULT_RECONNECT is rc.DEFAULT_RECONNECT


def test_old_names_still_work_and_warn() -> None:
    """``DEFAULT_RUNTIME_POLICY`` and ``runtime_policy=`` are deprecated spellings of
    ``DEFAULT_RECONNECT`` and ``reconnect=``: they work and warn."""
    import resilient_connect.redis as rc_redis

    with pytest.warns(DeprecationWarning, match="DEFAULT_RECONNECT"):
        assert rc_redis.DEFAULT_RUNTIME_POLICY is DEFAULT_RECONNECT
    with (
        pytest.warns(DeprecationWarning, match="reconnect="),
        pytest.raises(TypeError, match="reconnect="),
    ):
        connect_with_retry(  # the old name reaches the same check as the new one
            "redis://localhost:6379/0",
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            runtime_policy=FAST,
        )
    with pytest.raises(TypeError, match="not both"):
        connect_with_retry("redis://localhost:6379/0", reconnect=FAST, runtime_policy=FAST)


# --------------------------------------------------------------------------------------
# The bridge Retry (asyncio)


async def test_async_bridge_retries_then_recovers() -> None:
    """The asyncio bridge retries refused attempts, awaiting fail(), and reports recovery."""
    events: list[rc.Event] = []
    retry = aruntime_retry(FAST, target="redis://h:1/0", hooks=[events.append])
    assert isinstance(retry, redis.asyncio.retry.Retry)
    do, fail = _Script(rx.ConnectionError("refused")), _Fails()
    with instant_waits():
        result = await retry.call_with_retry(do.acall, fail.acall, with_failure_count=True)
    assert result == "ok"
    assert [count for _e, count in fail.seen] == [1]
    assert [type(e) for e in events] == [RetryScheduled, Recovered]


async def test_async_bridge_permanent_and_deadline() -> None:
    """Asyncio twin: a wrong password is raised at once; at the deadline the redis error is."""
    events: list[rc.Event] = []
    retry = aruntime_retry(
        rc.Backoff(initial=1.0, timeout=2.5, jitter="none"), target="t", hooks=[events.append]
    )
    wrong = _reply("WRONGPASS invalid username-password pair or user is disabled.")
    with pytest.raises(rx.AuthenticationError):
        await retry.call_with_retry(_Script(wrong).acall, _Fails().acall, with_failure_count=True)
    do = _Script(*[rx.ConnectionError("x")] * 10)
    with instant_waits(), pytest.raises(rx.ConnectionError):
        await retry.call_with_retry(do.acall, _Fails().acall, with_failure_count=True)
    assert do.calls == 3
    assert [type(e) for e in events] == [NotRetried, RetryScheduled, RetryScheduled, GaveUp]


async def test_async_unsupported_errors_pass_through() -> None:
    """Asyncio: errors redis-py does not retry leave unchanged, first or after a retry,
    also from a nested bridge."""
    events: list[rc.Event] = []
    retry = aruntime_retry(FAST, target="t", hooks=[events.append])
    wrongtype = _reply("WRONGTYPE Operation against a key holding the wrong kind of value")
    do = _Script(rx.ConnectionError("refused"), wrongtype)
    with instant_waits(), pytest.raises(rx.ResponseError):
        await retry.call_with_retry(do.acall, _Fails().acall, with_failure_count=True)
    assert [type(e) for e in events] == [RetryScheduled]  # the application error is not ours

    inner = aruntime_retry(FAST, target="t", hooks=())

    async def outer_do() -> str:
        return str(await inner.call_with_retry(_Script(wrongtype).acall, _Fails().acall))

    with pytest.raises(rx.ResponseError):
        await retry.call_with_retry(outer_do, _Fails().acall)


async def test_async_nested_bridge_makes_one_attempt() -> None:
    """Asyncio: the nesting guard is per task, and an inner loop makes one attempt."""
    outer = aruntime_retry(FAST, target="t", hooks=())
    inner = aruntime_retry(FAST, target="t", hooks=())
    inner_do = _Script(rx.ConnectionError("x"))

    async def outer_do() -> str:
        return str(
            await inner.call_with_retry(inner_do.acall, _Fails().acall, with_failure_count=True)
        )

    async def independent() -> str:
        # Another task, started while the outer loop runs, still gets a full loop.
        other = _Script(rx.ConnectionError("x"), rx.ConnectionError("y"))
        return str(
            await inner.call_with_retry(other.acall, _Fails().acall, with_failure_count=True)
        )

    with instant_waits():
        results = await asyncio.gather(
            outer.call_with_retry(outer_do, _Fails().acall, with_failure_count=True),
            independent(),
        )
    assert results == ["ok", "ok"]
    assert inner_do.calls == 2


# --------------------------------------------------------------------------------------
# connect_with_retry without a server


def test_bad_url_fails_on_the_first_attempt() -> None:
    """A malformed URL raises from_url's ValueError at once, with a NotRetried event."""
    events: list[rc.Event] = []
    with pytest.raises(ValueError, match="scheme"):
        connect_with_retry("http://:S3cr3t-PW@localhost:6379/0", hooks=[events.append])
    assert [type(e) for e in events] == [NotRetried]
    assert events[0].rule == "redis:bad-url"  # type: ignore[attr-defined]
    assert "S3cr3t-PW" not in events[0].target


def test_retry_and_reconnect_are_exclusive() -> None:
    """Passing redis-py's retry= and reconnect= together is a TypeError, before any I/O."""
    with pytest.raises(TypeError, match="reconnect="):
        connect_with_retry(
            "redis://localhost:6379/0",
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            reconnect=FAST,
        )


def test_probe_bounds_pool_settings_even_from_the_url_query() -> None:
    """URL query options beat keywords in from_url; the probe bounds the pool's own settings."""
    from resilient_connect.redis._connect import _driver_defaults, _PoolProbe

    pool = redis.ConnectionPool.from_url(
        "redis://localhost:6379/0?socket_timeout=30&socket_connect_timeout=30", socket_timeout=1
    )
    assert pool.connection_kwargs["socket_timeout"] == 30
    clock = [100.0]
    attempt = Attempt(1, 102.0, lambda: clock[0])
    probe = _PoolProbe(pool, attempt, _driver_defaults(redis.connection), None)
    assert pool.connection_kwargs["socket_timeout"] == pytest.approx(2.0)
    assert pool.connection_kwargs["socket_connect_timeout"] == pytest.approx(2.0)
    assert probe.restore() is True
    assert pool.connection_kwargs["socket_timeout"] == 30
    # Plenty of time left and redis-py's default 5 s timeouts: nothing to change.
    plain = redis.ConnectionPool.from_url("redis://localhost:6379/0")
    before = dict(plain.connection_kwargs)
    probe = _PoolProbe(
        plain, Attempt(1, 160.0, lambda: clock[0]), _driver_defaults(redis.connection), None
    )
    assert plain.connection_kwargs == before
    assert probe.restore() is False
    # Two seconds left: keys redis-py left at its default are set, then removed again.
    probe = _PoolProbe(plain, attempt, _driver_defaults(redis.connection), None)
    assert plain.connection_kwargs["socket_connect_timeout"] == pytest.approx(2.0)
    assert probe.restore() is True
    assert plain.connection_kwargs == before


def test_factory_probe_keywords() -> None:
    """A custom factory gets Retry(NoBackoff(), 0) and timeouts bounded by the time left."""
    from resilient_connect.redis._connect import _FactoryStartup

    url = "redis://127.0.0.1:1/0"
    startup = _FactoryStartup(redis.Redis.from_url, url, {"db": 1}, None, (), aio=False)
    attempt = Attempt(1, 102.0, lambda: 100.0)
    probe = startup._probe_kwargs(attempt, aio=False)
    assert probe["db"] == 1
    assert probe["retry"].get_retries() == 0
    assert probe["socket_timeout"] == pytest.approx(2.0)
    roomy = Attempt(1, 200.0, lambda: 100.0)
    astartup = _FactoryStartup(redis.asyncio.Redis.from_url, url, {}, None, (), aio=True)
    probe = astartup._probe_kwargs(roomy, aio=True)
    assert isinstance(probe["retry"], redis.asyncio.retry.Retry)
    assert "socket_timeout" not in probe


def test_sentinel_connection_class_choice() -> None:
    """The rediscovering connection class is used unless the caller chose one or TLS."""
    from resilient_connect.redis._connect import _SentinelStartup
    from resilient_connect.redis._sentinel import AsyncSentinelConnection, SentinelConnection

    def options(kwargs: dict[str, Any], *, aio: bool = False) -> dict[str, Any]:
        startup = _SentinelStartup(
            [("127.0.0.1", 1)],
            "m",
            sentinel_kwargs=None,
            kwargs=kwargs,
            reconnect=None,
            hooks=(),
            aio=aio,
        )
        return startup.master_options

    assert options({}) == {"connection_class": SentinelConnection}
    assert options({}, aio=True) == {"connection_class": AsyncSentinelConnection}
    assert options({"ssl": True}) == {}
    assert options({"connection_class": object}) == {}


async def test_a_write_on_a_closed_asyncio_transport_is_a_lost_connection() -> None:
    """CPython 3.12-3.14's AttributeError/TypeError from a reset transport becomes a redis
    ConnectionError (which the bridge retries); the same error from elsewhere stays as is."""
    from resilient_connect.redis._transport import translating

    namespace: dict[str, Any] = {}
    code = "def write():\n    raise AttributeError('NoneType has no _add_writer')\n"
    exec(compile(code, "/usr/lib/python3.13/asyncio/selector_events.py", "exec"), namespace)

    async def in_transport() -> None:
        namespace["write"]()

    async def in_application() -> None:
        raise AttributeError("a bug of the application's")

    with pytest.raises(rx.ConnectionError, match="transport was already closed") as caught:
        await translating(in_transport)()
    assert isinstance(caught.value.__cause__, AttributeError)
    with pytest.raises(AttributeError, match="application"):
        await translating(in_application)()
