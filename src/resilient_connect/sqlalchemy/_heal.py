"""Runtime healing for SQLAlchemy engines: new pool connections retry with backoff.

SQLAlchemy's pool opens a DBAPI connection through one function: the
``creator`` given to :func:`sqlalchemy.create_engine`, or, by default, a
function that fires the ``do_connect`` dialect event and then calls
``dialect.connect()``. That is the one place where "the database restarted"
meets "open a new connection", so that is where :class:`Healer` hooks in, with
SQLAlchemy's own extension points only:

* no ``creator``: a ``do_connect`` listener, registered first on the engine,
  makes the connection itself under the reconnect policy. On every attempt it
  runs the ``do_connect`` listeners registered after it (a token provider
  that sets ``cparams["password"]``, say) on fresh copies of the arguments,
  exactly as SQLAlchemy would, then bounds the driver's connect timeout by the
  time left and calls ``dialect.connect()``;
* a ``creator`` or ``async_creator`` from the caller: wrapped, with the same
  policy.

Each attempt is bounded by the time left: the driver's own connect timeout is
capped (:meth:`Healer._bound_connect_params`), and the attempt is cut off at
the deadline, which libpq's 2 s minimum would overrun, on a helper thread for
sync psycopg (the psycopg adapter's helper) and by cancellation for asyncio.

The pool itself (queueing, overflow, pre-ping, invalidation) is SQLAlchemy's,
untouched. Errors the policy gives up on, and permanent ones, leave the
listener as the driver raised them (the engine's ``reraise`` mode, with a note
saying why we gave up), so SQLAlchemy wraps them into its own
``OperationalError`` exactly as a plain engine would.

Nesting is the engine's: while :func:`resilient_connect.sqlalchemy.create_engine`
waits for the database at start-up, its loop owns the retries, so the
listener makes one connect, bounded by the start-up attempt; inside an
application's own retrying call, it retries until that call's deadline.
"""

from __future__ import annotations

from .._bounded import await_within
from .._engine import Retrier
from .._postgres._libpq import connect_timeout, host_count, worst_case

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
    from typing import Any, Literal, TypeVar

    from sqlalchemy.engine import Dialect, Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

    from .._budget import RetryBudget
    from .._classify import Classifier
    from .._engine import Attempt
    from .._events import Hook
    from .._policy import Backoff

    T = TypeVar("T")

#: Longest single connect attempt when the caller set no connect timeout, in seconds.
#: psycopg's own default is 130 s: one blackholed attempt would eat a whole policy.
DEFAULT_ATTEMPT_TIMEOUT = 10.0

# (dialect name, driver) -> the connect argument that bounds one connect attempt.
# libpq-style drivers take whole seconds (at least 2); asyncpg takes a float.
_WHOLE_SECONDS = "connect_timeout"
_FLOAT_SECONDS = "timeout"
_TIMEOUT_PARAMS = {
    ("postgresql", "psycopg"): _WHOLE_SECONDS,
    ("postgresql", "psycopg_async"): _WHOLE_SECONDS,
    ("postgresql", "psycopg2"): _WHOLE_SECONDS,
    ("postgresql", "asyncpg"): _FLOAT_SECONDS,
}


