"""The attempt loop: classify, decide, report, wait, try again.

The decision itself (:meth:`_Run.failed`) is pure bookkeeping on the policy,
the error and the current time; the sync and async loops around it differ
only in how they wait. State lives in a :class:`_Run` per call, so one
:class:`Retrier` serves any number of threads and tasks at once.

Deadline first: after a failure the engine draws the next delay; if the next
attempt would start at or past the deadline, it shortens that one wait so a
last attempt starts halfway through the time left (when at least
``LAST_CALL_MINIMUM`` seconds remain), and gives up after it. It never sleeps
into the deadline. Adapters bound their own connect timeouts with
:meth:`Attempt.share`, so an attempt does not run past the deadline either.

Nesting. While an attempt runs, it is *the attempt in scope*
(:mod:`resilient_connect._scope` says how it is found: a context variable, and
the stack for a decorated sync function's first attempt). A loop that starts
inside it:

* is bounded by the smallest deadline in scope (its own policy's, or an
  enclosing attempt's, whichever comes first): every wait, every attempt and
  every connect timeout derived from :meth:`Attempt.share`;
* keeps retrying under its own policy within that bound, unless the
  enclosing loop *owns the retries* (``Retrier(owns_retries=True)``): then it
  makes exactly one attempt and lets its error through, unreported, for the
  enclosing loop to judge. The adapters' start-up waits and the redis bridge
  own their retries, because the loops inside them (a pool's reconnect, a
  connection's own retry) would only repeat the same attempts;
* when it gives up because an *enclosing* deadline came, it says so on the
  enclosing attempts, and they give up at once too, with reason
  ``"deadline"`` and a message naming the nested loop: there is no time left
  for another attempt, and retrying the inner loop's whole wait would
  multiply it.
"""

from __future__ import annotations

import sys

from . import _budget, _hooks, _statistics, _timing
from ._errors import RetryExhausted, gave_up_line
from ._frames import release_frames
from ._policy import Backoff
from ._scope import (
    CLOCK,
    NESTED,
    OWNER,
    STARTED,
    enter,
    inside_owner,
    leave,
    link,
    mark_nested,
    owns_inner_retries,
    record,
    take_stack_mark,
    tightest,
)

#: Seconds that must be left before the deadline for a shortened last attempt.
LAST_CALL_MINIMUM = 0.1
#: The smallest per-attempt timeout handed to a driver (0 would mean "non-blocking").
SMALLEST_TIMEOUT = 0.001
#: Extra seconds a driver may spend outside its own connect timeout in one attempt
#: (a DNS lookup: glibc gives up after 2 x 5 s). See :meth:`Attempt.driver_can_bound`.
DRIVER_SLACK = 10.0
#: The policy used when a call passes ``policy=None`` and its adapter has no other default.
DEFAULT_POLICY = Backoff()

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from types import FrameType
    from typing import Any, Literal, NoReturn, TypeVar

    from ._budget import RetryBudget
    from ._classify import Classifier, Cost, Verdict
    from ._errors import GiveUpReason
    from ._events import Event, Hook
    from ._policy import RandomSource
    from ._redact import Redactor
    from ._statistics import RetryStatistics
    from ._timing import AsyncSleep, Clock, Sleep

    T = TypeVar("T")
    FailureCallback = Callable[[Exception], object]

_UNKNOWN = object()


def _is_timeout(rule: str) -> bool:
    """Whether a rule names a timeout (``pg:timeout``, ``os-error:TimeoutError``...)."""
    return "timeout" in rule.lower()


def refund(budget: RetryBudget | Literal["default"], target: str) -> None:
    """A call to ``target`` succeeded at once: its budget (``"default"``: the process-wide
    one) gets tokens back, and no loop holds back for the target any more."""
    resolved = _budget.resolve(budget)
    if resolved is not None:
        resolved.succeeded(target)


