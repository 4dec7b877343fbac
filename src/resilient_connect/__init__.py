"""Get connected to databases and caches, and stay connected.

The core (this package) is a retry engine with immutable backoff policies, a
``retry`` decorator and ``connect_with_retry`` helpers. Driver adapters live
in :mod:`resilient_connect.psycopg`, :mod:`resilient_connect.sqlalchemy` and
:mod:`resilient_connect.redis`; :mod:`resilient_connect.testing` makes waits
instant in tests; :mod:`resilient_connect.opentelemetry`,
:mod:`resilient_connect.prometheus` and :mod:`resilient_connect.structlog` are
hooks that export events. Importing this package loads no driver, no exporter
library and no asyncio; the event records load with the first event.
"""

from ._budget import RetryBudget, default_budget, set_default_budget
from ._classify import Verdict
from ._errors import RetryExhausted
from ._hooks import default_hooks, set_default_hooks
from ._logging import log_event
from ._policy import DEFAULT_RECONNECT, Backoff
from ._public import publish as _publish
from ._redact import redact
from ._retry import aconnect_with_retry, connect_with_retry, retry
from ._statistics import RetryStatistics, collect_statistics
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._events import Call, Event, GaveUp, NotRetried, Recovered, RetryScheduled, Succeeded

__all__ = [
    "DEFAULT_RECONNECT",
    "Backoff",
    "Call",
    "Event",
    "GaveUp",
    "NotRetried",
    "Recovered",
    "RetryBudget",
    "RetryExhausted",
    "RetryScheduled",
    "RetryStatistics",
    "Succeeded",
    "Verdict",
    "__version__",
    "aconnect_with_retry",
    "collect_statistics",
    "connect_with_retry",
    "default_budget",
    "default_hooks",
    "log_event",
    "redact",
    "retry",
    "set_default_budget",
    "set_default_hooks",
]

# Built only when an attempt fails (or a hook asks for successes), so loaded then: six
# dataclasses cost about as much import time as the rest of the core together.
_EVENTS = frozenset(
    {"Call", "Event", "GaveUp", "NotRetried", "Recovered", "RetryScheduled", "Succeeded"}
)


def __getattr__(name: str) -> object:
    if name not in _EVENTS:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    from . import _events

    value = getattr(_events, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _EVENTS)


_publish(__name__, globals(), __all__)
