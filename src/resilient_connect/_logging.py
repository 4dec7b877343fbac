"""The default hook: one log record per event on the ``resilient_connect`` logger.

Levels: WARNING for each retry, ERROR when giving up or meeting a permanent
error, INFO on recovery. Messages are stable (%-style, arguments passed
lazily) and every record carries namespaced ``extra`` fields:
``resilient_connect_event``, ``resilient_connect_target``,
``resilient_connect_attempt``, ``resilient_connect_elapsed``,
``resilient_connect_cause`` and, for retries, ``resilient_connect_delay``.

A process that fails before it configures logging must still say why: when
neither the logger nor any ancestor has a handler, the line is written to
stderr directly (INFO and above, unless the logger's own level says
otherwise).
"""

from __future__ import annotations

from ._errors import gave_up_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._events import Event

LOGGER_NAME = "resilient_connect"

RETRY_MESSAGE = "%s: attempt %d failed: %s; retrying in %.2fs (%s, %.2fs elapsed)"
GAVE_UP_MESSAGE = "%s: %s; last error: %s"
NOT_RETRIED_MESSAGE = "%s: attempt %d failed with a permanent error, not retrying (%s): %s"
RECOVERED_MESSAGE = "%s: succeeded on attempt %d after %.2fs"

_WARNING, _ERROR, _INFO = 30, 40, 20


def log_event(event: Event) -> None:
    """Log ``event`` on the ``resilient_connect`` logger (the default hook)."""
    import logging

    from ._events import RetryScheduled  # loaded with the first event, not at import

    level, message, args = _render(event)
    logger = logging.getLogger(LOGGER_NAME)
    extra: dict[str, Any] = {
        "resilient_connect_event": type(event).__name__,
        "resilient_connect_target": event.target,
        "resilient_connect_attempt": event.attempt,
        "resilient_connect_elapsed": event.elapsed,
        "resilient_connect_cause": event.cause,
    }
    if isinstance(event, RetryScheduled):
        extra["resilient_connect_delay"] = event.delay
    if logger.hasHandlers():
        logger.log(level, message, *args, extra=extra)
        return
    threshold = logger.level or _INFO
    if level >= threshold and not logger.disabled and not logging.root.manager.disable >= level:
        import sys

        sys.stderr.write(f"{LOGGER_NAME} {logging.getLevelName(level)}: {message % args}\n")
        sys.stderr.flush()


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
