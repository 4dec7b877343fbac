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
    driver = driver_verdict(exc)  # psycopg errors by the psycopg adapter's rules
    if driver is not None:
        return driver
    package = type(exc).__module__.partition(".")[0]
    if package in {"sqlite3", "_sqlite3"}:
        return _classify_sqlite(exc)
    network = os_error_verdict(exc)  # TimeoutError and ConnectionError included
    if network is not None:
        return network
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
