"""Judge psycopg errors: worth another connection attempt, or not."""

from __future__ import annotations

import psycopg
from psycopg import errors as _pg_errors

from .._classify import Verdict, os_error_verdict
from ._rules import OTHER_SQLSTATE, RULES, UNKNOWN, by_message, by_sqlstate

_RULES_BY_NAME = {rule.name: rule for rule in RULES}
_TIMEOUT = _RULES_BY_NAME["pg:timeout"].verdict
_CLIENT_ERROR = Verdict(transient=False, rule="pg:client-error")


def classify(exc: BaseException) -> Verdict:  # noqa: PLR0911 - one return per documented step
    """Say whether another connection attempt may get past ``exc``, and which rule decided.

    In order: psycopg's ``ConnectionTimeout`` is transient (``pg:timeout``); an
    error carrying a SQLSTATE is judged by it (a SQLSTATE outside the table is
    permanent, ``pg:sqlstate-XXXXX``: a working server rejected a statement);
    an ``OperationalError`` without one is judged by its message, permanent
    rules first; one that no rule matches is transient (``pg:unknown``). Other
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
    message = str(exc)
    sqlstate = exc.sqlstate
    if sqlstate:
        rule = by_sqlstate(sqlstate, message)
        if rule is None:
            return Verdict(transient=False, rule=f"{OTHER_SQLSTATE}{sqlstate}")
        return rule.verdict
    rule = by_message(message)
    if not isinstance(exc, psycopg.OperationalError):
        if rule is not None and not rule.transient:
            return rule.verdict
        return _CLIENT_ERROR
    return (rule or UNKNOWN).verdict


def is_transient(exc: BaseException) -> bool:
    """``True`` if another connection attempt may succeed after ``exc`` (see :func:`classify`)."""
    return classify(exc).transient
