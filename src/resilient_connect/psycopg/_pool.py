"""psycopg_pool pools that wait for the server at start-up and reconnect under a policy.

psycopg_pool retries every failed connection of a pool with its own backoff
(1 s, doubling) for ``reconnect_timeout`` (300 s by default), whatever the
error: a wrong password costs five minutes of warnings, and a slot whose
reconnection gave up is dropped, so a pool can end up with no connections
after a long outage. :func:`create_pool` and :func:`acreate_pool` change that
through psycopg_pool's public extension points only:

* **Start-up.** One connection is made first under ``policy``, exactly like
  :func:`~resilient_connect.psycopg.connect_with_retry` (transient errors
  retried, permanent ones raised after one attempt, each attempt bounded by
  the time left), then closed; the pool is opened and filled to ``min_size``
  within the time left.
* **Reconnects.** The pool's ``connection_class`` is a subclass of yours (or
  of ``psycopg.Connection``) whose ``connect`` retries under ``reconnect``
  with this library's classification, until the server answers, a permanent
  error comes, or the pool is closed; waits check for ``pool.closed`` every
  quarter second.
* **No lost slots.** When psycopg_pool gives up on a slot anyway (a permanent
  error that lasted ``reconnect_timeout``, or a bounded ``reconnect`` policy
  ran out), its ``reconnect_failed`` callback (yours first) re-arms that slot
  with ``resize()``, so the pool keeps ``min_size`` connections as its goal.
"""

from __future__ import annotations

import time
import weakref

import psycopg

from .._budget import explicit_budget
from .._classify import Verdict
from .._engine import Retrier
from .._policy import Backoff
from ._classify import classify
from ._connect import _Call

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import Any, Literal

    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from .._budget import RetryBudget
    from .._engine import Attempt
    from .._events import Hook

_DEFAULT_POLICY = Backoff()

DEFAULT_POOL_RECONNECT = Backoff(
    initial=0.5, multiplier=2.0, maximum=10.0, attempts=None, timeout=None
)
"""Reconnect policy when ``reconnect=None``: retry transient errors until the server answers
or the pool is closed, at most 10 s apart. Outages longer than psycopg_pool's
``reconnect_timeout`` are survived; each reconnecting slot holds one of the pool's
``num_workers`` maintenance workers (3 by default) while the server is away."""

#: Seconds between checks of ``pool.closed`` while a reconnect waits.
CLOSED_POLL_INTERVAL = 0.25
#: Seconds the start-up fill gets when ``policy`` has no deadline (psycopg_pool's default).
OPEN_TIMEOUT = 30.0
_CLOSED = Verdict(transient=False, rule="pool-closed", report=False)


def create_pool(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    reconnect: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
    **pool_kwargs: Any,
) -> ConnectionPool[Any]:
    """An opened ``psycopg_pool.ConnectionPool`` once the server answers; see the module doc.

    Args:
        conninfo: as for ``ConnectionPool`` (a string; libpq parameters go in ``kwargs=``).
        policy: start-up policy; ``None`` for ``Backoff()`` (60 s deadline). The
            pool is also filled to ``min_size`` within that deadline (30 s without one).
        reconnect: policy for every connection the pool makes afterwards;
            ``None`` for :data:`DEFAULT_POOL_RECONNECT` (until the pool is closed).
        hooks: event callbacks for both policies; ``None`` logs on the
            ``resilient_connect`` logger, ``()`` is silent.
        budget: the :class:`~resilient_connect.RetryBudget` the pool's
            reconnects share (``"default"``:
            :func:`~resilient_connect.default_budget`; ``None``: none). Given a
            budget of your own, the start-up wait takes its retries from it too.
        pool_kwargs: passed to ``ConnectionPool`` (``kwargs``, ``min_size``,
            ``max_size``, ``connection_class``, ``reconnect_failed``,
            ``reconnect_timeout``, ``configure``...). ``open`` is not accepted:
            the pool is returned open.

    Raises the psycopg error of a permanent failure (after one attempt),
    :class:`~resilient_connect.RetryExhausted` when the start-up policy gives
    up, or ``psycopg_pool.PoolTimeout`` when the pool cannot fill in time
    (the pool is closed then).
    """
    from psycopg_pool import ConnectionPool

    setup = _Setup(conninfo, pool_kwargs, hooks, psycopg.Connection)
    started = time.monotonic()
    setup.retrier(policy, explicit_budget(budget)).call(setup.startup_attempt).close()
    connection_class = setup.reconnecting_class(reconnect, budget)
    user_callback = pool_kwargs.pop("reconnect_failed", None)

    def reconnect_failed(pool: ConnectionPool[Any]) -> None:
        if user_callback is not None:
            user_callback(pool)
        low, high = _rearm_sizes(pool.min_size, pool.max_size, closed=pool.closed)
        if low is not None:
            pool.resize(low, high)
            pool.resize(low + 1, high)

    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        open=False,
        connection_class=connection_class,
        reconnect_failed=reconnect_failed,
        **pool_kwargs,
    )
    setup.bind(pool)
    try:
        pool.open(wait=True, timeout=_time_left(policy, started))
    except BaseException:
        pool.close()
        raise
    return pool


