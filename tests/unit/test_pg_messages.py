"""The generated translations, pgbouncer's rules, and psycopg2 / asyncpg errors under SQLAlchemy.

Error objects are the drivers' real classes, built with the texts and SQLSTATEs measured
against PostgreSQL 15 and pgbouncer 1.18 (the integration tests meet the real ones).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import psycopg2
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from resilient_connect._postgres import _messages
from resilient_connect._postgres._rules import RULES, by_message
from resilient_connect.psycopg._pool import _rearm_sizes
from resilient_connect.sqlalchemy import classify as sa_classify

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_pg_messages.py"
AT = 'connection to server at "127.0.0.1", port 5432 failed: '


def test_generated_module_is_current() -> None:
    """scripts/gen_pg_messages.py --check passes (it compares when the same catalogue versions
    are installed, which the test environment's PostgreSQL provides)."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_generated_module_is_well_formed() -> None:
    """Every translated phrase belongs to a known rule, is specific, and has no raw
    placeholder left."""
    names = {rule.name for rule in RULES}
    assert set(_messages.TRANSLATIONS) <= names
    assert {"de", "fr"} <= set(_messages.LANGUAGES)
    for rule, phrases in _messages.TRANSLATIONS.items():
        assert phrases, rule
        for phrase in phrases:
            assert len(phrase.replace("…", "").strip()) >= 10, (rule, phrase)
            assert not re.search(r"%[0-9$]*[sdum]", phrase), (rule, phrase)


def test_each_translation_gets_its_own_verdict() -> None:
    """A server message in any shipped language, with names filled in, is judged like the
    English one: the rule it was generated for, or one with the same verdict (no phrase of a
    permanent rule swallows a transient translation, or the reverse)."""
    verdicts = {rule.name: rule.transient for rule in RULES}
    for name, phrases in _messages.TRANSLATIONS.items():
        for phrase in phrases:
            message = "FATAL:  " + phrase.replace("…", "app")
            found = by_message(message)
            assert found is not None, (name, phrase)
            assert found.transient == verdicts[name], (name, found.name, phrase)


@pytest.mark.parametrize(
    ("exc", "rule", "transient"),
    [
        # psycopg2: no SQLSTATE at connect time, the message decides
        (
            psycopg2.OperationalError(
                AT + 'FATAL:  password authentication failed for user "app"\n'
            ),
            "pg:auth-failed",
            False,
        ),
        (
            psycopg2.OperationalError(AT + "FATAL:  Datenbank >>x<< existiert nicht\n"),
            "pg:database-missing",
            False,
        ),
        (psycopg2.OperationalError(AT + "FATAL:  SASL authentication failed\n"), None, False),
        (
            psycopg2.OperationalError(
                AT + "Connection refused\n\tIs the server running on that host?\n"
            ),
            "pg:refused",
            True,
        ),
        (psycopg2.OperationalError(AT + "timeout expired\n"), "pg:timeout", True),
        (psycopg2.OperationalError(AT + "FATAL:  Ein neuer Text\n"), "pg:unknown", True),
        (psycopg2.ProgrammingError('invalid dsn: missing "=" after "x"'), "pg:bad-conninfo", False),
        (psycopg2.InterfaceError("connection already closed"), "pg:client-error", False),
        # asyncpg: the SQLSTATE is there at connect time too
        (asyncpg.exceptions.CannotConnectNowError("x"), "pg:starting-up", True),
        (
            asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
            "pg:shutting-down",
            True,
        ),
        (asyncpg.exceptions.TooManyConnectionsError("x"), "pg:too-many-connections", True),
        (asyncpg.exceptions.InvalidPasswordError("x"), "pg:auth-failed", False),
        (asyncpg.exceptions.InvalidCatalogNameError("x"), "pg:database-missing", False),
        (asyncpg.exceptions.ProtocolViolationError("SASL authentication failed"), None, False),
        (asyncpg.exceptions.ProtocolViolationError("query_wait_timeout"), None, True),
        (asyncpg.exceptions.ProtocolViolationError("a new pgbouncer text"), None, True),
        (
            asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            ),
            "pg:connection-lost",
            True,
        ),
        (asyncpg.exceptions.InterfaceError("cannot call fetch(): released"), None, False),
        (asyncpg.exceptions.SyntaxOrAccessError("syntax"), "pg:sqlstate-42000", False),
        (ConnectionRefusedError(111, "Connection refused"), None, True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_other_drivers_under_sqlalchemy(
    exc: BaseException, rule: str | None, *, transient: bool
) -> None:
    """psycopg2 and asyncpg errors are judged by the PostgreSQL rules (SQLSTATE first)."""
    verdict = sa_classify(exc)
    assert verdict.transient is transient, verdict
    if rule is not None:
        assert verdict.rule == rule


def test_asyncpg_errors_as_sqlalchemy_wraps_them() -> None:
    """The asyncpg dialect's adapted error (.orig of SQLAlchemy's DBAPIError) is judged by the
    asyncpg error inside: 57P03 and 53300 are transient (issue 12 problem 1)."""
    import sqlalchemy.exc

    for inner, transient in [
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.exceptions.InvalidPasswordError("password authentication failed"), False),
    ]:
        # SQLAlchemy 2.1 keeps the asyncpg error as .orig, 2.0 (still what pip picks on
        # Python 3.10) only as __cause__ (``raise ... from error``): give it both ways.
        adapted = AsyncAdapt_asyncpg_dbapi.Error(f"{type(inner)}: {inner}", inner)
        adapted.__cause__ = inner
        wrapped = sqlalchemy.exc.DBAPIError(None, None, adapted)
        assert sa_classify(wrapped).transient is transient, inner


class _OtherDriverError(Exception):
    """An error of a driver we do not know, carrying a SQLSTATE like psycopg2's pgcode."""

    pgcode = "57P01"


def test_any_error_with_a_sqlstate_is_judged_by_it() -> None:
    """An error that carries a pgcode / sqlstate (psycopg2 in a session) is judged by it,
    whatever its text."""
    assert sa_classify(_OtherDriverError("Verbindung wird beendet")).rule == "pg:admin-shutdown"


@pytest.mark.parametrize(
    ("sizes", "closed", "expected"),
    [((2, 4), False, (1, 4)), ((0, 4), False, (None, 4)), ((2, 2), True, (None, 2))],
)
def test_rearm_sizes(
    sizes: tuple[int, int], *, closed: bool, expected: tuple[int | None, int]
) -> None:
    """A dropped slot is re-armed by a resize down then up, except for closed or on-demand pools."""
    assert _rearm_sizes(*sizes, closed=closed) == expected
