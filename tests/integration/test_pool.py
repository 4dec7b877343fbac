"""create_pool / acreate_pool against real servers: start-up wait, permanent errors, outages.

psycopg_pool alone retries a wrong password for ``reconnect_timeout`` (300 s) and drops a
slot whose reconnection gave up; these pin what the library changes about that.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from harness import PostgresServer
from harness.pgbouncer import PgBouncer
from resilient_connect import Backoff, Event, NotRetried, RetryExhausted
from resilient_connect.psycopg import DEFAULT_POOL_RECONNECT, acreate_pool, create_pool

pytestmark = pytest.mark.integration

FAST = Backoff(initial=0.05, maximum=0.3, timeout=20.0)
RECONNECT = Backoff(initial=0.05, maximum=0.3, attempts=None, timeout=None)


@contextlib.contextmanager
def later(action: Callable[[], object], after: float) -> Iterator[None]:
    timer = threading.Timer(after, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition()`` becomes true within ``timeout`` seconds (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _select_one(pool: psycopg_pool.ConnectionPool[Any], timeout: float = 10.0) -> Any:
    with pool.connection(timeout=timeout) as conn:
        row = conn.execute("SELECT 1").fetchone()
    assert row is not None
    return row[0]


def test_waits_for_a_late_server_and_fills(make_postgres: Callable[..., PostgresServer]) -> None:
    """A server that starts late: create_pool waits under the policy and returns a full pool."""
    server = make_postgres()
    server.stop()
    events: list[Event] = []
    with later(server.start, 0.5):
        pool = create_pool(
            server.conninfo, policy=FAST, hooks=[events.append], min_size=2, max_size=2
        )
    try:
        assert not pool.closed
        assert pool.get_stats()["pool_size"] == 2
        assert _select_one(pool) == 1
        assert any(getattr(e, "rule", "") == "pg:refused" for e in events)
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("parts", "rule"),
    [({"password": "wrong"}, "pg:auth-failed"), ({"dbname": "nosuchdb"}, "pg:database-missing")],
)
def test_permanent_error_fails_at_once(
    postgres: PostgresServer, parts: dict[str, str], rule: str
) -> None:
    """A wrong password or unknown database raises psycopg's error after one attempt, instead
    of psycopg_pool's reconnect_timeout of retries."""
    events: list[Event] = []
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        create_pool(postgres.conninfo_for(**parts), policy=FAST, hooks=[events.append])
    assert time.monotonic() - start < 2.0
    assert [e.rule for e in events if isinstance(e, NotRetried)] == [rule]


