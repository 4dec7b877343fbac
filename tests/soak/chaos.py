"""Chaos soak: many workers through the adapters while PostgreSQL and Redis misbehave.

16 threads and 100 asyncio tasks do small operations through the public API only:

* threads: a SQLAlchemy ``Engine`` (``SELECT 1``), a raw psycopg connection from
  ``resilient_connect.psycopg.connect_with_retry`` (reconnecting when it breaks) and a
  redis client from ``resilient_connect.redis.connect_with_retry`` (``INCR``);
* tasks: the asyncio twins (``create_async_engine``, ``aconnect_with_retry``).

Meanwhile a seeded random schedule restarts or crashes the servers, blackholes and
refuses new connections and cuts live ones (through :class:`harness.FaultProxy`, on
loopback only), one fault at a time with a quiet period after each.

Checked, and printed as a summary:

* every operation succeeds or raises a clear, classified error (the adapters judge it
  transient) within its deadline + 1 s; one still running past that is a **hang**;
* after each fault clears, every worker succeeds again within :data:`RECOVERY_BOUND`;
* at the end, descriptors, threads, server sessions (``pg_stat_activity``) and Redis
  clients (``CLIENT LIST``) are back at their baseline.

``scripts/soak --minutes N`` runs it for N minutes; ``tests/soak/test_soak.py`` runs it for
about a minute as part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the harness importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import redis as redis_py
import sqlalchemy

import resilient_connect as rc
from harness import FaultProxy, PostgresServer, RedisServer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis
from resilient_connect import sqlalchemy as rc_sqlalchemy

__all__ = ["RECOVERY_BOUND", "SoakResult", "run_soak"]

#: The deadline of one operation's reconnecting, in seconds (every workload's policy).
OPERATION_DEADLINE = 4.0
#: Redis reads wait up to this long on a socket (redis-py counts it outside our deadline).
REDIS_SOCKET_TIMEOUT = 1.0
#: Slack allowed on top of an operation's deadline before it counts as a hang.
HANG_SLACK = 1.0
#: After a fault clears, every worker must succeed again within this many seconds: an
#: attempt cut at the deadline, one more wait and a fresh connect.
RECOVERY_BOUND = OPERATION_DEADLINE + 2.0
THREADS = 16
TASKS = 100

_POLICY = rc.Backoff(initial=0.05, maximum=0.5, timeout=OPERATION_DEADLINE)
_SELECT_ONE = sqlalchemy.text("SELECT 1")
_FAULTS = (
    "pg-restart",
    "pg-crash",
    "pg-blackhole",
    "pg-refuse",
    "pg-cut",
    "redis-restart",
    "redis-blackhole",
    "redis-refuse",
    "redis-cut",
)


@dataclass
class SoakResult:
    """What one soak run saw."""

    seconds: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    worst_recovery: float = 0.0
    worst_recovery_after: str = ""
    unrecovered: list[str] = field(default_factory=list)
    leaks: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.hangs or self.late or self.unrecovered or self.leaks)

    def summary(self) -> str:
        total = sum(self.operations.values())
        lines = [
            f"soak: {self.seconds:.0f} s, {THREADS} threads + {TASKS} asyncio tasks",
            f"operations: {total} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items()))
            + ")",
            f"faults: {sum(self.faults.values())} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
            + ")",
            f"errors: {sum(self.errors.values())} (by kind)",
            *(f"  {count:6d}  {kind}" for kind, count in self.errors.most_common()),
            f"unexpected errors: {len(self.unexpected)}",
            *(f"  {text}" for text in self.unexpected[:10]),
            f"hangs (past deadline + {HANG_SLACK:g} s): {len(self.hangs) + len(self.late)}",
            *(f"  {text}" for text in (self.hangs + self.late)[:10]),
            (
                f"worst recovery: {self.worst_recovery:.2f} s after "
                f"{self.worst_recovery_after or '-'} (bound {RECOVERY_BOUND:g} s); "
                f"not recovered: {len(self.unrecovered)}"
            ),
            *(f"  {text}" for text in self.unrecovered[:10]),
            "leaks: "
            + (
                ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.leaks.items())
                if self.leaks
                else "none (fds, threads, pg_stat_activity, CLIENT LIST at baseline)"
            ),
            "result: " + ("OK" if self.ok else "FAILED"),
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- workers
class _Board:
    """Shared bookkeeping: successes per worker, operations in flight, errors."""

    def __init__(self, result: SoakResult) -> None:
        self.result = result
        self.lock = threading.Lock()
        self.successes: dict[str, list[float]] = {}
        self.in_flight: dict[str, tuple[float, float]] = {}  # worker -> (start, bound)
        self.reported: set[tuple[str, float]] = set()
        self.stop = threading.Event()
        self.started = time.monotonic()
        #: (time, fault) of every fault applied, for saying when a late operation ran.
        self.applied: list[tuple[float, str]] = []

    def begin(self, worker: str, bound: float) -> float:
        start = time.monotonic()
        self.in_flight[worker] = (start, bound)
        return start

    def end(
        self, worker: str, kind: str, start: float, bound: float, error: Exception | None
    ) -> None:
        now = time.monotonic()
        self.in_flight.pop(worker, None)
        with self.lock:
            self.result.operations[kind] += 1
            if now - start > bound + HANG_SLACK:
                self.result.late.append(
                    f"{worker}: {kind} took {now - start:.2f} s (bound {bound:g} s)"
                    + (f", ended with {type(error).__name__}" if error else "")
                    + self._when(start, now)
                )
            if error is None:
                self.successes.setdefault(worker, []).append(now)
                return
            verdict = _judge(error)
            if verdict is None:
                self.result.unexpected.append(f"{worker}: {kind}: {_describe(error)}")
            else:
                self.result.errors[f"{kind}: {verdict}"] += 1

    def _when(self, start: float, now: float) -> str:
        """When an operation (running from ``start`` to ``now``) started, the load then, the
        last fault applied before it and the first one applied while it ran."""
        text = f", started at +{start - self.started:.1f} s (load {os.getloadavg()[0]:.1f})"
        index = bisect.bisect_right(self.applied, start, key=lambda applied: applied[0])
        if index:
            at, fault = self.applied[index - 1]
            text += f", {start - at:.1f} s after {fault} began"
        if index < len(self.applied) and self.applied[index][0] <= now:
            at, fault = self.applied[index]
            text += f"; {fault} began {at - start:.1f} s into it"
        return text

    def watch(self) -> None:
        """Record operations running past their bound (called periodically)."""
        now = time.monotonic()
        for worker, (start, bound) in list(self.in_flight.items()):
            if now - start > bound + HANG_SLACK + 5 and (worker, start) not in self.reported:
                self.reported.add((worker, start))
                with self.lock:
                    self.result.hangs.append(
                        f"{worker}: still running after {now - start:.1f} s"
                        + self._when(start, now)
                    )


def _describe(error: BaseException) -> str:
    return (
        f"{type(error).__module__}.{type(error).__qualname__}: {' '.join(str(error).split())[:200]}"
    )


def _judge(error: Exception) -> str | None:
    """The error's kind if it is clear and classified transient; ``None`` if it is not."""
    if isinstance(error, rc.RetryExhausted):
        if "gave up after" not in str(error):
            return None
        inner = error.last_exception
        return f"RetryExhausted({error.reason}) <- {type(inner).__name__}"
    if isinstance(error, sqlalchemy.exc.SQLAlchemyError):
        verdict = rc_sqlalchemy.classify(error)
        orig = getattr(error, "orig", None)
        name = type(orig).__name__ if orig is not None else type(error).__name__
    elif isinstance(error, redis_py.RedisError):
        verdict = rc_redis.classify(error)
        name = type(error).__name__
    elif isinstance(error, psycopg.Error):
        verdict = rc_psycopg.classify(error)
        name = type(error).__name__
    else:
        return None
    return f"{name} [{verdict.rule}]" if verdict.transient else None


