"""The psycopg classification table, and the adapter's mechanics that need no server.

Messages are the texts psycopg 3.3 / libpq 18 produced against PostgreSQL 15 (see
../shared/notes/failures.md); exceptions are real psycopg classes, some raised by psycopg
itself (refused on a closed port, conninfo that libpq cannot parse).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors as pg_errors
import pytest

from resilient_connect import Backoff, NotRetried, RetryExhausted, RetryScheduled
from resilient_connect._engine import Attempt
from resilient_connect._events import Event
from resilient_connect._postgres._rules import (
    PGBOUNCER_RULES,
    POSTGRES_RULES,
    RULES,
    UNKNOWN,
    rules_markdown,
)
from resilient_connect.psycopg import (
    DEFAULT_CONNECT_TIMEOUT,
    aconnect_with_retry,
    classify,
    connect_with_retry,
    is_transient,
)
from resilient_connect.psycopg._connect import _Call, _target, _user_timeout
from resilient_connect.testing import instant_waits

DOCS = Path(__file__).resolve().parents[2] / "docs" / "psycopg.md"
AT = 'connection failed: connection to server at "127.0.0.1", port 41197 failed: '


def op(text: str) -> psycopg.OperationalError:
    return psycopg.OperationalError(text)


# (exception, expected rule); each rule of the table has at least one row (checked below).
CASES: list[tuple[BaseException, str]] = [
    # connect time: no SQLSTATE, English text
    (
        op(
            AT + "Connection refused\n\tIs the server running on that host and accepting "
            "TCP/IP connections?"
        ),
        "pg:refused",
    ),
    (op(AT + "No route to host"), "pg:unreachable"),
    (op(AT + "Network is unreachable"), "pg:unreachable"),
    (pg_errors.ConnectionTimeout("connection timeout expired"), "pg:timeout"),
    (op(AT + "timeout expired"), "pg:timeout"),
    (op("failed to resolve host 'db': [Errno -2] Name or service not known"), "pg:dns"),
    (
        op("failed to resolve host 'db': [Errno -3] Temporary failure in name resolution"),
        "pg:dns",
    ),
    (
        op('connection is bad: could not translate host name "db" to address: Name or service'),
        "pg:dns",
    ),
    (op(AT + "FATAL:  the database system is starting up"), "pg:starting-up"),
    (
        op(
            AT + "FATAL:  the database system is not yet accepting connections\n"
            "DETAIL:  Consistent recovery state has not been yet reached."
        ),
        "pg:recovering",
    ),
    (op(AT + "FATAL:  the database system is in recovery mode"), "pg:recovering"),
    (
        op(
            AT + "FATAL:  the database system is not accepting connections\n"
            "DETAIL:  Hot standby mode is disabled."
        ),
        "pg:standby",
    ),
    (op(AT + "FATAL:  the database system is shutting down"), "pg:shutting-down"),
    (op(AT + "FATAL:  sorry, too many clients already"), "pg:too-many-connections"),
    (
        op(
            AT + "FATAL:  remaining connection slots are reserved for non-replication "
            "superuser connections"
        ),
        "pg:too-many-connections",
    ),
    (
        op(
            AT + "FATAL:  remaining connection slots are reserved for roles with the "
            "SUPERUSER attribute"
        ),
        "pg:too-many-connections",
    ),
    (op(AT + 'FATAL:  too many connections for role "app"'), "pg:too-many-connections"),
    (op(AT + "FATAL:  out of memory"), "pg:out-of-resources"),
    (op(AT + "session is read-only"), "pg:session-attrs"),
    (op(AT + "server is not in hot standby mode"), "pg:session-attrs"),
    (
        op(
            AT + "server closed the connection unexpectedly\n\tThis probably means the "
            "server terminated abnormally\n\tbefore or while processing the request."
        ),
        "pg:connection-lost",
    ),
    (
        op("consuming input failed: server closed the connection unexpectedly"),
        "pg:connection-lost",
    ),
    (op(AT + "could not send startup packet: Connection reset by peer"), "pg:connection-lost"),
    (op("the connection is closed"), "pg:connection-lost"),
    # connect time: permanent
    (op(AT + 'FATAL:  password authentication failed for user "app"'), "pg:auth-failed"),
    (op(AT + 'FATAL:  password authentication failed for user "nosuch"'), "pg:auth-failed"),
    (op(AT + 'FATAL:  role "nologin_role" is not permitted to log in'), "pg:auth-rejected"),
    (
        op(AT + 'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "app", database "x"'),
        "pg:auth-rejected",
    ),
    (op(AT + 'FATAL:  role "ghost" does not exist'), "pg:auth-rejected"),
    (op(AT + "fe_sendauth: no password supplied"), "pg:no-password"),
    (op(AT + 'FATAL:  database "nosuchdb" does not exist'), "pg:database-missing"),
    (
        op(
            AT + 'FATAL:  permission denied for database "app"\n'
            "DETAIL:  User does not have CONNECT privilege."
        ),
        "pg:no-connect-privilege",
    ),
    (
        op(AT + "channel binding is required, but server did not offer an authentication"),
        "pg:auth-method",
    ),
    (op(AT + "server does not support SSL, but SSL was required"), "pg:tls-config"),
    (
        op('connection is bad: invalid integer value "notaport" for connection option "port"'),
        "pg:bad-conninfo",
    ),
    (op('connection is bad: invalid sslmode value: "sometimes"'), "pg:bad-conninfo"),
    (psycopg.ProgrammingError('invalid connection option "bogus_option"\n'), "pg:bad-conninfo"),
    # several hosts: one permanent failure decides; otherwise transient
    (
        op(
            AT + 'FATAL:  password authentication failed for user "app"\n'
            "Multiple connection attempts failed. All failures were:\n"
            "- host: '127.0.0.1', port: '1', hostaddr: '127.0.0.1': connection failed: "
            "Connection refused\n"
            "- host: '127.0.0.1', port: '2', hostaddr: '127.0.0.1': connection failed: "
            'FATAL:  password authentication failed for user "app"'
        ),
        "pg:auth-failed",
    ),
    (
        op(
            AT + "FATAL:  the database system is starting up\n"
            "Multiple connection attempts failed. All failures were:\n"
            "- host: '127.0.0.1', port: '1', hostaddr: '127.0.0.1': Connection refused\n"
            "- host: '127.0.0.1', port: '2', hostaddr: '127.0.0.1': FATAL:  the database "
            "system is starting up"
        ),
        "pg:starting-up",
    ),
    # in a session: SQLSTATE decides, whatever the language
    (
        pg_errors.AdminShutdown("terminating connection due to administrator command"),
        "pg:admin-shutdown",
    ),
    (pg_errors.lookup("57P01")("Verbindung wird abgebrochen"), "pg:admin-shutdown"),
    (pg_errors.CrashShutdown("terminating connection because of crash"), "pg:crash-shutdown"),
    (pg_errors.lookup("57P05")("idle"), "pg:session-timeout"),
    (pg_errors.lookup("25P03")("idle in transaction"), "pg:session-timeout"),
    # the server's translation names the rule; a text no catalogue has: the code's first rule
    (pg_errors.lookup("57P03")("das Datenbanksystem fährt herunter"), "pg:shutting-down"),
    (pg_errors.lookup("57P03")("a wording no catalogue has"), "pg:starting-up"),
    (pg_errors.lookup("57P03")("the database system is shutting down"), "pg:shutting-down"),
    (pg_errors.lookup("53300")("zu viele Verbindungen"), "pg:too-many-connections"),
    (pg_errors.lookup("53200")("out of memory"), "pg:out-of-resources"),
    (pg_errors.lookup("08006")("connection failure"), "pg:connection-lost"),
    (pg_errors.lookup("08P01")("protocol violation"), "pg:connection-lost"),
    (pg_errors.lookup("28P01")("Passwort-Authentifizierung fehlgeschlagen"), "pg:auth-failed"),
    (pg_errors.lookup("28000")("keine pg_hba.conf-Zeile"), "pg:auth-rejected"),
    (pg_errors.lookup("3D000")("Datenbank »x« existiert nicht"), "pg:database-missing"),
    (pg_errors.lookup("42501")("Zugriff verweigert"), "pg:no-connect-privilege"),
    (pg_errors.lookup("42601")('syntax error at or near "selec"'), "pg:sqlstate-42601"),
    (
        pg_errors.lookup("25006")("cannot execute INSERT in a read-only transaction"),
        "pg:sqlstate-25006",
    ),
    # localised servers (lc_messages), as a server with a UTF-8 or an ASCII (C) locale sends them
    # codespell:ignore-begin (French and German are not misspelt English)
    (
        op(AT + "FATAL:  Passwort-Authentifizierung für Benutzer »app« fehlgeschlagen"),
        "pg:auth-failed",
    ),
    (
        op(AT + "FATAL:  Passwort-Authentifizierung f?r Benutzer >>app<< fehlgeschlagen"),
        "pg:auth-failed",
    ),
    (op(AT + "FATAL:  Datenbank >>nosuchdb<< existiert nicht"), "pg:database-missing"),
    (
        op(AT + "FATAL:  la base de donn?es << nosuchdb >> n'existe pas"),
        "pg:database-missing",
    ),
    (
        op(AT + "FATAL:  authentification par mot de passe échouée pour l'utilisateur  « app »"),
        "pg:auth-failed",
    ),
    (op(AT + "FATAL:  das Datenbanksystem fährt herunter"), "pg:shutting-down"),
    (
        op(AT + "FATAL:  le système de bases de données n'accepte pas de connexions"),
        "pg:standby",
    ),
    (op(AT + 'FATAL:  データベース"nosuchdb"は存在しません'), "pg:database-missing"),
    # end of the localised texts: codespell:ignore-end
    # pgbouncer's own texts: no SQLSTATE through libpq, 08P01 through asyncpg (1.18)
    (op(AT + "FATAL:  SASL authentication failed"), "pgbouncer:auth-failed"),
    (pg_errors.lookup("08P01")("SASL authentication failed"), "pgbouncer:auth-failed"),
    (op(AT + "FATAL:  no such database: nosuchdb"), "pgbouncer:no-such-database"),
    (pg_errors.lookup("08P01")("no such database: nosuchdb"), "pgbouncer:no-such-database"),
    (
        op(AT + "FATAL:  unsupported startup parameter: search_path"),
        "pgbouncer:startup-refused",
    ),
    (
        pg_errors.lookup("08P01")(
            "server login has been failing, try again later (server_login_retry)"
        ),
        "pgbouncer:server-login-retry",
    ),
    (op(AT + "FATAL:  client_login_timeout (server down)"), "pgbouncer:server-login-retry"),
    (
        op(AT + "FATAL:  no more connections allowed (max_client_conn)"),
        "pgbouncer:pool-full",
    ),
    (pg_errors.lookup("08P01")("query_wait_timeout"), "pgbouncer:pool-full"),
    (op(AT + "FATAL:  pooler is shutting down"), "pgbouncer:shutting-down"),
    (pg_errors.lookup("08P01")("database removed"), "pgbouncer:shutting-down"),
    (pg_errors.lookup("08P01")("client_idle_timeout"), "pgbouncer:client-timeout"),
    # pgbouncer passes the server's login errors on with 08P01: the text decides
    (
        pg_errors.lookup("08P01")('database "nosuchdb" does not exist'),
        "pg:database-missing",
    ),
    (pg_errors.lookup("08P01")("the database system is starting up"), "pg:starting-up"),
    # what no rule knows
    (op(AT + "FATAL:  Ein Text, den kein Katalog kennt"), "pg:unknown"),
    (op(AT + "FATAL:  ?????? ?? ??????"), "pg:unknown"),
    (
        psycopg.ProgrammingError("the query has 1 placeholder but 2 parameters were passed"),
        "pg:client-error",
    ),
    (psycopg.InterfaceError("the connection is closed"), "pg:client-error"),
    (ConnectionRefusedError(111, "Connection refused"), "os-error:ConnectionRefusedError"),
    (ValueError("nope"), "not-a-psycopg-error:ValueError"),
]

TRANSIENT_OUTSIDE_TABLE = {"os-error:ConnectionRefusedError"}


@pytest.mark.parametrize(("exc", "rule"), CASES, ids=[f"{r}-{i}" for i, (_, r) in enumerate(CASES)])
def test_classify(exc: BaseException, rule: str) -> None:
    """Each captured error gets the expected rule, and its verdict matches the table."""
    verdict = classify(exc)
    assert verdict.rule == rule
    table = {r.name: r.transient for r in (*RULES, UNKNOWN)}
    expected = table.get(rule, rule in TRANSIENT_OUTSIDE_TABLE)
    assert verdict.transient is expected
    assert is_transient(exc) is expected


def test_every_rule_has_a_sample() -> None:
    """Every rule in the table is exercised by at least one captured message above."""
    covered = {rule for _, rule in CASES}
    assert {r.name for r in (*RULES, UNKNOWN)} <= covered


def test_rule_names_are_unique_and_namespaced() -> None:
    """Rule names are unique, start with pg: (pgbouncer: for pgbouncer's), lower case and dashes."""
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"pg:[a-z-]+", r.name) for r in POSTGRES_RULES)
    assert all(re.fullmatch(r"pgbouncer:[a-z-]+", r.name) for r in PGBOUNCER_RULES)
    assert set(RULES) == {*POSTGRES_RULES, *PGBOUNCER_RULES}


