"""The PostgreSQL classification table: which connection errors are worth another attempt.

psycopg 3 reports every connection-time failure as a plain ``OperationalError``
with ``sqlstate=None``, even when the server sent a FATAL with a SQLSTATE: the
code is not part of what libpq keeps. Errors raised later, in a session, do
carry one (``AdminShutdown`` is 57P01). So each rule has two keys:

* ``sqlstates``: SQLSTATEs (five characters) or classes (two) the rule covers,
  used whenever the error carries one. This works in every server language.
* ``phrases``: English message fragments, matched case-insensitively anywhere
  in ``str(exc)`` when the error has no SQLSTATE. ``…`` stands for any text on
  one line (a role or database name, say); any run of white space matches any
  other (translations wrap long lines).

The server translates its messages (``lc_messages``), so each rule also
matches the translations of its messages that PostgreSQL ships, from the data
module :mod:`._messages` that ``scripts/gen_pg_messages.py`` generates from the
server's gettext catalogues. pgbouncer's own errors (:data:`PGBOUNCER_RULES`)
come with SQLSTATE 08P01 ("protocol violation") whatever they mean, before
pgbouncer 1.21, so for that code the message is judged first.

This module holds the data and the matching, for every PostgreSQL driver:
:mod:`resilient_connect.psycopg` re-exports :data:`RULES` and wraps
:func:`judge` in its public ``classify``; :mod:`resilient_connect.sqlalchemy`
judges psycopg2 and asyncpg errors with :func:`judge` too.
The documentation renders the same table (a unit test keeps them in step).
"""

from __future__ import annotations

import dataclasses
import re

