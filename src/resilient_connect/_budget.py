"""A retry budget: one token bucket shared by any number of retry loops.

When a database falls over, every loop of a process retries on its own: a
thousand pool checkouts multiply the load that keeps it down. A budget caps the
retries of all the loops that share it. Each retry takes ``retry_cost`` tokens;
each success gives back ``success_refund`` (and a retry that succeeded gives its
``retry_cost`` back: only failed retries drain the bucket), and, with
``refill_per_second``, time refills the bucket slowly. When a retry finds the
bucket short, the loop gives up at once with ``RetryExhausted(reason="budget")``.
First attempts never need a token: a budget only ever stops *retries*, so
every call still tries once, and a server that is back is noticed by the next
call.

Loops that share a budget also share what they learn about a target: while
another loop found the same target down less than ``hold`` seconds ago (0.25 s by
default), a retry waits for its next turn instead of trying, and takes no
token. So 256 loops waiting for one database send it about four retries a
second instead of hundreds, and each of them still tries again within one of
its own waits of the database's return (a success clears the mark at once).

The AWS SDKs use the same idea (a 500-token quota, 5 tokens a retry, 1 back per
success); the Google SRE book asks for a retry ratio under 10% per client.
Only failed retries drain the bucket: a retry made after another loop sharing
the budget succeeded with the target is free, and a retry that succeeds gets
its tokens back. Thread- and task-safe; a success costs one comparison when the
bucket is full (the normal state) and a lock otherwise.
"""

from __future__ import annotations

import _thread
import math

from . import _timing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    from ._timing import Clock

#: The process-wide budget's capacity: 100 retries (at the default cost) before a
#: falling-over database sees no more retries from this process.
DEFAULT_CAPACITY = 500.0
DEFAULT_RETRY_COST = 5.0
DEFAULT_SUCCESS_REFUND = 1.0
#: The process-wide budget regains one retry's worth every 5 s without any success.
DEFAULT_REFILL_PER_SECOND = 1.0
#: Seconds a failure seen by one loop holds back the retries of the others (same target).
DEFAULT_HOLD = 0.25
#: Targets remembered as down at once; beyond this the marks are cleared.
_MAX_DOWN = 1024

# Set by resilient_connect.testing.instant_waits(): every budget is unlimited then.
UNLIMITED = False