def test_phrases_do_not_cross_verdicts() -> None:
    """No permanent phrase occurs in a transient sample and vice versa (order cannot hide bugs)."""
    from resilient_connect._postgres._rules import matches

    for exc, rule in CASES:
        judged_by_text = isinstance(exc, psycopg.OperationalError) and not exc.sqlstate
        if not judged_by_text or "Multiple connection attempts" in str(exc):
            continue
        expected = classify(exc).transient
        for other in RULES:
            if other.transient != expected:
                assert not matches(other, str(exc)), (other.name, rule)


def test_phraseless_rule_matches_nothing() -> None:
    """The fallback rule has no phrases and so never matches a message by itself."""
    from resilient_connect._postgres._rules import matches

    assert not matches(UNKNOWN, "the database system is starting up")


def _docs_table(name: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"<!-- {name}:start -->\n") + len(f"<!-- {name}:start -->\n")
    return text[start : text.index(f"<!-- {name}:end -->")]


def test_docs_table_matches_code() -> None:
    """docs/psycopg.md shows exactly the tables the code uses (PostgreSQL and pgbouncer)."""
    assert _docs_table("rules-table") == rules_markdown()
    assert _docs_table("pgbouncer-table") == rules_markdown(PGBOUNCER_RULES, fallback=False)


