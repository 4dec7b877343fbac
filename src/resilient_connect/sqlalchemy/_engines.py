"""SQLAlchemy engines that wait for their database at start-up (see the package docstring)."""

from __future__ import annotations

import sqlalchemy

from .._budget import explicit_budget
from .._engine import Retrier
from .._policy import DEFAULT_RECONNECT, Backoff
from .._redact import secret_values
from ._classify import classify
from ._urls import make_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Literal

    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .._budget import RetryBudget
    from .._engine import Attempt
    from .._events import Hook
    from ._heal import Healer


#: Start-up policy when ``retry=None``: the library default (60 s deadline).
DEFAULT_STARTUP = Backoff()

_SELECT_ONE: sqlalchemy.Select[Any] = sqlalchemy.select(sqlalchemy.literal_column("1"))
_PLAIN_DIALECTS = frozenset({"sqlite"})
# Seconds a start-up round trip may run past the deadline, so that a connect cut off at
# the deadline reports itself first (at worst this much late).
_CUT_GRACE = 0.05


def create_engine(
    url: str | URL,
    *,
    retry: Backoff | None = None,
    reconnect: Backoff | None = None,
    lazy: bool = False,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
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
        budget: the :class:`~resilient_connect.RetryBudget` the reconnects
            share (``"default"``: :func:`~resilient_connect.default_budget`;
            ``None``: none). Given a budget of your own, the start-up wait
            takes its retries from it too.
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
    startup = _Startup(parsed, reconnect, hooks, kwargs, budget, is_async=False)
    engine = startup.installed(sqlalchemy.create_engine(url, **kwargs))
    if lazy:
        return engine
    try:
        startup.retrier(retry, hooks).call(lambda attempt: startup.attempt(engine, attempt))
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
    budget: RetryBudget | Literal["default"] | None = "default",
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

    parsed = make_url(url)
    if parsed.get_backend_name() in _PLAIN_DIALECTS:
        return sa_create_async_engine(url, **kwargs)
    startup = _Startup(parsed, reconnect, hooks, kwargs, budget, is_async=True)
    engine = sa_create_async_engine(url, **kwargs)
    startup.installed(engine.sync_engine)
    if lazy:
        return engine
    try:
        await startup.retrier(retry, hooks).acall(lambda attempt: startup.aattempt(engine, attempt))
    except BaseException:
        await engine.dispose()
        raise
    return engine


class _Startup:
    """One engine's start-up, prepared once and I/O-free: target, secrets, the healer.

    Built before SQLAlchemy's engine (it wraps a caller's ``creator`` in the
    keyword arguments and defaults ``pool_pre_ping``); :meth:`attempt` and
    :meth:`aattempt` make one start-up attempt: a connection and ``SELECT 1``,
    cut off at the deadline as a whole (the dialect's first-connect queries
    and the ``SELECT 1`` have no timeout of their own). The start-up loop owns
    its retries: the healer inside each attempt makes a single connect.
    """

    __slots__ = ("budget", "healer", "secrets", "target", "wrapped")

    def __init__(
        self,
        url: URL,
        reconnect: Backoff | None,
        hooks: Sequence[Hook] | None,
        kwargs: dict[str, Any],
        budget: RetryBudget | Literal["default"] | None,
        *,
        is_async: bool,
    ) -> None:
        self.healer, self.target, self.secrets = _healer(
            url, reconnect, hooks, kwargs, budget, is_async=is_async
        )
        self.budget = budget
        self.wrapped = self.healer.wrap_creators(kwargs) if self.healer is not None else False

    def installed(self, engine: Engine) -> Engine:
        """Hook the healer into ``engine`` (the sync one: ``AsyncEngine.sync_engine``)."""
        if self.healer is not None:
            self.healer.install(engine, listen=not self.wrapped)
        return engine

    def retrier(self, policy: Backoff | None, hooks: Sequence[Hook] | None) -> Retrier:
        return Retrier(
            policy=DEFAULT_STARTUP if policy is None else policy,
            classify=classify,
            target=self.target,
            hooks=hooks,
            secrets=self.secrets,
            owns_retries=True,
            budget=explicit_budget(self.budget),
        )

    def attempt(self, engine: Engine, attempt: Attempt) -> None:
        def round_trip() -> None:
            with engine.connect() as connection:
                connection.execute(_SELECT_ONE)

        left = attempt.remaining()
        if left is None:
            round_trip()
            return
        from .._bounded import call_within

        # A helper thread (it carries the attempt in scope): the connect is bounded, but a
        # server or pgbouncer that accepts and then holds the queries would hold us too.
        # The grace lets a connect cut off at the deadline report itself, in the driver's
        # words, rather than as this round trip's timeout.
        call_within(left + _CUT_GRACE, round_trip, timeout_error=_no_answer, discard=_nothing)

    async def aattempt(self, engine: AsyncEngine, attempt: Attempt) -> None:
        async def round_trip() -> None:
            async with engine.connect() as connection:
                await connection.execute(_SELECT_ONE)

        left = attempt.remaining()
        if left is None:
            await round_trip()
            return
        from .._bounded import await_within

        # Abandoned at the deadline: psycopg would wait up to 5 s for the server (or a
        # paused pgbouncer, which never answers) to confirm the cancelled query.
        await await_within(round_trip(), left + _CUT_GRACE, timeout_error=_no_answer, abandon=True)


def _nothing(_late: object) -> None:
    """A round trip that ends after the deadline has closed its connection itself."""


def _healer(
    url: URL,
    reconnect: Backoff | None,
    hooks: Sequence[Hook] | None,
    kwargs: dict[str, Any],
    budget: RetryBudget | Literal["default"] | None,
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
        budget=budget,
    )
    return healer, target, secrets


def _no_answer(seconds: float) -> TimeoutError:
    return TimeoutError(
        f"no answer from the database within {seconds:.2f}s (connect, the dialect's "
        "first queries and SELECT 1; the time left under the policy)"
    )
