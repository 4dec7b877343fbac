"""The public entry points: the ``retry`` decorator and the ``connect_with_retry`` helpers.

Whether a function is sync or async is decided once, when decorating. The
sync wrapper's success path is one clock read, one call and one ``try`` (its
first attempt is found on the stack by loops nested inside it); the async one
also puts its attempt in scope. All of the machinery (classifying, redacting,
events, sleeping) sits behind the first failure, in
:mod:`resilient_connect._engine`.
"""

from __future__ import annotations

import sys

from . import _budget, _hooks, _timing
from ._classify import classifier_for
from ._engine import Retrier
from ._scope import _SCOPE as SCOPE
from ._scope import ENCLOSING, RUNNING, register_wrapper
from ._statistics import RetryStatistics

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import Any, ParamSpec, TypeVar

    from ._budget import RetryBudget
    from ._classify import RetryOn
    from ._events import Hook
    from ._policy import Backoff, RandomSource
    from ._timing import AsyncSleep, Clock, Sleep

    P = ParamSpec("P")
    T = TypeVar("T")

_CO_COROUTINE = 0x80
_WRAPPER_ASSIGNMENTS = ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__")


def retry(
    *,
    on: RetryOn,
    policy: Backoff | None = None,
    target: str | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
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
            ``None`` for the process-wide hooks (:func:`set_default_hooks`,
            initially the logging hook), looked up when an event is emitted;
            ``()`` for none.
        budget: a :class:`~resilient_connect.RetryBudget` shared with other
            loops: every retry takes tokens from it, and the call gives up
            (``reason="budget"``) when it is short; ``None`` for none.
        clock: a monotonic clock in seconds; ``None`` for the engine's default
            (see also :mod:`resilient_connect.testing`).
        sleep: waits between attempts of a sync function; ``None`` for the default.
        asleep: the same for an ``async def`` function (a coroutine function).
        rng: the random source of the jitter (``random() -> float`` in
            ``[0, 1)``); ``None`` for the :mod:`random` module.

    Giving up raises :class:`~resilient_connect.RetryExhausted` from the last error.
    The decorated function has a ``statistics`` attribute, a
    :class:`~resilient_connect.RetryStatistics` counting all its calls
    (``RetryStatistics.of(fn)`` is the typed way to get it).
    """
    classify = classifier_for(on)

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        retrier = Retrier(
            policy=policy,
            classify=classify,
            target=target if target is not None else _name_of(fn),
            hooks=hooks,
            clock=clock,
            sleep=sleep,
            asleep=asleep,
            rng=rng,
            statistics=RetryStatistics(),
            budget=budget,
        )
        wrapper: Callable[P, T]
        if _is_async(fn):
            wrapper = _wrap(fn, _async_wrapper(fn, retrier))  # type: ignore[arg-type]
        else:
            wrapper = _wrap(fn, _sync_wrapper(fn, retrier))
        wrapper.statistics = retrier.statistics  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _sync_wrapper(fn: Callable[P, T], retrier: Retrier) -> Callable[P, T]:
    # Nothing but a clock read on the success path: the first attempt's scope lives on the
    # stack, where a nested loop finds it (resilient_connect._scope reads `start` and
    # `retrier` from this frame; keep those names).
    fixed_clock = retrier.fixed_clock
    successes = _hooks.Successes(retrier)
    assert retrier.statistics is not None
    # Bound once: after a success, a C-level counter step and two flag reads.
    count_success = retrier.statistics.record_first_success
    explicit = successes.explicit
    state = _hooks.STATE
    budget = _budget.resolve(retrier.budget)  # the decorator's own: never "default"
    target = retrier.target

    def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        start = (fixed_clock or _timing.clock)()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified by the engine; never BaseException
            first = exc
        else:
            count_success()
            if budget is not None:
                budget.succeeded(target)
            if explicit or state.watching:
                successes.report(start, retrier.clock(), counted=True)
            return result
        wrapper = sys._getframe()
        return retrier.resume_decorated(lambda _attempt: fn(*args, **kwargs), start, first, wrapper)

    return retrying


def _async_wrapper(fn: Callable[P, Awaitable[T]], retrier: Retrier) -> Callable[P, Awaitable[T]]:
    successes = _hooks.Successes(retrier)
    assert retrier.statistics is not None
    count_success = retrier.statistics.record_first_success
    explicit = successes.explicit
    state = _hooks.STATE
    budget = _budget.resolve(retrier.budget)  # the decorator's own: never "default"
    target = retrier.target

    timeout = retrier.policy.timeout
    fixed_clock = retrier.fixed_clock

    # Tasks interleave: the scope must be in the context (a context-variable write).
    # Retrier.first_scope() and _scope.enter()/leave() inlined: the async success path.
    async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
        clock = fixed_clock or _timing.clock
        now = clock()
        deadline = None if timeout is None else now + timeout
        scope = [deadline, clock, False, True, None, now, None, sys._getframe(), False]
        token = SCOPE.set(scope)
        scope[ENCLOSING] = token.old_value
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see the sync wrapper
            first = exc
        else:
            count_success()
            if budget is not None:
                budget.succeeded(target)
            if explicit or state.watching:
                successes.report(now, clock, counted=True)
            return result
        finally:
            scope[RUNNING] = False
            SCOPE.reset(token)
        return await retrier.aresume(lambda _attempt: fn(*args, **kwargs), scope, first)

    return retrying


def _register_sync_wrapper() -> None:
    code_type = type(_sync_wrapper.__code__)
    for constant in _sync_wrapper.__code__.co_consts:
        if isinstance(constant, code_type) and constant.co_name == "retrying":
            register_wrapper(constant)


_register_sync_wrapper()


def connect_with_retry(
    factory: Callable[..., T],
    /,
    *args: Any,
    policy: Backoff | None = None,
    on: RetryOn | None = None,
    target: str | None = None,
    hooks: Sequence[Hook] | None = None,
    budget: RetryBudget | None = None,
    **kwargs: Any,
) -> T:
    """Call ``factory(*args, **kwargs)`` until it returns a connection, and return it.

    ``on=None`` (the default) classifies with the adapter for the error's
    driver (psycopg, redis-py, SQLAlchemy) and treats any other ``OSError`` as
    transient. ``target`` defaults to the factory's name and its first
    argument, redacted, when that is a string (a URL or DSN). ``budget``: a
    :class:`~resilient_connect.RetryBudget` the retries take tokens from.
    """
    retrier = _connect_retrier(
        factory, args, kwargs, policy=policy, on=on, target=target, hooks=hooks, budget=budget
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
    budget: RetryBudget | None = None,
    **kwargs: Any,
) -> T:
    """Await ``factory(*args, **kwargs)`` until it returns a connection, and return it.

    The async twin of :func:`connect_with_retry`; waits with ``asyncio.sleep``,
    so cancelling the task ends the wait at once.
    """
    retrier = _connect_retrier(
        factory, args, kwargs, policy=policy, on=on, target=target, hooks=hooks, budget=budget
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
    budget: RetryBudget | None,
) -> Retrier:
    from ._redact import redact, secret_values, secrets_in

    if target is None:
        target = _name_of(factory)
        if args and isinstance(args[0], str):
            target = f"{target}({redact(args[0])!r})"
    secrets = [*secret_values(kwargs), *secrets_in(*args)]
    return Retrier(
        policy=policy,
        classify=classifier_for(on),
        target=target,
        hooks=hooks,
        secrets=secrets,
        budget=budget,
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
