"""Counters of retrying calls, readable without installing a hook.

Two ways to get them:

* every function decorated with :func:`~resilient_connect.retry` has its own
  :class:`RetryStatistics`, cumulative since decoration:
  ``fn.statistics``, or ``RetryStatistics.of(fn)`` for type checkers;
* :func:`collect_statistics` gathers the numbers of every retry loop of the
  package that runs inside a ``with`` block (connect helpers, adapters,
  decorated functions, runtime bridges), in the current thread or task and in
  the tasks it starts.

Cost and safety: a decorated call that succeeds first time adds one step of a
C-level counter (:func:`itertools.count`, atomic under the GIL); everything
else is recorded on the failure path, under a lock per statistics object, so
any number of threads and tasks may share one. Each property is a consistent
reading; :meth:`RetryStatistics.snapshot` takes all of them at one instant.
"""

from __future__ import annotations

import _thread
import itertools
from contextvars import ContextVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType


class RetryStatistics:
    """What retrying calls did: calls, attempts, retries, give-ups, waiting, last error.

    Attributes (read-only, each a consistent reading):
        calls: calls that ended, by returning or raising.
        successes: calls that returned, at the first attempt or after retries.
        attempts: attempts that ended, successful or not.
        retries: failed attempts that were followed by a wait and another attempt.
        gave_up: calls that gave up (the policy ran out of attempts or time).
        not_retried: calls ended by an error judged permanent.
        waited: seconds spent in completed backoff waits.
        last_error: the class of the most recent failed attempt's error, or ``None``.

    A call in progress counts in ``attempts`` and ``retries`` as it goes and in
    ``calls`` when it ends; a call that is cancelled during a wait does not
    count in ``calls``.
    """

    __slots__ = (
        "_attempts",
        "_calls",
        "_first_at_reset",
        "_gave_up",
        "_last_error",
        "_lock",
        "_not_retried",
        "_reads",
        "_retries",
        "_successes",
        "_ticks",
        "_waited",
        "record_first_success",
    )

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        # First-time successes only step this counter (no lock on the success path);
        # readers step it too, under the lock, and subtract their own steps.
        self._ticks = itertools.count()
        self._reads = 0
        self._first_at_reset = 0
        #: Count one call whose first attempt succeeded (the success path's only cost).
        self.record_first_success: Callable[[], object] = self._ticks.__next__
        self._zero()

    def _zero(self) -> None:
        self._calls = 0
        self._successes = 0
        self._attempts = 0
        self._retries = 0
        self._gave_up = 0
        self._not_retried = 0
        self._waited = 0.0
        self._last_error: type[BaseException] | None = None

    @classmethod
    def of(cls, fn: Callable[..., object]) -> RetryStatistics:
        """The statistics of ``fn``, a function decorated with :func:`~resilient_connect.retry`.

        The same object as ``fn.statistics``, typed. Raises ``TypeError`` for
        any other callable.
        """
        statistics = getattr(fn, "statistics", None)
        if not isinstance(statistics, RetryStatistics):
            msg = f"{fn!r} is not decorated with resilient_connect.retry (no statistics)"
            raise TypeError(msg)
        return statistics

    # ---------------------------------------------------------------- reading
    def _first_successes(self) -> int:
        """First-time successes since the last reset; call with the lock held."""
        seen = next(self._ticks) - self._reads
        self._reads += 1
        return seen - self._first_at_reset

    @property
    def calls(self) -> int:
        with self._lock:
            return self._first_successes() + self._calls

    @property
    def successes(self) -> int:
        with self._lock:
            return self._first_successes() + self._successes

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._first_successes() + self._attempts

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def gave_up(self) -> int:
        return self._gave_up

    @property
    def not_retried(self) -> int:
        return self._not_retried

    @property
    def waited(self) -> float:
        return self._waited

    @property
    def last_error(self) -> type[BaseException] | None:
        return self._last_error

    def snapshot(self) -> RetryStatistics:
        """A detached copy with every number taken at one instant (it no longer changes)."""
        copy = RetryStatistics()
        with self._lock:
            first = self._first_successes()
            copy._calls = first + self._calls
            copy._successes = first + self._successes
            copy._attempts = first + self._attempts
            copy._retries = self._retries
            copy._gave_up = self._gave_up
            copy._not_retried = self._not_retried
            copy._waited = self._waited
            copy._last_error = self._last_error
        return copy

    def reset(self) -> None:
        """Set every number back to zero (``last_error`` to ``None``)."""
        with self._lock:
            self._first_at_reset += self._first_successes()
            self._zero()

    def __repr__(self) -> str:
        s = self.snapshot()
        error = None if s._last_error is None else s._last_error.__qualname__
        return (
            f"RetryStatistics(calls={s._calls}, successes={s._successes}, "
            f"attempts={s._attempts}, retries={s._retries}, gave_up={s._gave_up}, "
            f"not_retried={s._not_retried}, waited={s._waited:.3f}, last_error={error})"
        )

    def record(self, error: BaseException | None, outcome: str, waited: float) -> None:
        """Record the end of one attempt that was not a first-time success (the engine's part).

        ``outcome`` is "success", "retry", "gave_up" or "not_retried";
        ``waited`` the seconds of backoff completed before that attempt.
        """
        with self._lock:
            self._attempts += 1
            self._waited += waited
            if error is not None:
                self._last_error = type(error)
            if outcome == "retry":
                self._retries += 1
                return
            self._calls += 1
            if outcome == "success":
                self._successes += 1
            elif outcome == "gave_up":
                self._gave_up += 1
            else:
                self._not_retried += 1


_COLLECTORS: ContextVar[tuple[RetryStatistics, ...]] = ContextVar(
    "resilient_connect_statistics", default=()
)


def in_scope(own: RetryStatistics | None) -> tuple[RetryStatistics, ...]:
    """``own`` (a decorated function's statistics) and those of the open collect blocks."""
    collected = _COLLECTORS.get()
    if own is None or own in collected:
        return collected
    return (own, *collected)


class _Collecting:
    """The context manager :func:`collect_statistics` returns."""

    __slots__ = ("_statistics", "_tokens")

    def __init__(self, statistics: RetryStatistics) -> None:
        self._statistics = statistics
        self._tokens: list[object] = []

    def __enter__(self) -> RetryStatistics:
        from ._hooks import watch_collectors

        current = _COLLECTORS.get()
        if self._statistics not in current:  # open twice: still counted once
            current = (*current, self._statistics)
        self._tokens.append(_COLLECTORS.set(current))
        watch_collectors(+1)
        return self._statistics

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        from ._hooks import watch_collectors

        _COLLECTORS.reset(self._tokens.pop())  # type: ignore[arg-type]
        watch_collectors(-1)


def collect_statistics(statistics: RetryStatistics | None = None) -> _Collecting:
    """Count what every retry loop does inside a ``with`` block.

    ``with collect_statistics() as stats:`` yields a new
    :class:`RetryStatistics` (or ``statistics``, to add to an existing one)
    that records every call of the package's retry loops made in the block:
    ``connect_with_retry`` and the adapters' helpers included, in this thread or
    task and in tasks started from it (they inherit the context). Blocks nest;
    an inner block's calls count in the outer one too. While any block is open
    in the process, decorated calls that succeed first time cost a context
    variable lookup more.
    """
    return _Collecting(RetryStatistics() if statistics is None else statistics)
