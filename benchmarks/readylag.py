"""Ready-lag: how long after a late server is ready does a waiting client hold a connection?

A client starts while nothing listens; a real PostgreSQL (and a real Redis) from
``tests/harness`` starts ``S`` seconds later. The lag is "client connected" minus
"server ready" (PostgreSQL: ``postmaster.pid`` says ready; Redis: PING answers;
both polled every 5 ms). Compared in one run, all clients of a round waiting on the
same server at once:

* ours: ``resilient_connect.psycopg`` / ``.redis`` ``connect_with_retry`` with the
  default policy, and with ``Backoff(probe=None)`` (the schedule before pacing by cost);
* the hand loop of the original incident: 10 attempts, waits 2, 4, 8 s then 10 s;
* tenacity ``wait_exponential(max=10)`` (``stop_after_delay(60)``);
* stamina's defaults (10 attempts, 45 s, waits 0.1 s doubling to 5 s plus up to 1 s);
* for Redis, redis-py's own default retry alone (``Redis().ping()``), and the loops
  above wrapped around ``redis.Redis()`` as users write them (redis-py then retries
  inside each attempt too).

Attempts are counted per client (Redis: every TCP connect the client's thread makes,
so redis-py's internal retries count). A model of each psycopg-side schedule
(20,000 draws per S, the same policy code, 2 ms per refused attempt) gives the
distributions; the real runs check it.

Usage::

    python benchmarks/readylag.py           # S = 2, 10, 30; 3 rounds x 6 clients; plots
    python benchmarks/readylag.py --quick   # S = 0.5, one round, 2 clients (the test suite)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
import redis as redis_py
import redis.backoff
import redis.retry
import stamina
import tenacity

import resilient_connect as rc
from harness import PostgresServer, RedisServer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis

ROOT = Path(__file__).resolve().parent.parent

HAND_WAITS = (2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0)  # 10 attempts
BEFORE = rc.Backoff(probe=None)
#: Seconds PostgreSQL answers "starting up" between opening its port and being ready.
STARTING_WINDOW = 0.025


# ------------------------------------------------------------------------ counting attempts

_local = threading.local()
_original_connect = socket.socket.connect


def _counting_connect(self: socket.socket, address: object) -> None:
    _local.connects = getattr(_local, "connects", 0) + 1
    _original_connect(self, address)  # type: ignore[arg-type]


def _connects() -> int:
    return int(getattr(_local, "connects", 0))


class Count:
    """Counts our attempts from the retry events (failures), plus the success."""

    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, event: rc.Event) -> None:
        if isinstance(event, (rc.RetryScheduled, rc.GaveUp)):
            self.failed += 1


# ------------------------------------------------------------------------ strategies
# Each takes the (not yet started) server and returns (connected object, attempts made).

Strategy = Callable[[Any], tuple[object, int]]


def _hand_loop(
    connect: Callable[[], object], errors: tuple[type[Exception], ...]
) -> tuple[object, int]:
    for attempt, wait in enumerate((*HAND_WAITS, None), start=1):
        try:
            return connect(), attempt
        except errors:
            if wait is None:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def _tenacity(
    connect: Callable[[], object], errors: tuple[type[Exception], ...]
) -> tuple[object, int]:
    calls = [0]

    def counted() -> object:
        calls[0] += 1
        return connect()

    retrying = tenacity.Retrying(
        wait=tenacity.wait_exponential(max=10),
        stop=tenacity.stop_after_delay(60),
        retry=tenacity.retry_if_exception_type(errors),
        reraise=True,
    )
    return retrying(counted), calls[0]


def _stamina(
    connect: Callable[[], object], errors: tuple[type[Exception], ...]
) -> tuple[object, int]:
    calls = [0]

    @stamina.retry(on=errors)
    def counted() -> object:
        calls[0] += 1
        return connect()

    return counted(), calls[0]


def _ours_pg(policy: rc.Backoff | None) -> Strategy:
    def run(server: PostgresServer) -> tuple[object, int]:
        count = Count()
        conn = rc_psycopg.connect_with_retry(server.url, policy=policy, hooks=(count,))
        return conn, count.failed + 1

    return run


def _ours_redis(policy: rc.Backoff | None) -> Strategy:
    def run(server: RedisServer) -> tuple[object, int]:
        client = rc_redis.connect_with_retry(server.url, policy=policy, hooks=())
        return client, _connects()

    return run


def _pg(loop: Callable[..., tuple[object, int]]) -> Strategy:
    return lambda server: loop(
        lambda: psycopg.connect(server.url, connect_timeout=5), (psycopg.OperationalError,)
    )


def _plain_redis(server: RedisServer) -> object:
    """``redis.Redis(host, port)`` with redis-py's defaults (its own retry included), pinged."""
    client = redis_py.Redis(host=server.host, port=server.port)
    client.ping()
    return client