from .._classify import Verdict
from ._messages import TRANSLATIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._classify import Cost


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One row of the classification table.

    Attributes:
        name: stable rule name shown in logs and events (``"pg:starting-up"``).
        transient: ``True`` if another attempt may succeed.
        sqlstates: SQLSTATEs or two-character classes this rule covers.
        phrases: English message fragments; ``…`` matches any text on one line.
        meaning: one line for people: what happened, and why the verdict.
        cost: what such a failure cost the server (``"free"``: the kernel,
            a router or the resolver answered; ``"server"``: a server process
            did), which paces the next attempt.
    """

    name: str
    transient: bool
    sqlstates: tuple[str, ...]
    phrases: tuple[str, ...]
    meaning: str
    cost: Cost = "unknown"

    @property
    def verdict(self) -> Verdict:
        """The :class:`~resilient_connect._classify.Verdict` this rule gives."""
        return Verdict(transient=self.transient, rule=self.name, cost=self.cost)


RULES: tuple[Rule, ...] = (
    # --- permanent: another attempt cannot succeed until someone changes something ---
    Rule(
        name="pg:auth-failed",
        transient=False,
        sqlstates=("28P01",),
        phrases=("password authentication failed", "authentication failed for user"),
        meaning="wrong password, or a user that does not exist (the server says the same)",
    ),
    Rule(
        name="pg:auth-rejected",
        transient=False,
        sqlstates=("28000",),
        phrases=(
            "no pg_hba.conf entry",
            "pg_hba.conf rejects connection",
            'role "…" is not permitted to log in',
            'role "…" does not exist',
        ),
        meaning="pg_hba.conf has no entry for this client, or the role may not log in",
    ),
    Rule(
        name="pg:no-password",
        transient=False,
        sqlstates=(),
        phrases=("no password supplied",),
        meaning="the server asks for a password and none was given",
    ),
    Rule(
        name="pg:database-missing",
        transient=False,
        sqlstates=("3D000",),
        phrases=('database "…" does not exist',),
        meaning="the database does not exist",
    ),
    Rule(
        name="pg:no-connect-privilege",
        transient=False,
        sqlstates=("42501",),
        phrases=("permission denied for database",),
        meaning="the role lacks the CONNECT privilege on the database",
    ),
    Rule(
        name="pg:auth-method",
        transient=False,
        sqlstates=(),
        phrases=(
            "authentication method",
            "channel binding",
            "authentication not supported",
            "invalid authentication request",
        ),
        meaning="client and server do not agree on how to authenticate",
    ),
    Rule(
        name="pg:tls-config",
        transient=False,
        sqlstates=(),
        phrases=(
            "SSL was required",
            "but it was required",
            "certificate verify failed",
            "certificate file",
            "does not match host name",
        ),
        meaning="TLS or GSSAPI settings that the server or the certificates cannot meet",
    ),
    Rule(
        name="pg:bad-conninfo",
        transient=False,
        sqlstates=(),
        phrases=(
            "invalid connection option",
            'missing "=" after',
            "unterminated quoted string",
            "invalid percent-encoded token",
            "forbidden value %00",
            "unexpected spaces found",
            "invalid URI",
            "end of string reached when looking for matching",
            "missing key/value separator",
            "invalid integer value",
            "invalid port number",
            "could not match … to …",
            "invalid … value:",
            "definition of service",
        ),
        meaning="the conninfo string or keyword arguments cannot be parsed",
    ),
    # --- transient: the server is not there yet, busy, or went away ---
    Rule(
        name="pg:refused",
        transient=True,
        sqlstates=(),
        phrases=("Connection refused",),
        meaning="nothing listens on the port yet (server down, starting or restarting)",
        cost="free",
    ),
    Rule(
        name="pg:unreachable",
        transient=True,
        sqlstates=(),
        phrases=("No route to host", "Network is unreachable", "Host is unreachable"),
        meaning="the network path is not there yet (interfaces and routes come up late)",
        cost="free",
    ),
    Rule(
        name="pg:timeout",
        transient=True,
        sqlstates=(),
        phrases=("timeout expired", "Connection timed out"),
        meaning="no answer in time (psycopg ConnectionTimeout, or the retry deadline)",
    ),
    Rule(
        name="pg:dns",
        transient=True,
        sqlstates=(),
        phrases=(
            "failed to resolve host",
            "could not translate host name",
            "Temporary failure in name resolution",
            "Name or service not known",
        ),
        meaning="the host name does not resolve yet (container DNS registers late; a typo "
        "fails only at the deadline)",
        cost="free",
    ),
    Rule(
        name="pg:starting-up",
        transient=True,
        sqlstates=("57P03",),
        phrases=("the database system is starting up",),
        meaning="the server is starting",
        cost="server",
    ),
    Rule(
        name="pg:recovering",
        transient=True,
        sqlstates=("57P03",),
        phrases=(
            "the database system is not yet accepting connections",
            "the database system is in recovery mode",
        ),
        meaning="crash recovery or WAL replay is running (can last as long as the replay)",
        cost="server",
    ),
    Rule(
        name="pg:standby",
        transient=True,
        sqlstates=("57P03",),
        phrases=("the database system is not accepting connections",),
        meaning="a standby with hot_standby=off; ends only on promotion, so the deadline decides",
        cost="server",
    ),
    Rule(
        name="pg:shutting-down",
        transient=True,
        sqlstates=("57P03",),
        phrases=("the database system is shutting down",),
        meaning="the server is stopping (a restart usually follows)",
        cost="server",
    ),
    Rule(
        name="pg:too-many-connections",
        transient=True,
        sqlstates=("53300",),
        phrases=(
            "too many clients already",
            "connection slots are reserved",
            "too many connections for",
        ),
        meaning="every connection slot is taken; one frees when another client disconnects",
        cost="server",
    ),
    Rule(
        name="pg:out-of-resources",
        transient=True,
        sqlstates=("53000", "53200"),
        phrases=("out of memory", "could not fork new process"),
        meaning="the server could not start a backend for now",
        cost="server",
    ),
    Rule(
        name="pg:admin-shutdown",
        transient=True,
        sqlstates=("57P01",),
        phrases=("terminating connection due to administrator command",),
        meaning="the session was ended by a shutdown or pg_terminate_backend(); reconnect",
    ),
    Rule(
        name="pg:crash-shutdown",
        transient=True,
        sqlstates=("57P02",),
        phrases=("terminating connection because of crash of another server process",),
        meaning="another backend crashed and the server is resetting; reconnect",
    ),
    Rule(
        name="pg:session-timeout",
        transient=True,
        sqlstates=("57P05", "25P03"),
        phrases=(
            "terminating connection due to idle-session timeout",
            "terminating connection due to idle-in-transaction timeout",
        ),
        meaning="the server closed an idle session; a new one will do",
    ),
    Rule(
        name="pg:session-attrs",
        transient=True,
        sqlstates=(),
        phrases=(
            "session is read-only",
            "session is not read-only",
            "server is in hot standby mode",
            "server is not in hot standby mode",
        ),
        meaning="no host matches target_session_attrs yet (a failover may be under way)",
    ),
    Rule(
        name="pg:connection-lost",
        transient=True,
        sqlstates=("08",),
        phrases=(
            "server closed the connection unexpectedly",
            "could not receive data from server",
            "could not send data to server",
            "could not send startup packet",
            "Connection reset by peer",
            "Broken pipe",
            "SSL SYSCALL error",
            "SSL connection has been closed unexpectedly",
            "the connection is lost",
            "the connection is closed",
            "connection was closed in the middle of operation",
            "unexpected connection_lost() call",
        ),
        meaning="the connection dropped (server restarted or killed, network cut); reconnect",
    ),
)
"""Every rule, permanent ones first; see :func:`judge` for the order of evaluation."""

PGBOUNCER_RULES: tuple[Rule, ...] = (
    # pgbouncer's own texts (src/client.c, objects.c, janitor.c of pgbouncer 1.18 to 1.25).
    # Up to 1.20 every one comes with SQLSTATE 08P01; the message decides (see by_sqlstate).
    Rule(
        name="pgbouncer:auth-failed",
        transient=False,
        sqlstates=(),
        phrases=(
            "SASL authentication failed",
            '"trust" authentication failed',
            "certificate authentication failed",
            "PAM authentication failed",
            "LDAP authentication failed",
            "client selected an invalid SASL authentication mechanism",
            "empty password returned by client",
            "login rejected",
            "no such user",
        ),
        meaning="pgbouncer refused the login: wrong password, unknown user (SCRAM says the "
        "same for both) or an auth_hba rule",
    ),
    Rule(
        name="pgbouncer:no-such-database",
        transient=False,
        sqlstates=(),
        phrases=("no such database: …",),
        meaning="pgbouncer has no [databases] entry for this name (and no * fallback)",
    ),
    Rule(
        name="pgbouncer:startup-refused",
        transient=False,
        sqlstates=(),
        phrases=(
            "unsupported startup parameter",
            "unsupported options startup parameter",
            "no username supplied",
            "username too long",
            "password too long",
            "old V2 protocol not supported",
            "SSL required",
            "bouncer config error",
            "server login failed: wrong password type",
            "server login failed: failed to verify server signature",
            "server login failed: invalid server signature",
            "server login failed: none of the server's SASL authentication mechanisms",
        ),
        meaning="pgbouncer cannot serve this client as configured (a startup parameter it "
        "does not track, TLS required, its own server credentials)",
    ),
    Rule(
        name="pgbouncer:server-login-retry",
        transient=True,
        sqlstates=(),
        phrases=(
            "server login has been failing",
            "client_login_timeout (server down)",
        ),
        meaning="pgbouncer cannot log in to the server (down or restarting) and fails "
        "clients fast until server_login_retry has passed",
    ),
    Rule(
        name="pgbouncer:pool-full",
        transient=True,
        sqlstates=(),
        phrases=(
            "no more connections allowed (max_client_conn)",
            "client connections exceeded (max_db_client_connections)",
            "client connections exceeded (max_user_client_connections)",
            "bouncer resources exhaustion",
            "no memory for pool",
            "query_wait_timeout",
        ),
        meaning="pgbouncer's client limit is reached, or no server connection came free "
        "within query_wait_timeout (pool saturated or paused)",
    ),
    Rule(
        name="pgbouncer:shutting-down",
        transient=True,
        sqlstates=(),
        phrases=(
            "pooler is shutting down",
            "server shutting down",
            "database removed",
            "admin forced disconnect",
            'database "…" is disabled',
            "pause failed",
            "suspend_timeout",
        ),
        meaning="pgbouncer is stopping, or an admin ran KILL / DISABLE / SUSPEND; a restart or "
        "RESUME / ENABLE usually follows",
    ),
    Rule(
        name="pgbouncer:client-timeout",
        transient=True,
        sqlstates=(),
        phrases=(
            "client_login_timeout",
            "client_idle_timeout",
            "query_timeout",
            "idle transaction timeout",
            "idle_transaction_timeout",
        ),
        meaning="pgbouncer closed a session that waited or idled too long; a new one will do",
    ),
)
"""pgbouncer's own error texts; part of :data:`RULES` (after the PostgreSQL rules)."""

