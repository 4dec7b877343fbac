"""The AWS Architecture Blog's backoff model (2015), with our jitter modes beside it.

"Exponential Backoff And Jitter" (Marc Brooker, AWS Architecture Blog, March 2015)
simulates N clients that each update one database row once, with optimistic
concurrency control, against a server behind a network with delay. A client
reads the row's version, then writes with that version; the write succeeds only
if nobody wrote in between. A failed write is followed by a backoff sleep, then a
new read. The run ends when every client has written. The blog plots the total
number of write calls and the completion time against N, for base 5 ms and cap
2000 ms, 100 runs per point.

This file implements that model from the description (one-way network delay
``|normal(10 ms, 2 ms)|`` per message; backoff number ``n`` counts failed writes
from 1, so the exponential is ``min(cap, base * 2**n)``), and runs:

* the published strategies by their published formulas: exponential without
  jitter, full, equal and decorrelated (``min(cap, uniform(base, 3 * sleep))``);
* our :class:`resilient_connect.Backoff` in each jitter mode with the same base
  and cap (``initial = 2 * base`` so that our first wait is the blog's first
  wait; our decorrelated draws below the cap instead of clamping onto it).

Usage::

    python benchmarks/jitter_study.py            # 10..190 clients, 100 runs, plots
    python benchmarks/jitter_study.py --quick    # 3 client counts, 10 runs (the test suite)

Writes ``docs/img/jitter_study_calls.png`` and ``jitter_study_time.png`` in full mode
(``--plots DIR`` to choose; ``--no-plots`` to skip).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from resilient_connect import Backoff

BASE_MS = 5.0
CAP_MS = 2000.0
NET_MEAN_MS = 10.0
NET_SD_MS = 2.0

#: What the blog's simulator reported at 100 clients: (calls, completion ms).
PUBLISHED_AT_100 = {
    "aws: no jitter": (1859, 63370),
    "aws: full": (795, 4957),
    "aws: equal": (811, 6595),
    "aws: decorrelated": (1000, 4631),
}

# A strategy makes a per-client sleeper: sleeper(n) -> ms to wait after the n-th failed write.
Sleeper = Callable[[int], float]
Strategy = Callable[[random.Random], Sleeper]


def _expo(n: int) -> float:
    return min(CAP_MS, BASE_MS * 2.0**n)


def aws_none(rng: random.Random) -> Sleeper:
    return _expo


def aws_full(rng: random.Random) -> Sleeper:
    return lambda n: rng.uniform(0, _expo(n))


def aws_equal(rng: random.Random) -> Sleeper:
    def sleep(n: int) -> float:
        half = _expo(n) / 2
        return half + rng.uniform(0, half)

    return sleep


def aws_decorrelated(rng: random.Random) -> Sleeper:
    last = [BASE_MS]

    def sleep(n: int) -> float:
        last[0] = min(CAP_MS, rng.uniform(BASE_MS, 3 * last[0]))
        return last[0]

    return sleep


def ours(jitter: str | float) -> Strategy:
    """Our policy in one jitter mode, in milliseconds; the blog's base and cap."""
    policy = Backoff(
        initial=2 * BASE_MS / 1000, maximum=CAP_MS / 1000, jitter=jitter, attempts=None
    )

    def make(rng: random.Random) -> Sleeper:
        previous = [policy.initial]

        def sleep(n: int) -> float:
            previous[0] = policy.delay(n - 1, previous[0], rng)
            return previous[0] * 1000

        return sleep

    return make


STRATEGIES: dict[str, Strategy] = {
    "aws: no jitter": aws_none,
    "aws: full": aws_full,
    "aws: equal": aws_equal,
    "aws: decorrelated": aws_decorrelated,
    "ours: none": ours("none"),
    "ours: full": ours("full"),
    "ours: equal": ours("equal"),
    "ours: decorrelated": ours("decorrelated"),
    "ours: 0.5": ours(0.5),
}

# Event kinds.
_READ_ARRIVES, _READ_REPLY, _WRITE_ARRIVES, _WRITE_REPLY = range(4)


