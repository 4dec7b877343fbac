"""Get connected to databases and caches, and stay connected.

The core (this package) is a retry engine with immutable backoff policies, a
``retry`` decorator and ``connect_with_retry`` helpers. Driver adapters live
in :mod:`resilient_connect.psycopg`, :mod:`resilient_connect.sqlalchemy` and
:mod:`resilient_connect.redis`; :mod:`resilient_connect.testing` makes waits
instant in tests; :mod:`resilient_connect.opentelemetry`,
:mod:`resilient_connect.prometheus` and :mod:`resilient_connect.structlog` are
hooks that export events. Importing this package loads no driver, no exporter
library and no asyncio.
"""

from ._budget import RetryBudget, default_budget, set_default_budget
from ._errors import RetryExhausted
from ._events import Call, Event, GaveUp, NotRetried, Recovered, RetryScheduled, Succeeded
from ._hooks import default_hooks, set_default_hooks
from ._logging import log_event
from ._policy import Backoff
from ._redact import redact
from ._retry import aconnect_with_retry, connect_with_retry, retry
from ._statistics import RetryStatistics, collect_statistics
from ._version import __version__

__all__ = [
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
