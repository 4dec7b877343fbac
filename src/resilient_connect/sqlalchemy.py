"""SQLAlchemy engines that wait for their database at start-up and heal after a restart.

:func:`create_engine` and :func:`create_async_engine` are drop-in
replacements for SQLAlchemy's functions of the same names (same arguments,
string or :class:`sqlalchemy.engine.URL`). They add three things:

* **Start-up wait.** They return only once the database has answered a real
  round trip (a connection and ``SELECT 1``), retrying transient failures under
  ``retry`` (default: :class:`~resilient_connect.Backoff`, a 60 s deadline).
  ``lazy=True`` skips the wait.
* **Runtime healing.** Every new connection the pool opens later (after a
  restart or a failover, or when the pool grows) is retried under
  ``reconnect`` (default :data:`DEFAULT_RECONNECT`, a 15 s deadline), so that
  ``engine.connect()`` during a short outage waits and then succeeds instead
  of failing at once. This uses SQLAlchemy's ``do_connect`` event (or wraps
  your ``creator`` / ``async_creator``); the pool is SQLAlchemy's own.
* **Pre-ping.** ``pool_pre_ping=True`` unless you pass it, so that a pooled
  connection killed by the restart is replaced on checkout instead of failing
  your first query.

Permanent errors (a wrong password, an unknown database) are not retried: you
get SQLAlchemy's own ``OperationalError`` after the first attempt. When the
start-up wait gives up you get :class:`~resilient_connect.RetryExhausted`
(raised from SQLAlchemy's error); when reconnecting gives up, SQLAlchemy's
``OperationalError`` as a plain engine would raise it, only later. Targets in
logs and messages show the password as ``***``.

SQLite (``sqlite://``, file databases, any ``sqlite+driver``) has no server to
wait for: these functions then return SQLAlchemy's engine unchanged.
"""

from __future__ import annotations

import sqlalchemy

from ._classify import Verdict
from ._engine import Retrier
from ._policy import Backoff

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._engine import Attempt
    from ._events import Hook
    from ._sa_heal import Healer

__all__ = [
    "DEFAULT_RECONNECT",
    "DEFAULT_STARTUP",
    "classify",
    "create_async_engine",
    "create_engine",
    "is_transient",
]

#: Start-up policy when ``retry=None``: the library default (60 s deadline).
DEFAULT_STARTUP = Backoff()
#: Reconnect policy when ``reconnect=None``: a restart takes well under a second and a
#: crash recovery some seconds; short waits (at most 1 s apart) notice the comeback
#: quickly, and the 15 s deadline keeps a request from hanging much longer than that.
DEFAULT_RECONNECT = Backoff(initial=0.1, multiplier=2.0, maximum=1.0, timeout=15.0)

_SELECT_ONE: sqlalchemy.Select[Any] = sqlalchemy.select(sqlalchemy.literal_column("1"))
_PLAIN_DIALECTS = frozenset({"sqlite"})


# ---------------------------------------------------------------------- classification
def classify(exc: BaseException) -> Verdict:
    """Judge an error from SQLAlchemy or from a DBAPI driver used through it.

    Rules, in order:

    * ``DBAPIError`` with ``connection_invalidated`` (SQLAlchemy's dialect
      recognised a disconnect in the middle of a session): transient;
    * ``DBAPIError``: the driver error in ``.orig`` is judged by the driver's
      rules (below);
    * ``DisconnectionError`` and pool ``TimeoutError``: transient; any other
      ``SQLAlchemyError`` (bad arguments, unknown dialect...): permanent.

    Driver rules: psycopg errors by :func:`resilient_connect.psycopg.classify`
    (server and libpq messages); sqlite3 ``database is locked`` is transient
    (another connection holds the write lock; it ends) and every other sqlite3
    error, such as ``unable to open database file``, is permanent; other
    drivers: ``OSError`` and the DBAPI ``OperationalError`` (PEP 249's class
    for "the database is not reachable or not working") are transient, every
    other DBAPI error is permanent.
    """
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        return _classify_dbapi_error(exc)
    if isinstance(exc, sa_exc.DisconnectionError):
        return Verdict(transient=True, rule="sa:disconnect")
    if isinstance(exc, sa_exc.TimeoutError):
        return Verdict(transient=True, rule="sa:pool-timeout")
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return Verdict(transient=False, rule=f"sa:{type(exc).__name__}")
    return _classify_driver_error(exc)


def is_transient(exc: BaseException) -> bool:
    """True if another attempt may succeed; see :func:`classify` for the rules.

    Usable as ``on=`` of :func:`resilient_connect.retry` around a unit of work::

        @retry(on=resilient_connect.sqlalchemy.is_transient)
        def save(order): ...
    """
    return classify(exc).transient


def _classify_dbapi_error(exc: sqlalchemy.exc.DBAPIError) -> Verdict:
    if exc.connection_invalidated:
        return Verdict(transient=True, rule="sa:connection-invalidated")
    orig = exc.orig
    if isinstance(orig, BaseException) and orig is not exc:
        return _classify_driver_error(orig)
    return Verdict(transient=False, rule=f"sa:{type(exc).__name__}")


def _classify_driver_error(exc: BaseException) -> Verdict:
    package = type(exc).__module__.partition(".")[0]
    if package == "psycopg":
        from . import psycopg as psycopg_adapter

        return psycopg_adapter.classify(exc)
    if package in {"sqlite3", "_sqlite3"}:
        return _classify_sqlite(exc)
    if isinstance(exc, OSError):  # TimeoutError and ConnectionError included
        return Verdict(transient=True, rule=f"os-error:{type(exc).__name__}")
    name = type(exc).__name__
    if name == "TimeoutError":  # asyncio.TimeoutError is not the builtin before 3.11
        return Verdict(transient=True, rule="timeout")
    if name == "OperationalError":
        return Verdict(transient=True, rule=f"dbapi:{package}:operational-error")
    return Verdict(transient=False, rule=f"dbapi:{package}:{name}")


def _classify_sqlite(exc: BaseException) -> Verdict:
    message = str(exc).lower()
    if "database is locked" in message or "database table is locked" in message:
        return Verdict(transient=True, rule="sqlite:locked")
    if "unable to open database file" in message:
        return Verdict(transient=False, rule="sqlite:cannot-open")
    return Verdict(transient=False, rule=f"sqlite:{type(exc).__name__}")


# ---------------------------------------------------------------------- engines
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
    parsed = sqlalchemy.make_url(url)
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

    from ._bounded import await_within

    parsed = sqlalchemy.make_url(url)
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
    from ._sa_heal import Healer

    target = url.render_as_string(hide_password=True)
    secrets = [url.password] if isinstance(url.password, str) else []
    connect_args = kwargs.get("connect_args") or {}
    secrets += [
        value
        for key, value in connect_args.items()
        if isinstance(value, str) and "pass" in key.lower()
    ]
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
