"""The runtime bridge: redis-py's own ``Retry`` driven by a :class:`~resilient_connect.Backoff`.

Two layers, usable separately:

* :class:`PolicyBackoff` is a ``redis.backoff.AbstractBackoff``: plug it into a
  plain ``redis.retry.Retry`` to get our delay formulas and jitter modes, and
  nothing else (redis-py still counts retries and sleeps).
* :func:`runtime_retry` / :func:`aruntime_retry` build a ``Retry`` subclass
  whose ``call_with_retry`` runs our engine: the policy's deadline, the
  classification table (a wrong password is not retried even though redis-py
  files it under ``ConnectionError``) and our events and log lines. The
  caller still sees redis-py's own exceptions: when the policy gives up, the
  last redis error is raised, after a ``GaveUp`` event.

No retry inside a retry. redis-py nests its retries (a command's retry loop
reconnects through the connection's own loop; health checks run inside the
command's loop), and our start-up wait runs probes through the same client.
The bridge's engine owns its retries (``Retrier(owns_retries=True)``), and so
do the start-up waits: a bridge entered inside one of their attempts makes
exactly one attempt, with redis-py's failure callback, like
``Retry(NoBackoff(), 0)``. Only the outermost loop waits and reports. Inside
an application's own retrying call (``@resilient_connect.retry``), a bridge
keeps retrying, but only until that call's deadline.
"""

from __future__ import annotations

import redis.asyncio.retry
import redis.backoff
import redis.retry

from .._classify import Verdict
from .._engine import Retrier
from .._policy import DEFAULT_RECONNECT, Backoff, capped_exponential
from . import _rules as _redis_rules
from ._transport import translating

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import Any, Literal, TypeVar

    from .._budget import RetryBudget
    from .._events import Hook
    from .._policy import RandomSource

    T = TypeVar("T")

# Errors outside redis-py's retry list (WRONGTYPE, say) are the application's, not ours.
_NOT_RETRIED_BY_CLIENT = Verdict(transient=False, rule="redis:not-retried-by-client", report=False)

# Ceiling for get_retries() when the policy counts time, not attempts.
_MAX_REPORTED_RETRIES = 10_000