class Healer:
    """Retries the new connections of one engine's pool; see the module docstring."""

    __slots__ = ("_async", "_dialect", "_retrier", "_timeout_param")

    def __init__(
        self,
        *,
        policy: Backoff,
        classify: Classifier,
        target: str,
        hooks: Sequence[Hook] | None,
        secrets: Sequence[str],
        is_async: bool,
        budget: RetryBudget | Literal["default"] | None = None,
    ) -> None:
        self._async = is_async
        self._retrier = Retrier(
            policy=policy,
            classify=classify,
            target=target,
            hooks=hooks,
            secrets=secrets,
            # Inside SQLAlchemy's greenlet an asyncio engine must not block the loop.
            sleep=_greenlet_sleep if is_async else None,
            reraise=True,
            budget=budget,
        )
        self._timeout_param: str | None = None
        self._dialect: Dialect | None = None

    # ------------------------------------------------------------------ installation
    def wrap_creators(self, kwargs: MutableMapping[str, Any]) -> bool:
        """Wrap a caller's ``creator`` / ``async_creator`` in ``kwargs``; True if there was one."""
        creator = kwargs.get("creator")
        if creator is not None:
            kwargs["creator"] = self._wrap_creator(creator)
            return True
        async_creator = kwargs.get("async_creator")
        if async_creator is not None:
            kwargs["async_creator"] = self._wrap_async_creator(async_creator)
            return True
        return False

    def install(self, engine: Engine, *, listen: bool = True) -> None:
        """Learn ``engine``'s dialect; with ``listen``, register the ``do_connect`` listener.

        ``engine`` is the sync ``Engine`` (``AsyncEngine.sync_engine`` for asyncio).
        ``listen=False`` when a wrapped creator does the connecting.
        """
        from sqlalchemy import event

        dialect = engine.dialect
        self._dialect = dialect
        self._timeout_param = _TIMEOUT_PARAMS.get((dialect.name, dialect.driver))
        if not listen:
            return

        def heal_connect(
            dialect: Dialect,
            record: ConnectionPoolEntry | None,
            cargs: list[Any],
            cparams: dict[str, Any],
        ) -> DBAPIConnection:
            return self._do_connect(heal_connect, dialect, record, cargs, cparams)

        event.listen(engine, "do_connect", heal_connect)

    # ------------------------------------------------------------------ the retrying
    def run(self, connect: Callable[[Attempt], DBAPIConnection]) -> DBAPIConnection:
        """``connect(attempt)`` (a caller's creator) under the reconnect policy.

        We do not know the creator's timeouts, so each attempt is cut off at the
        deadline. Giving up raises the driver's last error (with a note), for
        SQLAlchemy to wrap.
        """
        return self._retrier.call(lambda attempt: self._cut(lambda: connect(attempt), attempt))

    def _do_connect(
        self,
        listener: Callable[..., object],
        dialect: Dialect,
        record: ConnectionPoolEntry | None,
        cargs: list[Any],
        cparams: dict[str, Any],
    ) -> DBAPIConnection:
        chain = list(dialect.dispatch.do_connect)
        later = chain[chain.index(listener) + 1 :] if listener in chain else []

        def connect_once(attempt: Attempt) -> DBAPIConnection:
            args = list(cargs)
            params = dict(cparams)
            for fn in later:
                made: DBAPIConnection | None = fn(dialect, record, args, params)
                if made is not None:
                    return made
            worst = self._bound_connect_params(params, attempt)
            if not attempt.driver_can_bound(worst):
                # Cut it off at the deadline ourselves: below libpq's 2 s minimum, across
                # several hosts, during DNS lookups, or a driver whose timeout we don't know.
                return self._cut(lambda: dialect.connect(*args, **params), attempt)
            return dialect.connect(*args, **params)

        return self._retrier.call(connect_once)

    def _bound_connect_params(self, params: dict[str, Any], attempt: Attempt) -> float | None:
        """Cap the driver's connect timeout (the one rule of :meth:`Attempt.share`).

        Returns the most the driver may take in this attempt with that timeout,
        or ``None`` when we cannot tell (a driver whose timeout we do not know).
        """
        name = self._timeout_param
        if name is None:
            return None
        hosts = host_count(params.get("host"))
        share = attempt.share(_caller_timeout(params.get(name)), hosts=hosts)
        if share is None:
            return None
        if name == _WHOLE_SECONDS:
            timeout = connect_timeout(share)
            params[name] = timeout
            return worst_case(timeout, hosts)
        params[name] = share
        return share * hosts

    def _cut(self, connect: Callable[[], DBAPIConnection], attempt: Attempt) -> DBAPIConnection:
        """Run ``connect`` so that it ends at the deadline: a helper thread, or a greenlet.

        The abandoned thread ends by itself within the (bounded) connect timeout
        and closes a connection that arrives too late; the caller gets a timeout
        error of the driver's own kind at the deadline (:func:`attempt_timeout`).
        """
        if self._async:
            return self._hard_bound(lambda _attempt: connect(), attempt)
        limit = attempt.remaining()
        if limit is None:
            return connect()
        from .._bounded import call_within

        dialect = self._dialect
        return call_within(
            limit,
            connect,
            timeout_error=lambda seconds: attempt_timeout(dialect, seconds),
            discard=lambda late: late.close(),
        )

    def _hard_bound(
        self, connect: Callable[[Attempt], DBAPIConnection], attempt: Attempt
    ) -> DBAPIConnection:
        """Run ``connect`` in its own greenlet and cancel it when the policy's time is up.

        This is what holds the deadline when less than libpq's 2 s minimum is
        left, and for drivers whose connect timeout we do not know how to set.
        The driver's own timeout (bounded in :meth:`_bound_connect_params`)
        normally fires first.
        """
        from sqlalchemy.util.concurrency import greenlet_spawn

        limit = attempt.remaining()
        if limit is None:
            return connect(attempt)
        dialect = self._dialect
        return _await(
            await_within(
                greenlet_spawn(connect, attempt),
                limit,
                timeout_error=lambda seconds: attempt_timeout(dialect, seconds),
            )
        )

    def _wrap_creator(self, creator: Callable[..., DBAPIConnection]) -> Callable[..., Any]:
        takes_record = _takes_connection_record(creator)

        def retrying_creator(connection_record: ConnectionPoolEntry | None = None) -> Any:
            def connect_once(_attempt: Attempt) -> DBAPIConnection:
                return creator(connection_record) if takes_record else creator()

            return self.run(connect_once)

        return retrying_creator

    def _wrap_async_creator(
        self, async_creator: Callable[[], Awaitable[T]]
    ) -> Callable[[], Coroutine[Any, Any, T]]:
        # SQLAlchemy awaits this on the event loop (not in a greenlet): use acall.
        retrier = Retrier(
            policy=self._retrier.policy,
            classify=self._retrier.classify,
            target=self._retrier.target,
            hooks=self._retrier.hooks,
            secrets=self._retrier.secrets,
            reraise=True,
            budget=self._retrier.budget,
        )

        async def connect_once(attempt: Attempt) -> T:
            limit = attempt.remaining()
            if limit is None:
                return await async_creator()
            dialect = self._dialect
            return await await_within(
                async_creator(),
                limit,
                timeout_error=lambda seconds: attempt_timeout(dialect, seconds),
            )

        async def retrying_async_creator() -> T:
            return await retrier.acall(connect_once)

        return retrying_async_creator


