"""Every PostgreSQL driver a user picks, against real servers, pgbouncer and localised servers.

One scenario, parametrised over the entry points (through harness.api): psycopg sync and
async, and SQLAlchemy with psycopg (sync and async), psycopg2 and asyncpg. Each situation of
issue 12 is pinned: the server down then up, a wrong password, an unknown database, starting
up (57P03), too many connections (53300), pgbouncer in front (its own auth and database
errors, server down, PAUSE, max_client_conn) and servers speaking German
(ASCII-transliterated) and French (UTF-8).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from harness import FaultProxy, PostgresServer
from harness.api import Api, PsycopgApi, SqlalchemyApi, open_api
from harness.pgbouncer import PgBouncer
from resilient_connect import (
    Backoff,
    Event,
    NotRetried,
    Recovered,
    RetryExhausted,
    RetryScheduled,
)
from resilient_connect import psycopg as rc_psycopg

pytestmark = pytest.mark.integration

FAST = Backoff(initial=0.05, maximum=0.3, timeout=20.0)
OUTAGE = 0.5


@dataclass
class Tally:
    """The events of one call."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def rules(self) -> set[str]:
        return {rule for e in self.events if (rule := getattr(e, "rule", ""))}

    def recovered(self) -> Recovered | None:
        return next((e for e in self.events if isinstance(e, Recovered)), None)


@dataclass(frozen=True)
class Target:
    url: str
    conninfo: str


def _target(server: PostgresServer | PgBouncer, **parts: str) -> Target:
    return Target(server.url_for(**parts), server.conninfo_for(**parts))


# ---------------------------------------------------------------- the entry points
# driver -> (adapter api, flavour, SQLAlchemy dialect driver or None for psycopg itself)
DRIVERS: dict[str, tuple[type[Api], str, str | None]] = {
    "psycopg": (PsycopgApi, "sync", None),
    "psycopg-async": (PsycopgApi, "async", None),
    "sa-psycopg": (SqlalchemyApi, "sync", "psycopg"),
    "sa-psycopg-async": (SqlalchemyApi, "async", "psycopg"),
    "sa-psycopg2": (SqlalchemyApi, "sync", "psycopg2"),
    "sa-asyncpg": (SqlalchemyApi, "async", "asyncpg"),
}
drivers = pytest.mark.parametrize("driver", list(DRIVERS))


def _connect(driver: str, target: Target, policy: Backoff, tally: Tally) -> None:
    """Connect with retry through ``driver`` (harness.api), then close what was opened."""
    cls, flavour, dialect = DRIVERS[driver]
    with open_api(cls, flavour) as api:
        if isinstance(api, PsycopgApi):
            api.connect(target.conninfo, policy=policy, hooks=[tally])
        else:
            assert isinstance(api, SqlalchemyApi)
            url = target.url.replace("postgresql://", f"postgresql+{dialect}://")
            api.create_engine(url, retry=policy, hooks=[tally])


