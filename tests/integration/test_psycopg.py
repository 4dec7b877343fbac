"""resilient_connect.psycopg against real PostgreSQL servers, sync and async from one scenario.

Each scenario is a plain test run once per flavour of the ``api`` fixture (harness.api):
connect_with_retry, then aconnect_with_retry on an event loop kept for the whole test.
Servers change state from timer threads while the client waits.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.errors as pg_errors
import pytest
from psycopg.rows import dict_row

from harness import FaultProxy, PostgresServer, kv_quote
from harness.api import PsycopgApi, api_fixture
from resilient_connect import (
    Backoff,
    GaveUp,
    NotRetried,
    Recovered,
    RetryExhausted,
    RetryScheduled,
    log_event,
)
from resilient_connect._bounded import THREAD_NAME
from resilient_connect._events import Event
from resilient_connect.psycopg import classify
from resilient_connect.testing import instant_waits

pytestmark = pytest.mark.integration

MakePostgres = Callable[..., PostgresServer]
MakeProxy = Callable[..., FaultProxy]
FAST = Backoff(initial=0.02, maximum=0.1, timeout=20)

# "Fails at once" on this shared 2-core machine: generous, yet far below any retry budget.
FAIL_FAST_LIMIT = 2.0
OVERSHOOT_LIMIT = 0.5


api = api_fixture(PsycopgApi)


class Recorder:
    """A hook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def rules(self) -> set[str]:
        return {e.rule for e in self.events if isinstance(e, RetryScheduled | GaveUp | NotRetried)}

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


@contextmanager
def later(seconds: float, action: Callable[[], object]) -> Iterator[threading.Timer]:
    """Run ``action`` on a timer thread after ``seconds``; always joined at the end."""
    timer = threading.Timer(seconds, action)
    timer.start()
    try:
        yield timer
    finally:
        timer.cancel()
        timer.join(30)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for_helper_threads(timeout: float = 15.0) -> int:
    """Poll until no connect helper thread is left; return how many remain."""
    deadline = time.monotonic() + timeout
    while True:
        left = [t for t in threading.enumerate() if t.name == THREAD_NAME]
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(0.02)


# --------------------------------------------------------------------------- server comes and goes


def test_late_start(api: PsycopgApi, make_postgres: MakePostgres) -> None:
    """A server that starts while the client waits is reached; refused attempts were retried."""
    server = make_postgres(start=False)
    hooks = Recorder()
    with later(0.5, server.launch):
        row = api.query(server.url, policy=FAST, hooks=[hooks])
    assert row == (1,)
    assert "pg:refused" in hooks.rules()
    assert hooks.rules() <= {"pg:refused", "pg:starting-up", "pg:recovering"}
    [recovered] = hooks.of(Recovered)
    assert recovered.attempt > 1


def test_restart(api: PsycopgApi, make_postgres: MakePostgres) -> None:
    """After a restart, the old session's error is transient and a new connect recovers."""
    server = make_postgres()
    with psycopg.connect(server.url, autocommit=True) as old:
        server.stop("fast")
        with pytest.raises(psycopg.OperationalError) as info:
            old.execute("select 1")
    assert classify(info.value).transient
    assert classify(info.value).rule in {"pg:admin-shutdown", "pg:connection-lost"}
    hooks = Recorder()
    with later(0.3, server.launch):
        start = time.monotonic()
        row = api.query(server.conninfo, policy=FAST, hooks=[hooks])
        elapsed = time.monotonic() - start
    assert row == (1,)
    assert hooks.of(Recovered)
    assert 0.3 <= elapsed < 10


