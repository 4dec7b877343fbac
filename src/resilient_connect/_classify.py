"""Turn an error into a decision: worth another attempt, or not.

Users describe what to retry with ``on=``: an exception type, a tuple of
types, or a predicate. Adapters bring richer classifiers that also say *which
rule* matched, so that logs can tell "retrying: server is starting up" from
"not retrying: password authentication failed". Both become a function
``Exception -> Verdict``.

A verdict also says what the failed attempt *cost the server*, when that is
known (:data:`Cost`): a refused connect costs it nothing (the kernel answers),
a "starting up" or "too many connections" answer costs it a process and a
handshake. The policy paces the next attempt by that (see
:meth:`resilient_connect.Backoff.delay`).

Only ``Exception`` subclasses ever reach a classifier: ``KeyboardInterrupt``,
``SystemExit``, ``GeneratorExit`` and ``asyncio.CancelledError`` derive from
``BaseException`` alone and are never caught, whatever ``on`` says.
"""

from __future__ import annotations

import dataclasses
import errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, TypeAlias

    Cost: TypeAlias = Literal["free", "server", "unknown"]
    RetryOn: TypeAlias = (
        type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
    )
    Classifier: TypeAlias = Callable[[Exception], "Verdict"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The outcome of classifying one error.

    Attributes:
        transient: ``True`` if another attempt may succeed.
        rule: short name of the rule that decided, shown in logs and events.
        report: ``False`` lets a permanent error propagate without a
            ``NotRetried`` event: for errors that are not the retry loop's
            business at all (an application error passing through a client's
            runtime retry, say).
        cost: what the failed attempt cost the server: ``"free"`` (the kernel
            or the network answered: refused, no route, name not resolvable
            yet), ``"server"`` (a server process handled it: starting up, too
            many connections, loading) or ``"unknown"``.
    """

    transient: bool
    rule: str
    report: bool = True
    cost: Cost = "unknown"


def classifier_for(on: RetryOn | None) -> Classifier:
    """Normalise ``on=`` into a classifier.

    ``None`` selects :func:`default_classifier`, which knows the errors of the
    supported drivers and treats other ``OSError`` as transient.
    """
    if on is None:
        return default_classifier
    if isinstance(on, type) and issubclass(on, BaseException):
        return _by_types((on,))
    if isinstance(on, tuple):
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            msg = f"on= must be an exception type, a tuple of them, or a predicate; got {on!r}"
            raise TypeError(msg)
        return _by_types(on)
    if isinstance(on, type) or not callable(on):
        msg = f"on= must be an exception type, a tuple of them, or a predicate; got {on!r}"
        raise TypeError(msg)
    return _by_predicate(on)


def _by_types(types: tuple[type[BaseException], ...]) -> Classifier:
    names = ", ".join(t.__qualname__ for t in types)
    match = Verdict(transient=True, rule=f"on=({names})")
    free = Verdict(transient=True, rule=match.rule, cost="free")
    miss = Verdict(transient=False, rule=f"not on=({names})")

    def classify(exc: Exception) -> Verdict:
        if not isinstance(exc, types):
            return miss
        return free if cost_of(exc) == "free" else match

    return classify


def _by_predicate(predicate: Callable[[BaseException], bool]) -> Classifier:
    name = getattr(predicate, "__qualname__", None) or type(predicate).__qualname__
    match = Verdict(transient=True, rule=f"{name}() is true")
    free = Verdict(transient=True, rule=match.rule, cost="free")
    miss = Verdict(transient=False, rule=f"{name}() is false")

    def classify(exc: Exception) -> Verdict:
        if not predicate(exc):
            return miss
        return free if cost_of(exc) == "free" else match

    return classify


# The classifier for the errors of each driver package: the path of an adapter module
# with a ``classify`` function, imported the first time an error of that driver is
# judged (the driver is loaded then, since it raised), or a registered function.
_DRIVERS: dict[str, str | Classifier] = {
    "psycopg": "resilient_connect.psycopg._classify",
    "redis": "resilient_connect.redis._rules",
    "sqlalchemy": "resilient_connect.sqlalchemy._classify",
}


def register_driver(package: str, classify: Classifier) -> None:
    """Judge errors raised by the top-level package ``package`` with ``classify``."""
    _DRIVERS[package] = classify


def driver_verdict(exc: BaseException) -> Verdict | None:
    """The verdict of the adapter that knows ``exc``'s driver, or ``None`` if none does.

    The lookup goes by the top-level package of the exception's class. It
    imports the adapter's classification module only (never its connect
    functions, the redis bridge or ``redis.sentinel``).
    """
    package = type(exc).__module__.partition(".")[0]
    entry = _DRIVERS.get(package)
    if entry is None:
        return None
    if isinstance(entry, str):
        import importlib

        classify: Classifier = importlib.import_module(entry).classify
        _DRIVERS[package] = entry = classify
    return entry(exc)  # type: ignore[arg-type]  # adapters judge any BaseException


def default_classifier(exc: Exception) -> Verdict:
    """Classify with the adapter that knows the error's driver, else by ``OSError``.

    An error raised by psycopg, redis-py or SQLAlchemy is judged by that
    adapter's rules (:func:`driver_verdict`). Any other ``OSError`` (refused,
    reset, timeout, name not resolvable yet) is transient; everything else is a
    bug or a misconfiguration and is not retried.
    """
    return (
        driver_verdict(exc)
        or os_error_verdict(exc)
        or Verdict(transient=False, rule=f"not-an-os-error:{type(exc).__name__}")
    )


def os_error_verdict(exc: BaseException) -> Verdict | None:
    """The one rule for socket-level errors: any ``OSError`` is transient, else ``None``.

    Refused, reset, timed out, no route, name not resolvable *yet*: the network or
    the server is not there for now. Rule name ``os-error:<ExceptionType>``. Every
    classifier that meets an ``OSError`` outside its driver's own classes uses this.
    """
    if isinstance(exc, OSError):
        return Verdict(transient=True, rule=f"os-error:{type(exc).__name__}", cost=cost_of(exc))
    return None


# errno values meaning "no server process saw this attempt": the local kernel or a
# router answered (refused: nothing listens; unreachable: no route yet).
_FREE_ERRNOS = frozenset(
    {
        getattr(errno, name)
        for name in ("ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL")
        if hasattr(errno, name)
    }
)


def cost_of(exc: BaseException) -> Cost:
    """``"free"`` if ``exc`` (or an error it was raised from) says no server process saw it.

    That is a refused connect, an unreachable host or network, or a host name
    that does not resolve (yet): the kernel, a router or the resolver answered.
    Drivers that wrap the ``OSError`` (redis-py raises its ``ConnectionError``
    while handling it) are followed through ``__cause__`` / ``__context__``, a
    few links deep. Everything else is ``"unknown"``: only a classification
    rule knows that an answer came from the server itself.
    """
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            break
        if isinstance(seen, OSError) and (
            seen.errno in _FREE_ERRNOS
            or isinstance(seen, ConnectionRefusedError)
            or type(seen).__name__ == "gaierror"  # socket.gaierror, without importing socket
        ):
            return "free"
        seen = seen.__cause__ or seen.__context__
    return "unknown"