def test_real_errors_from_psycopg(free_port: int) -> None:
    """Errors psycopg raises itself (refused, unparsable conninfo) classify as expected."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host="127.0.0.1", port=free_port, connect_timeout=2)
    assert classify(refused.value).rule == "pg:refused"
    with pytest.raises(psycopg.ProgrammingError) as bogus:
        psycopg.connect("host=127.0.0.1 bogus_option=1")
    assert classify(bogus.value).rule == "pg:bad-conninfo"
    with pytest.raises(psycopg.OperationalError) as port:
        psycopg.connect("host=127.0.0.1 port=notaport")
    assert classify(port.value).rule == "pg:bad-conninfo"


def test_default_classifier_routes_psycopg_errors_here() -> None:
    """The core's default classifier gives psycopg errors this module's verdict."""
    from resilient_connect._classify import default_classifier

    exc = op(AT + "FATAL:  the database system is starting up")
    assert default_classifier(exc) == classify(exc)


# --------------------------------------------------------------------------- mechanics


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)


def test_refused_retries_until_deadline(free_port: int) -> None:
    """A refused port is retried (rule pg:refused) until the virtual deadline, then gives up."""
    hooks = Recorder()
    with instant_waits() as waits, pytest.raises(RetryExhausted) as info:
        connect_with_retry(
            host="127.0.0.1", port=free_port, policy=Backoff(timeout=30), hooks=[hooks]
        )
    assert info.value.reason == "deadline"
    assert info.value.attempts > 3
    assert waits.total <= 30
    assert {e.rule for e in hooks.events if isinstance(e, RetryScheduled)} == {"pg:refused"}


async def test_async_refused_retries_until_deadline(free_port: int) -> None:
    """The async twin retries a refused port the same way."""
    hooks = Recorder()
    with instant_waits(), pytest.raises(RetryExhausted) as info:
        await aconnect_with_retry(
            f"host=127.0.0.1 port={free_port}", policy=Backoff(timeout=30), hooks=[hooks]
        )
    assert info.value.attempts > 3
    assert isinstance(info.value.last_exception, psycopg.OperationalError)


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://app:S3cr3t-PW-7f1c%zz@127.0.0.1/app",
        "postgresql://app:S3cr3t-PW-7f1c x@127.0.0.1/app",
        "postgresql://app:S3cr3t-PW-7f1c@[::1/app",
    ],
)
def test_unparsable_url_error_hides_password(conninfo: str) -> None:
    """libpq quotes a malformed URL in its error; the error raised has the password masked."""
    hooks = Recorder()
    with pytest.raises(psycopg.ProgrammingError) as info:
        connect_with_retry(conninfo, hooks=[hooks])
    assert "S3cr3t" not in str(info.value)
    assert "***" in str(info.value)
    [event] = hooks.events
    assert isinstance(event, NotRetried)
    assert event.rule == "pg:bad-conninfo"
    assert "S3cr3t" not in event.cause + event.target


async def test_async_unparsable_conninfo_fails_at_once() -> None:
    """The async twin raises the (unchanged, secret-free) parse error without retrying."""
    with pytest.raises(psycopg.ProgrammingError, match="bogus_option"):
        await aconnect_with_retry("host=127.0.0.1 bogus_option=1", hooks=())


@pytest.mark.parametrize(
    ("conninfo", "kwargs", "env", "left", "expected"),
    [
        ("host=a", {}, None, 100.0, DEFAULT_CONNECT_TIMEOUT),
        ("host=a", {}, None, 3.2, 4),
        ("host=a", {}, None, 0.01, 2),
        ("host=a connect_timeout=3", {}, None, 100.0, 3),
        ("host=a connect_timeout=30", {}, None, 5.0, 5),
        ("host=a connect_timeout=30", {"connect_timeout": 4}, None, 100.0, 4),
        ("host=a", {}, "7", 100.0, 7),
        ("host=a connect_timeout=0", {}, None, 100.0, DEFAULT_CONNECT_TIMEOUT),
        ("host=a,b,c", {}, None, 9.0, 3),
        ("postgresql://h1,h2/db", {"connect_timeout": 2}, None, 100.0, 2),
        ("host=a", {}, None, None, DEFAULT_CONNECT_TIMEOUT),
        ("host=a,b connect_timeout=30", {}, None, None, 30),
    ],
)
def test_connect_timeout_fits_the_time_left(
    monkeypatch: pytest.MonkeyPatch,
    conninfo: str,
    kwargs: dict[str, Any],
    env: str | None,
    left: float | None,
    expected: int,
) -> None:
    """connect_timeout given to psycopg: the user's (or 10 s), shared by hosts, within time left,
    in libpq's whole seconds (rounded up, at least 2)."""
    if env is None:
        monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("PGCONNECT_TIMEOUT", env)
    call = _Call(conninfo, dict(kwargs, autocommit=True))
    now = 100.0
    attempt = Attempt(1, None if left is None else now + left, lambda: now)
    bounded, worst = call._bounded_kwargs(attempt)
    assert bounded["connect_timeout"] == expected
    assert worst == expected * call.hosts * 2
    assert bounded["autocommit"] is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("5", 5), (7, 7), ("2.9", 2), ("-1", None), ("x", None)],
)
def test_user_timeout_parsing(
    monkeypatch: pytest.MonkeyPatch, value: object, expected: int | None
) -> None:
    """connect_timeout values psycopg would ignore (0, negative, junk) mean 'not set'."""
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert _user_timeout(value) == expected


