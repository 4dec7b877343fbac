"""What the psycopg adapter adds to a connect that succeeds first time.

Against a real PostgreSQL from ``tests/harness``: ``psycopg.connect`` and
``resilient_connect.psycopg.connect_with_retry`` (and the async twins) are timed
interleaved (plain, ours, plain, ours...), so that load on a shared machine hits
both alike. Each sample opens and closes one connection. Prints the medians and
ours / plain.

Usage::

    python benchmarks/connect_cost.py            # 200 interleaved pairs each, sync and async
    python benchmarks/connect_cost.py --quick    # 20 pairs (the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg

from harness import PostgresServer
from resilient_connect import psycopg as rc_psycopg

ROOT = Path(__file__).resolve().parent.parent


def sync_pairs(url: str, pairs: int) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    ours: list[float] = []
    for _ in range(pairs):
        start = time.perf_counter()
        psycopg.connect(url).close()
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        rc_psycopg.connect_with_retry(url, hooks=()).close()
        ours.append(time.perf_counter() - start)
    return plain, ours


async def async_pairs(url: str, pairs: int) -> tuple[list[float], list[float]]:
    plain: list[float] = []
    ours: list[float] = []
    for _ in range(pairs):
        start = time.perf_counter()
        conn = await psycopg.AsyncConnection.connect(url)
        await conn.close()
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        conn = await rc_psycopg.aconnect_with_retry(url, hooks=())
        await conn.close()
        ours.append(time.perf_counter() - start)
    return plain, ours


def line(label: str, plain: list[float], ours: list[float]) -> str:
    p, o = statistics.median(plain), statistics.median(ours)
    added = f"{(o - p) * 1e3:+.2f} | {(o / p - 1) * 100:+.1f}%"
    return f"| {label} | {p * 1e3:.2f} | {o * 1e3:.2f} | {added} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=None)
    options = parser.parse_args(argv)
    pairs = options.pairs or (20 if options.quick else 200)
    load = os.getloadavg()
    print(f"connect_cost: {pairs} interleaved pairs; {os.cpu_count()} cores, load {load[0]:.2f}")
    with PostgresServer() as server:
        url = server.url
        psycopg.connect(url).close()  # warm up: first-connect costs (imports, caches)
        rc_psycopg.connect_with_retry(url, hooks=()).close()
        sync_plain, sync_ours = sync_pairs(url, pairs)
        async_plain, async_ours = asyncio.run(async_pairs(url, pairs))
    print("\n| connect (median) | psycopg (ms) | ours (ms) | added (ms) | added |")
    print("| --- | --- | --- | --- | --- |")
    print(line("sync", sync_plain, sync_ours))
    print(line("async", async_plain, async_ours))


if __name__ == "__main__":
    main()
