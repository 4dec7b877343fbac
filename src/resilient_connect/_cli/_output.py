"""What the command line writes to stderr while it waits: text, a live line, or JSON.

Every line is written whole and flushed at once (a container's log collector
must see it before the process is replaced by ``exec``), under a lock, since
probes report from their own threads. Nothing here sees a raw target: labels
are redacted and causes come from the engine's events or from
``Target.describe``, both already scrubbed of secrets.

Modes:

* ``text`` - one line per retry (target, attempt, cause, next delay) and one
  per outcome. The default when stderr is not a terminal.
* ``live`` - on a terminal: a single status line, redrawn in place, instead of
  the retry lines; outcomes still get a line of their own.
* ``json`` - one JSON object per line for every engine event and outcome, for
  log shippers.
* ``quiet`` - only failures.
"""

from __future__ import annotations

import json
import threading
import time

from .. import _budget
from .._events import Event, GaveUp, NotRetried, Recovered, RetryScheduled
from .._logging import log_event, timestamp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TextIO, TypeAlias

    Mode: TypeAlias = Literal["text", "live", "json", "quiet"]
    Status: TypeAlias = Literal["waiting", "ready", "failed"]

PROG = "resilient-connect"
#: The exit code of a permanent failure (see :mod:`resilient_connect._cli`).
PERMANENT_EXIT = 3
_SPINNER = "|/-\\"
_EVENT_NAMES = {
    RetryScheduled: "retry",
    GaveUp: "gave_up",
    NotRetried: "not_retried",
    Recovered: "recovered",
}


class TargetState:
    """What the reporter knows about one target."""

    __slots__ = (
        "attempt",
        "cause",
        "delay",
        "failures",
        "label",
        "last_line",
        "rule",
        "started",
        "status",
    )

    def __init__(self, label: str) -> None:
        self.label = label
        self.status: Status = "waiting"
        self.attempt = 1
        self.cause = ""
        self.rule = ""
        self.delay: float | None = None
        self.failures = 0
        self.started = time.monotonic()
        self.last_line: float | None = None  # when a retry line was last written


def choose_mode(stream: TextIO, *, quiet: bool, as_json: bool, environ: dict[str, str]) -> Mode:
    """``json``/``quiet`` when asked; ``live`` on a capable terminal; else ``text``."""
    if as_json:
        return "json"
    if quiet:
        return "quiet"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty and environ.get("TERM", "") != "dumb":
        return "live"
    return "text"