@contextlib.contextmanager
def later(action: Callable[[], object], after: float = OUTAGE) -> Iterator[None]:
    """Run ``action`` on a thread ``after`` seconds from now (the outage ends); join on exit."""
    timer = threading.Timer(after, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


def _recovers(driver: str, target: Target, policy: Backoff = FAST) -> Tally:
    """Connect through ``driver``; it must succeed after at least one retry."""
    tally = Tally()
    _connect(driver, target, policy, tally)
    recovered = tally.recovered()
    assert recovered is not None, tally.events
    assert recovered.attempt >= 2
    return tally


def _fails_at_once(driver: str, target: Target) -> NotRetried:
    """Connect through ``driver``; it must raise the driver's error after one attempt."""
    tally = Tally()
    start = time.monotonic()
    with pytest.raises(Exception) as raised:  # each driver has its own class
        _connect(driver, target, FAST, tally)
    assert not isinstance(raised.value, RetryExhausted), raised.value
    assert time.monotonic() - start < 5.0
    refused = [e for e in tally.events if isinstance(e, NotRetried)]
    assert len(refused) == 1, tally.events
    assert refused[0].attempt == 1
    return refused[0]


# ---------------------------------------------------------------- shared servers
@pytest.fixture(scope="module")
def bouncer(postgres: PostgresServer) -> Iterator[PgBouncer]:
    """A pgbouncer (SCRAM, no * fallback) in front of the session's server."""
    server = PgBouncer(postgres)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def german() -> Iterator[PostgresServer]:
    """lc_messages German, process locale C: translations arrive transliterated to ASCII."""
    server = PostgresServer(lc_messages="de_DE.UTF-8")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def french() -> Iterator[PostgresServer]:
    """lc_messages French, process locale C.UTF-8: translations arrive in UTF-8."""
    server = PostgresServer(lc_messages="fr_FR.UTF-8", process_locale="C.UTF-8")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


# ---------------------------------------------------------------- permanent: first attempt
PERMANENT = {
    "wrong-password": ("postgres", {"password": "wrong"}, "pg:auth-failed"),
    "unknown-user": ("postgres", {"user": "nosuchuser"}, "pg:auth-failed"),
    "unknown-database": ("postgres", {"dbname": "nosuchdb"}, "pg:database-missing"),
    "bouncer-wrong-password": ("bouncer", {"password": "wrong"}, "pgbouncer:auth-failed"),
    "bouncer-unknown-user": ("bouncer", {"user": "nosuchuser"}, "pgbouncer:auth-failed"),
    "bouncer-unknown-database": (
        "bouncer",
        {"dbname": "nosuchdb"},
        "pgbouncer:no-such-database",
    ),
    "german-wrong-password": ("german", {"password": "wrong"}, "pg:auth-failed"),
    "german-unknown-database": ("german", {"dbname": "nosuchdb"}, "pg:database-missing"),
    "french-wrong-password": ("french", {"password": "wrong"}, "pg:auth-failed"),
    "french-unknown-database": ("french", {"dbname": "nosuchdb"}, "pg:database-missing"),
}


@drivers
@pytest.mark.parametrize("case", list(PERMANENT))
def test_permanent_errors_fail_on_the_first_attempt(
    driver: str, case: str, request: pytest.FixtureRequest
) -> None:
    """A wrong password, unknown user or database fails at once, whoever answers in which
    language, through every driver (issue 12 problems 2, 3 and 5)."""
    fixture, parts, rule = PERMANENT[case]
    server = request.getfixturevalue(fixture)
    refused = _fails_at_once(driver, _target(server, **parts))
    assert refused.rule == rule


def test_localised_servers_really_speak_their_language(
    german: PostgresServer, french: PostgresServer
) -> None:
    """The localised fixtures send translated texts (else the tests above would prove nothing)."""
    with pytest.raises(psycopg.OperationalError, match=r"Passwort-Authentifizierung f\?r"):
        psycopg.connect(german.conninfo_for(password="wrong"))
    with pytest.raises(psycopg.OperationalError, match="la base de données « nosuchdb »"):
        psycopg.connect(french.conninfo_for(dbname="nosuchdb"))


# ---------------------------------------------------------------- transient: wait, then connect
@drivers
def test_down_then_up(driver: str, make_postgres: Callable[..., PostgresServer]) -> None:
    """Nothing listening, then the server starts: every driver waits and connects."""
    server = make_postgres()
    server.stop()
    with later(server.start):
        _recovers(driver, _target(server))


@drivers
def test_starting_up(driver: str, make_postgres: Callable[..., PostgresServer]) -> None:
    """57P03 (a standby with hot_standby=off) until promoted: waited out, asyncpg included
    (issue 12 problem 1)."""
    server = make_postgres()
    server.start_as_standby()
    with later(server.end_standby):
        tally = _recovers(driver, _target(server))
    assert "pg:standby" in tally.rules()


def _every_slot_taken(
    make_postgres: Callable[..., PostgresServer],
) -> tuple[PostgresServer, Callable[[], None]]:
    """A server whose connection slots are all held (the app gets 53300), and a function
    that frees them."""
    server = make_postgres(extra_conf={"max_connections": 4, "superuser_reserved_connections": 1})
    held = [psycopg.connect(server.conninfo) for _ in range(3)]

    def release() -> None:
        for conn in held:
            conn.close()

    return server, release


@drivers
def test_too_many_connections(driver: str, make_postgres: Callable[..., PostgresServer]) -> None:
    """53300 while every slot is taken, until one frees: waited out, asyncpg included."""
    server, release = _every_slot_taken(make_postgres)
    try:
        with later(release):
            tally = _recovers(driver, _target(server))
    finally:
        release()
    assert "pg:too-many-connections" in tally.rules()


@drivers
def test_give_up_names_the_cause_behind_a_last_attempt_cut_at_the_deadline(
    driver: str,
    make_postgres: Callable[..., PostgresServer],
    fault_proxy: Callable[..., FaultProxy],
) -> None:
    """Every slot is taken (53300), then the server stops answering, so the last attempt
    is cut off at the deadline: the message still names the 53300 answer, not only the
    timeout of the attempt that was cut."""
    server, release = _every_slot_taken(make_postgres)
    proxy = fault_proxy(server.address)
    target = Target(server.url_for(port=proxy.port), server.conninfo_for(port=proxy.port))

    @dataclass
    class Blackholing(Tally):
        """After the first failure, the proxy swallows every new connection."""

        def __call__(self, event: Event) -> None:
            super().__call__(event)
            if isinstance(event, RetryScheduled):
                proxy.blackhole()

    tally = Blackholing()
    try:
        with pytest.raises(RetryExhausted) as caught:
            _connect(driver, target, Backoff(timeout=2.0), tally)
    finally:
        release()
    assert caught.value.reason == "deadline"
    assert caught.value.attempts >= 2
    assert "pg:too-many-connections" in tally.rules()
    message = str(caught.value)
    assert "earlier attempts:" in message, message
    earlier = message.split("earlier attempts:", 1)[1]
    # PostgreSQL 15's two texts for 53300: all slots, or only the reserved ones, are left.
    assert "too many clients" in earlier or "connection slots are reserved" in earlier, message


@drivers
def test_bouncer_server_down_then_up(
    driver: str,
    make_postgres: Callable[..., PostgresServer],
    make_pgbouncer: Callable[..., PgBouncer],
) -> None:
    """pgbouncer up, its server down, then up: pgbouncer's own errors (query_wait_timeout,
    server_login_retry) are transient, and the client connects once the server is back."""
    server = make_postgres()
    server.stop()
    bouncer = make_pgbouncer(server, settings={"query_wait_timeout": 1})
    with later(server.start):
        _recovers(driver, _target(bouncer), Backoff(initial=0.05, maximum=0.3, timeout=30.0))


@drivers
def test_bouncer_paused_then_resumed(
    driver: str, postgres: PostgresServer, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    """PAUSE holds new logins, RESUME lets them through: the call waits and succeeds."""
    bouncer = make_pgbouncer(postgres)
    bouncer.pause()
    start = time.monotonic()
    with later(bouncer.resume):
        _connect(driver, _target(bouncer), FAST, Tally())
    assert time.monotonic() - start >= OUTAGE * 0.8


@drivers
def test_bouncer_max_client_conn(
    driver: str, postgres: PostgresServer, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    """pgbouncer's max_client_conn reached: 'no more connections allowed' is transient."""
    bouncer = make_pgbouncer(postgres, settings={"max_client_conn": 2})
    held = [psycopg.connect(bouncer.conninfo) for _ in range(2)]

    def release() -> None:
        for conn in held:
            conn.close()

    try:
        with later(release):
            tally = _recovers(driver, _target(bouncer))
    finally:
        release()
    assert "pgbouncer:pool-full" in tally.rules()


def test_bouncer_kill_ends_sessions_with_a_transient_error(
    postgres: PostgresServer, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    """KILL db ends open sessions with 'database removed', which is transient."""
    bouncer = make_pgbouncer(postgres)
    conn = psycopg.connect(bouncer.conninfo, autocommit=True)
    try:
        conn.execute("SELECT 1")
        bouncer.kill(bouncer.dbname)
        with pytest.raises(psycopg.OperationalError) as raised:
            conn.execute("SELECT 1")
    finally:
        conn.close()
        bouncer.resume(bouncer.dbname)
    verdict = rc_psycopg.classify(raised.value)
    assert verdict.transient, (verdict, str(raised.value))


# ---------------------------------------------------------------- the lead's part (issue 10)
def _paused_with_cached_login(make_pgbouncer: Callable[..., PgBouncer], upstream: Any) -> Any:
    """A pgbouncer that answers logins from its cache but holds every query (PAUSE after one
    successful server login), with query_wait_timeout=8 so a hung call ends by itself."""
    bouncer = make_pgbouncer(upstream, settings={"query_wait_timeout": 8})
    psycopg.connect(bouncer.conninfo).close()
    bouncer.pause()
    return bouncer


@pytest.mark.parametrize(
    "driver",
    [
        "sa-psycopg",
        # Async: the held round trip is abandoned at the deadline, not waited for (cancelling
        # it would wait for psycopg's 5 s cancel confirmation, which pgbouncer never sends).
        "sa-psycopg-async",
    ],
)
def test_engine_behind_paused_bouncer_keeps_its_deadline(
    driver: str, postgres: PostgresServer, make_pgbouncer: Callable[..., PgBouncer]
) -> None:
    """The engine's start-up behind a paused pgbouncer gives up at its deadline, not at
    query_wait_timeout: the first-connect queries and SELECT 1 are cut off too."""
    bouncer = _paused_with_cached_login(make_pgbouncer, postgres)
    start = time.monotonic()
    try:
        with pytest.raises(RetryExhausted) as caught:
            _connect(driver, _target(bouncer), Backoff(timeout=2.0), Tally())
        assert time.monotonic() - start < 2.5
        assert caught.value.reason == "deadline"
        assert "no answer from the database" in caught.value.cause
    finally:
        bouncer.resume()
