"""The error raised when a policy gives up, and the one line that says so."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    GiveUpReason: TypeAlias = Literal["attempts", "deadline", "budget"]


class RetryExhausted(Exception):
    """Every allowed attempt failed with a transient error; the policy gave up.

    Raised ``from`` the last error, which is also kept in ``last_exception``.

    Attributes:
        target: what was being reached, with any password already hidden.
        attempts: attempts made, the first included.
        elapsed: seconds from the first attempt to giving up.
        last_exception: the error of the last attempt.
        reason: ``"attempts"`` when ``Backoff.attempts`` ran out, ``"deadline"``
            when the next attempt could not start before ``Backoff.timeout`` (or
            before the deadline of an enclosing retrying call), ``"budget"`` when
            the :class:`~resilient_connect.RetryBudget` the call shares had no
            tokens left for another retry.
        cause: one line describing ``last_exception``, secrets removed.
        nested: when a retry loop inside the last attempt used the time up to
            the deadline: ``(its target, its attempts)``; else ``None``.
    """

    target: str
    attempts: int
    elapsed: float
    last_exception: BaseException
    reason: GiveUpReason
    cause: str
    nested: tuple[str, int] | None

    def __init__(
        self,
        *,
        target: str,
        attempts: int,
        elapsed: float,
        last_exception: BaseException,
        reason: GiveUpReason = "attempts",
        cause: str | None = None,
        nested: tuple[str, int] | None = None,
    ) -> None:
        self.target = target
        self.attempts = attempts
        self.elapsed = elapsed
        self.last_exception = last_exception
        self.reason = reason
        if cause is None:
            from ._redact import Redactor

            cause = Redactor(target).describe(last_exception)
        self.cause = cause
        self.nested = nested
        super().__init__(self._message())

    def _message(self) -> str:
        line = gave_up_line(self.attempts, self.elapsed, self.reason, self.nested)
        return f"{self.target}: {line}; last error: {self.cause}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self._fields(),))

    def _fields(self) -> dict[str, object]:
        return {
            "target": self.target,
            "attempts": self.attempts,
            "elapsed": self.elapsed,
            "last_exception": self.last_exception,
            "reason": self.reason,
            "cause": self.cause,
            "nested": self.nested,
        }


#: How to get more retries from a budget, said when one ran out.
BUDGET_ADVICE = (
    "the retries this process's loops share are spent; "
    "size it with RetryBudget(capacity=...), or pass budget=None"
)


def gave_up_line(
    attempts: int,
    elapsed: float,
    reason: GiveUpReason,
    nested: tuple[str, int] | None = None,
    *,
    budget_advice: str = BUDGET_ADVICE,
) -> str:
    """``gave up after 3 attempts in 2.00s (deadline reached)``: the one place that says it.

    Used by :class:`RetryExhausted`, the logging hook, the command line and the
    note on a re-raised driver error, so they always agree. ``budget_advice``
    says how to get more retries where ``RetryBudget`` is not what the user
    wrote (the command line's option).
    """
    plural = "attempt" if attempts == 1 else "attempts"
    if reason == "deadline":
        why = "deadline reached"
        if nested is not None:
            inner, count = nested
            inner_plural = "attempt" if count == 1 else "attempts"
            why += f" inside the retry loop of {inner} ({count} {inner_plural})"
    elif reason == "budget":
        why = f"retry budget exhausted: {budget_advice}"
    else:
        why = "no attempts left"
    return f"gave up after {attempts} {plural} in {elapsed:.2f}s ({why})"


def _rebuild(fields: dict[str, object]) -> RetryExhausted:
    """Unpickle a :class:`RetryExhausted` (keyword-only constructors need help)."""
    return RetryExhausted(**fields)  # type: ignore[arg-type]
