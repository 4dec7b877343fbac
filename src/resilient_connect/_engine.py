"""The attempt loop: classify, decide, report, wait, try again.

The decision itself (:meth:`_Run.failed`) is pure bookkeeping on the policy,
the error and the current time; the sync and async loops around it differ
only in how they wait. State lives in a :class:`_Run` per call, so one
:class:`Retrier` serves any number of threads and tasks at once.

Deadline first: after a failure the engine draws the next delay; if the next
attempt would start at or past the deadline, it shortens that one wait so a
last attempt starts halfway through the time left (when at least
``LAST_CALL_MINIMUM`` seconds remain), and gives up after it. It never sleeps
into the deadline. Adapters read :meth:`Attempt.remaining` to bound their own
connect timeouts, so an attempt does not run past the deadline either.
"""

from __future__ import annotations

from . import _timing
from ._errors import RetryExhausted
from ._events import GaveUp, NotRetried, Recovered, RetryScheduled
from ._frames import release_frames

#: Seconds that must be left before the deadline for a shortened last attempt.
LAST_CALL_MINIMUM = 0.1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from typing import TypeVar

    from ._classify import Classifier
    from ._errors import GiveUpReason
    from ._events import Event, Hook
    from ._policy import Backoff, RandomSource
    from ._redact import Redactor
    from ._timing import AsyncSleep, Clock, Sleep

    T = TypeVar("T")


