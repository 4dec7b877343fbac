"""resilient_connect.sqlalchemy without a database server: classification, SQLite drop-in,
the connect-timeout bounds and the give-up behaviour (in virtual time, on a closed port)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
import sqlalchemy.exc as sa_exc
from sqlalchemy import text

from resilient_connect import Backoff, Event, GaveUp, NotRetried, RetryExhausted
from resilient_connect._classify import default_classifier
from resilient_connect._engine import Attempt
from resilient_connect.sqlalchemy import (
    DEFAULT_RECONNECT,
    classify,
    create_async_engine,
    create_engine,
    is_transient,
)
from resilient_connect.sqlalchemy._heal import (
    DEFAULT_ATTEMPT_TIMEOUT,
    Healer,
    _caller_timeout,
    _takes_connection_record,
    attempt_timeout,
)
from resilient_connect.testing import instant_waits


def _wrapped(orig: BaseException, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    return sa_exc.OperationalError(None, None, orig, connection_invalidated=invalidated)


class FakeDriverError(Exception):
    """Base of a made-up DBAPI driver's errors."""


FakeOperationalError = type("OperationalError", (FakeDriverError,), {"__module__": "fakedb"})
FakeProgrammingError = type("ProgrammingError", (FakeDriverError,), {"__module__": "fakedb"})
FakeAsyncioTimeout = type("TimeoutError", (Exception,), {"__module__": "asyncio.exceptions"})

REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 1 failed: '
    "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?"
)
BAD_PASSWORD = (
    'connection failed: connection to server at "127.0.0.1", port 1 failed: '
    'FATAL:  password authentication failed for user "app"'
)


# ------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    ("exc", "transient", "rule"),
    [
        (_wrapped(sqlite3.OperationalError("database is locked")), True, "sqlite:locked"),
        (
            _wrapped(sqlite3.OperationalError("unable to open database file")),
            False,
            "sqlite:cannot-open",
        ),
        (sa_exc.IntegrityError(None, None, sqlite3.IntegrityError("UNIQUE")), False, None),
        (_wrapped(psycopg.OperationalError(REFUSED)), True, None),
        (_wrapped(psycopg.OperationalError(BAD_PASSWORD)), False, None),
        (_wrapped(ValueError("boom"), invalidated=True), True, "sa:connection-invalidated"),
        (_wrapped(FakeOperationalError("gone")), True, "dbapi:fakedb:operational-error"),
        (sa_exc.ProgrammingError(None, None, FakeProgrammingError("syntax")), False, None),
        (_wrapped(ConnectionRefusedError(111, "refused")), True, None),
        (sa_exc.DisconnectionError("stale"), True, "sa:disconnect"),
        (sa_exc.TimeoutError("QueuePool limit reached"), True, "sa:pool-timeout"),
        (sa_exc.ArgumentError("bad url"), False, "sa:ArgumentError"),
        (ConnectionResetError(104, "reset"), True, "os-error:ConnectionResetError"),
        (ValueError("not a database error"), False, None),
        (FakeAsyncioTimeout(), True, "timeout"),
        (sa_exc.DBAPIError(None, None, None), False, "sa:DBAPIError"),  # type: ignore[arg-type]
    ],
    ids=lambda value: value if isinstance(value, (bool, str)) else type(value).__name__,
)
def test_classify_rules(exc: BaseException, transient: bool, rule: str | None) -> None:
    """Each documented rule gives the documented verdict."""
    verdict = classify(exc)
    assert verdict.transient is transient
    assert is_transient(exc) is transient
    if rule is not None:
        assert verdict.rule == rule


def test_psycopg_errors_are_judged_by_the_psycopg_adapter() -> None:
    """Through SQLAlchemy, a psycopg error gets the psycopg adapter's rule name."""
    from resilient_connect import psycopg as psycopg_adapter

    orig = psycopg.OperationalError(REFUSED)
    assert classify(_wrapped(orig)) == psycopg_adapter.classify(orig)
    assert classify(_wrapped(orig)).rule.startswith("pg:")