class Reporter:
    """Writes progress for a set of targets in one of the modes."""

    def __init__(self, stream: TextIO, mode: Mode, labels: list[str], action: str) -> None:
        self.stream = stream
        self.mode: Mode = mode
        self.action = action
        self.targets = [TargetState(label) for label in labels]
        self.closed = False
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._ticks = 0
        self._status_drawn = False
        #: Seconds between two "still waiting" lines of one target in text mode (the
        #: logging hook's interval: RESILIENT_CONNECT_LOG_INTERVAL, else 5 s).
        self.summary_interval = log_event.summary_interval

    # ------------------------------------------------------------------ writing
    def _write_line(self, line: str) -> None:
        """Write one permanent line, timestamped (under the live line, if any).

        The caller holds the lock.
        """
        line = f"{timestamp()} {line}"
        if self._status_drawn:
            line = "\r\x1b[K" + line
            self._status_drawn = False
        self._write(line + "\n")
        if self.mode == "live" and not self.closed:
            self._draw_status()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # stderr closed or a broken pipe: progress is best effort, the exit code is not.
            pass

    def _emit_json(self, kind: str, **fields: object) -> None:
        record: dict[str, object] = {"time": timestamp(), "event": kind, **fields}
        self._write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def message(self, text: str) -> None:
        """A line that is not about one target: the command to exec cannot be run."""
        with self._lock:
            if self.mode == "json":
                self._emit_json("error", message=text)
            else:
                self._write_line(f"{PROG}: {text}")

    # ------------------------------------------------------------------ engine events
    def event(self, index: int, event: Event) -> None:
        """Record an engine event for target ``index`` (called from probe threads)."""
        with self._lock:
            if self.closed:
                return
            state = self.targets[index]
            state.attempt = event.attempt
            if event.cause:
                state.cause = event.cause
            rule = getattr(event, "rule", "")
            if rule:
                state.rule = rule
            if isinstance(event, RetryScheduled):
                state.delay = event.delay
                state.attempt = event.attempt + 1
            if self.mode == "json":
                self._emit_json(
                    _EVENT_NAMES.get(type(event), type(event).__name__),
                    target=state.label,
                    **_event_fields(event),
                )
            elif self.mode == "text" and isinstance(event, RetryScheduled):
                self._retry_line(state, event)
            elif self.mode == "live":
                self._draw_status()

    def _retry_line(self, state: TargetState, event: RetryScheduled) -> None:
        """The first failure of a target, then at most one summary per interval."""
        state.failures += 1
        now = time.monotonic()
        immediate = _budget.UNLIMITED or self.summary_interval <= 0  # instant_waits: each
        if state.last_line is None or immediate:
            self._write_line(
                f"{PROG}: {state.label}: attempt {event.attempt} failed ({event.rule}): "
                f"{event.cause}; next attempt in {event.delay:.2f}s"
            )
            state.last_line = now
        elif now - state.last_line >= self.summary_interval:
            plural = "attempt" if state.failures == 1 else "attempts"
            self._write_line(
                f"{PROG}: {state.label}: still waiting: {state.failures} failed {plural} "
                f"over {now - state.started:.1f}s; last error ({event.rule}): {event.cause}"
            )
            state.last_line = now

    # ------------------------------------------------------------------ outcomes
    def ready(self, index: int, elapsed: float) -> None:
        """Target ``index`` is ready."""
        with self._lock:
            if self.closed:
                return
            state = self.targets[index]
            state.status = "ready"
            attempts = state.attempt
            if self.mode == "json":
                self._emit_json(
                    "ready", target=state.label, attempts=attempts, elapsed=round(elapsed, 3)
                )
            elif self.mode != "quiet":
                plural = "attempt" if attempts == 1 else "attempts"
                after = "" if self.action == "check" else f" after {attempts} {plural}"
                self._write_line(f"{PROG}: {state.label}: ready{after} in {elapsed:.2f}s")

    def failed(self, index: int, code: int, text: str, elapsed: float) -> None:
        """Target ``index`` failed for good; ``text`` says why (already redacted).

        For a permanent failure (``code`` 3) ``text`` is the error's description.
        """
        with self._lock:
            if self.closed:
                return
            state = self.targets[index]
            state.status = "failed"
            if code == PERMANENT_EXIT:
                rule = f" ({state.rule})" if state.rule else ""
                text = f"permanent failure{rule}, not retried: {text}"
            if self.mode == "json":
                self._emit_json(
                    "failed",
                    target=state.label,
                    exit_code=code,
                    permanent=code == PERMANENT_EXIT,
                    attempts=state.attempt,
                    elapsed=round(elapsed, 3),
                    rule=state.rule,
                    message=text,
                )
            else:
                self._write_line(f"{PROG}: {state.label}: {text}")

    def finish(self, code: int, summary: str, elapsed: float) -> None:
        """The overall outcome; ends the live line. Further events are dropped."""
        with self._lock:
            if self.closed:
                return
            self.closed = True  # also: no live line is redrawn under the summary
            if self.mode == "json":
                self._emit_json(
                    "done",
                    action=self.action,
                    exit_code=code,
                    elapsed=round(elapsed, 3),
                    message=summary,
                )
            elif self.mode != "quiet" or code != 0:
                self._write_line(f"{PROG}: {summary}")

    # ------------------------------------------------------------------ live line
    def tick(self) -> None:
        """Redraw the live line (the main thread calls this a few times a second)."""
        if self.mode != "live":
            return
        with self._lock:
            if not self.closed:
                self._ticks += 1
                self._draw_status()

    def _draw_status(self) -> None:
        """Caller holds the lock."""
        elapsed = time.monotonic() - self._start
        spinner = _SPINNER[self._ticks % len(_SPINNER)]
        head = f"{spinner} waiting {elapsed:.1f}s"
        width = _terminal_width(self.stream) - 1  # writing the last column may wrap
        # Each target gets an equal share of the line; its cause is cut to fit in it.
        share = max((width - len(head)) // len(self.targets) - 3, 10)
        parts = []
        for state in self.targets:
            name = _short(state.label)
            if state.status != "waiting":
                part = f"{name} {state.status}"
            else:
                part = f"{name} attempt {state.attempt}"
                # The rule ("pg:starting-up") says it in little space; the outcome line
                # gives the whole cause.
                if state.rule or state.cause:
                    part += f" ({state.rule or state.cause})"
            parts.append(part if len(part) <= share else part[: share - 3] + "...")
        line = " | ".join([head, *parts])
        if len(line) > width:
            line = line[: max(width - 3, 1)] + "..."
        self._write("\r\x1b[K" + line)
        self._status_drawn = True


def _short(label: str) -> str:
    """``scheme://host:port`` of a URL label (no user, no path), for the live line."""
    scheme, sep, rest = label.partition("://")
    if not sep:
        return label
    authority = rest
    for stop in "/?#":
        authority = authority.partition(stop)[0]
    return f"{scheme}://{authority.rpartition('@')[2]}"


def _event_fields(event: Event) -> dict[str, object]:
    fields: dict[str, object] = {
        "attempt": event.attempt,
        "elapsed": round(event.elapsed, 3),
        "cause": event.cause,
    }
    if isinstance(event, RetryScheduled):
        fields["delay"] = round(event.delay, 3)
        fields["rule"] = event.rule
    elif isinstance(event, GaveUp):
        fields["reason"] = event.reason
        fields["rule"] = event.rule
    elif isinstance(event, NotRetried):
        fields["rule"] = event.rule
    return fields


def _terminal_width(stream: TextIO) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80