@pytest.mark.parametrize(
    ("conninfo", "kwargs", "expected"),
    [
        ("", {}, "postgresql (libpq defaults)"),
        ("postgresql://app:pw@db/app", {}, "postgresql://app:pw@db/app"),
        (
            "",
            {"host": "db", "port": 5432, "password": "pw", "user": "app"},
            "host=db port=5432 user=app",
        ),
        ("dbname=app", {"host": "db", "autocommit": True}, "dbname=app (host=db)"),
        ("", {"dbname": "postgresql://u:pw@h/db", "host": "h"}, "host=h"),
    ],
)
def test_target_never_adds_a_password(conninfo: str, kwargs: dict[str, Any], expected: str) -> None:
    """The log target is the conninfo plus host/port/dbname/user keywords, never password=."""
    assert _target(conninfo, kwargs) == expected


def test_password_keyword_is_a_secret() -> None:
    """password= and sslpassword= keywords are scrubbed from causes by the engine."""
    call = _Call("", {"host": "h", "password": "kw-S3cret", "sslpassword": "key-S3cret"})
    assert set(call.secrets) == {"kw-S3cret", "key-S3cret"}
    assert call.retrier(None, ()).secrets == call.secrets


def test_blackhole_bounded_by_short_deadline() -> None:
    """An attempt that does not answer is cut at the deadline, even below libpq's 2 s minimum."""
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        start = time.monotonic()
        with pytest.raises(RetryExhausted) as info:
            connect_with_retry(
                host="127.0.0.1",
                port=listener.getsockname()[1],
                policy=Backoff(timeout=0.6),
                hooks=(),
            )
        elapsed = time.monotonic() - start
    finally:
        listener.close()
    assert isinstance(info.value.last_exception, pg_errors.ConnectionTimeout)
    assert classify(info.value.last_exception).rule == "pg:timeout"
    assert 0.5 <= elapsed < 1.1