def test_core_default_classifier_uses_this_module() -> None:
    """The core's default classifier hands SQLAlchemy errors to this adapter."""
    exc = _wrapped(sqlite3.OperationalError("database is locked"))
    assert default_classifier(exc) == classify(exc)


# ------------------------------------------------------------------ SQLite drop-in
def test_sqlite_memory_is_a_plain_drop_in() -> None:
    """sqlite:// gives SQLAlchemy's engine unchanged: no pre-ping forced, no listener."""
    engine = create_engine("sqlite://", hooks=())
    try:
        assert isinstance(engine, sqlalchemy.Engine)
        assert engine.pool._pre_ping is False
        assert len(engine.dialect.dispatch.do_connect) == 0
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_file_database_with_url_object(tmp_path: Path) -> None:
    """A file database given as a URL object works, keyword arguments included."""
    url = sqlalchemy.URL.create("sqlite", database=str(tmp_path / "app.db"))
    engine = create_engine(url, echo=False, pool_pre_ping=True)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.execute(text("INSERT INTO t VALUES (42)"))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT x FROM t")).scalar() == 42
        assert engine.pool._pre_ping is True
    finally:
        engine.dispose()


def test_sqlite_bad_path_is_not_touched_at_creation(tmp_path: Path) -> None:
    """Like SQLAlchemy, a SQLite engine is lazy: a bad path fails on first use, permanently."""
    engine = create_engine(f"sqlite:///{tmp_path}/missing/dir/app.db")
    try:
        with pytest.raises(sa_exc.OperationalError) as caught:
            engine.connect()
        assert classify(caught.value).rule == "sqlite:cannot-open"
    finally:
        engine.dispose()


