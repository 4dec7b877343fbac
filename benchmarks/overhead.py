"""Overhead of resilient_connect next to tenacity, backoff and stamina, in one run.

Measures, with comparable settings (retry on OSError, at most 3 attempts,
no logging):

* success path: a decorated no-op (sync, and async awaited in a loop) minus a
  bare call of the same no-op;
* machinery per failed attempt: a function that fails 9 times and then
  succeeds, with every wait set to zero, divided by the 9 retries;
* import time: ``import X`` in a fresh interpreter, minus a bare interpreter,
  with bytecode caches (as a wheel installed by pip has them). For
  resilient_connect also without them (an editable checkout under
  ``PYTHONDONTWRITEBYTECODE=1`` compiles its modules at every start), the share
  of stdlib ``dataclasses`` (with the ``inspect`` and ``re`` it imports), and
  the cost over an interpreter that has imported ``re`` and ``inspect``
  already, as asyncio, typing_extensions and every supported driver do: what
  ``import resilient_connect`` adds to a real service.

Then, for resilient_connect alone, the cost of each hook: the success path
with that hook installed (a hook that wants successes is sent a ``Succeeded``
event per call) and the cost per retry (per failed attempt, the final
``Recovered`` event's share included) over the same function with
``hooks=()``. Exporters write where a real process would, minus the network:
stdlib logging to a ``NullHandler``, structlog's console renderer to
``os.devnull``, prometheus_client into a ``CollectorRegistry``, the
OpenTelemetry SDK into an in-memory metric reader and a span processor that
discards. The "no-op hook" row is the engine's own share (building events,
redacting the target and the cause); each exporter's own work is the rest.

Run: ``python benchmarks/overhead.py`` (``--quick`` for a short smoke run).
The machine is shared and noisy: each number is the best of several
repetitions, and the ratios between libraries measured in the same run are
what to quote, not single absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import backoff
import stamina
import tenacity

import resilient_connect as rc

FAILURES = 9


def best_per_call(run: Callable[[int], float], number: int, repeat: int) -> float:
    """Best (lowest) seconds per call over `repeat` timed batches of `number` calls."""
    return min(run(number) / number for _ in range(repeat))


def sync_batch(fn: Callable[[], object]) -> Callable[[int], float]:
    def run(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start

    return run


def async_batch(fn: Callable[[], Awaitable[object]]) -> Callable[[int], float]:
    async def loop(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        return time.perf_counter() - start

    def run(number: int) -> float:
        return asyncio.run(loop(number))

    return run


def noop() -> None:
    return None


async def anoop() -> None:
    return None


def passthrough(fn: Callable[[], None]) -> Callable[[], None]:
    def wrapper() -> None:
        return fn()

    return wrapper


def decorators() -> dict[str, Callable[[Callable[..., object]], Callable[..., object]]]:
    stamina.instrumentation.set_on_retry_hooks([])
    return {
        "resilient_connect": rc.retry(
            on=OSError,
            policy=rc.Backoff(initial=0, attempts=FAILURES + 1, jitter="none"),
            hooks=(),
            sleep=lambda _s: None,
            asleep=_zero_asleep,
        ),
        "tenacity": tenacity.retry(
            retry=tenacity.retry_if_exception_type(OSError),
            stop=tenacity.stop_after_attempt(FAILURES + 1),
            wait=tenacity.wait_none(),
            reraise=True,
        ),
        "backoff": backoff.on_exception(
            backoff.constant, OSError, max_tries=FAILURES + 1, interval=0, jitter=None
        ),
        "stamina": stamina.retry(
            on=OSError,
            attempts=FAILURES + 1,
            timeout=None,
            wait_initial=0,
            wait_max=0,
            wait_jitter=0,
        ),
    }


async def _zero_asleep(_seconds: float) -> None:
    return None


def hooks_to_measure() -> dict[str, object]:
    """Each hook as a real process would configure it, minus the network."""
    import structlog
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from prometheus_client import CollectorRegistry

    import resilient_connect.opentelemetry as rc_otel
    import resilient_connect.prometheus as rc_prometheus
    import resilient_connect.structlog as rc_structlog

    class Discard(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    logger = logging.getLogger("resilient_connect")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the benchmark
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(devnull))
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(Discard()))
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def noop_hook(_event: rc.Event) -> None:
        return None

    return {
        "no-op hook": noop_hook,
        "log_event (stdlib)": rc.log_event,
        "structlog": rc_structlog.hook(),
        "prometheus": rc_prometheus.hook(registry=CollectorRegistry()),
        "prometheus, successes=False": rc_prometheus.hook(
            registry=CollectorRegistry(), successes=False
        ),
        "opentelemetry": rc_otel.hook(meter_provider=meters, tracer_provider=tracers),
        "opentelemetry, successes=False": rc_otel.hook(
            meter_provider=meters, tracer_provider=tracers, successes=False
        ),
    }


def hook_rows(number: int, repeat: int, bare_sync: float) -> dict[str, tuple[float, float]]:
    """(success path us over a bare call, cost per retry us over hooks=()) for each hook."""

    def decorate(hooks: tuple[object, ...]) -> Callable[[Callable[[], None]], Callable[[], None]]:
        return rc.retry(
            on=OSError,
            policy=rc.Backoff(initial=0, attempts=FAILURES + 1, jitter="none"),
            hooks=hooks,  # type: ignore[arg-type]
            sleep=lambda _s: None,
        )

    def per_failure(hooks: tuple[object, ...]) -> float:
        failing = decorate(hooks)(failing_then_ok())
        return best_per_call(sync_batch(failing), max(number // 50, 20), repeat) / FAILURES

    silent = per_failure(())
    rows = {}
    for name, hook in hooks_to_measure().items():
        success = best_per_call(sync_batch(decorate((hook,))(noop)), number, repeat) - bare_sync
        rows[name] = (success, per_failure((hook,)) - silent)
    return rows


def failing_then_ok() -> Callable[[], None]:
    state = [0]

    def fn() -> None:
        state[0] += 1
        if state[0] % (FAILURES + 1):
            raise OSError("refused")

    return fn


def import_cost(
    module: str, runs: int, *, before: str = "", env: dict[str, str] | None = None
) -> float:
    """Median wall time of `import module` in a new interpreter, minus the same without it.

    ``before`` is imported in both runs (modules the process has loaded anyway);
    ``env`` defaults to :func:`cached_environment`.
    """
    prefix = f"import {before}; " if before else ""
    environment = cached_environment() if env is None else env

    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=environment)
        return time.perf_counter() - start

    wall(f"import {module}")  # write the bytecode cache once
    samples = []
    for _ in range(runs):
        bare = wall(prefix + "pass")
        samples.append(wall(f"{prefix}import {module}") - bare)
    return statistics.median(samples)


def cached_environment() -> dict[str, str]:
    """This environment with bytecode caching on (the caches are written on first import)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def uncached_environment(scratch: Path) -> dict[str, str]:
    """An environment importing a copy of resilient_connect that has no bytecode cache and
    writes none: each start compiles our modules (the stdlib keeps its caches)."""
    source = Path(rc.__file__).parent
    shutil.copytree(source, scratch / "resilient_connect", ignore=shutil.ignore_patterns("*.pyc"))
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch), env.get("PYTHONPATH")]))
    return env


