"""Driver x situation -> verdict, attempts, time, against real servers on loopback.

Every PostgreSQL entry point a user picks (psycopg sync and async, SQLAlchemy
with psycopg, psycopg2 and asyncpg, psycopg_pool) meets the same situations:
the server down then up, a wrong password, an unknown database, a server
starting up (57P03), too many connections (53300), pgbouncer in front (wrong
password, unknown database, server down, paused) and a server speaking German
or French. Each cell prints what the call ended in, how many attempts it made
and how long it took, under ``Backoff(timeout=5)`` (one second of outage for
the "then up" cases).

Run from the project root: ``python benchmarks/driver_matrix.py [SITUATION...]``
(``--list`` shows the names). Uses the test harness (``tests/harness``), so it
needs what ``.ci/install-servers`` installs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import resilient_connect as rc
from harness import PostgresServer
from harness.pgbouncer import PgBouncer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import sqlalchemy as rc_sqlalchemy

POLICY = rc.Backoff(timeout=5.0)
OUTAGE = 1.0


@dataclass
class Tally:
    """Collects the events of one call: how many attempts, which rule last."""

    attempts: int = 1
    rule: str = ""
    events: list[rc.Event] = field(default_factory=list)

    def __call__(self, event: rc.Event) -> None:
        self.events.append(event)
        self.attempts = max(self.attempts, event.attempt)
        rule = getattr(event, "rule", "")
        if rule:
            self.rule = rule


# ---------------------------------------------------------------- drivers
def _psycopg(url: str, conninfo: str, tally: Tally) -> None:
    rc_psycopg.connect_with_retry(conninfo, policy=POLICY, hooks=[tally]).close()


def _apsycopg(url: str, conninfo: str, tally: Tally) -> None:
    async def run() -> None:
        conn = await rc_psycopg.aconnect_with_retry(conninfo, policy=POLICY, hooks=[tally])
        await conn.close()

    asyncio.run(run())


def _sa(driver: str) -> Callable[[str, str, Tally], None]:
    def run(url: str, conninfo: str, tally: Tally) -> None:
        engine = rc_sqlalchemy.create_engine(
            url.replace("postgresql://", f"postgresql+{driver}://"), retry=POLICY, hooks=[tally]
        )
        engine.dispose()

    return run


def _asa(driver: str) -> Callable[[str, str, Tally], None]:
    def run(url: str, conninfo: str, tally: Tally) -> None:
        async def main() -> None:
            engine = await rc_sqlalchemy.create_async_engine(
                url.replace("postgresql://", f"postgresql+{driver}://"),
                retry=POLICY,
                hooks=[tally],
            )
            await engine.dispose()

        asyncio.run(main())

    return run


def _plain_pool(url: str, conninfo: str, tally: Tally) -> None:
    import psycopg_pool

    with psycopg_pool.ConnectionPool(conninfo, min_size=1, open=False) as pool:
        pool.open(wait=True, timeout=POLICY.timeout or 5.0)


def _pool(url: str, conninfo: str, tally: Tally) -> None:
    create_pool = getattr(rc_psycopg, "create_pool", None)
    if create_pool is None:
        raise NotImplementedError("no create_pool")
    create_pool(conninfo, policy=POLICY, hooks=[tally], min_size=1).close()


DRIVERS: dict[str, Callable[[str, str, Tally], None]] = {
    "psycopg": _psycopg,
    "psycopg async": _apsycopg,
    "SA psycopg": _sa("psycopg"),
    "SA psycopg async": _asa("psycopg"),
    "SA psycopg2": _sa("psycopg2"),
    "SA asyncpg async": _asa("asyncpg"),
    "psycopg_pool plain": _plain_pool,
    "create_pool": _pool,
}


# ---------------------------------------------------------------- situations
@contextlib.contextmanager
def later(action: Callable[[], object], after: float = OUTAGE) -> Iterator[None]:
    """Run ``action`` on a thread ``after`` seconds from now; join it on exit."""
    thread = threading.Timer(after, action)
    thread.start()
    try:
        yield
    finally:
        thread.cancel()
        thread.join()


Situation = Callable[[], "contextlib.AbstractContextManager[tuple[str, str]]"]


@contextlib.contextmanager
def down_then_up() -> Iterator[tuple[str, str]]:
    with PostgresServer() as pg:
        pg.stop()
        with later(pg.start):
            yield pg.url, pg.conninfo


@contextlib.contextmanager
def wrong_password() -> Iterator[tuple[str, str]]:
    pg = shared_pg()
    yield pg.url_for(password="wrong"), pg.conninfo_for(password="wrong")


@contextlib.contextmanager
def unknown_database() -> Iterator[tuple[str, str]]:
    pg = shared_pg()
    yield pg.url_for(dbname="nosuchdb"), pg.conninfo_for(dbname="nosuchdb")


@contextlib.contextmanager
def starting_up() -> Iterator[tuple[str, str]]:
    """57P03 for a second: a standby with hot_standby=off, then promoted by a restart."""
    with PostgresServer() as pg:
        pg.start_as_standby()
        with later(pg.end_standby):
            yield pg.url, pg.conninfo


@contextlib.contextmanager
def too_many_connections() -> Iterator[tuple[str, str]]:
    """53300 for a second: every slot taken by the app role, then released."""
    import psycopg

    pg = PostgresServer(extra_conf={"max_connections": 4, "superuser_reserved_connections": 1})
    with pg:
        held = [psycopg.connect(pg.conninfo) for _ in range(3)]

        def release() -> None:
            for conn in held:
                conn.close()

        with later(release):
            yield pg.url, pg.conninfo


@contextlib.contextmanager
def bouncer(**kwargs: Any) -> Iterator[PgBouncer]:
    b = PgBouncer(shared_pg(), **kwargs)
    try:
        b.start()
        yield b
    finally:
        b.cleanup()


@contextlib.contextmanager
def bouncer_wrong_password() -> Iterator[tuple[str, str]]:
    with bouncer() as b:
        yield b.url_for(password="wrong"), b.conninfo_for(password="wrong")


@contextlib.contextmanager
def bouncer_unknown_user() -> Iterator[tuple[str, str]]:
    with bouncer() as b:
        yield b.url_for(user="nosuchuser"), b.conninfo_for(user="nosuchuser")


@contextlib.contextmanager
def bouncer_unknown_database() -> Iterator[tuple[str, str]]:
    with bouncer() as b:
        yield b.url_for(dbname="nosuchdb"), b.conninfo_for(dbname="nosuchdb")


@contextlib.contextmanager
def bouncer_server_down_then_up() -> Iterator[tuple[str, str]]:
    with PostgresServer() as pg:
        pg.stop()
        b = PgBouncer(pg)
        try:
            b.start()
            with later(pg.start):
                yield b.url, b.conninfo
        finally:
            b.cleanup()


@contextlib.contextmanager
def bouncer_paused() -> Iterator[tuple[str, str]]:
    with bouncer() as b:
        b.pause()
        with later(b.resume):
            yield b.url, b.conninfo


@contextlib.contextmanager
def bouncer_pool_full() -> Iterator[tuple[str, str]]:
    """max_client_conn reached for a second: pgbouncer's own 'no more connections allowed'."""
    import psycopg

    with bouncer(settings={"max_client_conn": 2}) as b:
        held = [psycopg.connect(b.conninfo) for _ in range(2)]

        def release() -> None:
            for conn in held:
                conn.close()

        with later(release):
            yield b.url, b.conninfo