def _redis(loop: Callable[..., tuple[object, int]]) -> Strategy:
    def run(server: RedisServer) -> tuple[object, int]:
        errors = (redis_py.ConnectionError, redis_py.TimeoutError)
        connected, _ = loop(lambda: _plain_redis(server), errors)
        return connected, _connects()

    return run


def _redis_alone(server: RedisServer) -> tuple[object, int]:
    return _plain_redis(server), _connects()


PG_STRATEGIES: dict[str, Strategy] = {
    "ours (default)": _ours_pg(None),
    "ours, before (probe=None)": _ours_pg(BEFORE),
    "hand loop 2-4-8-10 s": _pg(_hand_loop),
    "tenacity wait_exponential(max=10)": _pg(_tenacity),
    "stamina defaults": _pg(_stamina),
}
REDIS_STRATEGIES: dict[str, Strategy] = {
    "ours (default)": _ours_redis(None),
    "ours, before (probe=None)": _ours_redis(BEFORE),
    "hand loop around Redis()": _redis(_hand_loop),
    "tenacity around Redis()": _redis(_tenacity),
    "stamina around Redis()": _redis(_stamina),
    "redis-py defaults alone": _redis_alone,
}


# ------------------------------------------------------------------------ one round


@dataclass
class Sample:
    strategy: str
    late: float
    lag: float | None  # None: the client gave up
    attempts: int
    elapsed: float


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)

    def of(self, strategy: str, late: float) -> list[Sample]:
        return [s for s in self.samples if s.strategy == strategy and s.late == late]


windows: list[float] = []  # PostgreSQL: first "starting up" answer -> first connection
starts: list[float] = []  # launch -> ready


def _first_connect(server: PostgresServer) -> tuple[float, float]:
    """Poll with psycopg every 5 ms: (first success, first answer from the server).

    PostgreSQL's ``postmaster.pid`` says "ready" 40-150 ms after the first
    connection already succeeds (measured here), so "ready" is this poller's
    first success instead.
    """
    opened = None
    while True:
        try:
            psycopg.connect(server.url, connect_timeout=2).close()
        except psycopg.OperationalError as exc:
            if opened is None and "refused" not in str(exc):
                opened = time.monotonic()
            time.sleep(0.005)
            continue
        now = time.monotonic()
        return now, opened if opened is not None else now