POSTGRES_RULES = RULES
"""The PostgreSQL server's and libpq's rules (the first table in the docs)."""
RULES = (*POSTGRES_RULES, *PGBOUNCER_RULES)

MESSAGE_FIRST_SQLSTATES = frozenset({"08P01"})
"""SQLSTATEs whose message says more than the code: pgbouncer (before 1.21) sends 08P01 with
every error of its own, and with the server's errors it passes on at login."""

UNKNOWN = Rule(
    name="pg:unknown",
    transient=True,
    sqlstates=(),
    phrases=(),
    meaning="an OperationalError no rule knows (a wording or translation the table lacks, "
    "a proxy's own text); retried until the deadline",
)
"""What an ``OperationalError`` without SQLSTATE that no rule matches gets."""

OTHER_SQLSTATE = "pg:sqlstate-"
"""Prefix of the rule name for SQLSTATEs outside the table: ``pg:sqlstate-42601``, permanent."""


def _compile(phrases: Sequence[str]) -> re.Pattern[str] | None:
    if not phrases:
        return None
    return re.compile("|".join(_pattern(p) for p in phrases), re.IGNORECASE)


def _pattern(phrase: str) -> str:
    """One phrase as a regular expression: ``…`` is any text on one line, spaces any spaces."""
    words = (
        r"[^\n]*?".join(re.escape(part) for part in word.split("…")) for word in phrase.split()
    )
    return r"\s+".join(words)


