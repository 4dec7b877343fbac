"""A write on an asyncio connection the peer already closed is a lost connection.

On CPython 3.12, 3.13.0-3.13.9 and 3.14.0, redis-py's asyncio client writing to a
pooled connection that the server (or a proxy) reset while it was idle gets the
transport's internals instead of a ``ConnectionError``: ``TypeError: 'NoneType' object
is not callable`` or ``AttributeError: 'NoneType' object has no attribute
'_add_writer'`` (redis-py issue 4287). Neither is a ``RedisError``, so no retry layer
sees it and the application gets a bare ``AttributeError`` after every Redis restart
(found by the chaos soak on 3.13.0). The async bridge turns exactly these errors, raised
inside asyncio's selector transport, into ``redis.exceptions.ConnectionError``, which
it retries (reconnecting) like any other lost connection.
"""

from __future__ import annotations

import redis.exceptions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeVar

    T = TypeVar("T")


def _raised_in_asyncio_transport(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename.replace("\\", "/")
    return filename.endswith("asyncio/selector_events.py")


def translating(do: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """``do``, with a closed-transport ``AttributeError``/``TypeError`` as ``ConnectionError``."""

    async def call() -> T:
        try:
            return await do()
        except (AttributeError, TypeError) as error:
            if not _raised_in_asyncio_transport(error):
                raise
            lost = redis.exceptions.ConnectionError(
                f"Connection lost: the asyncio transport was already closed "
                f"({type(error).__name__}: {error})"
            )
            raise lost from error

    return call