def simulate(clients: int, strategy: Strategy, rng: random.Random) -> tuple[int, float]:
    """One run: every client writes once. Returns (write calls, completion time in ms)."""
    version = 0
    calls = 0
    failures = [0] * clients
    sleepers = [strategy(rng) for _ in range(clients)]
    seen = [0] * clients

    def net() -> float:
        return abs(rng.normalvariate(NET_MEAN_MS, NET_SD_MS))

    events: list[tuple[float, int, int]] = [
        (net(), client, _READ_ARRIVES) for client in range(clients)
    ]
    heapq.heapify(events)
    now = 0.0
    while events:
        now, client, kind = heapq.heappop(events)
        if kind == _READ_ARRIVES:
            seen[client] = version  # the server reads the row now
            heapq.heappush(events, (now + net(), client, _READ_REPLY))
        elif kind == _READ_REPLY:
            heapq.heappush(events, (now + net(), client, _WRITE_ARRIVES))
        elif kind == _WRITE_ARRIVES:
            calls += 1
            won = seen[client] == version
            if won:
                version += 1
            else:
                seen[client] = -1
            heapq.heappush(events, (now + net(), client, _WRITE_REPLY))
        elif seen[client] == -1:  # a failed write's reply: back off, then read again
            failures[client] += 1
            wait = sleepers[client](failures[client])
            heapq.heappush(events, (now + net() + wait, client, _READ_ARRIVES))
    return calls, now


def study(counts: list[int], runs: int, seed: int) -> dict[str, dict[int, tuple[float, float]]]:
    """Mean calls and mean completion ms per strategy and client count."""
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in STRATEGIES}
    for name, strategy in STRATEGIES.items():
        for clients in counts:
            rng = random.Random(f"{seed}:{name}:{clients}")
            outcomes = [simulate(clients, strategy, rng) for _ in range(runs)]
            results[name][clients] = (
                statistics.fmean(c for c, _ in outcomes),
                statistics.fmean(t for _, t in outcomes),
            )
    return results


def table(results: dict[str, dict[int, tuple[float, float]]], counts: list[int]) -> str:
    shown = [c for c in counts if c in (10, 50, 100, 150, 190)] or counts
    lines = [
        "| strategy | " + " | ".join(f"{c} clients: calls / ms" for c in shown) + " |",
        "| --- |" + " --- |" * len(shown),
    ]
    for name, by_count in results.items():
        cells = [f"{by_count[c][0]:.0f} / {by_count[c][1]:.0f}" for c in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def published_comparison(results: dict[str, dict[int, tuple[float, float]]]) -> str:
    if 100 not in results["aws: full"]:
        return ""
    lines = [
        "| strategy (100 clients) | published calls / ms | this model | ratio calls, time |",
        "| --- | --- | --- | --- |",
    ]
    for name, (calls, ms) in PUBLISHED_AT_100.items():
        ours_calls, ours_ms = results[name][100]
        lines.append(
            f"| {name} | {calls} / {ms} | {ours_calls:.0f} / {ours_ms:.0f} | "
            f"{ours_calls / calls:.2f}, {ours_ms / ms:.2f} |"
        )
    return "\n".join(lines)


def plot(
    results: dict[str, dict[int, tuple[float, float]]], counts: list[int], where: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
    for index, (label, unit, filename) in enumerate(
        (
            ("write calls (all clients)", "calls", "jitter_study_calls.png"),
            ("time until every client wrote", "ms", "jitter_study_time.png"),
        )
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for name, by_count in results.items():
            style = "--" if name.startswith("aws") else "-"
            ax.plot(counts, [by_count[c][index] for c in counts], style, label=name, linewidth=1.5)
        ax.set_xlabel("clients contending on one row")
        ax.set_ylabel(unit)
        ax.set_title(f"AWS backoff model (base 5 ms, cap 2 s): {label}", fontsize=10)
        if index == 1:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(where / filename)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 client counts, 10 runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=2015)
    parser.add_argument(
        "--plots", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "img"
    )
    parser.add_argument("--no-plots", action="store_true")
    options = parser.parse_args(argv)
    counts = [10, 50, 100] if options.quick else list(range(10, 200, 10))
    runs = options.runs or (10 if options.quick else 100)
    start = time.perf_counter()
    results = study(counts, runs, options.seed)
    print(
        f"AWS OCC backoff model: base {BASE_MS:g} ms, cap {CAP_MS:g} ms, network "
        f"|N({NET_MEAN_MS:g}, {NET_SD_MS:g})| ms, {runs} runs per point "
        f"({time.perf_counter() - start:.1f} s)\n"
    )
    print(table(results, counts))
    comparison = published_comparison(results)
    if comparison:
        print("\n" + comparison)
    full = results["aws: full"][counts[-1]]
    none = results["aws: no jitter"][counts[-1]]
    print(
        f"\nat {counts[-1]} clients, no jitter / full jitter: calls x{none[0] / full[0]:.2f}, "
        f"time x{none[1] / full[1]:.2f}"
    )
    assert all(math.isfinite(v) for r in results.values() for pair in r.values() for v in pair)
    if not options.quick and not options.no_plots:
        plot(results, counts, options.plots)
        print(f"plots written to {options.plots}")


if __name__ == "__main__":
    main()
