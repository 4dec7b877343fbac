"""Judge errors raised through SQLAlchemy, by the driver underneath where it is known."""

from __future__ import annotations

import sqlalchemy

from .._classify import Verdict, driver_verdict, os_error_verdict


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
    (server and libpq messages); psycopg2 and asyncpg errors by the same
    PostgreSQL rules, from the SQLSTATE they carry (psycopg2 ``pgcode``,
    asyncpg ``sqlstate``; none for psycopg2 at connect time) and otherwise
    from the message; the asyncpg dialect's adapted errors by the asyncpg
    error they wrap. Any other driver's error carrying a five-character
    ``sqlstate`` or ``pgcode`` is judged by the PostgreSQL rules as well.
    sqlite3 ``database is locked`` is transient
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


def _classify_driver_error(exc: BaseException) -> Verdict:  # noqa: PLR0911 - one per driver
    package = type(exc).__module__.partition(".")[0]
    if package != "sqlalchemy":  # the asyncpg dialect's made-up errors are unwrapped below
        driver = driver_verdict(exc)  # psycopg errors by the psycopg adapter's rules
        if driver is not None:
            return driver
    if package in {"sqlite3", "_sqlite3"}:
        return _classify_sqlite(exc)
    wrapped = _wrapped_driver_error(exc)
    if wrapped is not None:
        return _classify_driver_error(wrapped)
    if package in _POSTGRES_DRIVERS or _sqlstate(exc) is not None or _postgres_dialect(exc):
        return _classify_postgres(exc)
    network = os_error_verdict(exc)  # TimeoutError and ConnectionError included
    if network is not None:
        return network
    name = type(exc).__name__
    if name == "TimeoutError":  # asyncio.TimeoutError is not the builtin before 3.11
        return Verdict(transient=True, rule="timeout")
    if name == "OperationalError":
        return Verdict(transient=True, rule=f"dbapi:{package}:operational-error")
    return Verdict(transient=False, rule=f"dbapi:{package}:{name}")


# Drivers whose errors the PostgreSQL rules judge (psycopg has its own adapter).
_POSTGRES_DRIVERS = frozenset({"psycopg2", "asyncpg"})
# Base classes meaning "raised for the server or the network", not by the client library
# itself: PEP 249's OperationalError (psycopg2) and asyncpg's server and connection errors.
_SERVER_ERROR_CLASSES = frozenset({"OperationalError", "PostgresError", "PostgresConnectionError"})


def _wrapped_driver_error(exc: BaseException) -> BaseException | None:
    """The driver's own error inside an error SQLAlchemy made up for it, else ``None``.

    The asyncpg dialect re-raises asyncpg's errors as emulated DBAPI errors
    (``sqlalchemy.dialects.postgresql.asyncpg...Error``), keeping the original in
    ``.orig`` (SQLAlchemy 2.1) and as ``__cause__`` (2.0).
    """
    if not type(exc).__module__.startswith("sqlalchemy."):
        return None
    inner = getattr(exc, "orig", None)
    if not isinstance(inner, BaseException):
        inner = exc.__cause__
    if isinstance(inner, Exception) and inner is not exc:
        return inner
    return None


def _postgres_dialect(exc: BaseException) -> bool:
    """Whether ``exc`` is an emulated DBAPI error of a PostgreSQL dialect with no driver
    error inside: one made up from a message alone (ours, for an attempt cut at the
    deadline, say). The PostgreSQL rules judge its text."""
    return type(exc).__module__.startswith("sqlalchemy.dialects.postgresql.")


def _sqlstate(exc: BaseException) -> str | None:
    """A five-character SQLSTATE carried by ``exc`` (asyncpg ``sqlstate``, psycopg2 ``pgcode``)."""
    for name in ("sqlstate", "pgcode"):
        code = getattr(exc, name, None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def _classify_postgres(exc: BaseException) -> Verdict:
    """psycopg2 and asyncpg errors (and any with a SQLSTATE) by the PostgreSQL rules.

    Without a SQLSTATE, an error of the driver's server / network classes that no
    rule knows is transient (``pg:unknown``); one the client library raised itself
    (a bad argument, an interface misuse) is permanent (``pg:client-error``). OS
    errors and timeouts that asyncpg lets through are handled by the caller.
    """
    from .._postgres._rules import judge

    sqlstate = _sqlstate(exc)
    if sqlstate is None:
        network = os_error_verdict(exc)
        if network is not None:
            return network
    server = any(cls.__name__ in _SERVER_ERROR_CLASSES for cls in type(exc).__mro__)
    return judge(sqlstate, str(exc), server_error=server)


def _classify_sqlite(exc: BaseException) -> Verdict:
    message = str(exc).lower()
    if "database is locked" in message or "database table is locked" in message:
        return Verdict(transient=True, rule="sqlite:locked")
    if "unable to open database file" in message:
        return Verdict(transient=False, rule="sqlite:cannot-open")
    return Verdict(transient=False, rule=f"sqlite:{type(exc).__name__}")
