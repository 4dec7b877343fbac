"""resilient_connect.sqlalchemy against real PostgreSQL servers on loopback.

Covers the start-up wait (late start, permanent errors, blackhole), runtime healing after a
restart (several threads too), option pass-through and redaction. Each scenario runs once
per flavour of the ``api`` fixture (harness.api): ``create_engine`` and its ``Engine``, then
``await create_async_engine`` and its ``AsyncEngine`` on one event loop kept for the whole
test. Tests marked ``@SYNC_ONLY`` / ``@ASYNC_ONLY`` pin what only one flavour has (threads,
``creator=`` / ``async_creator=``, an event loop that must keep running). Recovery times are
printed (``pytest -s``) so that they can be reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import event

from harness import FaultProxy, PostgresServer
from harness.api import SqlalchemyApi, api_fixture, only
from resilient_connect import Backoff, Event, GaveUp, NotRetried, Recovered, RetryExhausted
from resilient_connect.sqlalchemy import is_transient

pytestmark = pytest.mark.integration

SCHEME = "postgresql+psycopg"
FAST = Backoff(initial=0.05, maximum=0.5, timeout=20.0)
# Waits short enough to tick the event loop's clock often, ending within about 1 s.
SHORT = Backoff(initial=0.05, maximum=0.2, timeout=1.0)

api = api_fixture(SqlalchemyApi)
#: Behaviour only the sync flavour has (threads, ``creator=``).
SYNC_ONLY = only("sync")
#: Behaviour only the asyncio flavour has (a running event loop, ``async_creator=``).
ASYNC_ONLY = only("async")


def _url(server: PostgresServer, **parts: Any) -> str:
    return server.url_for(scheme=SCHEME, **parts)


def _proxy_url(server: PostgresServer, proxy: FaultProxy) -> str:
    return server.url_for(scheme=SCHEME, port=proxy.port)


def _start_later(server: PostgresServer, delay: float) -> tuple[threading.Thread, list[float]]:
    """Start ``server`` on a thread after ``delay`` s; the list gets the time it was ready."""
    ready: list[float] = []

    def run() -> None:
        time.sleep(delay)  # the outage we simulate, not a wait for a condition
        server.start()
        ready.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ready


@pytest.fixture
def events() -> list[Event]:
    """Collects the events of one call (pass ``hooks=[events.append]``)."""
    return []


@pytest.fixture
def restartable(make_postgres: Callable[..., PostgresServer]) -> PostgresServer:
    """A fresh running cluster that the test may stop and start."""
    return make_postgres()


# ------------------------------------------------------------------ start-up
def test_late_start_waits_until_the_server_answers(
    api: SqlalchemyApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """The engine is returned only after a server that starts 1 s late answers SELECT 1."""
    server = make_postgres(start=False)
    thread, ready = _start_later(server, 1.0)
    began = time.monotonic()
    engine = api.create_engine(_url(server), retry=FAST, hooks=())
    returned = time.monotonic()
    thread.join(30)
    assert ready, "the server did not start"
    assert returned - began >= 0.9
    assert returned >= ready[0] - 0.5  # not before the server could answer
    print(f"\nlate start ({api.flavour}): ready {returned - ready[0]:+.3f}s after the server")
    assert api.scalar(engine) == 1


@ASYNC_ONLY
def test_start_up_wait_keeps_the_event_loop_running(api: SqlalchemyApi, free_port: int) -> None:
    """While await create_async_engine waits for a server, the event loop keeps ticking."""
    url = f"{SCHEME}://app:pw@127.0.0.1:{free_port}/app"
    began = time.monotonic()
    with api.loop_ticks() as ticks, pytest.raises(RetryExhausted):
        api.create_engine(url, retry=SHORT, hooks=())
    assert time.monotonic() - began >= 0.9
    assert ticks.count >= 5, "the event loop was blocked while waiting"


@pytest.mark.parametrize(
    ("parts", "marker"),
    [
        ({"password": "wrong-password"}, "password authentication"),
        ({"dbname": "no_such_db"}, "does not exist"),
    ],
    ids=["wrong-password", "unknown-database"],
)
def test_permanent_errors_fail_fast(
    api: SqlalchemyApi,
    postgres: PostgresServer,
    events: list[Event],
    parts: dict[str, str],
    marker: str,
) -> None:
    """A wrong password or unknown database raises SQLAlchemy's OperationalError at once."""
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        api.create_engine(_url(postgres, **parts), retry=FAST, hooks=[events.append])
    elapsed = time.monotonic() - began
    print(f"\n{parts} ({api.flavour}): failed after {elapsed:.3f}s")
    assert elapsed < 2.0
    assert marker in str(caught.value)
    assert [type(e) for e in events] == [NotRetried]
    assert not is_transient(caught.value)