def round_(
    make_server: Callable[[], PostgresServer | RedisServer],
    strategies: dict[str, Strategy],
    late: float,
    clients: int,
    results: Results,
) -> None:
    """All strategies' clients wait together on one server that starts ``late`` s after them."""
    server = make_server()
    try:
        if isinstance(server, PostgresServer):
            server.init()  # copy the cluster now: "late" is the wait, not the copy
        start_barrier = threading.Barrier(len(strategies) * clients + 1)
        ready_at: list[float] = []
        found: list[tuple[str, float | None, int, float]] = []
        lock = threading.Lock()

        def client(name: str, strategy: Strategy) -> None:
            start_barrier.wait()
            _local.connects = 0
            begin = time.monotonic()
            try:
                connected, attempts = strategy(server)
            except Exception:
                with lock:
                    found.append((name, None, _connects(), time.monotonic() - begin))
                return
            done = time.monotonic()
            with lock:
                found.append((name, done, attempts, done - begin))
            close = getattr(connected, "close", None)
            if close is not None:
                close()

        threads = [
            threading.Thread(target=client, args=(name, strategy))
            for name, strategy in strategies.items()
            for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        start_barrier.wait()
        time.sleep(late)
        launched = time.monotonic()
        server.launch()
        if isinstance(server, PostgresServer):
            ready, opened = _first_connect(server)
            windows.append(ready - opened)
        else:
            server.wait_ready()
            ready = time.monotonic()
        ready_at.append(ready)
        starts.append(ready - launched)
        for thread in threads:
            thread.join(120)
        for name, done, attempts, elapsed in found:
            lag = None if done is None else done - ready_at[0]
            results.samples.append(Sample(name, late, lag, attempts, elapsed))
    finally:
        server.cleanup()


# ------------------------------------------------------------------------ the model


def _model_lag(
    next_wait: Callable[[int, float, str], float], ready: float, rng: random.Random
) -> float | None:
    """Attempts from t=0; refused until ``ready - window``, "starting up" until ``ready``."""
    now, retry, previous = 0.0, 0, 0.1
    while True:
        if now >= ready:
            return now + 0.005 - ready
        cost = "free" if now < ready - STARTING_WINDOW else "server"
        wait = next_wait(retry, previous, cost)
        if wait < 0:
            return None  # gave up
        previous = wait
        now += (0.002 if cost == "free" else 0.005) + wait
        retry += 1


def model(strategy: str, ready: float, draws: int, seed: int) -> list[float | None]:
    rng = random.Random(f"{seed}:{strategy}:{ready}")
    if strategy.startswith("ours"):
        policy = rc.Backoff() if "default" in strategy else BEFORE

        def wait(retry: int, previous: float, cost: str) -> float:
            return policy.delay(retry, previous, rng, cost)  # type: ignore[arg-type]

    elif strategy.startswith("hand"):

        def wait(retry: int, previous: float, cost: str) -> float:
            return HAND_WAITS[retry] if retry < len(HAND_WAITS) else -1

    elif strategy.startswith("tenacity"):

        def wait(retry: int, previous: float, cost: str) -> float:
            return min(10.0, 2.0**retry)

    else:  # stamina: tenacity's wait_exponential_jitter(0.1, 5, 2, 1), 10 attempts, 45 s

        def wait(retry: int, previous: float, cost: str) -> float:
            return min(5.0, 0.1 * 2.0**retry + rng.uniform(0, 1)) if retry < 9 else -1

    return [_model_lag(wait, ready, rng) for _ in range(draws)]


# ------------------------------------------------------------------------ report


def _start() -> float:
    """Launch -> ready, as measured in this run (0.15 s before any measurement)."""
    return statistics.median(starts) if starts else 0.15


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(lags: list[float | None]) -> str:
    ok = [lag for lag in lags if lag is not None]
    gave_up = len(lags) - len(ok)
    if not ok:
        return f"gave up {gave_up}/{len(lags)}"
    text = f"{statistics.median(ok):.3f} / {quantile(ok, 0.9):.3f} / {max(ok):.3f}"
    return text + (f" (gave up {gave_up}/{len(lags)})" if gave_up else "")


def report(
    title: str,
    strategies: list[str],
    lates: list[float],
    results: Results,
    draws: int,
    seed: int,
    *,
    with_model: bool,
) -> list[str]:
    lines = [
        f"#### {title}",
        "",
        "lag after ready, median / p90 / max in seconds; attempts per second while waiting",
        "",
    ]
    header = (
        "| strategy | "
        + " | ".join(f"S = {late:g} s real" + (" | model" if with_model else "") for late in lates)
        + " | all S real | attempts/s |"
    )
    lines += [header, "| --- |" + " --- |" * (len(lates) * (2 if with_model else 1) + 2)]
    for name in strategies:
        cells = []
        rates = []
        for late in lates:
            samples = results.of(name, late)
            cells.append(describe([s.lag for s in samples]))
            rates += [s.attempts / s.elapsed for s in samples if s.elapsed > 0]
            if with_model:
                cells.append(
                    describe(model(name, late + _start(), draws, seed))
                    if name in PG_STRATEGIES
                    else "-"
                )
        rate = f"{statistics.median(rates):.2f}" if rates else "-"
        pooled = describe([s.lag for s in results.samples if s.strategy == name])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pooled} | {rate} |")
    return lines


