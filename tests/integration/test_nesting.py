"""Library loops nested in an application's retrying call end at its deadline (real drivers).

The reproduction of the engine-seam issue: a client or engine built by this library,
called from inside ``@resilient_connect.retry(policy=Backoff(timeout=2))`` or
``resilient_connect.connect_with_retry(..., policy=Backoff(timeout=2))`` while nothing
listens on the port. Each library loop (the redis bridge, SQLAlchemy's reconnects, the
psycopg adapter's wait) has a longer deadline of its own; all must stop at the outer 2 s,
and the outer call must give up at once, saying why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

import resilient_connect as rc
from harness.api import FLAVOURS, Api, PsycopgApi, RedisApi, SqlalchemyApi, open_api
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis
from resilient_connect import sqlalchemy as rc_sqlalchemy

pytestmark = pytest.mark.integration

DEADLINE = 2.0
# The deadline plus a margin for a shared 2-core machine; far below any inner deadline.
LATEST = DEADLINE + 0.5
OUTER = rc.Backoff(initial=0.05, maximum=0.2, timeout=DEADLINE)

ADAPTERS = ["redis", "sqlalchemy", "psycopg"]
APIS: dict[str, type[Api]] = {"redis": RedisApi, "sqlalchemy": SqlalchemyApi, "psycopg": PsycopgApi}


@pytest.fixture(params=FLAVOURS)
def api(request: pytest.FixtureRequest, adapter: str) -> Iterator[Api]:
    """The adapter's sync entry points, then their asyncio twins (harness.api)."""
    with open_api(APIS[adapter], str(request.param)) as flavour:
        yield flavour


def _library_call(api: Api, port: int) -> tuple[Callable[[], object], Callable[[Exception], bool]]:
    """A call into a client or engine built by this library (nothing listens on ``port``),
    which runs one of the library's own loops, and the adapter's transient test."""
    if isinstance(api, RedisApi):
        client = api.client(runtime_hooks=(), host="127.0.0.1", port=port, socket_connect_timeout=1)
        return api.command_call(client, "ping"), rc_redis.is_transient
    if isinstance(api, SqlalchemyApi):
        url = f"postgresql+psycopg://app:pw@127.0.0.1:{port}/app"
        engine = api.create_engine(url, lazy=True, hooks=())
        return api.connect_call(engine), rc_sqlalchemy.is_transient
    assert isinstance(api, PsycopgApi)
    url = f"postgresql://app:pw@127.0.0.1:{port}/app"
    return api.connect_call(url, hooks=()), rc_psycopg.is_transient


def _check(caught: pytest.ExceptionInfo[rc.RetryExhausted], elapsed: float) -> None:
    error = caught.value
    assert elapsed <= LATEST, f"ran {elapsed:.2f}s past a {DEADLINE}s deadline"
    assert elapsed >= DEADLINE / 2
    assert error.reason == "deadline"
    assert error.attempts == 1  # no second attempt: the nested loop used the time up
    assert error.nested is not None
    assert "deadline reached inside the retry loop of" in str(error)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("outer", ["decorator", "connect_with_retry"])
def test_library_loops_end_at_the_outer_deadline(api: Api, free_port: int, outer: str) -> None:
    """Each library loop (greenlets too) stops at the app's 2 s deadline, which then gives up."""
    call, is_transient = _library_call(api, free_port)
    if outer == "decorator":
        run = rc.retry(on=is_transient, policy=OUTER, hooks=())(call)
    else:
        run = api.deferred(
            rc.connect_with_retry,
            rc.aconnect_with_retry,
            call,
            policy=OUTER,
            on=is_transient,
            hooks=(),
        )
    began = time.monotonic()
    with pytest.raises(rc.RetryExhausted) as caught:
        api.run(run())
    _check(caught, time.monotonic() - began)


@pytest.mark.parametrize("adapter", ["sqlalchemy"])
def test_start_up_wait_inside_the_application_loop_is_bounded(api: Api, free_port: int) -> None:
    """The engine's own start-up wait (60 s by default) stops at the enclosing 2 s too."""
    url = f"postgresql+psycopg://app:pw@127.0.0.1:{free_port}/app"
    make = api.deferred(
        rc_sqlalchemy.create_engine, rc_sqlalchemy.create_async_engine, url, hooks=()
    )
    began = time.monotonic()
    with pytest.raises(rc.RetryExhausted) as caught:
        api.call(
            rc.connect_with_retry,
            rc.aconnect_with_retry,
            make,
            policy=OUTER,
            on=rc_sqlalchemy.is_transient,
            hooks=(),
        )
    _check(caught, time.monotonic() - began)