class PolicyBackoff(redis.backoff.AbstractBackoff):
    """A ``redis.backoff.AbstractBackoff`` computing delays with a :class:`Backoff`.

    ``compute(failures)`` returns the policy's delay before retry number
    ``failures`` (redis-py counts failures from 1), with the policy's jitter
    mode; ``reset()`` restarts the decorrelated-jitter chain. ``attempts`` and
    ``timeout`` are not applied here: redis-py's ``Retry`` counts retries
    itself. Use :func:`runtime_retry` to get the deadline as well.

    Like redis-py's own backoffs, one instance keeps the decorrelated chain for
    whoever calls it; concurrent callers only share jitter state, never limits.
    """

    def __init__(self, policy: Backoff | None = None, *, rng: RandomSource | None = None) -> None:
        self.policy = DEFAULT_RECONNECT if policy is None else policy
        self._rng = rng
        self._previous = self.policy.initial

    def reset(self) -> None:
        """Start a new delay sequence (called by ``Retry`` before each operation)."""
        self._previous = self.policy.initial

    def compute(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure (``failures >= 1``)."""
        rng = self._rng
        if rng is None:
            import random

            rng = random
        delay = self.policy.delay(max(0, failures - 1), self._previous, rng)
        self._previous = delay
        return delay

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyBackoff):
            return NotImplemented
        return self.policy == other.policy

    def __hash__(self) -> int:
        return hash((PolicyBackoff, self.policy))

    def __repr__(self) -> str:
        return f"PolicyBackoff({self.policy!r})"


def reported_retries(policy: Backoff) -> int:
    """The retry count to report to redis-py (``Retry.get_retries()``).

    redis-py reads it for metrics, and ``RedisCluster`` uses it as its number of
    command attempts. With ``attempts`` set it is ``attempts - 1``; otherwise
    the number of un-jittered delays that fit in ``timeout``; ``-1`` (redis-py's
    "forever") only when both are ``None``.
    """
    if policy.attempts is not None:
        return policy.attempts - 1
    if policy.timeout is None:
        return -1
    total = 0.0
    retries = 0
    while retries < _MAX_REPORTED_RETRIES:
        delay = capped_exponential(policy.initial, policy.multiplier, policy.maximum, retries)
        if total + delay > policy.timeout:
            break
        total += delay
        retries += 1
    return max(1, retries)


def runtime_verdict(exc: Exception) -> Verdict:
    """Classify an error that redis-py's ``supported_errors`` selected for retrying.

    Our table decides, except that its catch-all permanent rules defer to
    redis-py: an error type the application listed in ``retry_on_error`` is
    retried even if the table has no specific rule for it.
    """
    verdict = _redis_rules.classify(exc)
    if verdict.transient or verdict.rule not in _redis_rules.FALLBACK_RULES:
        return verdict
    return Verdict(transient=True, rule=f"redis:retry-on-error:{type(exc).__name__}")


class _BridgeCore:
    """What a bridge Retry shares with its deep copies: policy, target, hooks, engine."""

    __slots__ = ("policy", "retrier")

    def __init__(
        self,
        policy: Backoff,
        target: str,
        hooks: Sequence[Hook] | None,
        secrets: Sequence[str],
        budget: RetryBudget | Literal["default"] | None,
    ) -> None:
        self.policy = policy
        self.retrier = Retrier(
            policy=policy,
            classify=runtime_verdict,
            target=target,
            hooks=hooks,
            secrets=secrets,
            reraise=True,
            owns_retries=True,
            # Every command goes through the bridge: only commands that failed are news.
            report_successes=False,
            budget=budget,
        )

    def retrier_target(self) -> str:
        """The target as shown to people: passwords hidden."""
        from .._redact import redact

        return redact(self.retrier.target)


class _Failures:
    """Per-call bookkeeping shared by the sync and async bridges: redis-py's rules for
    which errors count, and its failure callback."""

    __slots__ = ("count", "fail", "is_retryable", "supported", "with_failure_count")

    def __init__(
        self,
        supported: tuple[type[Exception], ...],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None,
        *,
        with_failure_count: bool,
    ) -> None:
        self.supported = supported
        self.fail = fail
        self.is_retryable = is_retryable
        self.with_failure_count = with_failure_count
        self.count = 0

    def classify(self, error: Exception) -> Verdict:
        """The engine's verdict for this call: errors redis-py would not retry pass silently."""
        if not self.counts(error):
            return _NOT_RETRIED_BY_CLIENT
        return runtime_verdict(error)

    def counts(self, error: Exception) -> bool:
        """True if redis-py would retry ``error`` (then its failure callback must run)."""
        if not isinstance(error, self.supported):
            return False
        return self.is_retryable is None or self.is_retryable(error)

    def failed(self, error: Exception) -> Any:
        """Run redis-py's failure callback (it disconnects) if ``error`` counts for redis-py.

        The engine's per-failure callback; may return an awaitable (asyncio clients).
        """
        if not self.counts(error):
            return None
        self.count += 1
        if self.with_failure_count:
            return self.fail(error, self.count)
        return self.fail(error)


def _make_core(
    policy: Backoff | None,
    target: str,
    hooks: Sequence[Hook] | None,
    secrets: Sequence[str],
    budget: RetryBudget | Literal["default"] | None,
) -> _BridgeCore:
    return _BridgeCore(
        DEFAULT_RECONNECT if policy is None else policy, target, hooks, secrets, budget
    )


class BridgeRetry(redis.retry.Retry):
    """A ``redis.retry.Retry`` whose loop is the resilient_connect engine (sync clients).

    Built by :func:`runtime_retry`. redis-py deep-copies the ``retry`` object
    into every connection; copies share the policy, hooks and target, and keep
    their own ``supported_errors`` (redis-py adds ``retry_on_error`` to them).
    """

    def __init__(
        self, core: _BridgeCore, supported_errors: tuple[type[Exception], ...] | None = None
    ) -> None:
        backoff, retries = PolicyBackoff(core.policy), reported_retries(core.policy)
        if supported_errors is None:
            super().__init__(backoff, retries)
        else:
            super().__init__(backoff, retries, supported_errors)
        self._core = core

    @property
    def policy(self) -> Backoff:
        """The policy this bridge waits with."""
        return self._core.policy

    def __deepcopy__(self, memo: dict[int, object]) -> BridgeRetry:
        return type(self)(self._core, tuple(self._supported_errors))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self._core.retrier_target()} {self.policy!r}>"

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,  # noqa: FBT001, FBT002 - redis-py's signature
    ) -> T:
        """Run ``do`` until it succeeds, under the policy; see the module docstring."""
        failures = _Failures(
            tuple(self._supported_errors), fail, is_retryable, with_failure_count=with_failure_count
        )
        # Gives up by raising redis-py's own last error (the retrier has reraise=True).
        return self._core.retrier.call(
            lambda _attempt: do(), classify=failures.classify, on_failure=failures.failed
        )


