"""Connect to PostgreSQL with psycopg 3, retrying under a policy; each attempt bounded."""

from __future__ import annotations

from typing import overload

import psycopg
from psycopg import errors as _pg_errors

from .._bounded import await_within, call_within
from .._engine import Retrier
from .._policy import Backoff
from .._postgres._libpq import connect_timeout, host_count, worst_case
from .._redact import secret_values
from ._checks import connect_timeout_problem, host_problem
from ._classify import classify

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import Any, NoReturn, TypeVar

    from psycopg import AsyncConnection, AsyncCursor, Connection, Cursor
    from psycopg.abc import AdaptContext, ConnParam
    from psycopg.rows import AsyncRowFactory, RowFactory, TupleRow

    from .._budget import RetryBudget
    from .._engine import Attempt
    from .._events import Hook

    _Row = TypeVar("_Row")
    _T = TypeVar("_T")


DEFAULT_CONNECT_TIMEOUT = 10
"""Seconds each host gets per attempt when the caller sets no ``connect_timeout``.

psycopg's own default is 130 s: a server that accepts connections but does not
answer would use up the whole retry budget in one attempt. With 10 s, a hung
server is tried again (a restarted one answers at once). Give
``connect_timeout`` to choose another per-host limit.
"""
# Keyword arguments of Connection.connect() that are not libpq connection parameters.
_CONNECTION_OPTIONS = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)
# Connection parameters shown in the target of logs and errors (never a password).
_SHOWN_PARAMETERS = ("host", "hostaddr", "port", "dbname", "user")


@overload
def connect_with_retry(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    autocommit: bool = False,
    prepare_threshold: int | None = 5,
    context: AdaptContext | None = None,
    row_factory: None = None,
    cursor_factory: type[Cursor[TupleRow]] | None = None,
    **kwargs: ConnParam,
) -> Connection[TupleRow]: ...


@overload
def connect_with_retry(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    autocommit: bool = False,
    prepare_threshold: int | None = 5,
    context: AdaptContext | None = None,
    row_factory: RowFactory[_Row],
    cursor_factory: type[Cursor[_Row]] | None = None,
    **kwargs: ConnParam,
) -> Connection[_Row]: ...


def connect_with_retry(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    **kwargs: Any,
) -> Connection[Any]:
    """Connect like ``psycopg.connect(conninfo, **kwargs)``, retrying transient failures.

    Args:
        conninfo: a ``postgresql://`` URL or a ``key=value`` string; ``""``
            uses the keyword arguments and libpq's ``PG*`` environment variables.
        policy: delays and limits; ``None`` for ``Backoff()`` (60 s deadline).
            The deadline bounds every attempt too (see the module docstring).
        hooks: called with each :class:`~resilient_connect.Event`; ``None``
            for the default logging hook, ``()`` for none.
        budget: a :class:`~resilient_connect.RetryBudget` the retries take
            tokens from (``None``: none).
        kwargs: passed to psycopg: ``autocommit``, ``row_factory``,
            ``prepare_threshold``, ``context``, ``cursor_factory`` and libpq
            parameters (``host``, ``password``, ``connect_timeout``, ...).
            ``connect_timeout`` stays a per-host limit (default
            :data:`DEFAULT_CONNECT_TIMEOUT`, not psycopg's 130 s); it is lowered
            so that every host fits in the time left.

    Returns the open connection. Raises the psycopg error unchanged when it is
    permanent (after one attempt), or :class:`~resilient_connect.RetryExhausted`
    (from the last error) when the policy gives up. A conninfo that libpq cannot
    parse raises ``psycopg.ProgrammingError`` at once, with any password it
    quotes masked.
    """
    call = _Call(conninfo, kwargs)
    retrier = call.retrier(policy, hooks, budget)
    if call.parse_error is not None:
        return retrier.call(call.fail)
    return retrier.call(call.attempt)


