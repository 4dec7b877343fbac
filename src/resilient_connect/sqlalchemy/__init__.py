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
  ``reconnect`` (default :data:`DEFAULT_RECONNECT`, a 15 s deadline: the
  runtime default of every adapter), so that
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

from .._policy import DEFAULT_RECONNECT
from .._public import publish as _publish
from ._classify import classify, is_transient
from ._engines import DEFAULT_STARTUP, create_async_engine, create_engine

__all__ = [
    "DEFAULT_RECONNECT",
    "DEFAULT_STARTUP",
    "classify",
    "create_async_engine",
    "create_engine",
    "is_transient",
]

_publish(__name__, globals(), __all__)
