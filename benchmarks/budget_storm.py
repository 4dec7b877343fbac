"""A retry storm: N workers of one service against a PostgreSQL that is down for 10 s.

Real parts: a real PostgreSQL (``tests/harness``) behind the fault proxy, which counts
every connection attempt that reaches the server side (during the outage PostgreSQL is
stopped; the proxy accepts, finds nothing upstream, and closes). The service is N
workers sharing one engine from ``resilient_connect.sqlalchemy`` (threads with
``create_engine``, asyncio tasks with ``create_async_engine``; a pool of N, pre-ping on):
each handles one request (``SELECT 1``) every ``--period`` seconds, the next one starting
when the previous ended if it took longer. The engine's reconnects are the library's
runtime path, so they use the process-wide retry budget (``rc.default_budget()``)
unless it is turned off (``rc.set_default_budget(None)``).

Measured per run, with and without the default budget: connection attempts at the
proxy during the outage and per second, requests that failed, the time until every
worker has had a request succeed after the server is back ("back"), and the lines the
default logging hook wrote (INFO and above). With ``--plot``, attempts per second over
the outage for N = 256, with and without the budget, go to
``docs/img/budget_attempts.png``.

Usage::

    python benchmarks/budget_storm.py            # N = 16, 64, 256; threads and tasks
    python benchmarks/budget_storm.py --plot     # the same, and the plot
    python benchmarks/budget_storm.py --quick    # N = 8, 1 s down: keeps the script working
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import sqlalchemy

import resilient_connect as rc
from harness import FaultProxy, PostgresServer
from resilient_connect import sqlalchemy as rc_sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 2.0
AFTER = 4.0


@dataclass
class Run:
    """One run's numbers."""

    kind: str
    workers: int
    budget: bool
    outage: float
    attempts: int = 0
    failed: int = 0
    back: float = float("nan")
    log_lines: int = 0
    per_second: list[int] = field(default_factory=list)
    line_kinds: dict[str, int] = field(default_factory=dict)


class LineCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.kinds: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        kind = str(getattr(record, "resilient_connect_event", "?"))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


class Service:
    """The workers' shared state: what happened to each request."""

    def __init__(self, workers: int) -> None:
        self.lock = threading.Lock()
        self.failed = 0
        self.first_success_after: list[float | None] = [None] * workers
        self.ready_at: float | None = None
        self.stop = False

    def record(self, worker: int, ok: bool, ended: float) -> None:  # noqa: FBT001
        with self.lock:
            if not ok:
                self.failed += 1
            elif self.ready_at is not None and self.first_success_after[worker] is None:
                self.first_success_after[worker] = ended

    def all_back(self) -> bool:
        return self.ready_at is not None and all(t is not None for t in self.first_success_after)


def run_once(kind: str, workers: int, *, budget: bool, down: float, period: float) -> Run:
    rc.set_default_budget(rc.RetryBudget(refill_per_second=1.0) if budget else None)
    rc.log_event.reset()
    counter = LineCounter()
    logger = logging.getLogger("resilient_connect")
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    server = PostgresServer(extra_conf={"max_connections": workers + 20})
    server.start()
    proxy = FaultProxy(server.address)
    url = server.url_for(scheme="postgresql+psycopg", port=proxy.port)
    service = Service(workers)
    result = Run(kind, workers, budget, down)
    try:
        stopped_at, ready_at = _drive(kind, url, workers, service, server, down, period)
        times = proxy.accept_times()
        result.attempts = sum(stopped_at <= t <= ready_at for t in times)
        seconds = max(1, int(ready_at - stopped_at + 0.999))
        result.per_second = [
            sum(stopped_at + s <= t < stopped_at + s + 1 for t in times) for s in range(seconds)
        ]
        result.failed = service.failed
        backs = [t for t in service.first_success_after if t is not None]
        if len(backs) == workers:
            result.back = max(backs) - ready_at
        result.log_lines = counter.count
        result.line_kinds = dict(counter.kinds)
    finally:
        logger.removeHandler(counter)
        proxy.close()
        server.cleanup()
        rc.set_default_budget(rc.RetryBudget(refill_per_second=1.0))
    return result


def _drive(
    kind: str,
    url: str,
    workers: int,
    service: Service,
    server: PostgresServer,
    down: float,
    period: float,
) -> tuple[float, float]:
    marks: dict[str, float] = {}

    def outage() -> None:
        time.sleep(WARM_UP)  # the outage schedule being simulated
        marks["stopped"] = time.monotonic()
        server.stop()
        time.sleep(down)
        server.start()
        marks["ready"] = time.monotonic()
        service.ready_at = marks["ready"]
        deadline = marks["ready"] + AFTER + 20
        while not service.all_back() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        service.stop = True

    controller = threading.Thread(target=outage)
    controller.start()
    if kind == "threads":
        _threads(url, workers, service, period)
    else:
        asyncio.run(_tasks(url, workers, service, period))
    controller.join()
    return marks["stopped"], marks["ready"]


