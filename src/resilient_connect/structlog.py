"""Log events through structlog: ``hook()`` returns the hook.

Needs the ``[structlog]`` extra, imported when :func:`hook` is called. Each
event becomes one log call at the default hook's level (``warning`` per retry,
``error`` on give-up or a permanent error, ``info`` on recovery), with the
default hook's message as the event text and its ``extra`` keys as key-value
pairs, so that queries written for the stdlib hook's records match these:

* ``resilient_connect_event`` (``"RetryScheduled"``, ``"GaveUp"``,
  ``"NotRetried"``, ``"Recovered"``), ``resilient_connect_target``,
  ``resilient_connect_attempt``, ``resilient_connect_elapsed``,
  ``resilient_connect_cause``, and for retries ``resilient_connect_delay``;
* and, beyond those: ``resilient_connect_rule`` (failures),
  ``resilient_connect_reason`` (give-ups), ``resilient_connect_duration`` (the
  attempt's own seconds) and ``resilient_connect_call`` (the same number on
  every line of one call).

Targets and causes are redacted; no exception object or traceback is passed to
structlog (a driver's error can carry the password in its attributes).
"""

from __future__ import annotations

from ._events import GaveUp, NotRetried, RetryScheduled
from ._exporting import missing_extra
from ._logging import _render, extra_fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._events import Event

__all__ = ["StructlogHook", "hook"]

LOGGER_NAME = "resilient_connect"
_METHODS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def hook(*, logger: Any = None) -> StructlogHook:
    """A hook that logs each event on ``logger``, a structlog logger.

    ``None`` uses ``structlog.get_logger("resilient_connect")``, a lazy proxy:
    structlog may be configured after this call.
    """
    try:
        import structlog
    except ImportError as exc:
        raise missing_extra("structlog", "structlog") from exc
    if logger is None:
        logger = structlog.get_logger(LOGGER_NAME)
    return StructlogHook(logger)


class StructlogHook:
    """The hook :func:`hook` returns; call it with an :class:`~resilient_connect.Event`."""

    __slots__ = ("logger",)

    #: Log lines for calls that succeed first time would be noise: not asked for.
    wants_successes = False

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def __call__(self, event: Event) -> None:
        level, message, args = _render(event)
        keys: dict[str, object] = extra_fields(event)
        if isinstance(event, (RetryScheduled, GaveUp, NotRetried)):
            keys["resilient_connect_rule"] = event.rule
        if isinstance(event, GaveUp):
            keys["resilient_connect_reason"] = event.reason
        keys["resilient_connect_duration"] = event.duration
        if event.call is not None:
            keys["resilient_connect_call"] = event.call.id
        log = getattr(self.logger, _METHODS.get(level, "info"))
        log(message % args, **keys)