def test_refused_until_deadline(api: PsycopgApi, free_port: int) -> None:
    """Nothing listening: attempts repeat until the deadline, then RetryExhausted, on time."""
    hooks = Recorder()
    policy = Backoff(initial=0.05, maximum=0.2, timeout=1.5)
    start = time.monotonic()
    exc = api.failing(host="127.0.0.1", port=free_port, policy=policy, hooks=[hooks])
    elapsed = time.monotonic() - start
    assert isinstance(exc, RetryExhausted)
    assert exc.reason == "deadline"
    assert exc.attempts >= 3
    assert isinstance(exc.__cause__, psycopg.OperationalError)
    assert hooks.rules() == {"pg:refused"}
    assert elapsed < policy.timeout + OVERSHOOT_LIMIT  # type: ignore[operator]


@pytest.mark.parametrize("connect_timeout", [None, 2])
def test_blackhole_bounded_by_deadline(
    api: PsycopgApi,
    connect_timeout: int | None,
    postgres: PostgresServer,
    fault_proxy: MakeProxy,
) -> None:
    """A server that accepts and never answers costs the deadline plus at most 0.5 s.

    With connect_timeout=2 psycopg times out first (a ConnectionTimeout whose traceback
    would hold the half-open socket), then the last attempt is cut by the deadline. Neither
    leaves an fd or a helper thread behind, even with the garbage collector off.
    """
    proxy = fault_proxy(postgres.address)
    proxy.blackhole()
    extra = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    policy = Backoff(initial=0.05, maximum=0.1, timeout=3.0)
    hooks = Recorder()
    fds = open_fds()
    gc.disable()
    try:
        start = time.monotonic()
        exc = api.failing(postgres.url_for(port=proxy.port), policy=policy, hooks=[hooks], **extra)
        overshoot = time.monotonic() - start - 3.0
        assert wait_for_helper_threads() == 0
        proxy.cut_all()
        assert open_fds() <= fds
    finally:
        gc.enable()
    assert isinstance(exc, RetryExhausted)
    assert isinstance(exc.last_exception, pg_errors.ConnectionTimeout)
    assert hooks.rules() == {"pg:timeout"}
    assert exc.attempts == (1 if connect_timeout is None else 2)
    assert overshoot < OVERSHOOT_LIMIT


def test_no_deadline_still_bounds_each_host(
    api: PsycopgApi, postgres: PostgresServer, fault_proxy: MakeProxy
) -> None:
    """Without a deadline an attempt is bounded by connect_timeout alone and leaks no socket."""
    proxy = fault_proxy(postgres.address)
    proxy.blackhole()
    policy = Backoff(attempts=1, timeout=None)
    fds = open_fds()
    gc.disable()
    try:
        start = time.monotonic()
        exc = api.failing(
            postgres.url_for(port=proxy.port), policy=policy, hooks=(), connect_timeout=2
        )
        elapsed = time.monotonic() - start
        proxy.cut_all()
        assert open_fds() <= fds
    finally:
        gc.enable()
    assert isinstance(exc, RetryExhausted)
    assert exc.reason == "attempts"
    assert isinstance(exc.last_exception, pg_errors.ConnectionTimeout)
    assert 1.9 <= elapsed < 2 + OVERSHOOT_LIMIT


# --------------------------------------------------------------------------- permanent errors


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"password": "wrong-password"}, "pg:auth-failed"),
        ({"dbname": "nosuchdb"}, "pg:database-missing"),
    ],
)
def test_permanent_errors_fail_on_first_attempt(
    api: PsycopgApi, postgres: PostgresServer, change: dict[str, str], rule: str
) -> None:
    """Wrong password and unknown database raise psycopg's error after exactly one attempt."""
    hooks = Recorder()
    start = time.monotonic()
    exc = api.failing(postgres.url_for(**change), policy=FAST, hooks=[hooks])
    elapsed = time.monotonic() - start
    assert type(exc) is psycopg.OperationalError
    [event] = hooks.events
    assert isinstance(event, NotRetried)
    assert event.exception is exc
    assert (event.attempt, event.rule) == (1, rule)
    assert elapsed < FAIL_FAST_LIMIT


# --------------------------------------------------------------------------- busy or not ready