def test_pgbouncer_wrong_password_fails_at_once(
    postgres: PostgresServer, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    """Behind pgbouncer too (SCRAM: 'SASL authentication failed')."""
    bouncer = make_pgbouncer(postgres)
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        create_pool(bouncer.conninfo_for(password="wrong"), policy=FAST, hooks=())


def test_start_up_gives_up_at_the_deadline(free_port: int) -> None:
    """Nothing ever listens: RetryExhausted at the policy's deadline."""
    start = time.monotonic()
    with pytest.raises(RetryExhausted):
        create_pool(
            f"host=127.0.0.1 port={free_port} dbname=x user=x",
            policy=Backoff(initial=0.05, maximum=0.2, timeout=1.0),
            hooks=(),
        )
    assert time.monotonic() - start < 2.0


def test_open_is_refused(postgres: PostgresServer) -> None:
    """open= belongs to create_pool, which always returns the pool opened."""
    with pytest.raises(TypeError, match="open="):
        create_pool(postgres.conninfo, open=False)


def test_survives_an_outage_longer_than_reconnect_timeout(
    make_postgres: Callable[..., PostgresServer],
) -> None:
    """The server is away three times psycopg_pool's reconnect_timeout: the pool reconnects
    under our policy (no slot given up) and serves again once the server is back."""
    server = make_postgres()
    failed: list[object] = []
    pool = create_pool(
        server.conninfo,
        policy=FAST,
        reconnect=RECONNECT,
        hooks=(),
        min_size=2,
        max_size=2,
        reconnect_timeout=0.5,
        reconnect_failed=failed.append,
    )
    try:
        server.stop()
        pool.check()  # finds the broken connections and starts replacing them
        time.sleep(1.5)  # the outage itself: 3 x reconnect_timeout
        server.start()
        assert _select_one(pool, timeout=10.0) == 1
        assert failed == []
        deadline = time.monotonic() + 10.0
        while pool.get_stats()["pool_size"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.get_stats()["pool_size"] == 2
    finally:
        pool.close()


def test_slot_given_up_by_psycopg_pool_is_rearmed(
    make_postgres: Callable[..., PostgresServer],
) -> None:
    """With a bounded reconnect policy psycopg_pool gives up on the slots (reconnect_failed
    is called), and they are re-armed: the pool is full again after the outage."""
    server = make_postgres()
    failed: list[object] = []
    pool = create_pool(
        server.conninfo,
        policy=FAST,
        reconnect=Backoff(attempts=1),
        hooks=(),
        min_size=2,
        max_size=2,
        reconnect_timeout=0.3,
        reconnect_failed=failed.append,
    )
    try:
        server.stop()
        pool.check()
        deadline = time.monotonic() + 10.0
        while not failed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failed, "psycopg_pool never gave up a slot"
        server.start()
        deadline = time.monotonic() + 15.0
        while pool.get_stats()["pool_size"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.get_stats()["pool_size"] == 2
        assert _select_one(pool) == 1
    finally:
        pool.close()


def test_close_stops_a_reconnect_in_progress(make_postgres: Callable[..., PostgresServer]) -> None:
    """Closing the pool during an outage ends its reconnect loops promptly (no thread left)."""
    server = make_postgres()
    pool = create_pool(server.conninfo, policy=FAST, hooks=(), min_size=1, max_size=1)
    server.stop()
    pool.check()
    time.sleep(0.3)  # let a worker enter the reconnect loop
    start = time.monotonic()
    pool.close(timeout=5.0)
    assert time.monotonic() - start < 2.0
    workers = [t for t in threading.enumerate() if t.name.startswith(pool.name)]
    assert workers == []


def test_default_reconnect_retries_until_closed() -> None:
    """The default reconnect policy has neither an attempt limit nor a deadline."""
    assert DEFAULT_POOL_RECONNECT.attempts is None
    assert DEFAULT_POOL_RECONNECT.timeout is None


async def test_async_waits_and_survives_an_outage(
    make_postgres: Callable[..., PostgresServer],
) -> None:
    """acreate_pool: waits for a late server, then reconnects across an outage longer than
    reconnect_timeout."""
    server = make_postgres()
    server.stop()
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, lambda: threading.Thread(target=server.start).start())
    pool = await acreate_pool(
        server.conninfo,
        policy=FAST,
        reconnect=RECONNECT,
        hooks=(),
        min_size=1,
        max_size=1,
        reconnect_timeout=0.5,
    )
    try:
        async with pool.connection() as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        await asyncio.to_thread(server.stop)
        await pool.check()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(server.start)
        async with pool.connection(timeout=10.0) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
    finally:
        await pool.close()


async def test_async_permanent_error_fails_at_once(postgres: PostgresServer) -> None:
    """acreate_pool with a wrong password raises after one attempt."""
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        await acreate_pool(postgres.conninfo_for(password="wrong"), policy=FAST, hooks=())
    assert time.monotonic() - start < 2.0


def test_pool_that_cannot_fill_in_time_is_closed(
    make_postgres: Callable[..., PostgresServer],
) -> None:
    """The probe connects, but min_size is more than the server's free slots: PoolTimeout
    within the policy's deadline, and no reconnect loop keeps running."""
    server = make_postgres(extra_conf={"max_connections": 4, "superuser_reserved_connections": 1})
    start = time.monotonic()
    with pytest.raises(psycopg_pool.PoolTimeout):
        create_pool(
            server.conninfo,
            policy=Backoff(initial=0.05, maximum=0.2, timeout=1.5),
            reconnect=RECONNECT,
            hooks=(),
            min_size=5,
            max_size=5,
        )
    assert time.monotonic() - start < 8.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"conninfo": lambda: "dbname=x"}, "conninfo as a string"),
        ({"kwargs": dict}, "kwargs= as a dict"),
    ],
)
def test_unsupported_arguments_are_refused(arguments: dict[str, Any], message: str) -> None:
    """Callable conninfo / kwargs (which psycopg_pool accepts) are refused with a clear error."""
    with pytest.raises(TypeError, match=message):
        create_pool(**arguments)


async def test_async_slot_given_up_is_rearmed_and_user_callback_awaited(
    make_postgres: Callable[..., PostgresServer],
) -> None:
    """acreate_pool: a coroutine reconnect_failed is awaited, and the dropped slot re-armed."""
    server = make_postgres()
    failed = asyncio.Event()

    async def on_failed(pool: object) -> None:
        failed.set()

    pool = await acreate_pool(
        server.conninfo,
        policy=FAST,
        reconnect=Backoff(attempts=1),
        hooks=(),
        min_size=1,
        max_size=1,
        reconnect_timeout=0.3,
        reconnect_failed=on_failed,
    )
    try:
        await asyncio.to_thread(server.stop)
        await pool.check()
        await asyncio.wait_for(failed.wait(), 10.0)
        await asyncio.to_thread(server.start)
        # No checkout (which would grow the pool anyway): the re-armed slot refills by itself.
        refilled = await asyncio.to_thread(_poll, lambda: pool.get_stats()["pool_size"] >= 1, 15.0)
        assert refilled
    finally:
        await pool.close()
