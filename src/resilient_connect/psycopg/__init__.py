"""psycopg 3 adapter: connect to PostgreSQL with retries, and know which errors to retry.

:func:`connect_with_retry` and :func:`aconnect_with_retry` are drop-in
replacements for ``psycopg.connect`` and ``psycopg.AsyncConnection.connect``
that keep trying, under a :class:`~resilient_connect.Backoff` policy, while
the server is down, starting, recovering or out of connection slots, and fail
at once on errors another attempt cannot fix (wrong password, unknown
database, bad conninfo).

Classification (:func:`classify`, :func:`is_transient`, the :data:`RULES`
table) is the hard part. psycopg gives no SQLSTATE for any connection-time
failure, so those are judged by libpq's and the server's (English) message;
errors that carry a SQLSTATE (those raised in a session) are judged by it,
whatever the server's language; the message rules know the server's own
translations (generated from PostgreSQL's catalogues) and pgbouncer's texts.
An ``OperationalError`` no rule knows is
treated as transient (rule ``pg:unknown``) and retried until the deadline: it
may be a localised server message, a proxy's wording or a reworded libpq text.
Not retrying a not-ready state would defeat the purpose, while misjudging a
permanent one costs one deadline, with the text logged at every attempt. See
``docs/psycopg.md``.

Each attempt is bounded by the time left before the policy's deadline, not by
psycopg's connect timeout alone (which counts per host, at least 2 s, and is
130 s when unset; this adapter never leaves it unset): ``connect_timeout``
becomes the caller's or :data:`DEFAULT_CONNECT_TIMEOUT`, shared out so the
hosts fit in the time left; the async function also cancels the connect at the
deadline (never losing the caller's own cancellation), and the sync one waits
for the blocking connect on a helper thread that it abandons, and that closes
whatever it gets late, when the deadline comes first.

:func:`create_pool` and :func:`acreate_pool` return opened psycopg_pool pools
that wait for the server the same way at start-up, and whose reconnects use
:data:`DEFAULT_POOL_RECONNECT` (or ``reconnect=``) and this classification
(needs ``psycopg-pool``, part of the ``psycopg`` extra).
"""

from .._postgres._rules import RULES, UNKNOWN, Rule
from .._public import publish as _publish
from ._checks import problems as conninfo_problems
from ._classify import classify, is_transient
from ._connect import (
    DEFAULT_CONNECT_TIMEOUT,
    aconnect_with_retry,
    connect_with_retry,
)
from ._pool import DEFAULT_POOL_RECONNECT, acreate_pool, create_pool

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_POOL_RECONNECT",
    "RULES",
    "UNKNOWN",
    "Rule",
    "aconnect_with_retry",
    "acreate_pool",
    "classify",
    "connect_with_retry",
    "conninfo_problems",
    "create_pool",
    "is_transient",
]

_publish(__name__, globals(), __all__)