def our_import_rows(runs: int) -> dict[str, float]:
    """Seconds that ``import resilient_connect`` costs, measured four ways (see the docstring)."""
    for module in ("resilient_connect", "dataclasses"):  # write the caches before timing
        subprocess.run(
            [sys.executable, "-c", f"import {module}"], check=True, env=cached_environment()
        )
    with tempfile.TemporaryDirectory() as scratch:
        uncached = import_cost("resilient_connect", runs, env=uncached_environment(Path(scratch)))
    return {
        "over a bare interpreter, bytecode cached": import_cost("resilient_connect", runs),
        "over a bare interpreter, no bytecode cache": uncached,
        "  of which stdlib dataclasses, inspect and re": import_cost("dataclasses", runs),
        "over an interpreter that has imported re and inspect": import_cost(
            "resilient_connect", runs, before="re, inspect"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    args = parser.parse_args()
    number, repeat, import_runs = (2_000, 3, 3) if args.quick else (100_000, 7, 15)

    bare_sync = best_per_call(sync_batch(noop), number, repeat)
    bare_async = best_per_call(async_batch(anoop), number, repeat)
    minimal = best_per_call(sync_batch(passthrough(noop)), number, repeat) - bare_sync

    rows: dict[str, dict[str, float]] = {}
    for name, decorate in decorators().items():
        sync_fn = decorate(noop)
        async_fn = decorate(anoop)
        failing = decorate(failing_then_ok())
        fail_run = sync_batch(failing)
        per_failure = best_per_call(fail_run, max(number // 50, 20), repeat) / FAILURES
        success_per_failure = best_per_call(sync_batch(sync_fn), number, repeat) / FAILURES
        rows[name] = {
            "sync": best_per_call(sync_batch(sync_fn), number, repeat) - bare_sync,
            "async": best_per_call(async_batch(async_fn), number // 2, repeat) - bare_async,  # type: ignore[arg-type]
            "failure": per_failure - success_per_failure,
            "import": import_cost(name, import_runs),
        }

    ours = rows["resilient_connect"]
    hooks = hook_rows(number, repeat, bare_sync)
    our_imports = our_import_rows(import_runs)
    print(
        f"bare call {bare_sync * 1e6:.3f} us, minimal pass-through wrapper +{minimal * 1e6:.3f} us"
    )
    print()
    header = (
        f"{'library':<18}{'sync us':>10}{'async us':>10}{'per failure us':>16}{'import ms':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(
            f"{name:<18}{row['sync'] * 1e6:>10.3f}{row['async'] * 1e6:>10.3f}"
            f"{row['failure'] * 1e6:>16.3f}{row['import'] * 1e3:>11.1f}"
        )
    print()
    print("ratio (other / resilient_connect), higher means resilient_connect is cheaper:")
    for name, row in rows.items():
        if name == "resilient_connect":
            continue
        ratios = "  ".join(
            f"{key} x{row[key] / ours[key]:.1f}" if ours[key] > 0 else f"{key} n/a"
            for key in ("sync", "async", "failure", "import")
        )
        print(f"  {name:<10} {ratios}")
    print()
    print(f"import resilient_connect (median of {import_runs}; target <= 15 ms):")
    for name, seconds in our_imports.items():
        print(f"  {name:<56}{seconds * 1e3:>7.1f} ms")
    print()
    print("resilient_connect with one hook installed (sync):")
    header = f"{'hook':<32}{'success path us':>16}{'per retry us':>14}"
    print(header)
    print("-" * len(header))
    print(f"{'none (hooks=())':<32}{ours['sync'] * 1e6:>16.3f}{0:>14.3f}")
    for name, (success, retry) in hooks.items():
        print(f"{name:<32}{success * 1e6:>16.3f}{retry * 1e6:>14.3f}")


if __name__ == "__main__":
    main()
