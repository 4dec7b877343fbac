"""Library loops nested in an application's retrying call end at its deadline (real drivers).

The reproduction of the engine-seam issue: a client or engine built by this library,
called from inside ``@resilient_connect.retry(policy=Backoff(timeout=2))`` or
``resilient_connect.connect_with_retry(..., policy=Backoff(timeout=2))`` while nothing
listens on the port. Each library loop (the redis bridge, SQLAlchemy's reconnects, the
psycopg adapter's wait) has a longer deadline of its own; all must stop at the outer 2 s,
and the outer call must give up at once, saying why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio

import resilient_connect as rc
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis
from resilient_connect import sqlalchemy as rc_sqlalchemy

pytestmark = pytest.mark.integration

DEADLINE = 2.0
# The deadline plus a margin for a shared 2-core machine; far below any inner deadline.
LATEST = DEADLINE + 0.5
OUTER = rc.Backoff(initial=0.05, maximum=0.2, timeout=DEADLINE)


def _sync_calls(
    port: int,
) -> dict[str, tuple[Callable[[], object], Callable[[BaseException], bool]]]:
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        retry=rc_redis.runtime_retry(hooks=()),
        socket_connect_timeout=1,
    )
    engine = rc_sqlalchemy.create_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{port}/app", lazy=True, hooks=()
    )

    def sa_connect() -> None:
        with engine.connect():
            pass

    def pg_connect() -> None:
        rc_psycopg.connect_with_retry(f"postgresql://app:pw@127.0.0.1:{port}/app", hooks=())

    return {
        "redis": (client.ping, rc_redis.is_transient),
        "sqlalchemy": (sa_connect, rc_sqlalchemy.is_transient),
        "psycopg": (pg_connect, rc_psycopg.is_transient),
    }


async def _async_calls(
    port: int,
) -> dict[str, tuple[Callable[[], Awaitable[object]], Callable[[BaseException], bool]]]:
    client = redis.asyncio.Redis(
        host="127.0.0.1",
        port=port,
        retry=rc_redis.aruntime_retry(hooks=()),
        socket_connect_timeout=1,
    )
    engine = await rc_sqlalchemy.create_async_engine(
        f"postgresql+psycopg://app:pw@127.0.0.1:{port}/app", lazy=True, hooks=()
    )

    async def sa_connect() -> None:
        async with engine.connect():
            pass

    async def pg_connect() -> None:
        await rc_psycopg.aconnect_with_retry(f"postgresql://app:pw@127.0.0.1:{port}/app", hooks=())

    async def ping() -> object:  # redis.asyncio's ping is a plain function returning a coroutine
        return await client.ping()

    return {
        "redis": (ping, rc_redis.is_transient),
        "sqlalchemy": (sa_connect, rc_sqlalchemy.is_transient),
        "psycopg": (pg_connect, rc_psycopg.is_transient),
    }


def _check(caught: pytest.ExceptionInfo[rc.RetryExhausted], elapsed: float) -> None:
    error = caught.value
    assert elapsed <= LATEST, f"ran {elapsed:.2f}s past a {DEADLINE}s deadline"
    assert elapsed >= DEADLINE / 2
    assert error.reason == "deadline"
    assert error.attempts == 1  # no second attempt: the nested loop used the time up
    assert error.nested is not None
    assert "deadline reached inside the retry loop of" in str(error)


ADAPTERS = ["redis", "sqlalchemy", "psycopg"]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("outer", ["decorator", "connect_with_retry"])
def test_sync_library_loops_end_at_the_outer_deadline(
    free_port: int, adapter: str, outer: str
) -> None:
    """Sync: every library loop stops at the application's 2 s deadline, which then gives up."""
    call, is_transient = _sync_calls(free_port)[adapter]
    if outer == "decorator":
        run = rc.retry(on=is_transient, policy=OUTER, hooks=())(call)
    else:

        def run() -> object:
            return rc.connect_with_retry(call, policy=OUTER, on=is_transient, hooks=())

    began = time.monotonic()
    with pytest.raises(rc.RetryExhausted) as caught:
        run()
    _check(caught, time.monotonic() - began)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("outer", ["decorator", "connect_with_retry"])
def test_async_library_loops_end_at_the_outer_deadline(
    free_port: int, adapter: str, outer: str
) -> None:
    """asyncio: the same, through the asyncio twins (SQLAlchemy's greenlets included)."""

    async def scenario() -> float:
        call, is_transient = (await _async_calls(free_port))[adapter]
        if outer == "decorator":
            run = rc.retry(on=is_transient, policy=OUTER, hooks=())(call)
        else:

            async def run() -> object:
                return await rc.aconnect_with_retry(call, policy=OUTER, on=is_transient, hooks=())

        began = time.monotonic()
        with pytest.raises(rc.RetryExhausted) as caught:
            await run()
        elapsed = time.monotonic() - began
        _check(caught, elapsed)
        return elapsed

    asyncio.run(scenario())


def test_start_up_wait_inside_the_application_loop_is_bounded(free_port: int) -> None:
    """create_engine's own start-up wait (60 s by default) stops at the enclosing 2 s too."""
    url = f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app"

    def make() -> Any:
        return rc_sqlalchemy.create_engine(url, hooks=())

    began = time.monotonic()
    with pytest.raises(rc.RetryExhausted) as caught:
        rc.connect_with_retry(make, policy=OUTER, on=rc_sqlalchemy.is_transient, hooks=())
    _check(caught, time.monotonic() - began)