def _redis_kwargs() -> dict[str, Any]:
    return {
        "policy": _POLICY,
        "reconnect": _POLICY,
        "hooks": (),
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
    }


_REDIS_BOUND = OPERATION_DEADLINE + REDIS_SOCKET_TIMEOUT


def _thread_worker(board: _Board, name: str, kind: str, urls: dict[str, str]) -> None:
    """One thread: repeat ``kind`` operations until told to stop, then close everything."""
    engine: sqlalchemy.Engine | None = None
    conn: psycopg.Connection[Any] | None = None
    client: redis_py.Redis | None = None
    try:
        if kind == "sa-sync":
            engine = rc_sqlalchemy.create_engine(
                urls["sa"], lazy=True, reconnect=_POLICY, hooks=(), pool_size=1, max_overflow=0
            )
        while not board.stop.is_set():
            bound = _REDIS_BOUND if kind == "redis-sync" else OPERATION_DEADLINE
            start = board.begin(name, bound)
            error: Exception | None = None
            try:
                if kind == "sa-sync":
                    assert engine is not None
                    with engine.connect() as connection:
                        connection.execute(_SELECT_ONE)
                elif kind == "psycopg-sync":
                    if conn is None or conn.closed:
                        conn = rc_psycopg.connect_with_retry(
                            urls["pg"], policy=_POLICY, hooks=(), autocommit=True
                        )
                    try:
                        conn.execute("SELECT 1")
                    except psycopg.Error:
                        conn.close()
                        conn = None
                        raise
                else:
                    if client is None:
                        client = rc_redis.connect_with_retry(urls["redis"], **_redis_kwargs())
                    client.incr(f"soak:{name}")
            except Exception as exc:  # judged by the board
                error = exc
            board.end(name, kind, start, bound, error)
            del error
            board.stop.wait(0.01)
    finally:
        if engine is not None:
            engine.dispose()
        if conn is not None:
            conn.close()
        if client is not None:
            client.close()