# ------------------------------------------------------------------ start-up and give-up
def test_lazy_engine_does_not_connect(free_port: int) -> None:
    """lazy=True returns at once, with pre-ping on and the healing listener installed."""
    engine = create_engine(f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app", lazy=True)
    try:
        assert engine.pool._pre_ping is True
        assert len(engine.dialect.dispatch.do_connect) == 1
    finally:
        engine.dispose()


def test_start_up_gives_up_at_the_deadline(free_port: int) -> None:
    """With nothing listening, create_engine retries until the deadline (virtual time)."""
    events: list[Event] = []
    url = f"postgresql+psycopg://app:s3cret-pw@127.0.0.1:{free_port}/app"
    with instant_waits() as waits, pytest.raises(RetryExhausted) as caught:
        create_engine(url, retry=Backoff(timeout=30), hooks=[events.append])
    assert caught.value.reason == "deadline"
    assert caught.value.attempts > 3
    assert 20 < waits.total <= 30
    assert isinstance(caught.value.__cause__, sa_exc.OperationalError)
    assert "s3cret-pw" not in str(caught.value)
    assert "app:***@127.0.0.1" in str(caught.value)
    assert isinstance(events[-1], GaveUp)


async def test_async_start_up_gives_up_at_the_deadline(free_port: int) -> None:
    """The async twin gives up the same way (virtual time)."""
    url = f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app"
    with instant_waits() as waits, pytest.raises(RetryExhausted):
        await create_async_engine(url, retry=Backoff(timeout=10), hooks=())
    assert 5 < waits.total <= 10


def test_reconnect_gives_up_with_sqlalchemys_own_error(free_port: int) -> None:
    """When reconnecting gives up, engine.connect() raises SQLAlchemy's OperationalError."""
    events: list[Event] = []
    url = f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app"
    engine = create_engine(url, lazy=True, reconnect=Backoff(timeout=10), hooks=[events.append])
    try:
        with instant_waits() as waits, pytest.raises(sa_exc.OperationalError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    assert 5 < waits.total <= 10
    assert isinstance(events[-1], GaveUp)
    assert is_transient(caught.value)
    if sys.version_info >= (3, 11):
        notes = getattr(caught.value.orig, "__notes__", [])
        assert any(
            note.startswith("resilient_connect: ") and "gave up after" in note for note in notes
        )


def test_permanent_client_error_is_not_retried() -> None:
    """An invalid connection option fails on the first attempt with SQLAlchemy's error."""
    events: list[Event] = []
    url = "postgresql+psycopg://app:pw@127.0.0.1:1/app?bogus_option=1"
    with pytest.raises(sa_exc.ProgrammingError, match="bogus_option"):
        create_engine(url, hooks=[events.append])
    assert [type(e) for e in events] == [NotRetried]


def test_caller_pool_is_respected(free_port: int) -> None:
    """With pool= given there is nothing to hook: no listener and no pre-ping argument."""

    def make() -> Any:
        return sqlite3.connect(":memory:")

    pool = sqlalchemy.pool.NullPool(make)
    engine = create_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app", pool=pool, lazy=True
    )
    assert engine.pool is pool
    assert len(engine.dialect.dispatch.do_connect) == 0


def test_default_reconnect_policy_is_shorter_than_start_up() -> None:
    """The default reconnect deadline is bounded and shorter than the start-up one."""
    assert DEFAULT_RECONNECT.timeout is not None
    assert 5 <= DEFAULT_RECONNECT.timeout < 60
    assert DEFAULT_RECONNECT.maximum <= 1.0


# ------------------------------------------------------------------ connect-timeout bounds
def _healer_for(url: str) -> Healer:
    healer = Healer(
        policy=DEFAULT_RECONNECT,
        classify=classify,
        target="t",
        hooks=(),
        secrets=(),
        is_async=False,
    )
    engine = sqlalchemy.create_engine(url)
    healer.install(engine, listen=False)
    engine.dispose()
    return healer


def _attempt(remaining: float | None) -> Attempt:
    now = 100.0
    return Attempt(1, None if remaining is None else now + remaining, lambda: now)


@pytest.mark.parametrize(
    ("given", "remaining", "expected"),
    [
        (None, 60.0, int(DEFAULT_ATTEMPT_TIMEOUT)),
        ("3", 60.0, 3),
        (None, 7.9, 8),
        (None, 1.2, 2),
        ("0", 30.5, 31),
        (None, None, int(DEFAULT_ATTEMPT_TIMEOUT)),
    ],
)
def test_libpq_connect_timeout_is_bounded(
    given: str | None, remaining: float | None, expected: int
) -> None:
    """connect_timeout: caller's value or 10 s, cut to the time left, whole seconds, >= 2."""
    healer = _healer_for("postgresql+psycopg://u:p@127.0.0.1:1/d")
    params: dict[str, Any] = {} if given is None else {"connect_timeout": given}
    healer._bound_connect_params(params, _attempt(remaining))
    assert params["connect_timeout"] == expected


def test_unbounded_caller_timeout_without_deadline_is_left_alone() -> None:
    """connect_timeout=0 (no limit) and no deadline: nothing to bound, the value stays."""
    healer = _healer_for("postgresql+psycopg://u:p@127.0.0.1:1/d")
    params: dict[str, Any] = {"connect_timeout": "0"}
    healer._bound_connect_params(params, _attempt(None))
    assert params == {"connect_timeout": "0"}


def test_unknown_driver_params_untouched() -> None:
    """Drivers whose timeout argument we do not know get no extra parameter."""
    healer = _healer_for("sqlite://")
    params: dict[str, Any] = {}
    healer._bound_connect_params(params, _attempt(5.0))
    assert params == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, DEFAULT_ATTEMPT_TIMEOUT),
        ("5", 5.0),
        (2.5, 2.5),
        (0, None),
        ("-1", None),
        ("soon", DEFAULT_ATTEMPT_TIMEOUT),
    ],
)
def test_caller_timeout(value: object, expected: float | None) -> None:
    """The caller's connect timeout: missing means our default, <= 0 means no limit."""
    assert _caller_timeout(value) == expected


def test_takes_connection_record() -> None:
    """A creator gets the record when SQLAlchemy would pass it: one positional parameter."""

    def no_args() -> None: ...
    def record(connection_record: object = None) -> None: ...
    def one(rec: object) -> None: ...
    def optional(rec: object = None, other: object = None) -> None: ...

    assert not _takes_connection_record(no_args)
    assert _takes_connection_record(record)
    assert _takes_connection_record(one)
    assert not _takes_connection_record(optional)