def test_too_many_connections_recovers_when_a_slot_frees(
    api: PsycopgApi, make_postgres: MakePostgres
) -> None:
    """With every non-reserved slot taken the connect is retried and succeeds once one frees."""
    server = make_postgres(extra_conf={"max_connections": 5, "superuser_reserved_connections": 3})
    held = [psycopg.connect(server.url) for _ in range(2)]
    try:
        with pytest.raises(psycopg.OperationalError) as full:
            psycopg.connect(server.url).close()
        assert classify(full.value).rule == "pg:too-many-connections"
        hooks = Recorder()
        with later(0.5, held[0].close):
            row = api.query(server.url, policy=FAST, hooks=[hooks])
    finally:
        for conn in held:
            conn.close()
    assert row == (1,)
    assert hooks.rules() == {"pg:too-many-connections"}
    assert hooks.of(Recovered)


def test_standby_57p03_until_promoted(api: PsycopgApi, make_postgres: MakePostgres) -> None:
    """A real 57P03 (standby, hot_standby off) is retried until the server runs as a primary."""
    server = make_postgres()
    server.start_as_standby()
    hooks = Recorder()
    with later(0.5, server.end_standby):
        row = api.query(server.url, policy=FAST, hooks=[hooks])
    assert row == (1,)
    assert "pg:standby" in hooks.rules()
    # end_standby() stops and starts the server: what a client sees meanwhile varies
    # (under load, a handshake cut by the shutdown reads as a lost connection).
    assert hooks.rules() <= {
        "pg:standby",
        "pg:shutting-down",
        "pg:refused",
        "pg:starting-up",
        "pg:recovering",
        "pg:connection-lost",
    }


def test_starting_up_replayed_then_up(
    api: PsycopgApi, postgres: PostgresServer, fault_proxy: MakeProxy
) -> None:
    """The server's real "starting up" FATAL (replayed by the proxy) is retried until it is up."""
    proxy = fault_proxy(postgres.address)
    proxy.replay_pg_fatal("57P03", "the database system is starting up")
    hooks = Recorder()
    with later(0.4, proxy.pass_through):
        row = api.query(postgres.url_for(port=proxy.port), policy=FAST, hooks=[hooks])
    assert row == (1,)
    assert hooks.rules() == {"pg:starting-up"}


# --------------------------------------------------------------------------- several hosts


def test_multi_host_one_down(api: PsycopgApi, postgres: PostgresServer, free_port: int) -> None:
    """host=a,b with a down connects to b within the first attempt, without a retry."""
    hooks = Recorder()
    conninfo = postgres.conninfo_for(
        host="127.0.0.1,127.0.0.1", port=f"{free_port},{postgres.port}"
    )
    row = api.query(conninfo, "select inet_server_port()", policy=FAST, hooks=[hooks])
    assert row == (postgres.port,)
    assert hooks.events == []


def test_target_session_attrs_waits_for_a_primary(
    api: PsycopgApi, make_postgres: MakePostgres, free_port: int
) -> None:
    """With only a read-only host up, read-write is retried (pg:session-attrs) until it turns
    writable; the down host in the list does not matter."""
    server = make_postgres(extra_conf={"default_transaction_read_only": "on"})
    conninfo = server.conninfo_for(
        host="127.0.0.1,127.0.0.1",
        port=f"{free_port},{server.port}",
        target_session_attrs="read-write",
    )

    def promote() -> None:
        server.set_conf("default_transaction_read_only", "off")
        server.restart()

    hooks = Recorder()
    with later(0.5, promote):
        row = api.query(conninfo, "show transaction_read_only", policy=FAST, hooks=[hooks])
    assert row == ("off",)
    assert "pg:session-attrs" in hooks.rules()


# --------------------------------------------------------------------------- secrets


def _password_forms(password: str) -> list[str]:
    return [password, quote(password, safe=""), quote(password), kv_quote(password)]


