"""The public entry points: the ``retry`` decorator and the ``connect_with_retry`` helpers.

Whether a function is sync or async is decided once, when decorating. The
wrapper's success path is one clock read, one call and one ``try``; all of
the machinery (classifying, redacting, events, sleeping) sits behind the first
failure, in :mod:`resilient_connect._engine`.
"""

from __future__ import annotations

from . import _timing
from ._classify import classifier_for
from ._engine import Retrier
from ._policy import Backoff

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import Any, ParamSpec, TypeVar

    from ._classify import RetryOn
    from ._events import Hook
    from ._policy import RandomSource
    from ._timing import AsyncSleep, Clock, Sleep

    P = ParamSpec("P")
    T = TypeVar("T")

_CO_COROUTINE = 0x80
_DEFAULT_POLICY = Backoff()
_WRAPPER_ASSIGNMENTS = ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__")


def retry(
    *,
    on: RetryOn,
    policy: Backoff | None = None,
    target: str | None = None,
    hooks: Sequence[Hook] | None = None,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    asleep: AsyncSleep | None = None,
    rng: RandomSource | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Retry the decorated function (sync or ``async def``) on errors matched by ``on``.

    Args:
        on: what to retry: an exception type, a tuple of types, or a predicate
            ``(exc) -> bool``. Errors it does not match propagate unchanged
            after the attempt that raised them. Only ``Exception`` subclasses
            are ever considered: ``KeyboardInterrupt``, ``SystemExit`` and
            ``asyncio.CancelledError`` always propagate at once.
        policy: delays and limits; ``None`` for ``Backoff()`` (60 s deadline).
        target: the name shown in logs, events and errors (redacted);
            ``None`` for the function's qualified name.
        hooks: callables given each :class:`~resilient_connect.Event`;
            ``None`` for the default logging hook, ``()`` for none.
        clock, sleep, asleep, rng: injectable time and randomness, mainly for
            tests (see also :mod:`resilient_connect.testing`).

    Giving up raises :class:`~resilient_connect.RetryExhausted` from the last error.
    """
    classify = classifier_for(on)

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        retrier = Retrier(
            policy=_DEFAULT_POLICY if policy is None else policy,
            classify=classify,
            target=target if target is not None else _name_of(fn),
            hooks=hooks,
            clock=clock,
            sleep=sleep,
            asleep=asleep,
            rng=rng,
        )
        if _is_async(fn):
            return _wrap(fn, _async_wrapper(fn, retrier, clock))  # type: ignore[arg-type]
        return _wrap(fn, _sync_wrapper(fn, retrier, clock))

    return decorate


def _sync_wrapper(fn: Callable[P, T], retrier: Retrier, clock: Clock | None) -> Callable[P, T]:
    def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        start = (clock or _timing.clock)()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified by the engine; never BaseException
            first = exc
        return retrier.resume(lambda _attempt: fn(*args, **kwargs), start, first)

    return retrying


def _async_wrapper(
    fn: Callable[P, Awaitable[T]], retrier: Retrier, clock: Clock | None
) -> Callable[P, Awaitable[T]]:
    async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        start = (clock or _timing.clock)()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see the sync wrapper
            first = exc
        return await retrier.aresume(lambda _attempt: fn(*args, **kwargs), start, first)

    return retrying


def connect_with_retry(
    factory: Callable[..., T],
    /,
    *args: Any,
    policy: Backoff | None = None,
    on: RetryOn | None = None,
    target: str | None = None,
    hooks: Sequence[Hook] | None = None,
    **kwargs: Any,
) -> T:
    """Call ``factory(*args, **kwargs)`` until it returns a connection, and return it.

    ``on=None`` (the default) classifies with the adapter for the error's
    driver (psycopg, redis-py, SQLAlchemy) and treats any other ``OSError`` as
    transient. ``target`` defaults to the factory's name and its first
    argument, redacted, when that is a string (a URL or DSN).
    """
    retrier = _connect_retrier(
        factory, args, kwargs, policy=policy, on=on, target=target, hooks=hooks
    )
    return retrier.call(lambda _attempt: factory(*args, **kwargs))


async def aconnect_with_retry(
    factory: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    policy: Backoff | None = None,
    on: RetryOn | None = None,
    target: str | None = None,
    hooks: Sequence[Hook] | None = None,
    **kwargs: Any,
) -> T:
    """Await ``factory(*args, **kwargs)`` until it returns a connection, and return it.

    The async twin of :func:`connect_with_retry`; waits with ``asyncio.sleep``,
    so cancelling the task ends the wait at once.
    """
    retrier = _connect_retrier(
        factory, args, kwargs, policy=policy, on=on, target=target, hooks=hooks
    )
    return await retrier.acall(lambda _attempt: factory(*args, **kwargs))


def _connect_retrier(
    factory: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    policy: Backoff | None,
    on: RetryOn | None,
    target: str | None,
    hooks: Sequence[Hook] | None,
) -> Retrier:
    from ._redact import redact, secret_values, secrets_in

    if target is None:
        target = _name_of(factory)
        if args and isinstance(args[0], str):
            target = f"{target}({redact(args[0])!r})"
    secrets = [*secret_values(kwargs), *secrets_in(*args)]
    return Retrier(
        policy=_DEFAULT_POLICY if policy is None else policy,
        classify=classifier_for(on),
        target=target,
        hooks=hooks,
        secrets=secrets,
    )


def _name_of(fn: Callable[..., object]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__qualname__


def _is_async(fn: Callable[..., object]) -> bool:
    code = getattr(fn, "__code__", None)
    if (
        code is not None
        and type(fn).__name__ == "function"
        and not hasattr(fn, "_is_coroutine_marker")
    ):
        return bool(code.co_flags & _CO_COROUTINE)
    # Bound methods, partials, callable objects and marked functions: ask inspect.
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we want the method, not callable()
    )


def _wrap(wrapped: Callable[..., object], wrapper: Callable[P, T]) -> Callable[P, T]:
    """Copy the identifying attributes, like ``functools.wraps`` (not imported: start-up cost)."""
    for name in _WRAPPER_ASSIGNMENTS:
        if hasattr(wrapped, name):
            setattr(wrapper, name, getattr(wrapped, name))
    wrapper.__dict__.update(getattr(wrapped, "__dict__", {}))
    wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]
    return wrapper
