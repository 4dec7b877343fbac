"""Fail-fast and deadline timings against real servers (PostgreSQL, Redis) on loopback.

Measures what the adapters promise, next to the driver alone where that is
telling:

* a wrong password / unknown database fails on the first attempt (psycopg,
  redis-py), against redis-py's own default retry of a wrong password;
* a server that accepts and never answers (blackhole proxy) costs the policy's
  deadline and no more.

Run from the project root: ``python benchmarks/failure_timings.py``. Uses the
test harness (``tests/harness``) to start throwaway servers on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redis as redis_py

import resilient_connect as rc
from harness import FaultProxy, PostgresServer, RedisServer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect import redis as rc_redis


def timed(call: Callable[[], object], runs: int) -> tuple[float, float, str]:
    """Median and max seconds of `call` (expected to raise), and the error's type name."""
    samples = []
    error = "no error"
    for _ in range(runs):
        start = time.perf_counter()
        try:
            call()
        except Exception as exc:
            error = type(exc).__name__
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), max(samples), error


def report(label: str, call: Callable[[], object], runs: int = 10) -> None:
    median, worst, error = timed(call, runs)
    print(f"{label:<44} median {median * 1e3:9.1f} ms  max {worst * 1e3:9.1f} ms  ({error})")


def overshoot(label: str, call: Callable[[], object], timeout: float) -> None:
    start = time.perf_counter()
    with contextlib.suppress(rc.RetryExhausted):
        call()
    print(f"{label:<44} overshoot {(time.perf_counter() - start - timeout) * 1e3:+.0f} ms")


def main() -> None:
    with PostgresServer() as postgres, RedisServer(password="s3cret") as redis_server:
        wrong_pg = postgres.url_for(password="wrong")
        report("psycopg wrong password (sync)", lambda: rc_psycopg.connect_with_retry(wrong_pg))
        report(
            "psycopg wrong password (async)",
            lambda: asyncio.run(rc_psycopg.aconnect_with_retry(wrong_pg)),
        )
        unknown_db = postgres.url_for(dbname="missing")
        report("psycopg unknown database (sync)", lambda: rc_psycopg.connect_with_retry(unknown_db))
        wrong_redis = redis_server.url_for(password="wrong")
        report("redis wrong password (sync)", lambda: rc_redis.connect_with_retry(wrong_redis))
        host, port = redis_server.address
        report(
            "redis-py Redis() alone, wrong password",
            lambda: redis_py.Redis(host=host, port=port, password="wrong").ping(),
            runs=3,
        )
        with FaultProxy(postgres.address) as proxy:
            proxy.blackhole()
            url = postgres.url_for(port=proxy.port)
            for timeout in (1.5, 3.0):
                policy = rc.Backoff(timeout=timeout)
                overshoot(
                    f"psycopg blackhole, timeout={timeout} (sync)",
                    lambda policy=policy: rc_psycopg.connect_with_retry(
                        url, policy=policy, hooks=()
                    ),
                    timeout,
                )
                overshoot(
                    f"psycopg blackhole, timeout={timeout} (async)",
                    lambda policy=policy: asyncio.run(
                        rc_psycopg.aconnect_with_retry(url, policy=policy, hooks=())
                    ),
                    timeout,
                )
        with FaultProxy(redis_server.address) as proxy:
            proxy.blackhole()
            url = redis_server.url_for(port=proxy.port)
            policy = rc.Backoff(timeout=2.0)
            overshoot(
                "redis blackhole, timeout=2.0 (sync)",
                lambda: rc_redis.connect_with_retry(url, policy=policy, hooks=()),
                2.0,
            )


if __name__ == "__main__":
    main()