@pytest.mark.parametrize("form", ["url", "keyvalue", "keyword"])
def test_password_never_leaks(
    api: PsycopgApi,
    form: str,
    postgres: PostgresServer,
    free_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The password is in no log line, event, RetryExhausted text/repr/traceback/pickle."""
    password = postgres.password
    args: dict[str, Any] = {
        "url": {"conninfo": postgres.url_for(port=free_port)},
        "keyvalue": {"conninfo": postgres.conninfo_for(port=free_port)},
        "keyword": dict(postgres.connect_kwargs, port=free_port),
    }[form]
    hooks = Recorder()
    caplog.set_level(logging.DEBUG, logger="resilient_connect")
    exc = api.failing(policy=Backoff(initial=0.05, timeout=0.4), hooks=[log_event, hooks], **args)
    assert isinstance(exc, RetryExhausted)
    # psycopg's error keeps the password in exc.pgconn (psycopg's design); our texts do not.
    texts = [
        caplog.text,
        *(str(vars(record)) for record in caplog.records),
        *(f"{e.target} {e.cause}" for e in hooks.events),
        str(exc),
        repr(exc),
        exc.target,
        exc.cause,
        "".join(traceback.format_exception(exc)),
        repr(pickle.loads(pickle.dumps(exc)).last_exception.pgconn),
    ]
    for text in texts:
        for secret in _password_forms(password):
            assert secret not in text
    assert len(caplog.records) >= 2
    assert "***" in exc.target or form == "keyword"


def test_permanent_error_log_hides_password(
    api: PsycopgApi, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The NotRetried log line of a failed login names the target without its password."""
    caplog.set_level(logging.DEBUG, logger="resilient_connect")
    exc = api.failing(postgres.url_for(dbname="nosuchdb"), policy=FAST)
    assert isinstance(exc, psycopg.OperationalError)
    assert "pg:database-missing" in caplog.text
    assert "postgresql://app:***@" in caplog.text
    for secret in _password_forms(postgres.password):
        assert secret not in caplog.text


def test_connection_repr_has_no_password(api: PsycopgApi, postgres: PostgresServer) -> None:
    """The connection we return is psycopg's own; its repr shows no password."""
    conn = api.connect(postgres.url, policy=FAST)
    assert isinstance(conn, api.pick(psycopg.Connection, psycopg.AsyncConnection))
    assert postgres.password not in repr(conn)
    assert "password" not in conn.info.dsn


# --------------------------------------------------------------------------- resources


def test_thousand_refused_attempts_leave_fds_and_threads_flat(
    api: PsycopgApi, free_port: int
) -> None:
    """1000 refused attempts (under a deadline: on helper threads when sync) leak nothing."""
    policy = Backoff(initial=0.01, maximum=0.01, attempts=1000, timeout=100_000)
    hooks = Recorder()
    with instant_waits():
        # Warm-up: the first connect loads libraries and creates lazily opened files.
        api.failing(host="127.0.0.1", port=free_port, policy=policy.replace(attempts=2), hooks=())
        assert wait_for_helper_threads() == 0
        gc.collect()  # an earlier test's garbage (a socket in a cycle) must not close mid-count
        fds, threads = open_fds(), threading.active_count()
        exc = api.failing(host="127.0.0.1", port=free_port, policy=policy, hooks=[hooks])
    assert isinstance(exc, RetryExhausted)
    assert exc.attempts == 1000
    assert wait_for_helper_threads() == 0
    assert open_fds() == fds
    assert threading.active_count() == threads


# --------------------------------------------------------------------------- psycopg options


def test_psycopg_options_pass_through(api: PsycopgApi, postgres: PostgresServer) -> None:
    """autocommit, row_factory and prepare_threshold reach psycopg (here without a deadline)."""
    conn = api.connect(
        postgres.url,
        autocommit=True,
        row_factory=dict_row,
        prepare_threshold=None,
        policy=Backoff(attempts=3, timeout=None),
    )
    assert conn.autocommit
    assert conn.prepare_threshold is None
    assert api.fetchone(conn, "select 1 as one") == {"one": 1}