async def acreate_pool(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    reconnect: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
    **pool_kwargs: Any,
) -> AsyncConnectionPool[Any]:
    """An opened ``psycopg_pool.AsyncConnectionPool``: the async twin of :func:`create_pool`.

    Same arguments; ``connection_class`` defaults to ``psycopg.AsyncConnection``
    and ``reconnect_failed`` may be a coroutine function. Waits with
    ``asyncio.sleep``; cancelling the task ends the wait at once.
    """
    from psycopg_pool import AsyncConnectionPool

    setup = _Setup(conninfo, pool_kwargs, hooks, psycopg.AsyncConnection)
    started = time.monotonic()
    first = await setup.retrier(policy, explicit_budget(budget)).acall(setup.astartup_attempt)
    await first.close()
    connection_class = setup.reconnecting_class(reconnect, budget)
    user_callback = pool_kwargs.pop("reconnect_failed", None)

    async def reconnect_failed(pool: AsyncConnectionPool[Any]) -> None:
        if user_callback is not None:
            outcome = user_callback(pool)
            if outcome is not None:
                await outcome
        low, high = _rearm_sizes(pool.min_size, pool.max_size, closed=pool.closed)
        if low is not None:
            await pool.resize(low, high)
            await pool.resize(low + 1, high)

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        open=False,
        connection_class=connection_class,
        reconnect_failed=reconnect_failed,
        **pool_kwargs,
    )
    setup.bind(pool)
    try:
        await pool.open(wait=True, timeout=_time_left(policy, started))
    except BaseException:
        await pool.close()
        raise
    return pool


def _rearm_sizes(min_size: int, max_size: int, *, closed: bool) -> tuple[int | None, int]:
    """How to give back the slot psycopg_pool just dropped: resize to ``min - 1``, then ``min``.

    ``resize`` adds one connection task for each step up of ``min_size``; the
    step down first only lowers the target. ``(None, max)``: nothing to re-arm
    (closed, or a pool that grows on demand only).
    """
    if closed or min_size == 0:
        return None, max_size
    return min_size - 1, max_size


def _time_left(policy: Backoff | None, started: float) -> float:
    timeout = (_DEFAULT_POLICY if policy is None else policy).timeout
    if timeout is None:
        return OPEN_TIMEOUT
    return max(0.1, started + timeout - time.monotonic())