class Attempt:
    """One attempt of a retrying call, as seen by the code making it.

    Attributes:
        number: 1 for the first attempt.
        deadline: the deadline on ``clock``, or ``None``: the policy's, or an
            enclosing call's when that comes first. Found on first use (the
            redis bridge's success path never needs it).
        clock: the engine's clock for this call.
    """

    __slots__ = ("_deadline", "_scope", "clock", "number")

    def __init__(
        self,
        number: int,
        deadline: float | None,
        clock: Clock,
        scope: list[Any] | None = None,
    ) -> None:
        self.number = number
        self.clock = clock
        self._scope = scope
        self._deadline: object = _UNKNOWN if scope is not None else deadline

    @property
    def deadline(self) -> float | None:
        """The deadline that applies to this attempt (the tightest in scope)."""
        deadline = self._deadline
        if deadline is _UNKNOWN:
            assert self._scope is not None
            deadline = self._deadline = tightest(self._scope)[0]
        return deadline  # type: ignore[return-value]  # a float or None once known

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` if there is none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock())

    def bound(self, timeout: float | None) -> float | None:
        """The smaller of ``timeout`` and the time left; ``None`` only if both are unbounded."""
        left = self.remaining()
        if left is None:
            return timeout
        return left if timeout is None else min(timeout, left)

    def share(self, own: float | None, *, hosts: int = 1) -> float | None:
        """The per-host timeout of this attempt: the one rule every adapter and the CLI use.

        ``own`` is the caller's per-attempt limit (or the adapter's default;
        ``None``: none). A driver that tries ``hosts`` hosts one after another
        gives each an equal share of the time left, and none more than ``own``:
        ``min(own, remaining / hosts)``, at least :data:`SMALLEST_TIMEOUT`.
        ``None`` only when there is neither a limit nor a deadline.
        """
        left = self.remaining()
        if left is not None:
            left /= max(1, hosts)
            own = left if own is None else min(own, left)
        return own if own is None else max(own, SMALLEST_TIMEOUT)

    def driver_can_bound(self, worst_case: float | None) -> bool:
        """Whether the driver's own timeouts (``worst_case`` seconds in all) keep the deadline.

        ``worst_case`` is what the driver may take in one attempt with the
        timeouts it was given (``None``: unbounded). When it does not fit in the
        time left with :data:`DRIVER_SLACK` to spare, the adapter cuts the
        attempt off at the deadline itself (helper thread, or cancellation).
        """
        left = self.remaining()
        if left is None:
            return True
        return worst_case is not None and worst_case + DRIVER_SLACK <= left

    def __repr__(self) -> str:
        return f"Attempt(number={self.number}, remaining={self.remaining()})"


class Retrier:
    """Everything fixed about a retrying call: policy, classifier, target, hooks, time.

    Built once (at decoration time for :func:`~resilient_connect.retry`), then
    shared. ``policy=None`` means :data:`DEFAULT_POLICY`. ``hooks=None`` means
    the process-wide hooks (:func:`~resilient_connect.set_default_hooks`),
    looked up when an event is emitted; ``()`` means none. ``statistics`` (a
    decorated function's own) records every call; statistics collected in
    scope record too. ``secrets`` are extra strings
    to scrub from causes (a ``password=`` keyword, say).

    Giving up: ``reraise=False`` raises :class:`~resilient_connect.RetryExhausted`
    from the last error; ``reraise=True`` raises the last error itself, with a
    note saying that and why we gave up (after the ``GaveUp`` event), for
    bridges into libraries whose callers expect their own exception types.
    ``owns_retries=True``: loops started inside this retrier's attempts make
    one attempt each (see the module docstring). ``report_successes=False``:
    a first-time success is not reported (the redis bridge wraps every
    command). ``budget``: the :class:`~resilient_connect.RetryBudget` every
    retry takes tokens from (``"default"``: the process-wide one, looked up at
    each call; ``None``: none). ``clock``/``sleep``/``asleep``/``rng``
    default to the :mod:`resilient_connect._timing` attributes and the
    :mod:`random` module, looked up at call time.
    """

    __slots__ = (
        "_asleep",
        "_clock",
        "_sleep",
        "budget",
        "classify",
        "hooks",
        "owns_retries",
        "policy",
        "reraise",
        "rng",
        "secrets",
        "statistics",
        "successes",
        "target",
    )

    def __init__(
        self,
        *,
        policy: Backoff | None = None,
        classify: Classifier,
        target: str,
        hooks: Sequence[Hook] | None = None,
        secrets: Iterable[str] = (),
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        asleep: AsyncSleep | None = None,
        rng: RandomSource | None = None,
        reraise: bool = False,
        owns_retries: bool = False,
        statistics: RetryStatistics | None = None,
        report_successes: bool = True,
        budget: RetryBudget | Literal["default"] | None = None,
    ) -> None:
        self.policy = DEFAULT_POLICY if policy is None else policy
        self.classify = classify
        self.target = target
        self.hooks = None if hooks is None else tuple(hooks)
        self.statistics = statistics
        self.budget = budget
        # How first-time successes are reported (statistics in scope, hooks that ask);
        # None for loops whose every call is a success worth no report (the redis bridge).
        self.successes = _hooks.Successes(self) if report_successes else None
        self.secrets = tuple(secrets)
        self.reraise = reraise
        self.owns_retries = owns_retries
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
        self.rng = rng

    def clock(self) -> Clock:
        """The clock this call uses."""
        return self._clock or _timing.clock

    @property
    def fixed_clock(self) -> Clock | None:
        """The clock given at construction, or ``None``: ``_timing.clock`` at call time."""
        return self._clock

    def call(
        self,
        fn: Callable[[Attempt], T],
        *,
        classify: Classifier | None = None,
        on_failure: FailureCallback | None = None,
    ) -> T:
        """Call ``fn(attempt)`` until it returns, under the policy.

        ``classify`` replaces the retrier's classifier for this call only.
        ``on_failure(error)`` runs after every failed attempt, before the
        error is judged (redis-py's ``fail`` callback, which disconnects).
        """
        scope = self.first_scope(sys._getframe())
        token = enter(scope)
        try:
            result = fn(Attempt(1, None, scope[CLOCK], scope))
        except Exception as exc:  # noqa: BLE001 - classified in resume(); BaseException never caught
            first = exc
        else:
            if self.budget is not None:
                refund(self.budget, self.target)
            if self.successes is not None and not inside_owner(scope):
                self.successes.report(scope[STARTED], scope[CLOCK])
            return result
        finally:
            leave(scope, token)
        return self.resume(fn, scope, first, classify=classify, on_failure=on_failure)

    def first_scope(self, owner: FrameType) -> list[Any]:
        """The scope of a new call's first attempt, made in ``owner``'s frame (not entered)."""
        clock = self._clock or _timing.clock
        now = clock()
        timeout = self.policy.timeout
        deadline = None if timeout is None else now + timeout
        return record(deadline, clock, now, owner, owns_retries=self.owns_retries)

    def resume(
        self,
        fn: Callable[[Attempt], T],
        scope: list[Any],
        first: Exception,
        *,
        classify: Classifier | None = None,
        on_failure: FailureCallback | None = None,
    ) -> T:
        """Continue after the first attempt (in ``scope``) failed with ``first``."""
        run = _Run(self, scope, classify)
        failure: Exception | None = first
        del first
        sleep = self._sleep or _timing.sleep
        while failure is not None:
            if on_failure is not None:
                on_failure(failure)
            delay = run.failed(scope, failure)
            last = failure if run.budget is not None else None  # for a "budget" give-up
            failure = None
            if delay > 0:  # time.sleep(0) is a system call (60-90 us here)
                sleep(delay)
            while (hold := run.held()) is not None:  # another loop just found it down
                sleep(hold)
            if last is not None:
                run.spend(last)
                last = None
            scope = run.next_scope()
            token = enter(scope)
            try:
                result = fn(Attempt(run.number, run.deadline, run.clock))
            except Exception as exc:  # noqa: BLE001 - see call()
                failure = exc
            finally:
                leave(scope, token)
        run.recovered()
        return result

    def resume_decorated(
        self, fn: Callable[[Attempt], T], started: float, first: Exception, wrapper: FrameType
    ) -> T:
        """:meth:`resume` for a decorated sync function whose first attempt (on the stack,
        in ``wrapper``'s frame, started at ``started``) failed with ``first``."""
        clock = self._clock or _timing.clock
        timeout = self.policy.timeout
        deadline = None if timeout is None else started + timeout
        scope = link(record(deadline, clock, started, wrapper))
        scope[NESTED] = take_stack_mark(wrapper, started)
        return self.resume(fn, scope, first)

    async def acall(
        self,
        fn: Callable[[Attempt], Awaitable[T]],
        *,
        classify: Classifier | None = None,
        on_failure: FailureCallback | None = None,
    ) -> T:
        """Await ``fn(attempt)`` until it returns, under the policy (see :meth:`call`).

        ``on_failure`` may return an awaitable; it is awaited.
        """
        scope = self.first_scope(sys._getframe())
        token = enter(scope)
        try:
            result = await fn(Attempt(1, None, scope[CLOCK], scope))
        except Exception as exc:  # noqa: BLE001 - see call()
            first = exc
        else:
            if self.budget is not None:
                refund(self.budget, self.target)
            if self.successes is not None and not inside_owner(scope):
                self.successes.report(scope[STARTED], scope[CLOCK])
            return result
        finally:
            leave(scope, token)
        return await self.aresume(fn, scope, first, classify=classify, on_failure=on_failure)

    async def aresume(
        self,
        fn: Callable[[Attempt], Awaitable[T]],
        scope: list[Any],
        first: Exception,
        *,
        classify: Classifier | None = None,
        on_failure: FailureCallback | None = None,
    ) -> T:
        """Async twin of :meth:`resume`; cancellation during a wait ends the call at once."""
        run = _Run(self, scope, classify)
        failure: Exception | None = first
        del first
        asleep = self._asleep or _timing.asleep
        while failure is not None:
            if on_failure is not None:
                outcome = on_failure(failure)
                if hasattr(outcome, "__await__"):
                    await outcome
            delay = run.failed(scope, failure)
            last = failure if run.budget is not None else None  # for a "budget" give-up
            failure = None
            if delay > 0:
                await asleep(delay)
            while (hold := run.held()) is not None:  # another loop just found it down
                await asleep(hold)
            if last is not None:
                run.spend(last)
                last = None
            scope = run.next_scope()
            token = enter(scope)
            try:
                result = await fn(Attempt(run.number, run.deadline, run.clock))
            except Exception as exc:  # noqa: BLE001 - see call()
                failure = exc
            finally:
                leave(scope, token)
        run.recovered()
        return result


class _Run:
    """Per-call state after the first failure."""

    __slots__ = (
        "attempt_start",
        "budget",
        "call",
        "classify",
        "clock",
        "cost",
        "deadline",
        "duration",
        "hooks",
        "last_call",
        "number",
        "once",
        "outside",
        "owner",
        "previous",
        "redactor",
        "retrier",
        "rng",
        "rule",
        "start",
        "tallies",
        "telling",
    )

    def __init__(self, retrier: Retrier, first: list[Any], classify: Classifier | None) -> None:
        self.retrier = retrier
        self.classify = retrier.classify if classify is None else classify
        self.clock: Clock = first[CLOCK]
        self.deadline, self.outside = tightest(first)
        # Inside a loop that owns the retries: one attempt, the error goes to that loop.
        self.once = owns_inner_retries(first)
        self.start: float = first[STARTED]
        self.owner = first[OWNER]
        self.number = 1
        self.previous = retrier.policy.initial
        self.last_call = False
        rng = retrier.rng
        if rng is None:
            import random

            rng = random
        self.rng: RandomSource = rng
        self.redactor: Redactor | None = None
        # Resolved now, at the first failure: defaults set after decoration apply. Inside
        # a loop that owns the retries nothing is reported: that loop reports.
        self.hooks = () if self.once else _hooks.resolve(retrier.hooks)
        self.tallies = () if self.once else _statistics.in_scope(retrier.statistics)
        # The event records load with the first failure that a hook sees, not at import.
        from ._events import Call

        self.call = Call() if self.hooks else None
        self.attempt_start = self.start
        self.budget = None if self.once else _budget.resolve(retrier.budget)
        self.cost: Cost = "unknown"
        self.rule = ""
        self.duration = 0.0
        # The latest error that was not a timeout, for a give-up on a cut-off attempt.
        self.telling: Exception | None = None

    def _redactor(self) -> Redactor:
        if self.redactor is None:
            from ._redact import Redactor

            self.redactor = Redactor(self.retrier.target, self.retrier.secrets)
        return self.redactor

    def _tally(self, exc: Exception | None, outcome: str) -> None:
        # The wait before this attempt was completed (``previous`` is still its delay).
        waited = self.previous if self.number > 1 else 0.0
        for statistics in self.tallies:
            statistics.record(exc, outcome, waited)

    def _emit(self, event: Event) -> None:
        for hook in self.hooks:
            try:
                hook(event)
            except Exception as error:
                _chain(error, event.exception)
                raise

    def next_scope(self) -> list[Any]:
        """The scope of the next attempt (its number is :attr:`number`).

        Its deadline is the tightest one already; :func:`_scope.enter` links it
        to the same enclosing scope as the first attempt's.
        """
        self.number += 1
        self.attempt_start = self.clock()
        owns = self.retrier.owns_retries
        return record(self.deadline, self.clock, self.start, self.owner, owns_retries=owns)

    def failed(self, scope: list[Any], exc: Exception) -> float:
        """Return the delay before the next attempt, or raise (the error or ``RetryExhausted``).

        Redaction and event records cost microseconds, so they are built only
        when a hook will see them or an error message needs them.
        """
        if self.once:
            raise exc
        retrier = self.retrier
        policy = retrier.policy
        try:
            verdict = self.classify(exc)
        except Exception as error:
            _chain(error, exc)
            raise
        now = self.clock()
        duration = now - self.attempt_start
        nested = scope[NESTED]
        if nested is not None:
            # A loop inside the attempt used the time up to our deadline: whatever its
            # error says, there is no time left for another attempt.
            self._give_up(exc, verdict.rule, "deadline", now - self.start, duration, nested=nested)
        if not verdict.transient:
            self._not_retried(exc, verdict, now - self.start, duration)
            raise exc
        reason: GiveUpReason | None = None
        delay = 0.0
        if policy.attempts is not None and self.number >= policy.attempts:
            reason = "attempts"
        else:
            delay = policy.delay(self.number - 1, self.previous, self.rng, verdict.cost)
            if self.deadline is not None and now + delay >= self.deadline:
                left = self.deadline - now
                if self.last_call or left < LAST_CALL_MINIMUM:
                    reason = "deadline"
                else:
                    # One last attempt halfway through the time left, rather than giving up
                    # with up to `maximum` seconds of the window unused.
                    delay = left / 2
                    self.last_call = True
        self._note(exc, verdict, duration)
        if reason is not None:
            self._give_up(exc, verdict.rule, reason, now - self.start, duration)
        if self.tallies:
            self._tally(exc, "retry")
        self.previous = delay
        if self.hooks:
            from ._events import RetryScheduled

            redactor = self._redactor()
            redactor.scrub_exception(exc)  # hooks get the error itself
            self._emit(
                RetryScheduled(
                    target=redactor.target,
                    attempt=self.number,
                    elapsed=now - self.start,
                    exception=exc,
                    cause=redactor.describe(exc),
                    duration=duration,
                    call=self.call,
                    delay=delay,
                    rule=verdict.rule,
                )
            )
        release_frames(exc)
        return delay

    def _note(self, exc: Exception, verdict: Verdict, duration: float) -> None:
        """Remember a transient failure: for the budget, the pace, a later give-up."""
        if self.budget is not None:
            self.budget.failed(self.retrier.target, id(self))
        self.cost = verdict.cost
        self.rule = verdict.rule
        self.duration = duration
        if not _is_timeout(verdict.rule):
            self.telling = exc  # described (and redacted) only if the call gives up

    def spend(self, last: Exception) -> None:
        """Take a token for the retry about to be made; give up (``"budget"``) if short.

        First attempts never need one. A retry made just after another loop
        sharing the budget succeeded with the target is free: the server answers
        again, and loops coming back together must not starve each other.
        """
        budget = self.budget
        assert budget is not None
        if budget.is_down(self.retrier.target) and not budget.spend():
            elapsed = self.clock() - self.start
            self._give_up(last, self.rule, "budget", elapsed, self.duration)

    def held(self) -> float | None:
        """A wait instead of the next attempt, while the budget holds this loop back.

        Another loop sharing the budget found the target down a moment ago: this
        loop waits one more of its own delays, without an attempt, a token or an
        event; ``None`` when it may try now (no hold, or no time for another wait).
        """
        budget = self.budget
        if budget is None or not budget.holds(self.retrier.target, id(self)):
            return None
        delay = self.retrier.policy.delay(self.number - 1, self.previous, self.rng, self.cost)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            return None
        self.previous = delay
        return delay

    def _not_retried(
        self, exc: Exception, verdict: Verdict, elapsed: float, duration: float
    ) -> None:
        """Count and report a permanent error (which the caller then raises)."""
        if verdict.report:  # it reaches the caller: no password in its message
            self._redactor().scrub_exception(exc)
        if self.tallies:
            self._tally(exc, "not_retried")
        if self.hooks and verdict.report:
            from ._events import NotRetried

            redactor = self._redactor()
            event = NotRetried(
                target=redactor.target,
                attempt=self.number,
                elapsed=elapsed,
                exception=exc,
                cause=redactor.describe(exc),
                duration=duration,
                call=self.call,
                rule=verdict.rule,
            )
            self._emit(event)

    def _give_up(
        self,
        exc: Exception,
        rule: str,
        reason: GiveUpReason,
        elapsed: float,
        duration: float,
        *,
        nested: tuple[str, int] | None = None,
    ) -> NoReturn:
        if self.tallies:
            self._tally(exc, "gave_up")
        redactor = self._redactor()
        redactor.scrub_exception(exc)
        # A nested loop's RetryExhausted already says what went wrong: name its cause.
        last = exc.last_exception if isinstance(exc, RetryExhausted) else exc
        cause = redactor.describe(last)
        if self.telling is not None and _is_timeout(rule):
            # The last attempt was cut off (at the deadline, say): what earlier attempts
            # reported says more about why the call failed.
            earlier = redactor.describe(self.telling)
            if earlier != cause:
                cause = f"{cause}; earlier attempts: {earlier}"
        if reason == "deadline":
            # Our time ran out because an enclosing call's did: none of the calls up to
            # that one must try again.
            mark_nested(self.outside, redactor.target, self.number)
        if self.hooks:
            from ._events import GaveUp

            self._emit(
                GaveUp(
                    target=redactor.target,
                    attempt=self.number,
                    elapsed=elapsed,
                    exception=exc,
                    cause=cause,
                    duration=duration,
                    call=self.call,
                    reason=reason,
                    rule=rule,
                    nested=nested,
                )
            )
        release_frames(exc)
        if self.retrier.reraise:
            add_note = getattr(exc, "add_note", None)  # Python 3.11+
            if add_note is not None:
                line = gave_up_line(self.number, elapsed, reason, nested)
                add_note(f"resilient_connect: {redactor.target}: {line}")
            raise exc
        raise RetryExhausted(
            target=redactor.target,
            attempts=self.number,
            elapsed=elapsed,
            last_exception=exc,
            reason=reason,
            cause=cause,
            nested=nested,
        ) from exc

    def recovered(self) -> None:
        if self.budget is not None:
            self.budget.succeeded(self.retrier.target, retried=True)
        if self.tallies:
            self._tally(None, "success")
        if self.hooks:
            from ._events import Recovered

            now = self.clock()
            self._emit(
                Recovered(
                    target=self._redactor().target,
                    attempt=self.number,
                    elapsed=now - self.start,
                    exception=None,
                    cause="",
                    duration=now - self.attempt_start,
                    call=self.call,
                )
            )


def _chain(error: Exception, real: BaseException | None) -> None:
    """Keep ``real`` (the attempt's error) behind an error an ``on=`` predicate or a hook raised.

    The bug in the predicate or hook propagates, and its traceback still shows the
    error that was being handled, as ``raise error from real`` would.
    """
    if real is not None and error is not real and error.__cause__ is None:
        error.__cause__ = real
