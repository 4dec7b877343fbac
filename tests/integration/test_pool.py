"""create_pool / acreate_pool against real servers: start-up wait, permanent errors, outages.

psycopg_pool alone retries a wrong password for ``reconnect_timeout`` (300 s) and drops a
slot whose reconnection gave up; these pin what the library changes about that. Each
scenario runs once per flavour of the ``api`` fixture (harness.api): ``create_pool``, then
``acreate_pool`` on one event loop kept for the whole test (the pool's workers are tasks on
it, so outages pass through :meth:`~harness.api.Api.wait`, which keeps the loop running).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from harness import PostgresServer
from harness.api import PsycopgApi, api_fixture, only
from harness.pgbouncer import PgBouncer
from resilient_connect import Backoff, Event, NotRetried, RetryExhausted
from resilient_connect.psycopg import DEFAULT_POOL_RECONNECT

pytestmark = pytest.mark.integration

FAST = Backoff(initial=0.05, maximum=0.3, timeout=20.0)
RECONNECT = Backoff(initial=0.05, maximum=0.3, attempts=None, timeout=None)

api = api_fixture(PsycopgApi)
#: Behaviour only the sync pool has (its workers are threads).
SYNC_ONLY = only("sync")


@contextlib.contextmanager
def later(action: Callable[[], object], after: float) -> Iterator[None]:
    timer = threading.Timer(after, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


def test_waits_for_a_late_server_and_fills(
    api: PsycopgApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """A server that starts late: the pool is returned after waiting under the policy, full."""
    server = make_postgres()
    server.stop()
    events: list[Event] = []
    with later(server.start, 0.5):
        pool = api.create_pool(
            server.conninfo, policy=FAST, hooks=[events.append], min_size=2, max_size=2
        )
    assert not pool.closed
    assert pool.get_stats()["pool_size"] == 2
    assert api.select_one(pool) == 1
    assert any(getattr(e, "rule", "") == "pg:refused" for e in events)


@pytest.mark.parametrize(
    ("parts", "rule"),
    [({"password": "wrong"}, "pg:auth-failed"), ({"dbname": "nosuchdb"}, "pg:database-missing")],
)
def test_permanent_error_fails_at_once(
    api: PsycopgApi, postgres: PostgresServer, parts: dict[str, str], rule: str
) -> None:
    """A wrong password or unknown database raises psycopg's error after one attempt, instead
    of psycopg_pool's reconnect_timeout of retries."""
    events: list[Event] = []
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        api.create_pool(postgres.conninfo_for(**parts), policy=FAST, hooks=[events.append])
    assert time.monotonic() - start < 2.0
    assert [e.rule for e in events if isinstance(e, NotRetried)] == [rule]


def test_pgbouncer_wrong_password_fails_at_once(
    api: PsycopgApi, postgres: PostgresServer, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    """Behind pgbouncer too (SCRAM: 'SASL authentication failed')."""
    bouncer = make_pgbouncer(postgres)
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        api.create_pool(bouncer.conninfo_for(password="wrong"), policy=FAST, hooks=())


def test_start_up_gives_up_at_the_deadline(api: PsycopgApi, free_port: int) -> None:
    """Nothing ever listens: RetryExhausted at the policy's deadline."""
    start = time.monotonic()
    with pytest.raises(RetryExhausted):
        api.create_pool(
            f"host=127.0.0.1 port={free_port} dbname=x user=x",
            policy=Backoff(initial=0.05, maximum=0.2, timeout=1.0),
            hooks=(),
        )
    assert time.monotonic() - start < 2.0


def test_open_is_refused(api: PsycopgApi, postgres: PostgresServer) -> None:
    """open= belongs to create_pool, which always returns the pool opened."""
    with pytest.raises(TypeError, match="open="):
        api.create_pool(postgres.conninfo, open=False)


def test_survives_an_outage_longer_than_reconnect_timeout(
    api: PsycopgApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """The server is away three times psycopg_pool's reconnect_timeout: the pool reconnects
    under our policy (no slot given up) and serves again once the server is back."""
    server = make_postgres()
    failed: list[object] = []
    pool = api.create_pool(
        server.conninfo,
        policy=FAST,
        reconnect=RECONNECT,
        hooks=(),
        min_size=2,
        max_size=2,
        reconnect_timeout=0.5,
        reconnect_failed=failed.append,
    )
    server.stop()
    api.check(pool)  # finds the broken connections and starts replacing them
    api.wait(1.5)  # the outage itself: 3 x reconnect_timeout
    server.start()
    assert api.select_one(pool, timeout=10.0) == 1
    assert failed == []
    api.poll(lambda: pool.get_stats()["pool_size"] >= 2, 10.0)
    assert pool.get_stats()["pool_size"] == 2


def test_slot_given_up_by_psycopg_pool_is_rearmed(
    api: PsycopgApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """Slots psycopg_pool gave up (reconnect_failed called, or awaited) refill by themselves."""
    server = make_postgres()
    failed: list[object] = []

    async def afailed(pool: object) -> None:
        failed.append(pool)

    pool = api.create_pool(
        server.conninfo,
        policy=FAST,
        reconnect=Backoff(attempts=1),
        hooks=(),
        min_size=2,
        max_size=2,
        reconnect_timeout=0.3,
        reconnect_failed=api.pick(failed.append, afailed),
    )
    server.stop()
    api.check(pool)
    assert api.poll(lambda: bool(failed), 10.0), "psycopg_pool never gave up a slot"
    server.start()
    # No checkout before it is full (a checkout would grow the pool anyway).
    api.poll(lambda: pool.get_stats()["pool_size"] >= 2, 15.0)
    assert pool.get_stats()["pool_size"] == 2
    assert api.select_one(pool) == 1


@SYNC_ONLY
def test_close_stops_a_reconnect_in_progress(
    api: PsycopgApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """Closing the pool during an outage ends its reconnect loops promptly (no thread left)."""
    server = make_postgres()
    pool = api.create_pool(server.conninfo, policy=FAST, hooks=(), min_size=1, max_size=1)
    server.stop()
    api.check(pool)
    api.wait(0.3)  # let a worker enter the reconnect loop
    start = time.monotonic()
    api.close_pool(pool, timeout=5.0)
    assert time.monotonic() - start < 2.0
    workers = [t for t in threading.enumerate() if t.name.startswith(pool.name)]
    assert workers == []


def test_default_reconnect_retries_until_closed() -> None:
    """The default reconnect policy has neither an attempt limit nor a deadline."""
    assert DEFAULT_POOL_RECONNECT.attempts is None
    assert DEFAULT_POOL_RECONNECT.timeout is None


def test_pool_that_cannot_fill_in_time_is_closed(
    api: PsycopgApi, make_postgres: Callable[..., PostgresServer]
) -> None:
    """The probe connects, but min_size is more than the server's free slots: PoolTimeout
    within the policy's deadline, and no reconnect loop keeps running."""
    server = make_postgres(extra_conf={"max_connections": 4, "superuser_reserved_connections": 1})
    start = time.monotonic()
    with pytest.raises(psycopg_pool.PoolTimeout):
        api.create_pool(
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
def test_unsupported_arguments_are_refused(
    api: PsycopgApi, arguments: dict[str, Any], message: str
) -> None:
    """Callable conninfo / kwargs (which psycopg_pool accepts) are refused with a clear error."""
    with pytest.raises(TypeError, match=message):
        api.create_pool(**arguments)
