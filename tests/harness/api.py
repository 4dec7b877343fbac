"""One scenario, two flavours: an adapter's sync entry points or their asyncio twins.

A test takes the ``api`` fixture (made with :func:`api_fixture`) and runs once per flavour.
The sync flavour calls the sync functions. The async flavour runs their asyncio twins on an
event loop the api owns for the whole test (an asyncio client, engine or pool belongs to the
loop it was made on), and ends that loop the way ``asyncio.run`` does. The loop only runs
inside :meth:`Api.run` (and the waits built on it): a test that needs the loop alive while
time passes uses :meth:`Api.wait` or :meth:`Api.poll`, never ``time.sleep``.

Subclasses expose one adapter each: :class:`PsycopgApi`, :class:`SqlalchemyApi`,
:class:`RedisApi`. Methods run at once and return the result; the ``*_call`` methods return
a zero-argument call in the flavour (a coroutine function when async), to hand to an outer
retry loop. Whatever an entry point returns (connection, engine, pool, client) is closed at
teardown, in reverse order, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from sqlalchemy import text

from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis
from resilient_connect import sqlalchemy as rc_sqlalchemy

FLAVOURS = ("sync", "async")

_T = TypeVar("_T")
_A = TypeVar("_A", bound="Api")


def only(flavour: str) -> pytest.MarkDecorator:
    """Run a test with one flavour of the ``api`` fixture: behaviour that only that flavour has."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}")
    return pytest.mark.parametrize("api", [flavour], indirect=True)


@dataclass
class Ticks:
    """How often a task on the api's event loop woke up (see :meth:`Api.loop_ticks`)."""

    count: int = 0