@pytest.mark.parametrize(
    ("timeout", "earliest", "latest"),
    [(1.0, 0.8, 1.9), (3.0, 2.5, 4.5)],
    ids=["below-libpq-minimum", "above-libpq-minimum"],
)
def test_blackhole_start_up_bounded_by_the_deadline(
    api: SqlalchemyApi,
    postgres: PostgresServer,
    fault_proxy: Callable[..., FaultProxy],
    events: list[Event],
    timeout: float,
    earliest: float,
    latest: float,
) -> None:
    """Against a silent server the start-up gives up at the deadline, also below libpq's 2 s."""
    proxy = fault_proxy(postgres.address)
    proxy.blackhole()
    policy = Backoff(initial=0.1, maximum=0.5, timeout=timeout)
    began = time.monotonic()
    with pytest.raises(RetryExhausted) as caught:
        api.create_engine(_proxy_url(postgres, proxy), retry=policy, hooks=[events.append])
    elapsed = time.monotonic() - began
    print(f"\nblackhole start-up ({api.flavour}, {timeout} s): gave up after {elapsed:.3f}s")
    assert earliest <= elapsed <= latest
    assert caught.value.reason == "deadline"
    assert isinstance(events[-1], GaveUp)
    assert isinstance(caught.value.__cause__, sqlalchemy.exc.OperationalError)


# ------------------------------------------------------------------ runtime healing
def test_restart_next_connect_waits_and_succeeds(
    api: SqlalchemyApi, restartable: PostgresServer, events: list[Event]
) -> None:
    """After a restart, a connect during the outage waits, then succeeds on a new backend."""
    engine = api.create_engine(_url(restartable), reconnect=FAST, hooks=[events.append])
    backend_before = api.scalar(engine, "SELECT pg_backend_pid()")
    restartable.stop("fast")
    thread, ready = _start_later(restartable, 1.0)
    began = time.monotonic()
    backend_after = api.scalar(engine, "SELECT pg_backend_pid()")
    done = time.monotonic()
    thread.join(30)
    assert ready
    recovery = done - ready[0]
    print(
        f"\nrestart ({api.flavour}): connect waited {done - began:.3f}s, "
        f"{recovery:+.3f}s after ready"
    )
    assert done - began >= 0.9
    assert recovery < 3.0
    assert backend_after != backend_before
    assert isinstance(events[-1], Recovered)


