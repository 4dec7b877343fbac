"""Bound one attempt by the time left before the deadline, when the driver cannot.

Drivers bound their connects with their own timeouts, which are coarse
(libpq: whole seconds, at least 2, per host, DNS not included). These helpers
cut an attempt off at the deadline instead:

* :func:`call_within` runs a blocking call on a helper thread and stops
  waiting for it when time is up. The abandoned thread ends by itself (the
  caller also lowers the driver's own timeout) and discards whatever it gets
  too late, so no connection leaks.
* :func:`await_within` awaits with a time limit and cancels on expiry. It
  replaces :func:`asyncio.wait_for`, which before Python 3.12 can swallow a
  cancellation that arrives together with the inner result or error (the task
  then keeps retrying after ``task.cancel()``).

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
    import asyncio
    from collections.abc import Awaitable, Callable
    from typing import Any

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
    awaitable: Awaitable[T],
    seconds: float | None,
    *,
    timeout_error: Callable[[float], Exception],
    discard: Callable[[T], object] | None = None,
    abandon: bool = False,
) -> T:
    """Await ``awaitable`` for at most ``seconds`` (``None``: no limit); cancel it on expiry.

    Unlike :func:`asyncio.wait_for` before Python 3.12, this never loses a
    cancellation: when the waiting task is cancelled, :class:`asyncio.CancelledError`
    propagates even if the inner awaitable finished at the same moment (its
    result then goes to ``discard``, which may return an awaitable, and an
    error it raised is dropped). And it never loses an inner outcome: a result
    or error that is there when the time is up wins over the timeout. The inner
    awaitable runs as its own task (with a copy of the caller's context) and
    has always finished when this returns or raises, unless ``abandon``: then
    a timeout or a cancellation returns at once, and the cancelled inner task
    finishes on its own (its result goes to ``discard``). For work whose
    cancellation itself may hang: psycopg waits up to 5 s for a server to
    confirm a cancelled query, and a paused pgbouncer never does.
    """
    if seconds is None:
        return await awaitable
    import asyncio

    loop = asyncio.get_running_loop()
    inner: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    wakeup: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not wakeup.done():
            wakeup.set_result(None)

    inner.add_done_callback(wake)
    timer = loop.call_later(max(0.0, seconds), wake)
    try:
        await wakeup
    except asyncio.CancelledError:
        # Cancelled from outside: whatever `inner` did meanwhile, the cancellation wins.
        if abandon:
            _abandon(inner, discard)
            raise
        await _settle(inner)
        await _dispose(inner, discard)
        raise
    finally:
        timer.cancel()
        inner.remove_done_callback(wake)
    if not inner.done() and abandon:
        _abandon(inner, discard)
        raise timeout_error(seconds)
    if not inner.done():
        if await _settle(inner):
            # The caller cancelled us while we were cancelling `inner`: that wins.
            await _dispose(inner, discard)
            raise asyncio.CancelledError
        if inner.cancelled():
            raise timeout_error(seconds)
    # Finished in time, or finished anyway while being cancelled: its outcome wins.
    return inner.result()


# Abandoned inner tasks (and their clean-ups) until they finish on their own.
_ABANDONED: set[asyncio.Future[Any]] = set()


def _abandon(inner: asyncio.Future[T], discard: Callable[[T], object] | None) -> None:
    """Cancel ``inner`` and let it finish on its own; its outcome is dropped then."""
    import asyncio

    def dropped(done: asyncio.Future[T]) -> None:
        _ABANDONED.discard(done)
        if done.cancelled():
            return
        if done.exception() is None and discard is not None:
            outcome = discard(done.result())
            if asyncio.iscoroutine(outcome):
                closing = asyncio.ensure_future(outcome)
                _ABANDONED.add(closing)
                closing.add_done_callback(_ABANDONED.discard)

    _ABANDONED.add(inner)  # the loop keeps only weak references to tasks
    inner.cancel()
    inner.add_done_callback(dropped)


async def _settle(inner: asyncio.Future[Any]) -> bool:
    """Cancel ``inner`` and wait until it has finished; ``True`` if we were cancelled meanwhile.

    Keeps waiting through further cancellations (nothing may outlive the call);
    the caller re-raises the cancellation once ``inner`` is done.
    """
    import asyncio

    inner.cancel()
    interrupted = False
    while not inner.done():
        try:
            await asyncio.wait((inner,))
        except asyncio.CancelledError:
            interrupted = True
    return interrupted


async def _dispose(inner: asyncio.Future[T], discard: Callable[[T], object] | None) -> None:
    """Drop the outcome of a finished ``inner`` that nobody will get.

    An error is retrieved (so asyncio does not report it as never retrieved); a
    result goes to ``discard``, whose awaitable, if any, is awaited.
    """
    import asyncio

    if inner.cancelled() or inner.exception() is not None or discard is None:
        return
    try:
        outcome = discard(inner.result())
        if outcome is not None and hasattr(outcome, "__await__"):
            await outcome
    except asyncio.CancelledError:
        pass  # cancelled again while closing: the caller re-raises the cancellation anyway
    except Exception:  # noqa: BLE001, S110 - closing what nobody wants is best effort
        pass


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
            from ._frames import release_frames

            release_frames(exc)  # the driver's frames may hold the half-open socket
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