def _threads(url: str, workers: int, service: Service, period: float) -> None:
    engine = rc_sqlalchemy.create_engine(url, pool_size=workers, max_overflow=0)
    one = sqlalchemy.text("SELECT 1")

    def worker(index: int) -> None:
        while not service.stop:
            began = time.monotonic()
            try:
                with engine.connect() as connection:
                    connection.execute(one)
                ok = True
            except sqlalchemy.exc.SQLAlchemyError:
                ok = False
            service.record(index, ok, time.monotonic())
            _pause(began + period, service)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()


async def _tasks(url: str, workers: int, service: Service, period: float) -> None:
    engine = await rc_sqlalchemy.create_async_engine(url, pool_size=workers, max_overflow=0)
    one = sqlalchemy.text("SELECT 1")

    async def worker(index: int) -> None:
        while not service.stop:
            began = time.monotonic()
            try:
                async with engine.connect() as connection:
                    await connection.execute(one)
                ok = True
            except sqlalchemy.exc.SQLAlchemyError:
                ok = False
            service.record(index, ok, time.monotonic())
            while not service.stop and time.monotonic() < began + period:  # noqa: ASYNC110 - a timed pause that also watches a flag set by a thread
                await asyncio.sleep(min(0.05, began + period - time.monotonic()))

    await asyncio.gather(*(worker(i) for i in range(workers)))
    await engine.dispose()


def _pause(until: float, service: Service) -> None:
    while not service.stop and time.monotonic() < until:
        time.sleep(min(0.05, until - time.monotonic()))


def table(runs: list[Run]) -> str:
    header = (
        "| workers | kind | budget | attempts in the outage | attempts/s | failed requests "
        "| all back after | log lines |"
    )
    lines = [header, "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines.extend(
        f"| {run.workers} | {run.kind} | {'default' if run.budget else 'off'} | "
        f"{run.attempts} | {run.attempts / run.outage:.1f} | {run.failed} | "
        f"{run.back:.2f} s | {run.log_lines} |"
        for run in runs
    )
    return "\n".join(lines)


def ratios(runs: list[Run]) -> str:
    out = []
    for kind in ("threads", "tasks"):
        for workers in sorted({r.workers for r in runs}):
            pair = {r.budget: r for r in runs if r.kind == kind and r.workers == workers}
            if True in pair and False in pair:
                off, on = pair[False], pair[True]
                cut = off.attempts / max(1, on.attempts)
                slower = (on.back - off.back) / off.back * 100 if off.back > 0 else float("nan")
                out.append(
                    f"{kind:7} N={workers:<4} attempts cut x{cut:.1f}; "
                    f"recovery {on.back:.2f} s vs {off.back:.2f} s ({slower:+.0f}%)"
                )
    return "\n".join(out)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    biggest = max(r.workers for r in runs)
    for run in runs:
        if run.workers != biggest:
            continue
        label = f"{run.kind}, budget {'default' if run.budget else 'off'}"
        ax.plot(range(len(run.per_second)), run.per_second, marker="o", label=label)
    ax.set_xlabel("seconds into the outage")
    ax.set_ylabel("connection attempts per second")
    ax.set_title(f"{biggest} workers, PostgreSQL down for {runs[0].outage:g} s")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 8, 1 s down, threads only")
    parser.add_argument("--down", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between requests")
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--kinds", default="threads,tasks")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args(argv)
    sizes = [8] if args.quick else [int(s) for s in args.sizes.split(",")]
    kinds = ["threads"] if args.quick else args.kinds.split(",")
    down = 1.0 if args.quick else args.down
    runs = []
    for workers in sizes:
        for kind in kinds:
            for budget in (False, True):
                run = run_once(kind, workers, budget=budget, down=down, period=args.period)
                runs.append(run)
                print(
                    f"{kind} N={workers} budget={'on' if budget else 'off'}: "
                    f"{run.attempts} attempts, {run.failed} failed, back {run.back:.2f} s, "
                    f"{run.log_lines} lines {run.line_kinds}",
                    flush=True,
                )
    print()
    print(table(runs))
    print()
    print(ratios(runs))
    if args.plot:
        plot(runs, ROOT / "docs" / "img" / "budget_attempts.png")
    if any(r.back != r.back for r in runs):  # NaN: some worker never came back
        print("some workers never came back", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
