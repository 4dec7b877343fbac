"""The error raised when a policy gives up."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    GiveUpReason: TypeAlias = Literal["attempts", "deadline"]


class RetryExhausted(Exception):
    """Every allowed attempt failed with a transient error; the policy gave up.

    Raised ``from`` the last error, which is also kept in ``last_exception``.

    Attributes:
        target: what was being reached, with any password already hidden.
        attempts: attempts made, the first included.
        elapsed: seconds from the first attempt to giving up.
        last_exception: the error of the last attempt.
        reason: ``"attempts"`` when ``Backoff.attempts`` ran out, ``"deadline"``
            when the next attempt could not start before ``Backoff.timeout``.
        cause: one line describing ``last_exception``, secrets removed.
    """

    target: str
    attempts: int
    elapsed: float
    last_exception: BaseException
    reason: GiveUpReason
    cause: str

    def __init__(
        self,
        *,
        target: str,
        attempts: int,
        elapsed: float,
        last_exception: BaseException,
        reason: GiveUpReason = "attempts",
        cause: str | None = None,
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
        super().__init__(self._message())

    def _message(self) -> str:
        plural = "attempt" if self.attempts == 1 else "attempts"
        why = "deadline reached" if self.reason == "deadline" else "no attempts left"
        return (
            f"{self.target}: gave up after {self.attempts} {plural} in {self.elapsed:.2f}s "
            f"({why}); last error: {self.cause}"
        )

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
        }


def _rebuild(fields: dict[str, object]) -> RetryExhausted:
    """Unpickle a :class:`RetryExhausted` (keyword-only constructors need help)."""
    return RetryExhausted(**fields)  # type: ignore[arg-type]