class Attempt:
    """One attempt of a retrying call, as seen by the code making it.

    Attributes:
        number: 1 for the first attempt.
        deadline: the policy's deadline on the engine's clock, or ``None``.
    """

    __slots__ = ("_clock", "deadline", "number")

    def __init__(self, number: int, deadline: float | None, clock: Clock) -> None:
        self.number = number
        self.deadline = deadline
        self._clock = clock

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` if there is none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._clock())

    def bound(self, timeout: float | None) -> float | None:
        """The smaller of ``timeout`` and the time left; ``None`` only if both are unbounded."""
        left = self.remaining()
        if left is None:
            return timeout
        return left if timeout is None else min(timeout, left)

    def __repr__(self) -> str:
        return f"Attempt(number={self.number}, remaining={self.remaining()})"


class Retrier:
    """Everything fixed about a retrying call: policy, classifier, target, hooks, time.

    Built once (at decoration time for :func:`~resilient_connect.retry`), then
    shared. ``hooks=None`` means the default logging hook; ``()`` means none.
    ``secrets`` are extra strings to scrub from causes (a ``password=``
    keyword, say). ``reraise=True`` ends a call that gives up by raising the
    last error itself (after the ``GaveUp`` event) instead of
    ``RetryExhausted``, for bridges into libraries whose callers expect their
    own exception types. ``clock``/``sleep``/``asleep``/``rng`` default to the
    :mod:`resilient_connect._timing` attributes and the :mod:`random` module,
    looked up at call time.
    """

    __slots__ = (
        "_asleep",
        "_clock",
        "_rng",
        "_sleep",
        "classify",
        "hooks",
        "policy",
        "reraise",
        "secrets",
        "target",
    )

    def __init__(
        self,
        *,
        policy: Backoff,
        classify: Classifier,
        target: str,
        hooks: Sequence[Hook] | None = None,
        secrets: Iterable[str] = (),
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        asleep: AsyncSleep | None = None,
        rng: RandomSource | None = None,
        reraise: bool = False,
    ) -> None:
        if hooks is None:
            from ._logging import log_event

            hooks = (log_event,)
        self.policy = policy
        self.classify = classify
        self.target = target
        self.hooks = tuple(hooks)
        self.secrets = tuple(secrets)
        self.reraise = reraise
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
        self._rng = rng

    @property
    def rng(self) -> RandomSource | None:
        """The random source given at construction (``None``: the ``random`` module)."""
        return self._rng

    def clock(self) -> Clock:
        """The clock this call uses."""
        return self._clock or _timing.clock

    def deadline(self, start: float) -> float | None:
        """The deadline of a call that started at ``start`` (``None``: no timeout)."""
        timeout = self.policy.timeout
        return None if timeout is None else start + timeout

    def call(self, fn: Callable[[Attempt], T]) -> T:
        """Call ``fn(attempt)`` until it returns, under the policy."""
        clock = self._clock or _timing.clock
        start = clock()
        deadline = self.deadline(start)
        try:
            return fn(Attempt(1, deadline, clock))
        except Exception as exc:  # noqa: BLE001 - classified in resume(); BaseException never caught
            first = exc
        return self.resume(fn, start, first)

    def resume(
        self,
        fn: Callable[[Attempt], T],
        start: float,
        first: Exception,
        *,
        classify: Classifier | None = None,
    ) -> T:
        """Continue after the first attempt (started at ``start``) failed with ``first``.

        ``classify`` replaces the retrier's classifier for this call only.
        """
        run = _Run(self, start, classify)
        failure: Exception | None = first
        del first
        sleep = self._sleep or _timing.sleep
        while failure is not None:
            delay = run.failed(failure)
            failure = None
            sleep(delay)
            attempt = run.next_attempt()
            try:
                result = fn(attempt)
            except Exception as exc:  # noqa: BLE001 - see call()
                failure = exc
        run.recovered()
        return result

    async def acall(self, fn: Callable[[Attempt], Awaitable[T]]) -> T:
        """Await ``fn(attempt)`` until it returns, under the policy."""
        clock = self._clock or _timing.clock
        start = clock()
        deadline = self.deadline(start)
        try:
            return await fn(Attempt(1, deadline, clock))
        except Exception as exc:  # noqa: BLE001 - see call()
            first = exc
        return await self.aresume(fn, start, first)

    async def aresume(
        self,
        fn: Callable[[Attempt], Awaitable[T]],
        start: float,
        first: Exception,
        *,
        classify: Classifier | None = None,
    ) -> T:
        """Async twin of :meth:`resume`; cancellation during a wait ends the call at once."""
        run = _Run(self, start, classify)
        failure: Exception | None = first
        del first
        asleep = self._asleep or _timing.asleep
        while failure is not None:
            delay = run.failed(failure)
            failure = None
            await asleep(delay)
            attempt = run.next_attempt()
            try:
                result = await fn(attempt)
            except Exception as exc:  # noqa: BLE001 - see call()
                failure = exc
        run.recovered()
        return result


class _Run:
    """Per-call state after the first failure."""

    __slots__ = (
        "attempt",
        "classify",
        "clock",
        "deadline",
        "last_call",
        "previous",
        "redactor",
        "retrier",
        "rng",
        "start",
    )

    def __init__(self, retrier: Retrier, start: float, classify: Classifier | None) -> None:
        self.retrier = retrier
        self.classify = retrier.classify if classify is None else classify
        self.clock = retrier.clock()
        self.start = start
        self.attempt = 1
        self.deadline = retrier.deadline(start)
        self.previous = retrier.policy.initial
        self.last_call = False
        rng = retrier.rng
        if rng is None:
            import random

            rng = random
        self.rng: RandomSource = rng
        self.redactor: Redactor | None = None

    def _redactor(self) -> Redactor:
        if self.redactor is None:
            from ._redact import Redactor

            self.redactor = Redactor(self.retrier.target, self.retrier.secrets)
        return self.redactor

    def _emit(self, event: Event) -> None:
        for hook in self.retrier.hooks:
            try:
                hook(event)
            except Exception as error:
                _chain(error, event.exception)
                raise

    def next_attempt(self) -> Attempt:
        self.attempt += 1
        return Attempt(self.attempt, self.deadline, self.clock)

    def failed(self, exc: Exception) -> float:
        """Return the delay before the next attempt, or raise (the error or ``RetryExhausted``).

        Redaction and event records cost microseconds, so they are built only
        when a hook will see them or an error message needs them.
        """
        retrier = self.retrier
        policy = retrier.policy
        try:
            verdict = self.classify(exc)
        except Exception as error:
            _chain(error, exc)
            raise
        now = self.clock()
        if not verdict.transient:
            if verdict.report:  # it reaches the caller: no password in its message
                self._redactor().scrub_exception(exc)
            if retrier.hooks and verdict.report:
                redactor = self._redactor()
                event = NotRetried(
                    target=redactor.target,
                    attempt=self.attempt,
                    elapsed=now - self.start,
                    exception=exc,
                    cause=redactor.describe(exc),
                    rule=verdict.rule,
                )
                self._emit(event)
            raise exc
        reason: GiveUpReason | None = None
        delay = 0.0
        if policy.attempts is not None and self.attempt >= policy.attempts:
            reason = "attempts"
        else:
            delay = policy.delay(self.attempt - 1, self.previous, self.rng)
            if self.deadline is not None and now + delay >= self.deadline:
                left = self.deadline - now
                if self.last_call or left < LAST_CALL_MINIMUM:
                    reason = "deadline"
                else:
                    # One last attempt halfway through the time left, rather than giving up
                    # with up to `maximum` seconds of the window unused.
                    delay = left / 2
                    self.last_call = True
        if reason is not None:
            self._give_up(exc, verdict.rule, reason, now - self.start)
        self.previous = delay
        if retrier.hooks:
            redactor = self._redactor()
            redactor.scrub_exception(exc)  # hooks get the error itself
            self._emit(
                RetryScheduled(
                    target=redactor.target,
                    attempt=self.attempt,
                    elapsed=now - self.start,
                    exception=exc,
                    cause=redactor.describe(exc),
                    delay=delay,
                    rule=verdict.rule,
                )
            )
        release_frames(exc)
        return delay

    def _give_up(self, exc: Exception, rule: str, reason: GiveUpReason, elapsed: float) -> None:
        redactor = self._redactor()
        redactor.scrub_exception(exc)
        cause = redactor.describe(exc)
        if self.retrier.hooks:
            self._emit(
                GaveUp(
                    target=redactor.target,
                    attempt=self.attempt,
                    elapsed=elapsed,
                    exception=exc,
                    cause=cause,
                    reason=reason,
                    rule=rule,
                )
            )
        release_frames(exc)
        if self.retrier.reraise:
            raise exc
        raise RetryExhausted(
            target=redactor.target,
            attempts=self.attempt,
            elapsed=elapsed,
            last_exception=exc,
            reason=reason,
            cause=cause,
        ) from exc

    def recovered(self) -> None:
        if self.retrier.hooks:
            elapsed = self.clock() - self.start
            self._emit(
                Recovered(
                    target=self._redactor().target,
                    attempt=self.attempt,
                    elapsed=elapsed,
                    exception=None,
                    cause="",
                )
            )


def _chain(error: Exception, real: BaseException | None) -> None:
    """Keep ``real`` (the attempt's error) behind an error an ``on=`` predicate or a hook raised.

    The bug in the predicate or hook propagates, and its traceback still shows the
    error that was being handled, as ``raise error from real`` would.
    """
    if real is not None and error is not real and error.__cause__ is None:
        error.__cause__ = real
