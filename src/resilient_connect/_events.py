"""Frozen records of what the engine did, passed to hooks.

Events are built only when an attempt fails (never on the success path) and
never carry the call's arguments: ``target`` and ``cause`` are redacted text,
safe to log or ship. ``exception`` is the error object itself, for code that
wants to inspect it; do not log its attributes blindly (psycopg keeps the
password in ``exc.pgconn``).
"""

from __future__ import annotations

from ._values import value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, TypeAlias

    Hook: TypeAlias = Callable[["Event"], object]


@value
class Event:
    """What every event has.

    Attributes:
        target: what is being reached, password hidden.
        attempt: number of the attempt this event is about, from 1.
        elapsed: seconds since the first attempt started.
        exception: the error of that attempt (``None`` for :class:`Recovered`).
        cause: one line describing ``exception``, secrets removed ("" if none).
    """

    # The exception's own repr may quote a DSN with its password; the repr shows its type.
    _repr_hidden = ("exception",)

    target: str
    attempt: int
    elapsed: float
    exception: BaseException | None
    cause: str


@value
class RetryScheduled(Event):
    """Attempt ``attempt`` failed with a transient error; the next one follows ``delay`` s.

    Emitted before sleeping. ``rule`` names the classification rule that matched.
    """

    delay: float
    rule: str


@value
class GaveUp(Event):
    """The policy gave up after ``attempt`` attempts; ``RetryExhausted`` follows.

    ``reason`` is ``"attempts"`` or ``"deadline"``. ``nested`` is set when a
    retry loop inside the last attempt used the time up to the deadline:
    ``(its target, its attempts)``.
    """

    reason: Literal["attempts", "deadline"]
    rule: str
    nested: tuple[str, int] | None = None


@value
class NotRetried(Event):
    """Attempt ``attempt`` failed with a permanent error, which now propagates.

    ``rule`` names the classification rule that judged it permanent.
    """

    rule: str


@value
class Recovered(Event):
    """Attempt ``attempt`` succeeded after earlier attempts had failed."""