def test_attempt_timeout_uses_the_drivers_error() -> None:
    """A cut-short attempt raises the driver's timeout or OperationalError, else TimeoutError."""
    engine = sqlalchemy.create_engine("postgresql+psycopg://u:p@127.0.0.1:1/d")
    error = attempt_timeout(engine.dialect, 1.5)
    engine.dispose()
    assert isinstance(error, psycopg.errors.ConnectionTimeout)
    assert is_transient(error)
    lite = sqlalchemy.create_engine("sqlite://")
    assert isinstance(attempt_timeout(lite.dialect, 1.5), sqlite3.OperationalError)
    lite.dispose()
    assert isinstance(attempt_timeout(None, 1.5), TimeoutError)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "asyncpg"])
def test_a_cut_attempt_is_judged_a_timeout_for_every_postgresql_driver(driver: str) -> None:
    """The error made for an attempt cut at the deadline is ``pg:timeout`` with every
    PostgreSQL driver (asyncpg's is an emulated DBAPI error with no driver error inside),
    so a give-up names what earlier attempts reported too."""
    pytest.importorskip(driver)
    engine = sqlalchemy.create_engine(f"postgresql+{driver}://u:p@127.0.0.1:1/d")
    error = attempt_timeout(engine.dialect, 1.5)
    engine.dispose()
    assert "cut short after 1.50s" in str(error)
    verdict = classify(error)
    assert verdict.transient
    assert verdict.rule == "pg:timeout"


def test_float_timeout_drivers_get_the_exact_time_left() -> None:
    """asyncpg-style ``timeout`` parameters get the bound as a float, not whole seconds."""
    healer = _healer_for("postgresql+psycopg://u:p@127.0.0.1:1/d")
    healer._timeout_param = "timeout"
    params: dict[str, Any] = {}
    healer._bound_connect_params(params, _attempt(1.25))
    assert params == {"timeout": 1.25}


# ------------------------------------------------------------------ the listener itself
def test_listener_retries_and_later_listeners_may_connect() -> None:
    """The do_connect listener retries a failing later listener, which then connects."""
    engine = sqlalchemy.create_engine("sqlite://")
    healer = Healer(
        policy=Backoff(timeout=10),
        classify=classify,
        target="sqlite://",
        hooks=(),
        secrets=(),
        is_async=False,
    )
    healer.install(engine)
    calls = 0

    @sqlalchemy.event.listens_for(engine, "do_connect")
    def flaky(dialect: Any, record: Any, cargs: Any, cparams: Any) -> sqlite3.Connection:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise sqlite3.OperationalError("database is locked")
        return sqlite3.connect(":memory:")

    try:
        with instant_waits() as waits, engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert calls == 3
    assert len(waits.sleeps) == 2


async def test_async_lazy_engine_does_not_connect(free_port: int) -> None:
    """create_async_engine(lazy=True) returns at once with the listener installed."""
    engine = await create_async_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app", lazy=True
    )
    try:
        assert len(engine.sync_engine.dialect.dispatch.do_connect) == 1
        assert engine.sync_engine.pool._pre_ping is True
    finally:
        await engine.dispose()


async def test_async_start_up_without_deadline_counts_attempts(free_port: int) -> None:
    """With attempts= and no timeout, the start-up wait gives up after that many attempts."""
    url = f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app"
    with instant_waits(), pytest.raises(RetryExhausted) as caught:
        await create_async_engine(url, retry=Backoff(attempts=3, timeout=None), hooks=())
    assert caught.value.reason == "attempts"
    assert caught.value.attempts == 3


async def test_async_creator_gives_up_with_its_own_error(free_port: int) -> None:
    """A wrapped async_creator is retried; at the end its own last error propagates."""
    events: list[Event] = []
    calls = 0

    async def refused() -> Any:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(111, "refused")

    engine = await create_async_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app",
        async_creator=refused,
        lazy=True,
        reconnect=Backoff(timeout=5),
        hooks=[events.append],
    )
    try:
        with instant_waits(), pytest.raises(ConnectionRefusedError):
            await engine.connect()
    finally:
        await engine.dispose()
    assert calls > 2
    assert isinstance(events[-1], GaveUp)
