"""The default hook: log lines a person can read during an outage.

During an outage a service runs many retry loops at once (pool checkouts,
redis commands, start-up code), each failing several times a second. One line
per failed attempt is a wall of identical lines, so the default hook
aggregates, per target:

* the first failure of an outage: WARNING, the familiar retry line;
* while it lasts, at most one summary per :attr:`LogEvents.summary_interval`
  (5 s by default): ``still failing: 57 attempts in 20 loops over 5.0s (20
  waiting); last error: ... (rule)``, at WARNING;
* on recovery, one INFO line with the totals;
* giving up, and a permanent error, at ERROR, as before (one per call: each is
  a failure the application sees), except that a call that gave up because the
  retry budget ran out is logged once per outage and then counted.

Every attempt is also logged at DEBUG with the per-attempt message, so
``logging.getLogger("resilient_connect").setLevel(logging.DEBUG)`` shows the
whole stream; hooks see every event regardless. Under
:func:`resilient_connect.testing.instant_waits` nothing is aggregated: every
retry is a WARNING line, at once.

Messages are stable (%-style, arguments passed lazily) and every record carries
namespaced ``extra`` fields: ``resilient_connect_event``,
``resilient_connect_target``, ``resilient_connect_attempt``,
``resilient_connect_elapsed``, ``resilient_connect_cause`` and, for retries,
``resilient_connect_delay``; summaries add ``resilient_connect_attempts``,
``resilient_connect_loops`` and ``resilient_connect_waiting``.

A process that fails before it configures logging must still say why: when
neither the logger nor any ancestor has a handler, the line is written to
stderr directly (INFO and above, unless the logger's own level says
otherwise), with a UTC timestamp.
"""

from __future__ import annotations

import _thread
import os

from . import _budget, _timing
from ._errors import gave_up_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._events import Event, GaveUp, Recovered, RetryScheduled
    from ._timing import Clock

LOGGER_NAME = "resilient_connect"

RETRY_MESSAGE = "%s: attempt %d failed: %s; retrying in %.2fs (%s, %.2fs elapsed)"
SUMMARY_MESSAGE = "%s: still failing: %d %s in %d %s over %.1fs (%d waiting); last error: %s (%s)"
GAVE_UP_MESSAGE = "%s: %s; last error: %s"
NOT_RETRIED_MESSAGE = "%s: attempt %d failed with a permanent error, not retrying (%s): %s"
RECOVERED_MESSAGE = "%s: succeeded on attempt %d after %.2fs"
OUTAGE_OVER_MESSAGE = "%s: recovered after %.2fs: %d %s in %d %s, first error: %s"

#: Seconds between two summary lines for one target (``RESILIENT_CONNECT_LOG_INTERVAL``).
DEFAULT_SUMMARY_INTERVAL = 5.0
#: Targets tracked at once; the oldest quiet ones are forgotten beyond this.
_MAX_TARGETS = 256

_DEBUG, _INFO, _WARNING, _ERROR = 10, 20, 30, 40


class _Outage:
    """What the hook knows of one target's current outage."""

    __slots__ = (
        "attempts",
        "budget_logged",
        "first_cause",
        "last_cause",
        "last_line",
        "last_rule",
        "loops",
        "quiet_since",
        "started",
        "waiting",
    )

    def __init__(self, now: float, cause: str, rule: str) -> None:
        self.started = now
        self.last_line = now
        self.attempts = 0
        self.loops: set[int] = set()
        self.waiting: set[int] = set()
        self.first_cause = cause
        self.last_cause = cause
        self.last_rule = rule
        self.budget_logged = False
        self.quiet_since: float | None = None