class RetryBudget:
    """A token bucket that retries draw from; see the module docstring.

    Args:
        capacity: tokens when full (and at the start); ``> 0``.
        retry_cost: tokens one retry takes; ``> 0``.
        success_refund: tokens a success gives back; ``>= 0``.
        refill_per_second: tokens regained per second, successes or not; ``>= 0``.
        hold: seconds one loop's transient failure holds back the other loops'
            retries to the same target; ``0`` turns sharing off.
        clock: where the refill and the holds read the time (default: the
            engine's clock).
    """

    __slots__ = (
        "_clock",
        "_down",
        "_lock",
        "_refilled_at",
        "_tokens",
        "capacity",
        "hold",
        "refill_per_second",
        "retry_cost",
        "success_refund",
    )

    def __init__(
        self,
        *,
        capacity: float = DEFAULT_CAPACITY,
        retry_cost: float = DEFAULT_RETRY_COST,
        success_refund: float = DEFAULT_SUCCESS_REFUND,
        refill_per_second: float = 0.0,
        hold: float = DEFAULT_HOLD,
        clock: Clock | None = None,
    ) -> None:
        self.capacity = _positive("capacity", capacity)
        self.retry_cost = _positive("retry_cost", retry_cost)
        self.success_refund = _non_negative("success_refund", success_refund)
        self.refill_per_second = _non_negative("refill_per_second", refill_per_second)
        self.hold = _non_negative("hold", hold)
        # target -> (when a loop last found it down, which loop)
        self._down: dict[str, tuple[float, int]] = {}
        self._clock = clock
        self._lock = _thread.allocate_lock()
        self._tokens = self.capacity
        self._refilled_at: float | None = None

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now (after any refill)."""
        with self._lock:
            self._refill()
            return self._tokens

    @property
    def retries_left(self) -> int:
        """How many retries the bucket allows now."""
        return math.floor(self.tokens / self.retry_cost)

    def spend(self) -> bool:
        """Take ``retry_cost`` tokens for a retry; ``False`` (nothing taken) if short."""
        if UNLIMITED:
            return True
        with self._lock:
            self._refill()
            if self._tokens < self.retry_cost:
                return False
            self._tokens -= self.retry_cost
            return True

    def refund(self, *, retried: bool = False) -> None:
        """A call succeeded: give ``success_refund`` tokens back, up to ``capacity``.

        ``retried``: it succeeded on a retry, whose ``retry_cost`` comes back too
        (only failed retries drain the bucket, as in the AWS SDKs), so that loops
        coming back after a long outage do not starve each other of tokens.
        """
        if self._tokens >= self.capacity:  # the normal state: nothing to do, no lock
            return
        gained = self.success_refund + (self.retry_cost if retried else 0.0)
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + gained)

    def now(self) -> float:
        """The budget's clock."""
        return (self._clock or _timing.clock)()

    def failed(self, target: str, loop: int) -> None:
        """``loop`` just found ``target`` down (a transient failure)."""
        if len(self._down) >= _MAX_DOWN:
            self._down.clear()
        self._down[target] = (self.now(), loop)

    def succeeded(self, target: str, *, retried: bool = False) -> None:
        """A call to ``target`` succeeded: tokens back, and no loop holds back for it."""
        self.refund(retried=retried)
        if self._down:
            self._down.pop(target, None)

    def is_down(self, target: str) -> bool:
        """Whether a loop found ``target`` down and none has succeeded with it since."""
        return target in self._down

    def holds(self, target: str, loop: int) -> bool:
        """Whether ``loop``'s retry to ``target`` should wait: another loop found it down
        less than ``hold`` seconds ago."""
        if UNLIMITED or not self.hold:
            return False
        with self._lock:
            mark = self._down.get(target)
            if mark is None or mark[1] == loop:
                return False
            now = self.now()
            if now - mark[0] < self.hold:
                return True
            # This loop tries now; the others wait for its outcome (one attempt per hold).
            self._down[target] = (now, loop)
            return False

    def _refill(self) -> None:
        if not self.refill_per_second:
            return
        now = (self._clock or _timing.clock)()
        last = self._refilled_at
        self._refilled_at = now
        if last is not None and now > last:
            gained = (now - last) * self.refill_per_second
            self._tokens = min(self.capacity, self._tokens + gained)

    def message(self) -> str:
        """How the budget is sized, for the give-up message."""
        return (
            f"retry budget exhausted (capacity {self.capacity:g} tokens, "
            f"{self.retry_cost:g} a retry, {self.success_refund:g} back a success): "
            "other loops of this process used it during the outage; give this call "
            "its own RetryBudget(capacity=...) or budget=None to retry without one"
        )

    def __repr__(self) -> str:
        return (
            f"RetryBudget(capacity={self.capacity:g}, retry_cost={self.retry_cost:g}, "
            f"success_refund={self.success_refund:g}, "
            f"refill_per_second={self.refill_per_second:g}, hold={self.hold:g}, "
            f"tokens={self.tokens:g})"
        )


def _positive(name: str, value: float) -> float:
    number = _non_negative(name, value)
    if number == 0:
        msg = f"RetryBudget.{name}: must be > 0, got {value!r}"
        raise ValueError(msg)
    return number


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"RetryBudget.{name}: must be a finite number, got {value!r}"
        raise ValueError(msg)
    if value < 0:
        msg = f"RetryBudget.{name}: must be >= 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


_default: RetryBudget | None = RetryBudget(
    capacity=DEFAULT_CAPACITY,
    retry_cost=DEFAULT_RETRY_COST,
    success_refund=DEFAULT_SUCCESS_REFUND,
    refill_per_second=DEFAULT_REFILL_PER_SECOND,
)


def default_budget() -> RetryBudget | None:
    """The process-wide budget of the adapters' runtime reconnect paths (``None``: off).

    Used by SQLAlchemy engines' reconnects, the redis runtime bridge and
    psycopg pools' reconnects when they are not given ``budget=``: 500 tokens,
    5 a retry, 1 back per success, 1 regained per second. Start-up waits, the
    connect helpers and the decorator use no budget unless given one.
    """
    return _default


def set_default_budget(budget: RetryBudget | None) -> None:
    """Replace the process-wide budget; ``None`` turns it off (retries are then not shared)."""
    global _default  # noqa: PLW0603 - the one process-wide setting, like set_default_hooks
    candidate: object = budget  # typed callers aside, a framework may pass anything
    if candidate is not None and not isinstance(candidate, RetryBudget):
        msg = f"set_default_budget() takes a RetryBudget or None, got {budget!r}"
        raise TypeError(msg)
    _default = budget


def resolve(budget: RetryBudget | Literal["default"] | None) -> RetryBudget | None:
    """The budget a call uses now: ``"default"`` is :func:`default_budget` at this moment."""
    if isinstance(budget, str):
        return _default
    return budget


def explicit_budget(budget: RetryBudget | Literal["default"] | None) -> RetryBudget | None:
    """A budget the caller gave (for a start-up wait); the default is for runtime paths only."""
    return budget if isinstance(budget, RetryBudget) else None
