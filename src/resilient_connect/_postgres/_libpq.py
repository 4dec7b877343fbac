"""How libpq counts a connect timeout, for the adapters whose drivers use it.

psycopg 3 and psycopg2 both connect through libpq, which takes
``connect_timeout`` in whole seconds, raises anything below 2 s to 2 s, and
applies it to each host of a multi-host conninfo, and to each address a host
name resolves to, in turn. DNS lookups are not covered at all. Pure arithmetic,
no driver import: the adapters turn :meth:`Attempt.share
<resilient_connect._engine.Attempt.share>` (the one rule for an attempt's time)
into libpq's units with these.
"""

from __future__ import annotations

import math

#: libpq never waits less than this for a connect, whatever ``connect_timeout`` says.
MIN_CONNECT_TIMEOUT = 2
#: Addresses assumed per host name when estimating the worst case (``localhost`` often
#: resolves to both 127.0.0.1 and ::1, and libpq tries each with the full timeout).
ADDRESSES_PER_HOST = 2


def connect_timeout(share: float) -> int:
    """libpq's ``connect_timeout`` for a per-host share of the time: rounded up, at least 2 s.

    Rounded up, so that libpq never ends an attempt before its share is used;
    when the time left is shorter than libpq would wait, the adapter cuts the
    attempt off at the deadline itself.
    """
    return max(MIN_CONNECT_TIMEOUT, math.ceil(share))


def worst_case(timeout: int, hosts: int) -> float:
    """Seconds one libpq connect may take with ``timeout`` per host, DNS aside."""
    return float(timeout * max(1, hosts) * ADDRESSES_PER_HOST)


def host_count(host: object) -> int:
    """Hosts in a libpq ``host`` / ``hostaddr`` value (comma-separated; empty is one)."""
    return max(1, str(host or "").count(",") + 1)