@ASYNC_ONLY
def test_reconnect_wait_keeps_the_event_loop_running(
    api: SqlalchemyApi, postgres: PostgresServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    """While the async engine's pool reconnects to a refusing server, the event loop ticks."""
    proxy = fault_proxy(postgres.address)
    engine = api.create_engine(_proxy_url(postgres, proxy), reconnect=SHORT, hooks=())
    assert api.scalar(engine) == 1
    proxy.refuse()
    proxy.cut_all()
    began = time.monotonic()
    with api.loop_ticks() as ticks, pytest.raises(sqlalchemy.exc.OperationalError):
        api.scalar(engine)
    assert time.monotonic() - began >= 0.9
    assert ticks.count >= 5, "the event loop was blocked while reconnecting"


@SYNC_ONLY
def test_threads_recover_across_a_restart(api: SqlalchemyApi, restartable: PostgresServer) -> None:
    """Eight threads sharing one engine all get answers again after the server restarts."""
    engine = api.create_engine(
        _url(restartable), reconnect=FAST, hooks=(), pool_size=4, max_overflow=4
    )
    stop = threading.Event()
    restarted = threading.Event()
    lock = threading.Lock()
    successes_before: set[int] = set()
    successes_after: dict[int, int] = {}
    unexpected: list[BaseException] = []
    transient_seen = 0

    def worker(index: int) -> None:
        nonlocal transient_seen
        while not stop.is_set():
            after = restarted.is_set()
            try:
                assert api.scalar(engine) == 1
            except Exception as exc:
                with lock:
                    if is_transient(exc):
                        transient_seen += 1
                    else:
                        unexpected.append(exc)
                continue
            with lock:
                if after:
                    successes_after[index] = successes_after.get(index, 0) + 1
                else:
                    successes_before.add(index)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    answered = api.poll(lambda: len(successes_before) == len(threads), 15.0, every=0.01)
    assert answered, "timed out waiting until every worker answered once"
    restartable.stop("fast")
    api.wait(0.5)  # the outage
    restartable.start()
    restarted.set()
    ready = time.monotonic()
    api.poll(lambda: len(successes_after) == len(threads), 15.0, every=0.02)
    recovered_in = time.monotonic() - ready
    stop.set()
    for thread in threads:
        thread.join(20)
    print(
        f"\n8 threads: all recovered {recovered_in:.3f}s after ready; "
        f"{transient_seen} in-flight transient errors"
    )
    assert unexpected == []
    assert sorted(successes_after) == list(range(8))


def test_runtime_blackhole_bounded_by_reconnect_deadline(
    api: SqlalchemyApi,
    postgres: PostgresServer,
    fault_proxy: Callable[..., FaultProxy],
    events: list[Event],
) -> None:
    """A pool reconnect into a blackhole gives up at the reconnect deadline, even below 2 s."""
    proxy = fault_proxy(postgres.address)
    engine = api.create_engine(
        _proxy_url(postgres, proxy), reconnect=Backoff(timeout=1.0), hooks=[events.append]
    )
    assert api.scalar(engine) == 1
    proxy.blackhole()
    proxy.cut_all()
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        api.scalar(engine)
    elapsed = time.monotonic() - began
    print(f"\nruntime blackhole ({api.flavour}, reconnect 1.0 s): raised after {elapsed:.3f}s")
    assert 0.8 <= elapsed <= 1.9
    assert is_transient(caught.value)
    assert any(isinstance(e, GaveUp) for e in events)


def test_runtime_permanent_error_not_retried(
    api: SqlalchemyApi, restartable: PostgresServer, events: list[Event]
) -> None:
    """A password changed under a running engine fails the next new connection at once."""
    engine = api.create_engine(_url(restartable), hooks=[events.append])
    assert api.scalar(engine) == 1
    restartable.execute_as_superuser(f"ALTER ROLE {restartable.user} PASSWORD 'changed-elsewhere'")
    api.dispose(engine)  # drop the pooled connection: the next checkout must connect anew
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication"):
        api.scalar(engine)
    assert time.monotonic() - began < 2.0
    assert [type(e) for e in events] == [NotRetried]


# ------------------------------------------------------------------ pass-through
@pytest.fixture
def restore_sqlalchemy_logging() -> Iterator[None]:
    """echo=True adds a stdout handler to SQLAlchemy's engine logger; take it away again."""
    logger = logging.getLogger("sqlalchemy.engine.Engine")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.usefixtures("restore_sqlalchemy_logging")
def test_engine_options_are_passed_through(api: SqlalchemyApi, postgres: PostgresServer) -> None:
    """pool_size, max_overflow, echo and connect_args reach SQLAlchemy and the driver."""
    engine = api.create_engine(
        sqlalchemy.make_url(_url(postgres)),
        pool_size=3,
        max_overflow=1,
        echo=True,
        connect_args={"application_name": "rc-sa-test"},
        hooks=(),
    )
    pool = api.sync_engine(engine).pool
    assert isinstance(pool, sqlalchemy.pool.QueuePool)
    assert pool.size() == 3
    assert pool._max_overflow == 1
    assert engine.echo is True
    assert pool._pre_ping is True
    assert api.scalar(engine, "SELECT current_setting('application_name')") == "rc-sa-test"


def test_pre_ping_can_be_turned_off(api: SqlalchemyApi, postgres: PostgresServer) -> None:
    """pool_pre_ping=False from the caller wins over our default."""
    engine = api.create_engine(_url(postgres), pool_pre_ping=False, hooks=())
    assert api.sync_engine(engine).pool._pre_ping is False


def test_do_connect_listeners_run_on_every_attempt(
    api: SqlalchemyApi, restartable: PostgresServer
) -> None:
    """A do_connect listener added after the engine was made still shapes each new connection."""
    engine = api.create_engine(_url(restartable), reconnect=FAST, hooks=())
    calls = 0

    @event.listens_for(api.sync_engine(engine), "do_connect")
    def name_the_app(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        cparams["application_name"] = f"attempt-{calls}"

    restartable.stop("fast")
    api.dispose(engine)
    thread, _ready = _start_later(restartable, 0.5)
    name = api.scalar(engine, "SELECT current_setting('application_name')")
    thread.join(30)
    assert calls >= 2
    assert name == f"attempt-{calls}"


@SYNC_ONLY
def test_creator_is_retried(api: SqlalchemyApi, restartable: PostgresServer) -> None:
    """A caller's creator= is wrapped: its connects retry under the policies too."""
    calls = 0

    def creator() -> psycopg.Connection[Any]:
        nonlocal calls
        calls += 1
        return psycopg.connect(**restartable.connect_kwargs, connect_timeout=5)

    engine = api.create_engine(_url(restartable), creator=creator, reconnect=FAST, hooks=())
    first = calls
    restartable.stop("fast")
    api.dispose(engine)
    thread, _ready = _start_later(restartable, 0.5)
    assert api.scalar(engine) == 1
    thread.join(30)
    assert first == 1
    assert calls > first + 1


@ASYNC_ONLY
def test_async_creator_is_retried(api: SqlalchemyApi, restartable: PostgresServer) -> None:
    """A caller's async_creator= is wrapped and retried with asyncio waits."""
    calls = 0

    async def async_creator() -> psycopg.AsyncConnection[Any]:
        nonlocal calls
        calls += 1
        return await psycopg.AsyncConnection.connect(**restartable.connect_kwargs)

    engine = api.create_engine(
        _url(restartable), async_creator=async_creator, reconnect=FAST, hooks=()
    )
    first = calls
    restartable.stop("fast")
    api.dispose(engine)
    thread, _ready = _start_later(restartable, 0.5)
    assert api.scalar(engine) == 1
    thread.join(30)
    assert first == 1
    assert calls > first + 1


def test_lazy_returns_at_once_and_heals_on_first_use(
    api: SqlalchemyApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """lazy=True does not connect; the first connect then waits under the reconnect policy."""
    server = make_postgres(start=False)
    began = time.monotonic()
    engine = api.create_engine(_url(server), lazy=True, reconnect=FAST, hooks=())
    assert time.monotonic() - began < 0.5
    thread, ready = _start_later(server, 0.5)
    assert api.scalar(engine) == 1
    thread.join(30)
    assert ready, "the server did not start"


# ------------------------------------------------------------------ redaction
def test_password_hidden_in_logs_and_errors(
    api: SqlalchemyApi,
    postgres: PostgresServer,
    fault_proxy: Callable[..., FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retry logs and the give-up error show the target with *** instead of the password."""
    proxy = fault_proxy(postgres.address)
    proxy.refuse()
    caplog.set_level(logging.INFO, logger="resilient_connect")
    with pytest.raises(RetryExhausted) as caught:
        api.create_engine(
            _proxy_url(postgres, proxy), retry=Backoff(initial=0.05, maximum=0.1, timeout=0.5)
        )
    texts = [record.getMessage() for record in caplog.records] + [str(caught.value)]
    assert len(texts) >= 2
    password = postgres.password
    for text_ in texts:
        assert password not in text_
        assert quote(password, safe="") not in text_
        assert "app:***@127.0.0.1" in text_
