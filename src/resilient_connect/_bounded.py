"""Bound one attempt by the time left before the deadline, when the driver cannot.

Drivers bound their connects with their own timeouts, which are coarse
(libpq: whole seconds, at least 2, per host, DNS not included). These helpers
cut an attempt off at the deadline instead:

* :func:`call_within` runs a blocking call on a helper thread and stops
  waiting for it when time is up. The abandoned thread ends by itself (the
  caller also lowers the driver's own timeout) and discards whatever it gets
  too late, so no connection leaks.
* :func:`await_within` awaits with a time limit and cancels on expiry.

Both raise the error built by ``timeout_error(seconds)`` *outside* any
``except`` block: as the ``__context__`` of our error, the expired wait (and a
cancelled connect's frames behind it) would keep a half-open socket alive as
long as our error lives.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Generic, TypeVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

#: Name of the helper threads, so tests and debuggers can tell them apart.
THREAD_NAME = "resilient_connect-attempt"


def call_within(
    seconds: float,
    call: Callable[[], T],
    *,
    timeout_error: Callable[[float], Exception],
    discard: Callable[[T], object],
) -> T:
    """Return ``call()`` if it finishes within ``seconds``; else raise ``timeout_error(seconds)``.

    ``call`` runs on a daemon thread, in a copy of the caller's context (so a
    retry loop it starts sees the attempt in scope). Its error is re-raised here without the
    helper thread's traceback (which would tie the driver's frames, and a
    half-open socket, to the error). A result that arrives after the caller
    stopped waiting is passed to ``discard`` (``conn.close``, say).
    """
    handoff: _Handoff[T] = _Handoff(discard)
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(handoff.run, call), name=THREAD_NAME, daemon=True
    )
    thread.start()
    try:
        handoff.done.wait(seconds)
    finally:
        result, error, finished = handoff.collect()
    if not finished:
        raise timeout_error(seconds)
    if error is not None:
        raise error
    return result  # type: ignore[return-value]  # finished without error: a result


async def await_within(
    awaitable: Awaitable[T], seconds: float | None, *, timeout_error: Callable[[float], Exception]
) -> T:
    """Await ``awaitable`` for at most ``seconds`` (``None``: no limit); cancel it on expiry."""
    import asyncio

    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        pass
    assert seconds is not None
    raise timeout_error(seconds)


class _Handoff(Generic[T]):
    """Passes the helper thread's outcome to the waiting thread, exactly once."""

    __slots__ = ("abandoned", "discard", "done", "error", "lock", "result")

    def __init__(self, discard: Callable[[T], object]) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.discard = discard
        self.result: T | None = None
        self.error: Exception | None = None
        self.abandoned = False

    def run(self, call: Callable[[], T]) -> None:
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting thread as is
            self._deliver(None, exc.with_traceback(None))
            return
        if not self._deliver(result, None):
            self.discard(result)

    def _deliver(self, result: T | None, error: Exception | None) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.result, self.error = result, error
            self.done.set()
            return True

    def collect(self) -> tuple[T | None, Exception | None, bool]:
        """Take the outcome if there is one; otherwise abandon the helper."""
        with self.lock:
            if not self.done.is_set():
                self.abandoned = True
                return None, None, False
            result, error = self.result, self.error
            self.result = self.error = None
            return result, error, True
