"""resilient_connect.sqlalchemy against real PostgreSQL servers on loopback.

Covers the start-up wait (late start, permanent errors, blackhole), runtime healing after a
restart (sync, async, several threads), option pass-through and redaction. Recovery times
are printed (``pytest -s``) so that they can be reported.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, text

from harness import FaultProxy, PostgresServer
from resilient_connect import Backoff, Event, GaveUp, NotRetried, Recovered, RetryExhausted
from resilient_connect.sqlalchemy import create_async_engine, create_engine, is_transient

pytestmark = pytest.mark.integration

SCHEME = "postgresql+psycopg"
FAST = Backoff(initial=0.05, maximum=0.5, timeout=20.0)


def _url(server: PostgresServer, **parts: Any) -> str:
    return server.url_for(scheme=SCHEME, **parts)


def _proxy_url(server: PostgresServer, proxy: FaultProxy) -> str:
    return server.url_for(scheme=SCHEME, port=proxy.port)


def _scalar(engine: sqlalchemy.Engine, sql: str = "SELECT 1") -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql)).scalar()


async def _ascalar(engine: Any, sql: str = "SELECT 1") -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql))).scalar()


def _poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait until ``condition()`` is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


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


@pytest.fixture
def engines() -> Iterator[list[sqlalchemy.Engine]]:
    """Sync engines to dispose of at teardown."""
    made: list[sqlalchemy.Engine] = []
    yield made
    for engine in made:
        engine.dispose()


# ------------------------------------------------------------------ start-up
def test_late_start_waits_until_the_server_answers(
    make_postgres: Callable[..., PostgresServer], engines: list[sqlalchemy.Engine]
) -> None:
    """create_engine returns only after a server that starts 1 s late answers SELECT 1."""
    server = make_postgres(start=False)
    thread, ready = _start_later(server, 1.0)
    began = time.monotonic()
    engine = create_engine(_url(server), retry=FAST, hooks=())
    returned = time.monotonic()
    engines.append(engine)
    thread.join(30)
    assert ready, "the server did not start"
    assert returned - began >= 0.9
    assert returned >= ready[0] - 0.5  # not before the server could answer
    print(f"\nlate start: engine ready {returned - ready[0]:+.3f}s after the server")
    assert _scalar(engine) == 1


async def test_late_start_async(make_postgres: Callable[..., PostgresServer]) -> None:
    """await create_async_engine waits for a late server without blocking the event loop."""
    server = make_postgres(start=False)
    thread, ready = _start_later(server, 1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    began = time.monotonic()
    try:
        engine = await create_async_engine(_url(server), retry=FAST, hooks=())
    finally:
        task.cancel()
    elapsed = time.monotonic() - began
    await asyncio.to_thread(thread.join, 30)
    try:
        assert ready, "the server did not start"
        assert elapsed >= 0.9
        assert ticks >= 5, "the event loop was blocked while waiting"
        assert await _ascalar(engine) == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("parts", "marker"),
    [({"password": "wrong-password"}, "password"), ({"dbname": "no_such_db"}, "does not exist")],
    ids=["wrong-password", "unknown-database"],
)
def test_permanent_errors_fail_fast(
    postgres: PostgresServer, events: list[Event], parts: dict[str, str], marker: str
) -> None:
    """A wrong password or unknown database raises SQLAlchemy's OperationalError at once."""
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        create_engine(_url(postgres, **parts), retry=FAST, hooks=[events.append])
    elapsed = time.monotonic() - began
    print(f"\n{parts}: failed after {elapsed:.3f}s")
    assert elapsed < 2.0
    assert marker in str(caught.value)
    assert [type(e) for e in events] == [NotRetried]
    assert not is_transient(caught.value)


async def test_permanent_error_fails_fast_async(postgres: PostgresServer) -> None:
    """The async twin also raises SQLAlchemy's OperationalError on the first attempt."""
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication"):
        await create_async_engine(_url(postgres, password="wrong"), retry=FAST, hooks=())
    assert time.monotonic() - began < 2.0


