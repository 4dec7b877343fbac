"""The attempt in scope: how a retry loop finds the loops it runs inside.

Every running attempt of a retrying call is a *scope*: a deadline on a clock,
whether the loop owns the retries of the loops inside it, and a slot where an
inner loop that gave up at that deadline says so. Two carriers, one notion:

* **A context variable** holds the record of the innermost attempt made by the
  engine's own loops (``Retrier.call``/``acall``, the retries of a decorated
  function, every attempt of an ``async def`` decorated function). It reaches
  the threads this library starts (they copy the context), asyncio tasks
  created inside the attempt and SQLAlchemy's greenlets.
* **The call stack** holds the first attempt of a decorated *sync* function:
  writing a context variable costs about 0.4 us, more than the whole success
  path may cost, so that attempt publishes nothing. A loop that needs its
  enclosing scopes walks the frames between its own start and the next
  context-variable record, and reads the decorated call's start and policy
  from the wrapper's frame. Only inner loops pay for the walk, and only when
  they need a deadline (to bound an attempt, or after a failure).

A record is a plain list (one is built for every attempt), with the fields
named by the constants below. A record whose attempt ended (``RUNNING`` false)
is ignored: a task created inside an attempt keeps the context it was created
with, and must not be bound by an attempt that is over.
"""

from __future__ import annotations

from contextvars import ContextVar

from . import _timing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextvars import Token
    from types import CodeType, FrameType
    from typing import Any, TypeAlias

    from ._timing import Clock

    Record: TypeAlias = list[Any]

DEADLINE = 0  # float | None: this call's own deadline on CLOCK (see tightest())
CLOCK = 1  # Clock
OWNS_RETRIES = 2  # bool: loops started inside make a single attempt
RUNNING = 3  # bool: the attempt runs
NESTED = 4  # (target, attempts) | None: set by an inner loop that gave up at our deadline
STARTED = 5  # float: when the call's first attempt started, on CLOCK
ENCLOSING = 6  # the enclosing context-variable record; anything else (None, MISSING): none
OWNER = 7  # FrameType | None: the frame the loop runs in; scopes above it enclose it
ON_STACK = 8  # bool: the first attempt of a decorated sync function, found on the stack

_SCOPE: ContextVar[Record | None] = ContextVar("resilient_connect_attempt", default=None)
# Code objects of the sync decorator's wrapper (one for every decorated function).
_WRAPPER_CODES: set[CodeType] = set()
# Give-ups at the deadline of a decorated call's first attempt, by (id(frame), start):
# taken by that call when its attempt fails. Bounded: a call that caught the error and
# succeeded never takes its entry.
_STACK_MARKS: dict[tuple[int, float], tuple[str, int]] = {}
_MAX_STACK_MARKS = 1024


def register_wrapper(code: CodeType) -> None:
    """Declare ``code`` as a sync decorator wrapper whose frames are scopes."""
    _WRAPPER_CODES.add(code)


def record(
    deadline: float | None,
    clock: Clock,
    started: float,
    owner: FrameType | None,
    *,
    owns_retries: bool = False,
) -> Record:
    """A new scope record (not in scope yet: see :func:`enter`)."""
    return [deadline, clock, owns_retries, True, None, started, None, owner, False]


def enter(scope: Record) -> Token[Record | None]:
    """Put ``scope`` in scope, linked to the record it encloses; ``leave`` with the token."""
    token = _SCOPE.set(scope)
    scope[ENCLOSING] = token.old_value
    return token


def link(scope: Record) -> Record:
    """Link ``scope`` to the scope in effect, without entering it (a first attempt that ran
    on the stack); return it."""
    scope[ENCLOSING] = _SCOPE.get()
    return scope


def leave(scope: Record, token: Token[Record | None]) -> None:
    """End ``scope``'s attempt and restore the scope it was entered in."""
    scope[RUNNING] = False
    _SCOPE.reset(token)


