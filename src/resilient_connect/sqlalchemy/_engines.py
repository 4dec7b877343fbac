"""SQLAlchemy engines that wait for their database at start-up (see the package docstring)."""

from __future__ import annotations

import sqlalchemy

from .._engine import Retrier
from .._policy import Backoff
from .._redact import secret_values
from ._classify import classify
from ._urls import make_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .._engine import Attempt
    from .._events import Hook
    from ._heal import Healer


#: Start-up policy when ``retry=None``: the library default (60 s deadline).
DEFAULT_STARTUP = Backoff()
#: Reconnect policy when ``reconnect=None``: a restart takes well under a second and a
#: crash recovery some seconds; short waits (at most 1 s apart) notice the comeback
#: quickly, and the 15 s deadline keeps a request from hanging much longer than that.
DEFAULT_RECONNECT = Backoff(initial=0.1, multiplier=2.0, maximum=1.0, timeout=15.0)

_SELECT_ONE: sqlalchemy.Select[Any] = sqlalchemy.select(sqlalchemy.literal_column("1"))
_PLAIN_DIALECTS = frozenset({"sqlite"})


def create_engine(
    url: str | URL,
    *,
    retry: Backoff | None = None,
    reconnect: Backoff | None = None,
    lazy: bool = False,
    hooks: Sequence[Hook] | None = None,
    **kwargs: Any,
) -> Engine:
    """Create an ``Engine`` like :func:`sqlalchemy.create_engine`, once the database answers.

    Args:
        url: the database URL, a string or a :class:`sqlalchemy.engine.URL`.
        retry: start-up policy: how long to wait for the first successful
            ``SELECT 1``; ``None`` for :data:`DEFAULT_STARTUP` (60 s).
        reconnect: policy for every connection the pool opens later;
            ``None`` for :data:`DEFAULT_RECONNECT` (15 s).
            ``Backoff(attempts=1)`` makes one attempt, like plain SQLAlchemy.
        lazy: return at once without connecting (SQLAlchemy's own behaviour);
            the first connection then waits under ``reconnect``.
        hooks: event callbacks for both policies; ``None`` logs on the
            ``resilient_connect`` logger, ``()`` is silent.
        **kwargs: everything :func:`sqlalchemy.create_engine` accepts, passed
            through (``pool_size``, ``echo``, ``connect_args``, ``creator``...).
            ``pool_pre_ping`` defaults to ``True``.

    Each attempt's driver connect timeout is capped by the time left under the
    policy (psycopg, psycopg2: ``connect_timeout``; asyncpg: ``timeout``), and
    by 10 s when you set none. libpq never waits less than 2 s, so a psycopg
    attempt is also cut off at the deadline (on a helper thread); with
    psycopg2, an attempt started with less than 2 s left can end up to 2 s late.

    Raises:
        sqlalchemy.exc.OperationalError: a permanent error (wrong password,
            unknown database), after the first attempt.
        RetryExhausted: the start-up policy gave up; raised from the last error.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() in _PLAIN_DIALECTS:
        return sqlalchemy.create_engine(url, **kwargs)
    healer, target, secrets = _healer(parsed, reconnect, hooks, kwargs, is_async=False)
    wrapped = healer.wrap_creators(kwargs) if healer is not None else False
    engine = sqlalchemy.create_engine(url, **kwargs)
    if healer is not None:
        healer.install(engine, listen=not wrapped)
    if lazy:
        return engine
    retrier = Retrier(
        policy=DEFAULT_STARTUP if retry is None else retry,
        classify=classify,
        target=target,
        hooks=hooks,
        secrets=secrets,
    )

    def probe(attempt: Attempt) -> None:
        if healer is not None:
            healer.startup = attempt
        try:
            with engine.connect() as connection:
                connection.execute(_SELECT_ONE)
        finally:
            if healer is not None:
                healer.startup = None

    try:
        retrier.call(probe)
    except BaseException:
        engine.dispose()
        raise
    return engine


async def create_async_engine(
    url: str | URL,
    *,
    retry: Backoff | None = None,
    reconnect: Backoff | None = None,
    lazy: bool = False,
    hooks: Sequence[Hook] | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """Create an ``AsyncEngine`` like :func:`sqlalchemy.ext.asyncio.create_async_engine`.

    A coroutine: ``engine = await create_async_engine(url)``. The arguments and
    errors are those of :func:`create_engine`; the waits use ``asyncio`` and
    never block the event loop, and cancelling the task ends the wait. Each
    attempt is also cut short when the policy's time is up, so the deadline
    holds even below libpq's 2 s minimum connect timeout. Needs greenlet
    (``sqlalchemy[asyncio]``, brought by the ``sqlalchemy`` extra).
    """
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    from .._bounded import await_within

    parsed = make_url(url)
    if parsed.get_backend_name() in _PLAIN_DIALECTS:
        return sa_create_async_engine(url, **kwargs)
    healer, target, secrets = _healer(parsed, reconnect, hooks, kwargs, is_async=True)
    wrapped = healer.wrap_creators(kwargs) if healer is not None else False
    engine = sa_create_async_engine(url, **kwargs)
    if healer is not None:
        healer.install(engine.sync_engine, listen=not wrapped)
    if lazy:
        return engine
    retrier = Retrier(
        policy=DEFAULT_STARTUP if retry is None else retry,
        classify=classify,
        target=target,
        hooks=hooks,
        secrets=secrets,
    )

    async def round_trip() -> None:
        async with engine.connect() as connection:
            await connection.execute(_SELECT_ONE)

    async def probe(attempt: Attempt) -> None:
        if healer is not None:
            healer.startup = attempt
        try:
            limit = attempt.remaining()
            if limit is None:
                await round_trip()
            else:
                await await_within(round_trip(), limit, timeout_error=_no_answer)
        finally:
            if healer is not None:
                healer.startup = None

    try:
        await retrier.acall(probe)
    except BaseException:
        await engine.dispose()
        raise
    return engine


def _healer(
    url: URL,
    reconnect: Backoff | None,
    hooks: Sequence[Hook] | None,
    kwargs: dict[str, Any],
    *,
    is_async: bool,
) -> tuple[Healer | None, str, list[str]]:
    """The healer (``None`` with a caller's ``pool=``), the target and the secrets to scrub.

    Also defaults ``pool_pre_ping`` to ``True`` in ``kwargs`` when SQLAlchemy builds the pool.
    """
    from ._heal import Healer

    target = url.render_as_string(hide_password=True)
    secrets = [url.password] if isinstance(url.password, str) else []
    secrets += secret_values(kwargs.get("connect_args"))
    if kwargs.get("pool") is not None:
        # A ready-made pool brings its own creator and pre-ping setting (SQLAlchemy then
        # refuses pool_pre_ping): there is nothing of ours to hook.
        return None, target, secrets
    kwargs.setdefault("pool_pre_ping", True)
    healer = Healer(
        policy=DEFAULT_RECONNECT if reconnect is None else reconnect,
        classify=classify,
        target=target,
        hooks=hooks,
        secrets=secrets,
        is_async=is_async,
    )
    return healer, target, secrets


def _no_answer(seconds: float) -> TimeoutError:
    return TimeoutError(f"no answer to SELECT 1 within {seconds:.2f}s (time left under the policy)")