def test_blackhole_start_up_bounded_by_the_deadline(
    postgres: PostgresServer,
    fault_proxy: Callable[..., FaultProxy],
    events: list[Event],
) -> None:
    """Against a server that never answers, create_engine gives up at the policy's deadline."""
    proxy = fault_proxy(postgres.address)
    proxy.blackhole()
    policy = Backoff(initial=0.1, maximum=0.5, timeout=3.0)
    began = time.monotonic()
    with pytest.raises(RetryExhausted) as caught:
        create_engine(_proxy_url(postgres, proxy), retry=policy, hooks=[events.append])
    elapsed = time.monotonic() - began
    print(f"\nblackhole start-up (timeout 3.0 s): gave up after {elapsed:.3f}s")
    assert 2.5 <= elapsed <= 4.5
    assert caught.value.reason == "deadline"
    assert isinstance(events[-1], GaveUp)
    assert isinstance(caught.value.__cause__, sqlalchemy.exc.OperationalError)


async def test_blackhole_start_up_bounded_async(
    postgres: PostgresServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    """The async start-up wait holds a deadline shorter than libpq's 2 s minimum timeout."""
    proxy = fault_proxy(postgres.address)
    proxy.blackhole()
    began = time.monotonic()
    with pytest.raises(RetryExhausted):
        await create_async_engine(_proxy_url(postgres, proxy), retry=Backoff(timeout=1.0), hooks=())
    elapsed = time.monotonic() - began
    print(f"\nblackhole async start-up (timeout 1.0 s): gave up after {elapsed:.3f}s")
    assert 0.8 <= elapsed <= 1.9


# ------------------------------------------------------------------ runtime healing
def test_restart_next_connect_waits_and_succeeds(
    restartable: PostgresServer, engines: list[sqlalchemy.Engine], events: list[Event]
) -> None:
    """After a restart, engine.connect() during the outage waits, then succeeds."""
    engine = create_engine(_url(restartable), reconnect=FAST, hooks=[events.append])
    engines.append(engine)
    backend_before = _scalar(engine, "SELECT pg_backend_pid()")
    restartable.stop("fast")
    thread, ready = _start_later(restartable, 1.0)
    began = time.monotonic()
    backend_after = _scalar(engine, "SELECT pg_backend_pid()")
    done = time.monotonic()
    thread.join(30)
    assert ready
    recovery = done - ready[0]
    print(f"\nrestart (sync): connect waited {done - began:.3f}s, {recovery:+.3f}s after ready")
    assert done - began >= 0.9
    assert recovery < 3.0
    assert backend_after != backend_before
    assert isinstance(events[-1], Recovered)


async def test_restart_next_connect_waits_and_succeeds_async(
    restartable: PostgresServer,
) -> None:
    """The async engine heals the same way, without blocking the event loop."""
    engine = await create_async_engine(_url(restartable), reconnect=FAST, hooks=())
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    try:
        assert await _ascalar(engine) == 1
        restartable.stop("fast")
        thread, ready = _start_later(restartable, 1.0)
        task = asyncio.create_task(ticker())
        began = time.monotonic()
        try:
            assert await _ascalar(engine) == 1
        finally:
            task.cancel()
        done = time.monotonic()
        await asyncio.to_thread(thread.join, 30)
        assert ready
        recovery = done - ready[0]
        print(f"\nrestart (async): waited {done - began:.3f}s, {recovery:+.3f}s after ready")
        assert done - began >= 0.9
        assert recovery < 3.0
        assert ticks >= 5, "the event loop was blocked while reconnecting"
    finally:
        await engine.dispose()


def test_threads_recover_across_a_restart(
    restartable: PostgresServer, engines: list[sqlalchemy.Engine]
) -> None:
    """Eight threads sharing one engine all get answers again after the server restarts."""
    engine = create_engine(_url(restartable), reconnect=FAST, hooks=(), pool_size=4, max_overflow=4)
    engines.append(engine)
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
                assert _scalar(engine) == 1
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
    _poll(lambda: len(successes_before) == len(threads), "every worker answered once")
    restartable.stop("fast")
    time.sleep(0.5)  # the outage
    restartable.start()
    restarted.set()
    ready = time.monotonic()
    deadline = ready + 15
    while len(successes_after) < len(threads) and time.monotonic() < deadline:
        time.sleep(0.02)
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
    postgres: PostgresServer, fault_proxy: Callable[..., FaultProxy], events: list[Event]
) -> None:
    """A pool reconnect into a blackhole gives up at the reconnect deadline, even below 2 s."""
    proxy = fault_proxy(postgres.address)
    engine = create_engine(
        _proxy_url(postgres, proxy), reconnect=Backoff(timeout=1.0), hooks=[events.append]
    )
    try:
        assert _scalar(engine) == 1
        proxy.blackhole()
        proxy.cut_all()
        began = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            _scalar(engine)
        elapsed = time.monotonic() - began
    finally:
        engine.dispose()
    print(f"\nruntime blackhole (reconnect timeout 1.0 s): raised after {elapsed:.3f}s")
    assert 0.8 <= elapsed <= 1.9
    assert is_transient(caught.value)
    assert any(isinstance(e, GaveUp) for e in events)