class AsyncBridgeRetry(redis.asyncio.retry.Retry):
    """The asyncio twin of :class:`BridgeRetry` (a ``redis.asyncio.retry.Retry``)."""

    def __init__(
        self, core: _BridgeCore, supported_errors: tuple[type[Exception], ...] | None = None
    ) -> None:
        backoff, retries = PolicyBackoff(core.policy), reported_retries(core.policy)
        if supported_errors is None:
            super().__init__(backoff, retries)
        else:
            super().__init__(backoff, retries, supported_errors)  # type: ignore[arg-type]
        self._core = core

    @property
    def policy(self) -> Backoff:
        """The policy this bridge waits with."""
        return self._core.policy

    def __deepcopy__(self, memo: dict[int, object]) -> AsyncBridgeRetry:
        return type(self)(self._core, tuple(self._supported_errors))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self._core.retrier_target()} {self.policy!r}>"

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,  # noqa: FBT001, FBT002 - redis-py's signature
    ) -> T:
        """Await ``do`` until it succeeds, under the policy; see the module docstring."""
        do = translating(do)  # CPython 3.12-3.14: a write on a reset connection (_transport)
        failures = _Failures(
            tuple(self._supported_errors), fail, is_retryable, with_failure_count=with_failure_count
        )
        return await self._core.retrier.acall(
            lambda _attempt: do(), classify=failures.classify, on_failure=failures.failed
        )


def runtime_retry(
    policy: Backoff | None = None,
    *,
    target: str = "redis",
    hooks: Sequence[Hook] | None = None,
    secrets: Sequence[str] = (),
    budget: RetryBudget | Literal["default"] | None = "default",
) -> redis.retry.Retry:
    """A ``redis.retry.Retry`` for sync clients that waits with ``policy``.

    Pass it as ``retry=`` to ``redis.Redis``, ``Redis.from_url``, ``Sentinel``
    clients or ``RedisCluster``. ``policy`` defaults to
    :data:`~resilient_connect.DEFAULT_RECONNECT` (at most 15 s per command). ``target`` names
    the server in events and logs (a URL is redacted); ``hooks`` as everywhere
    (``None``: log; ``()``: silent); ``secrets`` are extra strings to scrub.
    ``budget``: the :class:`~resilient_connect.RetryBudget` the retries of
    every command take tokens from (``"default"``:
    :func:`~resilient_connect.default_budget`; ``None``: none).
    """
    return BridgeRetry(_make_core(policy, target, hooks, secrets, budget))


def aruntime_retry(
    policy: Backoff | None = None,
    *,
    target: str = "redis",
    hooks: Sequence[Hook] | None = None,
    secrets: Sequence[str] = (),
    budget: RetryBudget | Literal["default"] | None = "default",
) -> redis.asyncio.retry.Retry:
    """The asyncio twin of :func:`runtime_retry`: a ``redis.asyncio.retry.Retry``."""
    return AsyncBridgeRetry(_make_core(policy, target, hooks, secrets, budget))