def current() -> Record | None:
    """The innermost running context-variable record, or ``None``."""
    return _running(_SCOPE.get())


def _running(candidate: object) -> Record | None:
    return candidate if type(candidate) is list and candidate[RUNNING] else None


def _stack_scope(frame: FrameType) -> Record:
    """The scope of a decorated sync function's first attempt, read from its wrapper frame."""
    values = frame.f_locals
    retrier = values["retrier"]
    started: float = values["start"]
    timeout = retrier.policy.timeout
    clock: Clock = retrier.fixed_clock or _timing.clock
    deadline = None if timeout is None else started + timeout
    return [deadline, clock, False, True, None, started, None, frame, True]


def enclosing_scopes(scope: Record) -> list[Record]:
    """The running scopes that enclose ``scope``, the innermost first."""
    found: list[Record] = []
    current_scope = scope
    while True:
        owner: FrameType | None = current_scope[OWNER]
        outer = _running(current_scope[ENCLOSING])
        stop = None if outer is None else outer[OWNER]
        frame = None if owner is None else owner.f_back
        while frame is not None and frame is not stop:
            if frame.f_code in _WRAPPER_CODES:
                found.append(_stack_scope(frame))
            frame = frame.f_back
        if outer is None:
            return found
        found.append(outer)
        current_scope = outer


def tightest(scope: Record) -> tuple[float | None, list[Record]]:
    """The deadline that applies to ``scope``'s call, on its clock, and who set it.

    Returns the smallest deadline in scope and, when it is an enclosing call's,
    the enclosing scopes from the innermost up to the one that set it (all of
    them must give up when this call gives up at that deadline); ``[]`` when
    the deadline is the call's own.
    """
    deadline: float | None = scope[DEADLINE]
    clock: Clock = scope[CLOCK]
    scopes = enclosing_scopes(scope)
    supplier = 0
    for index, outer in enumerate(scopes, 1):
        candidate: float | None = outer[DEADLINE]
        if candidate is None:
            continue
        if outer[CLOCK] is not clock:  # another time base: carry the time left over
            candidate = clock() + (candidate - outer[CLOCK]())
        if deadline is None or candidate < deadline:
            deadline, supplier = candidate, index
    return deadline, scopes[:supplier]


def owns_inner_retries(scope: Record) -> bool:
    """Whether the innermost scope enclosing ``scope`` owns the retries of loops inside it."""
    outer = _running(scope[ENCLOSING])
    # Only records of the engine's loops own retries: a decorated call never does, so the
    # stack between us and that record need not be walked.
    return outer is not None and bool(outer[OWNS_RETRIES]) and not _stack_between(scope, outer)


def inside_owner(scope: Record) -> bool:
    """Cheaply: whether ``scope`` runs directly inside a loop that owns its retries."""
    outer = _running(scope[ENCLOSING])
    return outer is not None and bool(outer[OWNS_RETRIES])


def _stack_between(scope: Record, outer: Record) -> bool:
    """Whether a decorated call's first attempt lies on the stack between the two scopes."""
    owner: FrameType | None = scope[OWNER]
    frame = None if owner is None else owner.f_back
    while frame is not None and frame is not outer[OWNER]:
        if frame.f_code in _WRAPPER_CODES:
            return True
        frame = frame.f_back
    return False


def mark_nested(scopes: list[Record], target: str, attempts: int) -> None:
    """Tell ``scopes`` that a loop inside them gave up at their deadline."""
    for outer in scopes:
        if outer[ON_STACK]:
            if len(_STACK_MARKS) >= _MAX_STACK_MARKS:
                _STACK_MARKS.clear()
            _STACK_MARKS[(id(outer[OWNER]), outer[STARTED])] = (target, attempts)
        else:
            outer[NESTED] = (target, attempts)


def take_stack_mark(frame: FrameType, started: float) -> tuple[str, int] | None:
    """The give-up mark left for a decorated call's first attempt (removing it), if any."""
    return _STACK_MARKS.pop((id(frame), started), None)