class Api:
    """The sync or asyncio flavour of an adapter, behind one interface for the scenarios."""

    def __init__(self, flavour: str) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}")
        self.flavour = flavour
        self.is_async = flavour == "async"
        self.loop = asyncio.new_event_loop() if self.is_async else None
        self._cleanups: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.flavour!r})"

    # ---------------------------------------------------------------- the flavour
    def pick(self, sync: _T, asynchronous: _T) -> _T:
        """``sync`` in the sync flavour, ``asynchronous`` in the async one."""
        return asynchronous if self.is_async else sync

    def run(self, value: Any) -> Any:
        """A sync result as it is, or (async flavour) an awaitable run to completion on the loop.

        Strict both ways, so that a scenario cannot silently call the wrong twin.
        """
        if self.loop is None:
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()  # no "never awaited" warning on top of this error
                raise TypeError(f"the sync flavour got an awaitable: {value!r}")
            return value
        if not inspect.isawaitable(value):
            raise TypeError(f"the async flavour needs an awaitable, got {value!r}")
        return self.loop.run_until_complete(value)

    def call(
        self, sync_fn: Callable[..., Any], async_fn: Callable[..., Any], /, *args: Any, **kw: Any
    ) -> Any:
        """``sync_fn(*args, **kw)``, or ``await async_fn(*args, **kw)`` on the loop."""
        return self.run(self.pick(sync_fn, async_fn)(*args, **kw))

    def deferred(
        self, sync_fn: Callable[..., Any], async_fn: Callable[..., Any], /, *args: Any, **kw: Any
    ) -> Callable[[], Any]:
        """A zero-argument call of :meth:`call`'s work, not run yet: a plain function, or (async)
        a coroutine function, which is how ``resilient_connect.retry`` tells them apart."""
        if not self.is_async:
            return functools.partial(sync_fn, *args, **kw)

        async def call() -> Any:
            return await async_fn(*args, **kw)

        return call

    # ---------------------------------------------------------------- time passing
    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass with the loop running: an outage the scenario simulates."""
        if self.loop is None:
            time.sleep(seconds)
        else:
            self.run(asyncio.sleep(seconds))

    def poll(self, condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
        """Whether ``condition()`` becomes true within ``timeout`` s, the loop running meanwhile."""
        deadline = time.monotonic() + timeout
        if self.loop is None:
            while not condition():
                if time.monotonic() > deadline:
                    return False
                time.sleep(every)
            return True

        async def apoll() -> bool:
            while not condition():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(every)
            return True

        return bool(self.run(apoll()))

    @contextlib.contextmanager
    def loop_ticks(self, every: float = 0.05) -> Iterator[Ticks]:
        """Count how often a task on the event loop wakes up (every ``every`` s) while the block
        runs: few ticks mean the loop was blocked. Async flavour only."""
        if self.loop is None:
            raise TypeError("the sync flavour has no event loop to watch")
        ticks = Ticks()

        async def tick() -> None:
            while True:
                await asyncio.sleep(every)
                ticks.count += 1

        task = self.loop.create_task(tick())
        try:
            yield ticks
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(task)

    # ---------------------------------------------------------------- teardown
    def defer(self, cleanup: Callable[[], object]) -> None:
        """Call ``cleanup()`` at teardown; an awaitable it returns is awaited on the loop."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Run every cleanup (newest first, all of them even when some fail), then end the loop
        as ``asyncio.run`` does: cancel leftover tasks, async generators, the default executor."""
        errors: list[Exception] = []
        for cleanup in reversed(self._cleanups):
            try:
                outcome = cleanup()
                if inspect.isawaitable(outcome):
                    self.run(outcome)
            except Exception as exc:  # the remaining cleanups must still run
                errors.append(exc)
        self._cleanups.clear()
        if self.loop is not None and not self.loop.is_closed():
            loop = self.loop
            try:
                left = asyncio.all_tasks(loop)
                for task in left:
                    task.cancel()
                if left:  # gather() takes its loop from the tasks
                    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
        if errors:
            raise errors[0]


@contextlib.contextmanager
def open_api(cls: type[_A], flavour: str) -> Iterator[_A]:
    """An ``cls(flavour)`` that is closed when the block ends."""
    api = cls(flavour)
    try:
        yield api
    finally:
        api.close()


def api_fixture(cls: type[_A]) -> Any:
    """A fixture named ``api`` that runs each test with ``cls("sync")`` and ``cls("async")``.

    In a test module: ``api = api_fixture(PsycopgApi)``; :func:`only` narrows one test.
    """

    @pytest.fixture(name="api", params=FLAVOURS)
    def fixture(request: pytest.FixtureRequest) -> Iterator[_A]:
        with open_api(cls, str(request.param)) as api:
            yield api

    return fixture


# -------------------------------------------------------------------- psycopg
class PsycopgApi(Api):
    """resilient_connect.psycopg: (a)connect_with_retry and (a)create_pool."""

    def connect(self, conninfo: str = "", **kwargs: Any) -> Any:
        """connect_with_retry / aconnect_with_retry; the connection is closed at teardown."""
        conn = self.call(
            rc_psycopg.connect_with_retry, rc_psycopg.aconnect_with_retry, conninfo, **kwargs
        )
        self.defer(conn.close)
        return conn

    def connect_call(self, conninfo: str = "", **kwargs: Any) -> Callable[[], Any]:
        """A call of connect_with_retry / aconnect_with_retry, for an outer retry loop."""
        return self.deferred(
            rc_psycopg.connect_with_retry, rc_psycopg.aconnect_with_retry, conninfo, **kwargs
        )

    def fetchone(self, conn: Any, sql: str = "select 1") -> Any:
        """Run ``sql`` on ``conn`` and return its first row."""
        if self.loop is None:
            return conn.execute(sql).fetchone()

        async def afetchone() -> Any:
            cursor = await conn.execute(sql)
            return await cursor.fetchone()

        return self.run(afetchone())

    def query(self, conninfo: str = "", sql: str = "select 1", **kwargs: Any) -> Any:
        """Connect with retry, run ``sql``, close (the connection's ``with`` block), return the
        first row."""
        if self.loop is None:
            with rc_psycopg.connect_with_retry(conninfo, **kwargs) as conn:
                return conn.execute(sql).fetchone()

        async def aquery() -> Any:
            async with await rc_psycopg.aconnect_with_retry(conninfo, **kwargs) as conn:
                cursor = await conn.execute(sql)
                return await cursor.fetchone()

        return self.run(aquery())

    def failing(self, conninfo: str = "", **kwargs: Any) -> BaseException:
        """:meth:`query`, expecting it to raise; return the exception."""
        with pytest.raises(Exception) as info:
            self.query(conninfo, **kwargs)
        return info.value

    def create_pool(self, conninfo: str = "", **kwargs: Any) -> Any:
        """create_pool / acreate_pool; the pool is closed at teardown."""
        pool = self.call(rc_psycopg.create_pool, rc_psycopg.acreate_pool, conninfo, **kwargs)
        self.defer(pool.close)
        return pool

    def select_one(self, pool: Any, timeout: float = 10.0) -> Any:
        """Check a connection out of ``pool`` (waiting up to ``timeout`` s) and run SELECT 1."""
        if self.loop is None:
            with pool.connection(timeout=timeout) as conn:
                row = conn.execute("SELECT 1").fetchone()
        else:

            async def aselect() -> Any:
                async with pool.connection(timeout=timeout) as conn:
                    return await (await conn.execute("SELECT 1")).fetchone()

            row = self.run(aselect())
        assert row is not None
        return row[0]

    def check(self, pool: Any) -> None:
        """``pool.check()``: find broken connections and start replacing them."""
        self.run(pool.check())

    def close_pool(self, pool: Any, timeout: float) -> None:
        """``pool.close(timeout=...)`` now (teardown closes it again, which is a no-op)."""
        self.run(pool.close(timeout=timeout))


# -------------------------------------------------------------------- SQLAlchemy
class SqlalchemyApi(Api):
    """resilient_connect.sqlalchemy: create_engine / create_async_engine and their engines."""

    def create_engine(self, url: Any, **kwargs: Any) -> Any:
        """create_engine / await create_async_engine; the engine is disposed at teardown."""
        engine = self.call(
            rc_sqlalchemy.create_engine, rc_sqlalchemy.create_async_engine, url, **kwargs
        )
        self.defer(engine.dispose)
        return engine

    def sync_engine(self, engine: Any) -> Any:
        """The ``Engine`` that holds the pool, options and events (``AsyncEngine.sync_engine``)."""
        return engine.sync_engine if self.is_async else engine

    def scalar(self, engine: Any, sql: str = "SELECT 1") -> Any:
        """Open a connection, run ``sql``, close it, and return the first column of the row."""
        if self.loop is None:
            with engine.connect() as connection:
                return connection.execute(text(sql)).scalar()

        async def ascalar() -> Any:
            async with engine.connect() as connection:
                return (await connection.execute(text(sql))).scalar()

        return self.run(ascalar())

    def connect_call(self, engine: Any) -> Callable[[], Any]:
        """A call that opens one connection of ``engine`` and closes it, for an outer loop."""
        if not self.is_async:

            def connect() -> None:
                with engine.connect():
                    pass

            return connect

        async def aconnect() -> None:
            async with engine.connect():
                pass

        return aconnect

    def dispose(self, engine: Any) -> None:
        """``engine.dispose()``: close the pooled connections (the next checkout connects anew)."""
        self.run(engine.dispose())


# -------------------------------------------------------------------- redis
class RedisApi(Api):
    """resilient_connect.redis: (a)connect_with_retry, the Sentinel twins, runtime retries."""

    def connect(self, url: str, **kwargs: Any) -> Any:
        """connect_with_retry / aconnect_with_retry; the client is closed at teardown."""
        return self._closed_later(
            self.call(rc_redis.connect_with_retry, rc_redis.aconnect_with_retry, url, **kwargs)
        )

    def sentinel(self, sentinels: list[tuple[str, int]], name: str, **kwargs: Any) -> Any:
        """connect_sentinel_with_retry / its twin; client and Sentinel are closed at teardown."""
        client = self._closed_later(
            self.call(
                rc_redis.connect_sentinel_with_retry,
                rc_redis.aconnect_sentinel_with_retry,
                sentinels,
                name,
                **kwargs,
            )
        )
        # The Sentinel object (and its clients) lives on in the master's pool; close it too.
        self._closed_later(client.connection_pool.sentinel_manager)
        return client

    def client(self, *, runtime_hooks: Any = None, **kwargs: Any) -> Any:
        """A client built directly (``redis.Redis`` / ``redis.asyncio.Redis``) with our
        ``runtime_retry()`` / ``aruntime_retry()``; closed at teardown."""
        retry = self.pick(rc_redis.runtime_retry, rc_redis.aruntime_retry)(hooks=runtime_hooks)
        factory = self.pick(redis.Redis, redis.asyncio.Redis)
        return self._closed_later(factory(retry=retry, **kwargs))

    def do(self, client: Any, command: str, *args: Any) -> Any:
        """Run one client method (awaited in the async flavour)."""
        return self.run(getattr(client, command)(*args))

    def command_call(self, client: Any, command: str, *args: Any) -> Callable[[], Any]:
        """A call of one client method, for an outer retry loop."""
        method = getattr(client, command)
        # redis.asyncio's methods are plain functions returning a coroutine: await it.
        return self.deferred(method, method, *args)

    def _closed_later(self, client: Any) -> Any:
        self.defer(client.aclose if self.is_async else client.close)
        return client
