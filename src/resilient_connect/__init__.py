"""Get connected to databases and caches, and stay connected.

The core (this package) is a retry engine with immutable backoff policies, a
``retry`` decorator and ``connect_with_retry`` helpers. Driver adapters live
in :mod:`resilient_connect.psycopg`, :mod:`resilient_connect.sqlalchemy` and
:mod:`resilient_connect.redis`; :mod:`resilient_connect.testing` makes waits
instant in tests. Importing this package loads no driver and no asyncio.
"""

from ._errors import RetryExhausted
from ._events import Event, GaveUp, NotRetried, Recovered, RetryScheduled
from ._logging import log_event
from ._policy import Backoff
from ._redact import redact
from ._retry import aconnect_with_retry, connect_with_retry, retry
from ._version import __version__

__all__ = [
    "Backoff",
    "Event",
    "GaveUp",
    "NotRetried",
    "Recovered",
    "RetryExhausted",
    "RetryScheduled",
    "__version__",
    "aconnect_with_retry",
    "connect_with_retry",
    "log_event",
    "redact",
    "retry",
]