def phrases_of(rule: Rule) -> tuple[str, ...]:
    """``rule``'s English phrases and the translations of its messages (see :mod:`._messages`)."""
    return (*rule.phrases, *TRANSLATIONS.get(rule.name, ()))


# Compiled on first use (a rule's phrases are looked at only when an error reaches it):
# compiling every table entry, translations included, at import cost milliseconds.
_PATTERNS: dict[str, re.Pattern[str] | None] = {}
_PERMANENT = tuple(r for r in RULES if not r.transient)
_TRANSIENT = tuple(r for r in RULES if r.transient)


def matches(rule: Rule, message: str) -> bool:
    """Whether ``message`` contains one of ``rule``'s phrases."""
    try:
        pattern = _PATTERNS[rule.name]
    except KeyError:
        pattern = _PATTERNS[rule.name] = _compile(phrases_of(rule))
    return pattern is not None and pattern.search(message) is not None


def by_sqlstate(sqlstate: str, message: str) -> Rule | None:
    """The rule for an error that carries ``sqlstate``, or ``None`` if no rule covers it.

    Several rules may share a SQLSTATE (57P03 has five messages); the one whose
    phrase also matches wins, else the first of them. For the codes in
    :data:`MESSAGE_FIRST_SQLSTATES` a rule matching the message (see
    :func:`by_message`) wins over the code.
    """
    code = sqlstate.upper()
    if code in MESSAGE_FIRST_SQLSTATES:
        by_text = by_message(message)
        if by_text is not None:
            return by_text
    candidates = [r for r in RULES if code in r.sqlstates or code[:2] in r.sqlstates]
    for rule in candidates:
        if matches(rule, message):
            return rule
    return candidates[0] if candidates else None


def by_message(message: str) -> Rule | None:
    """The rule for an error without SQLSTATE, or ``None`` if no phrase matches.

    Permanent rules are tried first, over the whole text. With several hosts,
    psycopg lists every host's failure in one message; if any host refused us
    for good (wrong password, no such database), another attempt will not fix
    it, and failing at once beats waiting out the deadline.
    """
    for rule in _PERMANENT:
        if matches(rule, message):
            return rule
    # Name the transient rule after the headline (the last host's error) when it says enough.
    headline = message.partition(_MULTIPLE)[0]
    for text in (headline, message) if headline != message else (message,):
        for rule in _TRANSIENT:
            if matches(rule, text):
                return rule
    return None


_MULTIPLE = "\nMultiple connection attempts failed."


def judge(sqlstate: str | None, message: str, *, server_error: bool = True) -> Verdict:
    """The verdict for a PostgreSQL error from any driver, given its SQLSTATE and its text.

    An error carrying a SQLSTATE is judged by it (:func:`by_sqlstate`); a
    SQLSTATE outside the table is permanent (``pg:sqlstate-XXXXX``: a working
    server rejected a statement). Without one, by the message
    (:func:`by_message`); an unmatched message is transient (``pg:unknown``)
    when ``server_error`` (the driver's "database not reachable" class, such
    as ``OperationalError``), else permanent (``pg:client-error``: the client
    library refused, a bad argument say) unless a permanent rule names it.
    """
    if sqlstate:
        by_code = by_sqlstate(sqlstate, message)
        if by_code is None:
            return Verdict(transient=False, rule=f"{OTHER_SQLSTATE}{sqlstate}")
        return by_code.verdict
    rule = by_message(message)
    if not server_error:
        if rule is not None and not rule.transient:
            return rule.verdict
        return CLIENT_ERROR
    return (rule or UNKNOWN).verdict


CLIENT_ERROR = Verdict(transient=False, rule="pg:client-error")
"""For an error the client library raised itself that no permanent rule names."""


def rules_markdown(rules: Sequence[Rule] = POSTGRES_RULES, *, fallback: bool = True) -> str:
    """A table as Markdown, as ``docs/psycopg.md`` shows it (a test compares the two).

    By default the PostgreSQL rules and the fallback rule; ``rules_markdown(PGBOUNCER_RULES,
    fallback=False)`` gives the pgbouncer table.
    """
    lines = [
        "| rule | verdict | SQLSTATE | message contains (English) | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule in (*rules, *((UNKNOWN,) if fallback else ())):
        verdict = "transient" if rule.transient else "**permanent**"
        codes = ", ".join(f"`{c}`" if len(c) == 5 else f"`{c}...` (class)" for c in rule.sqlstates)
        phrases = "<br>".join(f"`{p}`" for p in rule.phrases) or "(anything else)"
        lines.append(f"| `{rule.name}` | {verdict} | {codes or '-'} | {phrases} | {rule.meaning} |")
    return "\n".join(lines) + "\n"