class LogEvents:
    """The default hook (:data:`log_event`): aggregated lines on the ``resilient_connect`` logger.

    Attributes:
        summary_interval: seconds between two summary lines of one target's
            outage; ``0`` writes a WARNING line for every failed attempt.
    """

    def __init__(
        self, *, summary_interval: float | None = None, clock: Clock | None = None
    ) -> None:
        if summary_interval is None:
            summary_interval = _interval_from_env()
        self.summary_interval = summary_interval
        self._clock = clock
        self._lock = _thread.allocate_lock()
        self._outages: dict[str, _Outage] = {}
        # When each target's last outage was reported over: the other loops of that outage
        # recover soon after, silently.
        self._ended: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        """Log ``event`` (the hook protocol)."""
        import logging

        logger = logging.getLogger(LOGGER_NAME)
        lines = self._lines(event)
        for level, message, args, extra in lines:
            _emit(logger, level, message, args, extra)
        own = _render(event)[1]
        if logger.isEnabledFor(_DEBUG) and all(line[1] != own for line in lines):
            # The per-attempt stream, for whoever asks for DEBUG.
            level, message, args = _render(event)
            _emit(logger, _DEBUG, message, args, extra_fields(event))

    def _lines(self, event: Event) -> list[tuple[int, str, tuple[object, ...], dict[str, Any]]]:
        """The lines a person sees for ``event`` (at most one, in practice)."""
        from ._events import GaveUp, NotRetried, Recovered, RetryScheduled

        if isinstance(event, (GaveUp, NotRetried)) and not (
            isinstance(event, GaveUp) and event.reason == "budget"
        ):
            self._leave(event)
            level, message, args = _render(event)
            return [(level, message, args, extra_fields(event))]
        immediate = _budget.UNLIMITED or self.summary_interval <= 0  # testing: no aggregation
        now = (self._clock or _timing.clock)()
        call = id(event.call) if event.call is not None else id(event)
        with self._lock:
            if isinstance(event, RetryScheduled):
                return self._failed(event, now, call, immediate=immediate)
            if isinstance(event, GaveUp):  # the budget ran out
                return self._budget_spent(event, now, call)
            if isinstance(event, Recovered):
                return self._recovered(event, now, call, immediate=immediate)
        level, message, args = _render(event)
        return [(level, message, args, extra_fields(event))]

    def _failed(
        self, event: RetryScheduled, now: float, call: int, *, immediate: bool
    ) -> list[tuple[int, str, tuple[object, ...], dict[str, Any]]]:
        outage = self._outages.get(event.target)
        quiet = None if outage is None else outage.quiet_since
        if quiet is not None and now - quiet >= self.summary_interval:
            outage = None  # every loop had stopped for a while: this is a new outage
        fresh = outage is None
        if outage is None:
            outage = self._start(event.target, now, event.cause, event.rule)
        outage.attempts += 1
        outage.loops.add(call)
        outage.waiting.add(call)
        outage.quiet_since = None
        outage.last_cause, outage.last_rule = event.cause, event.rule
        if fresh or immediate:
            level, message, args = _render(event)
            return [(level, message, args, extra_fields(event))]
        if now - outage.last_line < self.summary_interval:
            return []
        outage.last_line = now
        return [_summary(event.target, outage, now)]

    def _budget_spent(
        self, event: GaveUp, now: float, call: int
    ) -> list[tuple[int, str, tuple[object, ...], dict[str, Any]]]:
        outage = self._outages.get(event.target)
        if outage is None:
            outage = self._start(event.target, now, event.cause, event.rule)
        outage.attempts += 1
        self._stop_waiting(outage, call, now)
        if outage.budget_logged:
            return []
        outage.budget_logged = True
        level, message, args = _render(event)
        return [(level, message, args, extra_fields(event))]

    def _recovered(
        self, event: Recovered, now: float, call: int, *, immediate: bool
    ) -> list[tuple[int, str, tuple[object, ...], dict[str, Any]]]:
        outage = self._outages.pop(event.target, None)
        if immediate or outage is None:
            ended = self._ended.get(event.target)
            if not immediate and ended is not None and now - ended < self.summary_interval:
                return []  # another loop already reported the end of this outage
            level, message, args = _render(event)
            return [(level, message, args, extra_fields(event))]
        if len(self._ended) >= _MAX_TARGETS:
            self._ended.clear()
        self._ended[event.target] = now
        outage.attempts += 1
        outage.loops.add(call)
        args = (
            event.target,
            now - outage.started,
            outage.attempts,
            _plural(outage.attempts, "attempt"),
            len(outage.loops),
            _plural(len(outage.loops), "loop"),
            outage.first_cause,
        )
        extra = extra_fields(event)
        extra["resilient_connect_attempts"] = outage.attempts
        extra["resilient_connect_loops"] = len(outage.loops)
        return [(_INFO, OUTAGE_OVER_MESSAGE, args, extra)]

    def _leave(self, event: Event) -> None:
        """A loop ended without success (gave up, permanent error): it waits no more."""
        call = id(event.call) if event.call is not None else id(event)
        now = (self._clock or _timing.clock)()
        with self._lock:
            outage = self._outages.get(event.target)
            if outage is not None:
                outage.attempts += 1
                self._stop_waiting(outage, call, now)

    @staticmethod
    def _stop_waiting(outage: _Outage, call: int, now: float) -> None:
        outage.waiting.discard(call)
        if not outage.waiting:
            outage.quiet_since = now

    def _start(self, target: str, now: float, cause: str, rule: str) -> _Outage:
        if len(self._outages) >= _MAX_TARGETS:
            # Forget the outage that has been quiet the longest (or the oldest).
            stalest = min(
                self._outages,
                key=lambda name: self._outages[name].quiet_since or self._outages[name].started,
            )
            del self._outages[stalest]
        outage = self._outages[target] = _Outage(now, cause, rule)
        return outage

    def reset(self) -> None:
        """Forget every outage (for tests)."""
        with self._lock:
            self._outages.clear()
            self._ended.clear()