@overload
async def aconnect_with_retry(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    autocommit: bool = False,
    prepare_threshold: int | None = 5,
    context: AdaptContext | None = None,
    row_factory: None = None,
    cursor_factory: type[AsyncCursor[TupleRow]] | None = None,
    **kwargs: ConnParam,
) -> AsyncConnection[TupleRow]: ...


@overload
async def aconnect_with_retry(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    autocommit: bool = False,
    prepare_threshold: int | None = 5,
    context: AdaptContext | None = None,
    row_factory: AsyncRowFactory[_Row],
    cursor_factory: type[AsyncCursor[_Row]] | None = None,
    **kwargs: ConnParam,
) -> AsyncConnection[_Row]: ...


async def aconnect_with_retry(
    conninfo: str = "",
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    **kwargs: Any,
) -> AsyncConnection[Any]:
    """Connect like ``await psycopg.AsyncConnection.connect(...)``, retrying transient failures.

    The async twin of :func:`connect_with_retry`, with the same arguments.
    Waits with ``asyncio.sleep``; cancelling the task ends the wait or the
    attempt at once.
    """
    call = _Call(conninfo, kwargs)
    retrier = call.retrier(policy, hooks, budget)
    if call.parse_error is not None:
        return await retrier.acall(call.afail)
    return await retrier.acall(call.aattempt)


class _Call:
    """One ``connect_with_retry`` call: the arguments, parsed once, and how to make an attempt."""

    __slots__ = ("conninfo", "hosts", "kwargs", "parse_error", "secrets", "target", "user_timeout")

    def __init__(self, conninfo: str, kwargs: dict[str, Any]) -> None:
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.target = _target(conninfo, kwargs)
        self.secrets = tuple(secret_values(kwargs))
        self.parse_error: psycopg.ProgrammingError | None = None
        self.user_timeout: int | None = None
        self.hosts = 1
        from psycopg.conninfo import conninfo_to_dict

        parameters = {k: v for k, v in kwargs.items() if k not in _CONNECTION_OPTIONS}
        try:
            params = conninfo_to_dict(conninfo, **parameters)
        except psycopg.ProgrammingError as exc:
            self.parse_error = self._masked(exc)
            return
        problem = host_problem(params) or connect_timeout_problem(params.get("connect_timeout"))
        if problem is not None:  # psycopg would reject it, or retry a DNS failure forever
            self.parse_error = psycopg.ProgrammingError(problem)
            return
        self.user_timeout = _user_timeout(params.get("connect_timeout"))
        self.hosts = host_count(params.get("host") or params.get("hostaddr"))

    def retrier(
        self,
        policy: Backoff | None,
        hooks: Sequence[Hook] | None,
        budget: RetryBudget | None = None,
    ) -> Retrier:
        return Retrier(
            budget=budget,
            policy=policy,
            classify=classify,
            target=self.target,
            hooks=hooks,
            secrets=self.secrets,
        )

    def _masked(self, exc: psycopg.ProgrammingError) -> psycopg.ProgrammingError:
        """``exc``, or a copy whose message no longer quotes a secret (libpq echoes bad URLs)."""
        from .._redact import Redactor

        text = str(exc)
        scrubbed = Redactor(self.conninfo, self.secrets).scrub(text)
        return exc if scrubbed == text else psycopg.ProgrammingError(scrubbed)

    def fail(self, attempt: Attempt) -> NoReturn:
        del attempt
        assert self.parse_error is not None
        raise self.parse_error

    async def afail(self, attempt: Attempt) -> NoReturn:
        self.fail(attempt)

    def _bounded_kwargs(self, attempt: Attempt) -> tuple[dict[str, Any], float | None]:
        """The keyword arguments with a ``connect_timeout`` that fits, and libpq's worst case.

        Each host gets an equal share of the time left, and no more than the
        caller's own ``connect_timeout``, or :data:`DEFAULT_CONNECT_TIMEOUT` when
        the caller set none (:meth:`Attempt.share`); libpq counts whole seconds.
        """
        own = DEFAULT_CONNECT_TIMEOUT if self.user_timeout is None else self.user_timeout
        share = attempt.share(own, hosts=self.hosts)
        if share is None:
            return self.kwargs, None
        timeout = connect_timeout(share)
        return {**self.kwargs, "connect_timeout": timeout}, worst_case(timeout, self.hosts)

    def attempt(
        self, attempt: Attempt, connect: Callable[..., Any] = psycopg.Connection.connect
    ) -> Any:
        """One connect with ``connect(conninfo, **kwargs)`` (a subclass's ``connect``, say)."""
        kwargs, worst = self._bounded_kwargs(attempt)
        if attempt.driver_can_bound(worst):
            # libpq's own timeout ends the attempt in time: no helper thread needed.
            return _untangled(lambda: connect(self.conninfo, **kwargs))
        left = attempt.remaining()
        assert left is not None  # driver_can_bound() is true without a deadline
        return call_within(
            left,
            lambda: connect(self.conninfo, **kwargs),
            timeout_error=deadline_timeout,
            discard=lambda late: late.close(),
        )

    async def aattempt(
        self,
        attempt: Attempt,
        connect: Callable[..., Awaitable[Any]] = psycopg.AsyncConnection.connect,
    ) -> Any:
        """The async twin of :meth:`attempt`."""
        kwargs, worst = self._bounded_kwargs(attempt)
        connecting = connect(self.conninfo, **kwargs)
        try:
            if attempt.driver_can_bound(worst):
                return await connecting
            return await await_within(
                connecting,
                attempt.remaining(),
                timeout_error=deadline_timeout,
                discard=lambda late: late.close(),
            )
        except psycopg.Error as exc:
            # Drop the traceback: see _untangled().
            raise exc.with_traceback(None)  # noqa: B904 - the same error, minus psycopg's frames