async def _task_worker(board: _Board, name: str, kind: str, urls: dict[str, str]) -> None:
    """One asyncio task: the twin of :func:`_thread_worker`."""
    engine: Any = None
    conn: psycopg.AsyncConnection[Any] | None = None
    client: Any = None
    try:
        if kind == "sa-async":
            engine = await rc_sqlalchemy.create_async_engine(
                urls["sa"], lazy=True, reconnect=_POLICY, hooks=(), pool_size=1, max_overflow=0
            )
        while not board.stop.is_set():
            bound = _REDIS_BOUND if kind == "redis-async" else OPERATION_DEADLINE
            start = board.begin(name, bound)
            error: Exception | None = None
            try:
                if kind == "sa-async":
                    async with engine.connect() as connection:
                        await connection.execute(_SELECT_ONE)
                elif kind == "psycopg-async":
                    if conn is None or conn.closed:
                        conn = await rc_psycopg.aconnect_with_retry(
                            urls["pg"], policy=_POLICY, hooks=(), autocommit=True
                        )
                    try:
                        await conn.execute("SELECT 1")
                    except psycopg.Error:
                        await conn.close()
                        conn = None
                        raise
                else:
                    if client is None:
                        client = await rc_redis.aconnect_with_retry(
                            urls["redis"], **_redis_kwargs()
                        )
                    await client.incr(f"soak:{name}")
            except Exception as exc:  # judged by the board
                error = exc
            board.end(name, kind, start, bound, error)
            del error
            await asyncio.sleep(0.05)
    finally:
        if engine is not None:
            await engine.dispose()
        if conn is not None:
            await conn.close()
        if client is not None:
            await client.aclose()


def _kinds(count: int, names: tuple[str, ...]) -> list[str]:
    return [names[i % len(names)] for i in range(count)]


# ---------------------------------------------------------------------------- faults
class _Chaos:
    """Applies faults to the servers and proxies; remembers when each one cleared."""

    def __init__(
        self,
        postgres: PostgresServer,
        redis_server: RedisServer,
        pg_proxy: FaultProxy,
        redis_proxy: FaultProxy,
        rng: random.Random,
        applied: list[tuple[float, str]],
    ) -> None:
        self.applied = applied
        self.postgres = postgres
        self.redis = redis_server
        self.proxies = {"pg": pg_proxy, "redis": redis_proxy}
        self.rng = rng
        self.cleared: list[tuple[float, str]] = []

    def apply(self, fault: str, wait: Callable[[float], object]) -> None:
        self.applied.append((time.monotonic(), fault))
        server, _, action = fault.partition("-")
        proxy = self.proxies[server]
        duration = self.rng.uniform(0.5, 3.0)
        if action == "restart":
            if server == "pg":
                self.postgres.restart("fast")
            else:
                self.redis.restart()
        elif action == "crash":
            self.postgres.stop("immediate")
            wait(duration)
            self.postgres.start()
        elif action in {"blackhole", "refuse"}:
            proxy.blackhole() if action == "blackhole" else proxy.refuse()
            proxy.cut_all(abortive=self.rng.random() < 0.5)
            wait(duration)
            proxy.pass_through()
        else:  # cut
            proxy.cut_all(abortive=self.rng.random() < 0.5)
        self.cleared.append((time.monotonic(), fault))


# ---------------------------------------------------------------------------- the run
def _pg_sessions(postgres: PostgresServer) -> int:
    rows = postgres.execute_as_superuser(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (postgres.user,)
    )
    return int(rows[0][0])


def _redis_clients(redis_server: RedisServer) -> int:
    reply = redis_server.command("CLIENT", "LIST")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return len([line for line in text.splitlines() if line.strip()])


def _baseline(postgres: PostgresServer, redis_server: RedisServer) -> dict[str, int]:
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "pg sessions": _pg_sessions(postgres),
        "redis clients": _redis_clients(redis_server),
    }