def _greenlet_sleep(seconds: float) -> None:
    """Sleep without blocking the event loop, from sync code inside SQLAlchemy's greenlet."""
    from .. import _timing

    _await(_timing.asleep(seconds))


def _await(awaitable: Awaitable[T]) -> T:
    """Await from sync code inside SQLAlchemy's greenlet (``await_only`` before 2.1)."""
    from sqlalchemy.util import concurrency

    await_: Callable[[Awaitable[T]], T] | None = getattr(concurrency, "await_", None)
    if await_ is None:
        await_ = concurrency.await_only
    return await_(awaitable)


def attempt_timeout(dialect: Dialect | None, seconds: float) -> Exception:
    """The error for a connect attempt we cut short: the driver's own kind where we know it.

    psycopg gets its ``ConnectionTimeout``; other drivers get their DBAPI
    ``OperationalError``; without a dialect, a :class:`TimeoutError`. SQLAlchemy
    wraps the DBAPI ones into ``sqlalchemy.exc.OperationalError``, as it does
    for the driver's own timeouts. The text starts as libpq's timeouts do, so
    every driver's cut attempt is judged a timeout (``pg:timeout``), and a
    give-up message names what earlier attempts reported as well.
    """
    text = (
        "connection timeout expired: connection attempt cut short after "
        f"{seconds:.2f}s (time left under the policy)"
    )
    if dialect is None:
        return TimeoutError(text)
    dbapi = dialect.loaded_dbapi
    timeout_type = getattr(getattr(dbapi, "errors", None), "ConnectionTimeout", None)
    if isinstance(timeout_type, type) and issubclass(timeout_type, Exception):
        return timeout_type(text)
    error_type = getattr(dbapi, "OperationalError", None)
    if isinstance(error_type, type) and issubclass(error_type, Exception):
        return error_type(text)
    return TimeoutError(text)


def _caller_timeout(value: object) -> float | None:
    """The caller's own connect timeout in seconds; ``None`` for "none given" or "no limit".

    A missing value means our default; 0 or less means "no limit" to libpq, so
    only the policy's deadline bounds the attempt.
    """
    if value is None:
        return DEFAULT_ATTEMPT_TIMEOUT
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_ATTEMPT_TIMEOUT  # the driver will reject it with its own message
    return seconds if seconds > 0 else None


def _takes_connection_record(creator: Callable[..., object]) -> bool:
    """Whether SQLAlchemy would pass the connection record to ``creator`` (one positional)."""
    import inspect

    try:
        signature = inspect.signature(creator)
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) == 1 and positional[0].name == "connection_record":
        return True
    required = [p for p in positional if p.default is p.empty]
    return len(required) == 1 and len(positional) == 1