def _untangled(connect: Callable[[], _T]) -> _T:
    """Call ``connect``; re-raise its psycopg error without psycopg's frames.

    On a timeout psycopg leaves the half-open libpq connection to its
    ``connect`` frame, which the error's traceback keeps alive through a
    reference cycle until the garbage collector runs: one socket per timed-out
    attempt. Dropping the traceback frees it at once.
    """
    try:
        return connect()
    except psycopg.Error as exc:
        raise exc.with_traceback(None)  # noqa: B904 - the same error, minus psycopg's frames


def deadline_timeout(seconds: float) -> _pg_errors.ConnectionTimeout:
    """psycopg's own timeout error, for an attempt we cut short at the retry deadline."""
    return _pg_errors.ConnectionTimeout(
        f"connection timeout expired: no connection within {seconds:.2f}s, "
        "the time left before the retry deadline"
    )


def _user_timeout(value: object) -> int | None:
    """The caller's ``connect_timeout`` (kwargs, conninfo or ``PGCONNECT_TIMEOUT``), if valid.

    ``None`` when unset, zero, negative or unparsable: the attempt then uses
    :data:`DEFAULT_CONNECT_TIMEOUT` (never psycopg's 130 s, nor libpq's "0 means
    wait forever"), lowered to fit the time left like any other value.
    """
    if value in (None, ""):
        import os

        value = os.environ.get("PGCONNECT_TIMEOUT")
    if value in (None, ""):
        return None
    try:
        seconds = int(float(str(value)))
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _target(conninfo: str, kwargs: dict[str, Any]) -> str:
    """What logs and errors name: the conninfo (redacted later) and the parameters given apart."""
    shown = " ".join(
        f"{key}={kwargs[key]}"
        for key in _SHOWN_PARAMETERS
        if kwargs.get(key) is not None and not _looks_like_conninfo(str(kwargs[key]))
    )
    if conninfo and shown:
        return f"{conninfo} ({shown})"
    return conninfo or shown or "postgresql (libpq defaults)"


def _looks_like_conninfo(value: str) -> bool:
    # libpq expands a dbname that is itself a conninfo; such a value may hold a password.
    return "=" in value or "://" in value
