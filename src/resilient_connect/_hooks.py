"""Which hooks a retrying call reports to, and how first-time successes are reported.

Precedence, for every retry loop of the package (decorator, connect helpers,
adapters, runtime bridges):

* ``hooks=None`` (the default): the process-wide hooks of
  :func:`set_default_hooks`, initially ``(log_event,)``. They are looked up
  when an event is emitted, not when the loop is built, so a decorator
  applied at import time follows a framework that installs its hooks later.
* ``hooks=[...]``: exactly these, replacing the process-wide ones.
* ``hooks=()``: none at all.

A call whose first attempt succeeds emits no event, except to hooks that ask
for one: a hook whose ``wants_successes`` attribute is true also receives a
:class:`~resilient_connect.Succeeded` event for such a call. The metric
exporters set it so that they can count successes; the logging hooks do not.
The decorator's success path checks for such hooks with two attribute reads.
"""

from __future__ import annotations

import _thread

from . import _statistics
from ._logging import log_event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._engine import Retrier
    from ._events import Hook
    from ._timing import Clock


def wants_successes(hook: Hook) -> bool:
    """Whether ``hook`` asked for :class:`~resilient_connect.Succeeded` events."""
    return bool(getattr(hook, "wants_successes", False))


class _State:
    """The process-wide defaults, and whether any success path must look further.

    ``watching`` is true while some default hook wants successes or some
    :func:`~resilient_connect.collect_statistics` block is open anywhere: only
    then does a decorated call that succeeded first time do more than count.
    """

    __slots__ = ("collectors", "defaults", "success_defaults", "watching")

    def __init__(self) -> None:
        self.defaults: tuple[Hook, ...] = (log_event,)
        self.success_defaults: tuple[Hook, ...] = ()
        self.collectors = 0
        self.watching = False

    def refresh(self) -> None:
        self.watching = bool(self.success_defaults) or self.collectors > 0


STATE = _State()
_lock = _thread.allocate_lock()


def set_default_hooks(*hooks: Hook) -> None:
    """Make ``hooks`` the process-wide hooks of every retry loop built with ``hooks=None``.

    Replaces the previous defaults (initially ``log_event`` alone); include
    :func:`~resilient_connect.log_event` to keep the log lines next to, say, a
    metrics exporter. ``set_default_hooks()`` with no argument silences every
    such loop. A per-call ``hooks=`` still wins over these. Takes effect for
    events emitted from now on, also in loops built earlier (decorators).
    Safe to call from any thread.
    """
    # Typed as callables, but a framework may pass anything at run time.
    wrong = [hook for hook in hooks if not callable(hook)]
    if wrong:
        msg = f"a hook must be callable (it is given each event); got {wrong[0]!r}"
        raise TypeError(msg)
    with _lock:
        STATE.defaults = hooks
        STATE.success_defaults = tuple(h for h in hooks if wants_successes(h))
        STATE.refresh()


def default_hooks() -> tuple[Hook, ...]:
    """The process-wide hooks used wherever ``hooks=None`` (see :func:`set_default_hooks`)."""
    return STATE.defaults


def watch_collectors(delta: int) -> None:
    """Count a :func:`~resilient_connect.collect_statistics` block opening (+1) or closing (-1)."""
    with _lock:
        STATE.collectors += delta
        STATE.refresh()


def resolve(hooks: tuple[Hook, ...] | None) -> tuple[Hook, ...]:
    """The hooks an event goes to now: ``hooks``, or the process-wide ones for ``None``."""
    return STATE.defaults if hooks is None else hooks


def success_hooks(hooks: tuple[Hook, ...] | None) -> tuple[Hook, ...]:
    """The hooks a :class:`~resilient_connect.Succeeded` event goes to now."""
    if hooks is None:
        return STATE.success_defaults
    return tuple(h for h in hooks if wants_successes(h))


class Successes:
    """How one retrier reports calls whose first attempt succeeded.

    Built once per decorated function (``explicit`` says whether its own
    ``hooks=`` want successes) or once per connect call. The redacted target
    is computed on the first report and kept.
    """

    __slots__ = ("_retrier", "_shown", "explicit")

    def __init__(self, retrier: Retrier) -> None:
        self._retrier = retrier
        hooks = retrier.hooks
        self.explicit = hooks is not None and any(wants_successes(h) for h in hooks)
        self._shown: str | None = None

    def report(self, start: float, clock: Clock, *, counted: bool = False) -> None:
        """The first attempt, started at ``start`` on ``clock``, succeeded.

        Counts it in the statistics in scope (and in the retrier's own, unless
        ``counted``: the decorator counts those itself) and sends a
        :class:`~resilient_connect.Succeeded` event to the hooks that want one.
        """
        retrier = self._retrier
        own = retrier.statistics
        for statistics in _statistics.in_scope(own):
            if not (counted and statistics is own):
                statistics.record_first_success()
        hooks = success_hooks(retrier.hooks)
        if not hooks:
            return
        duration = clock() - start
        if self._shown is None:
            from ._redact import Redactor

            self._shown = Redactor(retrier.target, retrier.secrets).target
        from ._events import Call, Succeeded  # loaded with the first event, not at import

        event = Succeeded(
            target=self._shown,
            attempt=1,
            elapsed=duration,
            exception=None,
            cause="",
            duration=duration,
            call=Call(),
        )
        for hook in hooks:
            hook(event)
