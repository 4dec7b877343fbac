"""Frozen records of what the engine did, passed to hooks.

Events are built only when an attempt fails, or when a first attempt succeeds
and a hook asked for that (:class:`Succeeded`, see :mod:`resilient_connect._hooks`);
a call that succeeds first time with no such hook builds none. They never carry
the call's arguments: ``target`` and ``cause`` are redacted text, safe to log or
ship. ``exception`` is the error object itself, for code that wants to inspect
it; do not log its attributes blindly (psycopg keeps the password in
``exc.pgconn``).

Every attempt ends in exactly one event: ``RetryScheduled``, ``GaveUp`` or
``NotRetried`` when it fails, ``Recovered`` or ``Succeeded`` when it succeeds.
That is what lets exporters count attempts by outcome.
"""

from __future__ import annotations

import dataclasses
import itertools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, TypeAlias

    Hook: TypeAlias = Callable[["Event"], object]


_call_ids = itertools.count(1)


class Call:
    """The identity of one retrying call: the same object on every event of that call.

    ``id`` is unique within the process (1, 2, ...), for correlating log lines.
    Exporters that keep state per call (an OpenTelemetry span) key it on the
    object and may hold a weak reference to it: when a call ends without a final
    event (cancelled, interrupted), the engine drops its ``Call`` and such state
    can be cleaned up.
    """

    __slots__ = ("__weakref__", "id")

    def __init__(self, id: int | None = None) -> None:  # noqa: A002 - the natural name
        self.id: int = next(_call_ids) if id is None else id

    def __repr__(self) -> str:
        return f"Call({self.id})"

    def __reduce__(self) -> tuple[object, ...]:
        return (Call, (self.id,))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What every event has.

    Attributes:
        target: what is being reached, password hidden.
        attempt: number of the attempt this event is about, from 1.
        elapsed: seconds since the first attempt started.
        exception: the error of that attempt (``None`` when it succeeded).
        cause: one line describing ``exception``, secrets removed ("" if none).
        duration: seconds the attempt itself took, from its start to its
            outcome (the wait before it not included).
        call: which call the event belongs to; ``None`` only for events built
            by hand, outside the engine.
    """

    target: str
    attempt: int
    elapsed: float
    # Not in the repr: the exception's own repr may quote a DSN with its password (``cause``
    # is the redacted description).
    exception: BaseException | None = dataclasses.field(repr=False)
    cause: str
    duration: float = 0.0
    call: Call | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed with a transient error; the next one follows ``delay`` s.

    Emitted before sleeping. ``rule`` names the classification rule that matched.
    """

    delay: float
    rule: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp(Event):
    """The policy gave up after ``attempt`` attempts; ``RetryExhausted`` follows.

    ``reason`` is ``"attempts"``, ``"deadline"`` or ``"budget"``. ``nested`` is set when a
    retry loop inside the last attempt used the time up to the deadline:
    ``(its target, its attempts)``.
    """

    reason: Literal["attempts", "deadline", "budget"]
    rule: str
    nested: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NotRetried(Event):
    """Attempt ``attempt`` failed with a permanent error, which now propagates.

    ``rule`` names the classification rule that judged it permanent.
    """

    rule: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Recovered(Event):
    """Attempt ``attempt`` succeeded after earlier attempts had failed."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Succeeded(Event):
    """The first attempt succeeded: the call needed no retry.

    Sent only to hooks whose ``wants_successes`` attribute is true (the metric
    exporters), so that a call that succeeds first time costs nothing more for
    everyone else. ``attempt`` is 1, ``elapsed`` equals ``duration``.
    """


from ._public import publish  # noqa: E402 - after the classes it renames

# Loaded after the package itself (with the first event): name the package here.
publish(
    "resilient_connect",
    globals(),
    ("Call", "Event", "GaveUp", "NotRetried", "Recovered", "RetryScheduled", "Succeeded"),
)