def test_runtime_permanent_error_not_retried(
    restartable: PostgresServer, engines: list[sqlalchemy.Engine], events: list[Event]
) -> None:
    """A password changed under a running engine fails the next new connection at once."""
    engine = create_engine(_url(restartable), hooks=[events.append])
    engines.append(engine)
    assert _scalar(engine) == 1
    restartable.execute_as_superuser(f"ALTER ROLE {restartable.user} PASSWORD 'changed-elsewhere'")
    engine.dispose()  # drop the pooled connection: the next checkout must connect anew
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication"):
        _scalar(engine)
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
def test_engine_options_are_passed_through(
    postgres: PostgresServer, engines: list[sqlalchemy.Engine]
) -> None:
    """pool_size, max_overflow, echo and connect_args reach SQLAlchemy and the driver."""
    engine = create_engine(
        sqlalchemy.make_url(_url(postgres)),
        pool_size=3,
        max_overflow=1,
        echo=True,
        connect_args={"application_name": "rc-sa-test"},
        hooks=(),
    )
    engines.append(engine)
    assert isinstance(engine.pool, sqlalchemy.pool.QueuePool)
    assert engine.pool.size() == 3
    assert engine.pool._max_overflow == 1
    assert engine.echo is True
    assert engine.pool._pre_ping is True
    assert _scalar(engine, "SELECT current_setting('application_name')") == "rc-sa-test"


def test_pre_ping_can_be_turned_off(
    postgres: PostgresServer, engines: list[sqlalchemy.Engine]
) -> None:
    """pool_pre_ping=False from the caller wins over our default."""
    engine = create_engine(_url(postgres), pool_pre_ping=False, hooks=())
    engines.append(engine)
    assert engine.pool._pre_ping is False