def plot(
    results: Results,
    late: float,
    groups: dict[str, list[str]],
    draws: int,
    seed: int,
    where: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, (title, names) in zip(axes, groups.items(), strict=True):
        for name in names:
            color = None
            if title == "PostgreSQL":
                lags = sorted(x for x in model(name, late + _start(), draws, seed) if x is not None)
                if lags:
                    (line,) = ax.plot(
                        lags,
                        [(i + 1) / len(lags) for i in range(len(lags))],
                        label=f"{name} (model)",
                    )
                    color = line.get_color()
            real = sorted(
                s.lag
                for s in results.samples
                if s.strategy == f"{title}: {name}" and s.late == late and s.lag is not None
            )
            if real:
                ax.plot(
                    real,
                    [(i + 1) / len(real) for i in range(len(real))],
                    "o",
                    color=color,
                    markersize=3,
                    label=f"{name} (real)" if color is None else None,
                )
        ax.set_xscale("log")
        ax.set_xlabel(f"lag after ready (s), server started {late:g} s late")
        ax.set_ylabel("fraction of clients connected")
        ax.set_title(f"{title}: lines model, dots real clients", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(where / "readylag_cdf.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--clients", type=int, default=None, help="clients per strategy per round")
    parser.add_argument("--late", type=float, nargs="*", default=None)
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    options = parser.parse_args(argv)
    quick = options.quick
    lates = options.late or ([0.5] if quick else [2.0, 10.0, 30.0])
    rounds = options.rounds or (1 if quick else 3)
    clients = options.clients or (2 if quick else 6)
    draws = 500 if quick else options.draws
    socket.socket.connect = _counting_connect  # type: ignore[method-assign]
    logging.getLogger("stamina").setLevel(logging.ERROR)  # one warning per retry otherwise
    load = os.getloadavg()
    print(
        f"readylag: {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f}; "
        f"{rounds} rounds x {clients} clients per strategy per S"
    )
    pg_results, redis_results = Results(), Results()
    pg_names = (
        list(PG_STRATEGIES)
        if not quick
        else ["ours (default)", "tenacity wait_exponential(max=10)"]
    )
    redis_names = (
        list(REDIS_STRATEGIES) if not quick else ["ours (default)", "redis-py defaults alone"]
    )
    for _ in range(rounds):
        for late in lates:
            jobs = [
                threading.Thread(
                    target=round_,
                    args=(
                        PostgresServer,
                        {n: PG_STRATEGIES[n] for n in pg_names},
                        late,
                        clients,
                        pg_results,
                    ),
                ),
                threading.Thread(
                    target=round_,
                    args=(
                        RedisServer,
                        {n: REDIS_STRATEGIES[n] for n in redis_names},
                        late,
                        clients,
                        redis_results,
                    ),
                ),
            ]
            for job in jobs:
                job.start()
            for job in jobs:
                job.join()
    global STARTING_WINDOW  # noqa: PLW0603 - the model uses the window measured in this run
    if windows:
        STARTING_WINDOW = statistics.median(windows)
    print(
        "\n".join(
            [
                "",
                *report(
                    "PostgreSQL 15 (psycopg 3)",
                    pg_names,
                    lates,
                    pg_results,
                    draws,
                    options.seed,
                    with_model=True,
                ),
            ]
        )
    )
    print(
        "\n".join(
            [
                "",
                *report(
                    "Redis 7 (redis-py)",
                    redis_names,
                    lates,
                    redis_results,
                    draws,
                    options.seed,
                    with_model=False,
                ),
            ]
        )
    )
    if windows:
        print(
            f"\nPostgreSQL 'starting up' window (first 57P03 -> first connection): median "
            f"{statistics.median(windows) * 1e3:.0f} ms, max {max(windows) * 1e3:.0f} ms over "
            f"{len(windows)} starts; launch -> ready median {statistics.median(starts):.3f} s"
        )
    if options.json:
        import json

        raw = {
            "PostgreSQL": [vars(x) for x in pg_results.samples],
            "Redis": [vars(x) for x in redis_results.samples],
        }
        options.json.write_text(json.dumps(raw, indent=1))
    ours = [
        s.lag for s in pg_results.samples + redis_results.samples if s.strategy == "ours (default)"
    ]
    assert ours, "no sample of our default"
    assert all(lag is not None for lag in ours), "our default gave up"
    if not quick and not options.no_plots:
        merged = Results(
            [
                Sample(f"PostgreSQL: {s.strategy}", s.late, s.lag, s.attempts, s.elapsed)
                for s in pg_results.samples
            ]
            + [
                Sample(f"Redis: {s.strategy}", s.late, s.lag, s.attempts, s.elapsed)
                for s in redis_results.samples
            ]
        )
        plot(
            merged,
            10.0 if 10.0 in lates else lates[0],
            {"PostgreSQL": pg_names, "Redis": redis_names},
            draws,
            options.seed,
            options.plots,
        )
        print(f"\nplot written to {options.plots / 'readylag_cdf.png'}")


if __name__ == "__main__":
    main()