class _Setup:
    """What one ``create_pool`` call knows: arguments, classes, and the pool once made."""

    __slots__ = ("base", "call", "conninfo", "hooks", "kwargs", "pool_ref")

    def __init__(
        self,
        conninfo: str,
        pool_kwargs: dict[str, Any],
        hooks: Sequence[Hook] | None,
        default_class: type[Any],
    ) -> None:
        if "open" in pool_kwargs:
            raise TypeError("create_pool() opens the pool itself: do not pass open=")
        if not isinstance(conninfo, str):
            raise TypeError("create_pool() takes conninfo as a string (kwargs= for parameters)")
        kwargs = pool_kwargs.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise TypeError("create_pool() takes kwargs= as a dict")
        self.conninfo = conninfo
        self.kwargs: dict[str, Any] = kwargs
        self.hooks = hooks
        self.base: type[Any] = pool_kwargs.pop("connection_class", None) or default_class
        self.call = _Call(conninfo, kwargs)
        self.pool_ref: Callable[[], Any] = lambda: None

    def bind(self, pool: object) -> None:
        self.pool_ref = weakref.ref(pool)

    def closed(self) -> bool:
        pool = self.pool_ref()
        return pool is not None and bool(pool.closed)

    def retrier(
        self,
        policy: Backoff | None,
        budget: RetryBudget | Literal["default"] | None,
        *,
        reconnecting: bool = False,
    ) -> Retrier:
        return Retrier(
            budget=budget,
            policy=policy,
            classify=self._classify_reconnect if reconnecting else classify,
            target=self.call.target,
            hooks=self.hooks,
            secrets=self.call.secrets,
            sleep=self._sleep if reconnecting else None,
            asleep=self._asleep if reconnecting else None,
            # psycopg_pool logs and reschedules on the driver's own error.
            reraise=reconnecting,
        )

    def _classify_reconnect(self, exc: Exception) -> Verdict:
        return _CLOSED if self.closed() else classify(exc)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.closed():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(CLOSED_POLL_INTERVAL, left))

    async def _asleep(self, seconds: float) -> None:
        import asyncio

        end = time.monotonic() + seconds
        while not self.closed():
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(CLOSED_POLL_INTERVAL, left))

    # ------------------------------------------------------------------ attempts
    def startup_attempt(self, attempt: Attempt) -> Any:
        return self._attempt(self.call, self.base.connect, attempt)

    async def astartup_attempt(self, attempt: Attempt) -> Any:
        return await self._aattempt(self.call, self.base.connect, attempt)

    def _attempt(self, call: _Call, connect: Callable[..., Any], attempt: Attempt) -> Any:
        if call.parse_error is not None:
            raise call.parse_error
        if self.closed():
            raise psycopg.OperationalError("the pool is closed")
        return call.attempt(attempt, connect)

    async def _aattempt(
        self, call: _Call, connect: Callable[..., Awaitable[Any]], attempt: Attempt
    ) -> Any:
        if call.parse_error is not None:
            raise call.parse_error
        if self.closed():
            raise psycopg.OperationalError("the pool is closed")
        return await call.aattempt(attempt, connect)

    # ------------------------------------------------------------------ the pool's class
    def reconnecting_class(
        self, reconnect: Backoff | None, budget: RetryBudget | Literal["default"] | None
    ) -> type[Any]:
        """A subclass of the connection class whose ``connect`` retries under ``reconnect``."""
        setup = self
        retrier = self.retrier(
            DEFAULT_POOL_RECONNECT if reconnect is None else reconnect, budget, reconnecting=True
        )
        base = self.base
        is_async = issubclass(base, psycopg.AsyncConnection)

        def sync_connect(cls: type[Any], /, conninfo: str = "", **kwargs: Any) -> Any:
            call = _Call(conninfo, kwargs)
            parent = super(subclass, cls).connect  # type: ignore[misc]  # made by type() below
            return retrier.call(lambda attempt: setup._attempt(call, parent, attempt))

        async def async_connect(cls: type[Any], /, conninfo: str = "", **kwargs: Any) -> Any:
            call = _Call(conninfo, kwargs)
            parent = super(subclass, cls).connect  # type: ignore[misc]  # made by type() below
            return await retrier.acall(lambda attempt: setup._aattempt(call, parent, attempt))

        connect = classmethod(async_connect) if is_async else classmethod(sync_connect)
        subclass: type[Any] = type(
            f"Reconnecting{base.__name__}",
            (base,),
            {
                "connect": connect,
                "__module__": __name__,
                "__doc__": f"{base.__qualname__} whose connect() retries under a policy.",
            },
        )
        return subclass