def _settled(
    postgres: PostgresServer, redis_server: RedisServer, before: dict[str, int], wait: float
) -> dict[str, tuple[int, int]]:
    """Poll until every count is back at ``before`` (abandoned helper threads end within
    libpq's 2 s, server sessions need a moment to go); return what is still above."""
    deadline = time.monotonic() + wait
    while True:
        gc.collect()
        now = _baseline(postgres, redis_server)
        leaks = {k: (before[k], now[k]) for k in before if now[k] > before[k]}
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.2)


def _recovery(board: _Board, chaos: _Chaos, end: float, result: SoakResult) -> None:
    for cleared, fault in chaos.cleared:
        if cleared + RECOVERY_BOUND > end:
            continue  # the run ended before the bound could be checked
        for worker, times in board.successes.items():
            index = bisect.bisect_left(times, cleared)
            if index == len(times):
                result.unrecovered.append(f"{worker} after {fault}")
                continue
            took = times[index] - cleared
            if took > result.worst_recovery:
                result.worst_recovery, result.worst_recovery_after = took, fault
            if took > RECOVERY_BOUND:
                result.unrecovered.append(f"{worker}: {took:.2f} s after {fault}")


def run_soak(
    seconds: float, *, seed: int = 11, progress: Callable[[str], object] = print
) -> SoakResult:
    """Run the soak for about ``seconds`` and return what it saw (see the module docstring)."""
    result = SoakResult()
    rng = random.Random(seed)
    postgres = PostgresServer(extra_conf={"max_connections": 250})
    redis_server = RedisServer()
    proxies: list[FaultProxy] = []
    try:
        postgres.start()
        redis_server.start()
        pg_proxy = FaultProxy(postgres.address)
        redis_proxy = FaultProxy(redis_server.address)
        proxies += [pg_proxy, redis_proxy]
        pg_url = postgres.url_for(port=pg_proxy.port)
        urls = {
            "pg": pg_url,
            "sa": pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
            "redis": redis_server.url_for(port=redis_proxy.port),
        }
        before = _baseline(postgres, redis_server)
        board = _Board(result)
        threads = [
            threading.Thread(
                target=_thread_worker, args=(board, f"t{i}:{kind}", kind, urls), name=f"soak-{i}"
            )
            for i, kind in enumerate(_kinds(THREADS, ("sa-sync", "psycopg-sync", "redis-sync")))
        ]

        async def tasks() -> None:
            kinds = _kinds(TASKS, ("sa-async", "psycopg-async", "redis-async"))
            await asyncio.gather(
                *(_task_worker(board, f"a{i}:{kind}", kind, urls) for i, kind in enumerate(kinds))
            )

        loop_errors: list[BaseException] = []

        def event_loop() -> None:
            try:
                asyncio.run(tasks())
            except BaseException as exc:  # reported below
                loop_errors.append(exc)

        loop_thread = threading.Thread(target=event_loop, name="soak-asyncio")
        chaos = _Chaos(postgres, redis_server, pg_proxy, redis_proxy, rng, board.applied)

        def wait(duration: float) -> None:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                board.watch()
                time.sleep(min(0.25, max(0.0, end - time.monotonic())))

        start = time.monotonic()
        for thread in (*threads, loop_thread):
            thread.start()
        wait(2.0)  # everyone connected once before the first fault
        while time.monotonic() - start < seconds:
            fault = rng.choice(_FAULTS)
            result.faults[fault] += 1
            chaos.apply(fault, wait)
            wait(rng.uniform(RECOVERY_BOUND + 0.5, RECOVERY_BOUND + 2.0))
            progress(
                f"soak: {time.monotonic() - start:6.0f} s  {sum(result.operations.values())} "
                f"operations, {sum(result.faults.values())} faults, "
                f"{sum(result.errors.values())} errors"
            )
        end = time.monotonic()
        board.stop.set()
        for thread in (*threads, loop_thread):
            thread.join(OPERATION_DEADLINE + 10)
            if thread.is_alive():
                result.hangs.append(f"{thread.name} did not stop")
        result.unexpected += [f"event loop: {_describe(e)}" for e in loop_errors]
        result.seconds = end - start
        _recovery(board, chaos, end, result)
        result.leaks = _settled(postgres, redis_server, before, wait=15.0)
    finally:
        for proxy in proxies:
            proxy.close()
        redis_server.cleanup()
        postgres.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chaos soak against real PostgreSQL and Redis")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long (default 1)")
    parser.add_argument("--seed", type=int, default=11, help="fault schedule seed")
    args = parser.parse_args(argv)
    result = run_soak(
        args.minutes * 60, seed=args.seed, progress=lambda line: print(line, flush=True)
    )
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