def _summary(
    target: str, outage: _Outage, now: float
) -> tuple[int, str, tuple[object, ...], dict[str, Any]]:
    loops = len(outage.loops)
    args = (
        target,
        outage.attempts,
        _plural(outage.attempts, "attempt"),
        loops,
        _plural(loops, "loop"),
        now - outage.started,
        len(outage.waiting),
        outage.last_cause,
        outage.last_rule,
    )
    extra: dict[str, Any] = {
        "resilient_connect_event": "Summary",
        "resilient_connect_target": target,
        "resilient_connect_elapsed": now - outage.started,
        "resilient_connect_cause": outage.last_cause,
        "resilient_connect_attempts": outage.attempts,
        "resilient_connect_loops": loops,
        "resilient_connect_waiting": len(outage.waiting),
    }
    return _WARNING, SUMMARY_MESSAGE, args, extra


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


def _interval_from_env() -> float:
    raw = os.environ.get("RESILIENT_CONNECT_LOG_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_SUMMARY_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        return DEFAULT_SUMMARY_INTERVAL
    return seconds if seconds >= 0 else DEFAULT_SUMMARY_INTERVAL


def extra_fields(event: Event) -> dict[str, Any]:
    """The namespaced ``extra`` keys of an event's log record (also structlog's keys)."""
    from ._events import RetryScheduled  # loaded with the first event, not at import

    extra: dict[str, Any] = {
        "resilient_connect_event": type(event).__name__,
        "resilient_connect_target": event.target,
        "resilient_connect_attempt": event.attempt,
        "resilient_connect_elapsed": event.elapsed,
        "resilient_connect_cause": event.cause,
    }
    if isinstance(event, RetryScheduled):
        extra["resilient_connect_delay"] = event.delay
    return extra


def _emit(
    logger: Any, level: int, message: str, args: tuple[object, ...], extra: dict[str, Any]
) -> None:
    import logging

    if logger.hasHandlers():
        logger.log(level, message, *args, extra=extra)
        return
    threshold = logger.level or _INFO
    if level >= threshold and not logger.disabled and not logging.root.manager.disable >= level:
        import sys

        stamp = timestamp()
        sys.stderr.write(f"{stamp} {LOGGER_NAME} {logging.getLevelName(level)}: {message % args}\n")
        sys.stderr.flush()


def timestamp() -> str:
    """Now as an ISO 8601 UTC timestamp with milliseconds (``2026-12-02T06:09:44.123Z``)."""
    import time

    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _render(event: Event) -> tuple[int, str, tuple[object, ...]]:
    from ._events import GaveUp, NotRetried, Recovered, RetryScheduled

    if isinstance(event, RetryScheduled):
        args: tuple[object, ...] = (
            event.target,
            event.attempt,
            event.cause,
            event.delay,
            event.rule,
            event.elapsed,
        )
        return _WARNING, RETRY_MESSAGE, args
    if isinstance(event, GaveUp):
        line = gave_up_line(event.attempt, event.elapsed, event.reason, event.nested)
        return _ERROR, GAVE_UP_MESSAGE, (event.target, line, event.cause)
    if isinstance(event, NotRetried):
        return _ERROR, NOT_RETRIED_MESSAGE, (event.target, event.attempt, event.rule, event.cause)
    if isinstance(event, Recovered):
        return _INFO, RECOVERED_MESSAGE, (event.target, event.attempt, event.elapsed)
    return _INFO, "%s: attempt %d: %s", (event.target, event.attempt, event.cause)


#: The default hook: an aggregating :class:`LogEvents` shared by every loop built with
#: ``hooks=None``. Set ``log_event.summary_interval`` (seconds) to change the interval.
log_event = LogEvents()