def _localised(language: str, **parts: str) -> Callable[[], Any]:
    @contextlib.contextmanager
    def situation() -> Iterator[tuple[str, str]]:
        with PostgresServer(lc_messages=language) as pg:
            yield pg.url_for(**parts), pg.conninfo_for(**parts)

    return situation


SITUATIONS: dict[str, Situation] = {
    "down then up": down_then_up,
    "wrong password": wrong_password,
    "unknown database": unknown_database,
    "starting up (57P03)": starting_up,
    "too many connections (53300)": too_many_connections,
    "pgbouncer wrong password": bouncer_wrong_password,
    "pgbouncer unknown user": bouncer_unknown_user,
    "pgbouncer unknown database": bouncer_unknown_database,
    "pgbouncer server down then up": bouncer_server_down_then_up,
    "pgbouncer paused 1 s": bouncer_paused,
    "pgbouncer max_client_conn": bouncer_pool_full,
    "German wrong password": _localised("de_DE.UTF-8", password="wrong"),
    "German unknown database": _localised("de_DE.UTF-8", dbname="nosuchdb"),
    "French wrong password": _localised("fr_FR.UTF-8", password="wrong"),
}

_shared: list[PostgresServer] = []


def shared_pg() -> PostgresServer:
    if not _shared:
        server = PostgresServer()
        server.start()
        _shared.append(server)
    return _shared[0]


def cell(driver: Callable[[str, str, Tally], None], situation: Situation) -> str:
    tally = Tally()
    with situation() as (url, conninfo):
        start = time.perf_counter()
        try:
            driver(url, conninfo, tally)
            outcome = "ok"
        except NotImplementedError:
            return "n/a"
        except rc.RetryExhausted:
            outcome = "gave up"
        except Exception as exc:
            outcome = f"raised {type(exc).__name__}"
        elapsed = time.perf_counter() - start
    rule = f" [{tally.rule}]" if tally.rule else ""
    return f"{outcome}, {tally.attempts} att, {elapsed:.2f} s{rule}"


def main(argv: list[str]) -> int:
    if "--list" in argv:
        print("\n".join(SITUATIONS))
        print("drivers:", ", ".join(DRIVERS))
        return 0
    wanted_drivers = [a[len("--driver=") :] for a in argv if a.startswith("--driver=")]
    names = [a for a in argv if not a.startswith("--")] or list(SITUATIONS)
    drivers = {k: v for k, v in DRIVERS.items() if not wanted_drivers or k in wanted_drivers}
    print("| situation | driver | outcome, attempts, time [last rule] |")
    print("| --- | --- | --- |")
    try:
        for name in names:
            for label, driver in drivers.items():
                print(f"| {name} | {label} | {cell(driver, SITUATIONS[name])} |", flush=True)
    finally:
        for server in _shared:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
