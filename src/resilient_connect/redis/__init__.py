"""redis-py adapter: wait until Redis answers, then keep the client connected.

``connect_with_retry(url)`` returns a ``redis.Redis`` that has answered
``PING``; ``aconnect_with_retry`` returns a ``redis.asyncio.Redis``. While
waiting, each attempt is **one** bounded connect: the client's own ``Retry`` is
held to a single attempt and its socket timeouts are cut to the time left, so
the policy's deadline holds even against a server that accepts and never
answers. Errors are judged by one table (:data:`RULES`): a wrong or missing
password fails on the first attempt, although redis-py files it under
``ConnectionError``.

The returned client carries the **runtime bridge**: a ``redis.retry.Retry``
driven by our engine (:func:`runtime_retry`), so a Redis restart while the
application runs is absorbed with the same backoff, classification and log
lines. ``reconnect=`` chooses its policy (default :data:`DEFAULT_RECONNECT`,
the same runtime default as the other adapters': at most 15 s per command);
pass redis-py's own ``retry=`` instead to keep full control.

Sentinel: :func:`connect_sentinel_with_retry` waits for the sentinels and for
a master of the service. Cluster: pass ``factory=RedisCluster.from_url``.
Importing this module loads the rule table only, which needs no part of
redis-py; the connect functions and the bridge (and with them redis-py's
clients, ``redis.asyncio`` and ``redis.sentinel``) are imported when first
used, and never by ``import resilient_connect``.
"""

from .._policy import DEFAULT_RECONNECT
from .._public import publish as _publish
from ._rules import RULES, Rule, classify, is_transient

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._bridge import PolicyBackoff, aruntime_retry, runtime_retry
    from ._connect import (
        DEFAULT_URL,
        aconnect_sentinel_with_retry,
        aconnect_with_retry,
        connect_sentinel_with_retry,
        connect_with_retry,
    )

# Loaded on first use: classifying an error (the engine's default classifier does) needs
# only the rule table, not redis.asyncio, redis.sentinel or the bridge.
_LAZY = {
    "PolicyBackoff": "._bridge",
    "aruntime_retry": "._bridge",
    "runtime_retry": "._bridge",
    "DEFAULT_URL": "._connect",
    "aconnect_sentinel_with_retry": "._connect",
    "aconnect_with_retry": "._connect",
    "connect_sentinel_with_retry": "._connect",
    "connect_with_retry": "._connect",
}


def __getattr__(name: str) -> object:
    if name == "DEFAULT_RUNTIME_POLICY":
        import warnings

        warnings.warn(
            "DEFAULT_RUNTIME_POLICY is deprecated: it is DEFAULT_RECONNECT",
            DeprecationWarning,
            stacklevel=2,
        )
        return DEFAULT_RECONNECT
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    _publish(__name__, {name: value}, (name,))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_RECONNECT",
    "DEFAULT_URL",
    "RULES",
    "PolicyBackoff",
    "Rule",
    "aconnect_sentinel_with_retry",
    "aconnect_with_retry",
    "aruntime_retry",
    "classify",
    "connect_sentinel_with_retry",
    "connect_with_retry",
    "is_transient",
    "runtime_retry",
]

_publish(__name__, globals(), __all__)
