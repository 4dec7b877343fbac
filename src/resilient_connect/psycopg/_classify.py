"""Judge psycopg errors: worth another connection attempt, or not."""

from __future__ import annotations

import psycopg
from psycopg import errors as _pg_errors

from .._classify import Verdict, os_error_verdict
from .._postgres._rules import RULES, judge

_RULES_BY_NAME = {rule.name: rule for rule in RULES}
_TIMEOUT = _RULES_BY_NAME["pg:timeout"].verdict


def classify(exc: BaseException) -> Verdict:
    """Say whether another connection attempt may get past ``exc``, and which rule decided.

    In order: psycopg's ``ConnectionTimeout`` is transient (``pg:timeout``); an
    error carrying a SQLSTATE is judged by it (a SQLSTATE outside the table is
    permanent, ``pg:sqlstate-XXXXX``: a working server rejected a statement);
    an ``OperationalError`` without one is judged by its message, permanent
    rules first, in English and in the server's translations; one that no rule
    matches is transient (``pg:unknown``). Other
    psycopg errors (``ProgrammingError``, ``InterfaceError``) are raised by the
    client itself and are permanent. Errors from outside psycopg: ``OSError``
    is transient, anything else permanent.
    """
    if isinstance(exc, _pg_errors.ConnectionTimeout):
        return _TIMEOUT
    if not isinstance(exc, psycopg.Error):
        return os_error_verdict(exc) or Verdict(
            transient=False, rule=f"not-a-psycopg-error:{type(exc).__name__}"
        )
    return judge(exc.sqlstate, str(exc), server_error=isinstance(exc, psycopg.OperationalError))


def is_transient(exc: BaseException) -> bool:
    """``True`` if another connection attempt may succeed after ``exc`` (see :func:`classify`)."""
    return classify(exc).transient