def test_do_connect_listeners_run_on_every_attempt(
    restartable: PostgresServer, engines: list[sqlalchemy.Engine]
) -> None:
    """A do_connect listener added after create_engine still shapes each new connection."""
    engine = create_engine(_url(restartable), reconnect=FAST, hooks=())
    engines.append(engine)
    calls = 0

    @event.listens_for(engine, "do_connect")
    def name_the_app(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        cparams["application_name"] = f"attempt-{calls}"

    restartable.stop("fast")
    engine.dispose()
    thread, _ready = _start_later(restartable, 0.5)
    name = _scalar(engine, "SELECT current_setting('application_name')")
    thread.join(30)
    assert calls >= 2
    assert name == f"attempt-{calls}"


def test_creator_is_retried(restartable: PostgresServer, engines: list[sqlalchemy.Engine]) -> None:
    """A caller's creator= is wrapped: its connects retry under the policies too."""
    import psycopg

    calls = 0

    def creator() -> psycopg.Connection[Any]:
        nonlocal calls
        calls += 1
        return psycopg.connect(**restartable.connect_kwargs, connect_timeout=5)

    engine = create_engine(_url(restartable), creator=creator, reconnect=FAST, hooks=())
    engines.append(engine)
    first = calls
    restartable.stop("fast")
    engine.dispose()
    thread, _ready = _start_later(restartable, 0.5)
    assert _scalar(engine) == 1
    thread.join(30)
    assert first == 1
    assert calls > first + 1


def test_lazy_returns_at_once_and_heals_on_first_use(
    make_postgres: Callable[..., PostgresServer], engines: list[sqlalchemy.Engine]
) -> None:
    """lazy=True does not connect; the first connect then waits under the reconnect policy."""
    server = make_postgres(start=False)
    began = time.monotonic()
    engine = create_engine(_url(server), lazy=True, reconnect=FAST, hooks=())
    engines.append(engine)
    assert time.monotonic() - began < 0.5
    thread, _ready = _start_later(server, 0.5)
    assert _scalar(engine) == 1
    thread.join(30)


# ------------------------------------------------------------------ redaction
def test_password_hidden_in_logs_and_errors(
    postgres: PostgresServer,
    fault_proxy: Callable[..., FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retry logs and the give-up error show the target with *** instead of the password."""
    proxy = fault_proxy(postgres.address)
    proxy.refuse()
    caplog.set_level(logging.INFO, logger="resilient_connect")
    with pytest.raises(RetryExhausted) as caught:
        create_engine(
            _proxy_url(postgres, proxy), retry=Backoff(initial=0.05, maximum=0.1, timeout=0.5)
        )
    texts = [record.getMessage() for record in caplog.records] + [str(caught.value)]
    assert len(texts) >= 2
    password = postgres.password
    from urllib.parse import quote

    for text_ in texts:
        assert password not in text_
        assert quote(password, safe="") not in text_
        assert "app:***@127.0.0.1" in text_


async def test_async_creator_is_retried(restartable: PostgresServer) -> None:
    """A caller's async_creator= is wrapped and retried with asyncio waits."""
    import psycopg

    calls = 0

    async def async_creator() -> psycopg.AsyncConnection[Any]:
        nonlocal calls
        calls += 1
        return await psycopg.AsyncConnection.connect(**restartable.connect_kwargs)

    engine = await create_async_engine(
        _url(restartable), async_creator=async_creator, reconnect=FAST, hooks=()
    )
    try:
        assert calls == 1
        restartable.stop("fast")
        await engine.dispose()
        thread, _ready = _start_later(restartable, 0.5)
        assert await _ascalar(engine) == 1
        await asyncio.to_thread(thread.join, 30)
        assert calls > 2
    finally:
        await engine.dispose()


async def test_runtime_blackhole_bounded_async(
    postgres: PostgresServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    """An asyncio pool reconnect into a blackhole is cut off at the reconnect deadline."""
    proxy = fault_proxy(postgres.address)
    engine = await create_async_engine(
        _proxy_url(postgres, proxy), reconnect=Backoff(timeout=1.0), hooks=()
    )
    try:
        assert await _ascalar(engine) == 1
        proxy.blackhole()
        proxy.cut_all()
        began = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            await _ascalar(engine)
        elapsed = time.monotonic() - began
    finally:
        await engine.dispose()
    print(f"\nruntime blackhole async (reconnect timeout 1.0 s): raised after {elapsed:.3f}s")
    assert 0.8 <= elapsed <= 1.9
    assert is_transient(caught.value)
