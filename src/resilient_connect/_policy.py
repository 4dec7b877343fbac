"""Backoff policies: pure values that turn attempt numbers into delays.

Nothing here does I/O or reads a clock. A policy is a frozen value; the delay
for retry number *n* (0 for the wait after the first failure) is a pure
function of the policy, *n*, the previous delay and one draw from a random
source. The engine keeps the per-call state.

The cap (``maximum``) is applied *before* jitter, and every jitter mode is
shaped so that the result still lies within ``[0, maximum]``. This keeps the
spread at the cap: peers that all reached the cap still wait different times,
so they do not reconnect in lock-step (the thundering herd comes back when a
library clamps *after* jitter and most delays collapse onto the cap).

The delay also depends on what the failed attempt cost the server (the
verdict's ``cost``, see :mod:`resilient_connect._classify`): a refused connect
is answered by the kernel, so probing again soon costs the server nothing and
notices it within a fraction of a second once it listens; an answer from a
server process (starting up, too many connections) is paced to at most one
attempt a second, backing off while such answers repeat. The numbers behind
the defaults are in ``docs/policies.md`` and ``docs/performance.md``.
"""

from __future__ import annotations

import dataclasses
import math
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any, Literal, Protocol, TypeAlias

    from ._classify import Cost

    JitterMode: TypeAlias = Literal["none", "full", "equal", "decorrelated"]
    Jitter: TypeAlias = JitterMode | float

    class RandomSource(Protocol):
        """Anything with ``random() -> float`` in ``[0, 1)``, such as ``random.Random``."""

        def random(self) -> float: ...


JITTER_MODES = ("none", "full", "equal", "decorrelated")
#: Longest duration a policy accepts, in seconds (about 31 years). Longer waits are
#: "forever" in practice, and the platform's sleep and time-out calls overflow on them
#: (``time.sleep(1e300)`` raises ``OverflowError``); ``timeout=None`` means no deadline.
MAX_SECONDS = 1e9
DECORRELATED_FACTOR = 3.0
#: Seconds at least between two attempts whose failures cost the server a process
#: ("starting up", "too many connections", "loading"): at most one a second per client.
SERVER_PAUSE = 1.0
#: Spread of the probe pace (+/- this fraction) unless the policy's jitter says otherwise.
PROBE_SPREAD = 0.5
#: First server pause drawn up to this factor above ``SERVER_PAUSE``, so that clients
#: turned away together (too many connections) do not come back together.
SERVER_SPREAD = 1.5
ENV_PREFIX = "RESILIENT_CONNECT_"
_UNBOUNDED_WORDS = frozenset({"none", "null", "unlimited", "inf", "infinite", "forever"})


class PolicyError(ValueError):
    """A policy value is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"Backoff.{field}: {message}")
        self.field = field


def _is_number(candidate: object) -> bool:
    return isinstance(candidate, (int, float)) and not isinstance(candidate, bool)


def _check_number(
    field: str,
    number: object,
    *,
    minimum: float,
    strict: bool = False,
    largest: float | None = None,
) -> float:
    if not _is_number(number) or not math.isfinite(number):  # type: ignore[arg-type]
        raise PolicyError(field, f"must be a finite number, got {number!r}")
    as_float = float(number)  # type: ignore[arg-type]
    if as_float < minimum or (strict and as_float == minimum):
        relation = ">" if strict else ">="
        raise PolicyError(field, f"must be {relation} {minimum:g}, got {number!r}")
    if largest is not None and as_float > largest:
        hint = " (use None for no deadline)" if field == "timeout" else ""
        raise PolicyError(field, f"must be <= {largest:g} seconds{hint}, got {number!r}")
    return as_float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How long to wait between attempts, and when to stop.

    All durations are in seconds. The defaults retry for at most 60 seconds:
    long enough to ride out a database that is starting (1-4 s), a crash
    recovery (often 10-20 s) or Redis loading a dataset, short enough that a
    misconfigured service fails within a minute instead of hanging. How long
    each wait is depends on what the failure cost the server:

    * nothing (connection refused, no route, name not resolvable yet): the
      next attempt follows after ``probe`` seconds +/- 50% (0.4 s), whatever
      the attempt number, so a server is noticed about 0.25 s after it starts
      listening;
    * a server process (starting up, recovering, too many connections,
      loading): at least 1 s (``SERVER_PAUSE``, at most ``maximum``), growing
      by ``multiplier`` up to ``maximum`` while such answers repeat;
    * not known (timeouts, lost connections, errors matched by your ``on=``):
      delays growing from 0.1 s by a factor of 2 up to 5 s, fully jittered.

    Attributes:
        initial: delay before the second attempt, before jitter. ``>= 0``.
        multiplier: growth factor per retry. ``>= 1``; ``1`` gives constant delays.
        maximum: cap on one delay, applied before jitter; every jitter mode keeps
            the result within ``[0, maximum]``.
        attempts: most attempts in all, the first included; ``None`` for no limit.
        timeout: overall deadline in seconds from the first attempt; ``None`` for
            none. No sleep and no new attempt starts past it.
        jitter: ``"none"``, ``"full"``, ``"equal"``, ``"decorrelated"``, or a
            float ``f`` in ``[0, 1]`` for proportional jitter of +/- ``f``.
        probe: seconds between attempts after failures that cost the server
            nothing (``> 0``), or ``None`` to back off from every failure alike
            (no pacing by cost at all). Applies only without an ``attempts``
            limit: a count of attempts is spent by the backoff, as before.

    ``attempts=None, timeout=None`` retries until the caller is cancelled; it is
    allowed, but only when both are passed explicitly. A policy that never waits
    (``initial=0`` or ``maximum=0``) needs ``attempts``: otherwise it would retry
    in a tight loop. Durations are at most :data:`MAX_SECONDS`.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 5.0
    attempts: int | None = None
    timeout: float | None = 60.0
    jitter: Jitter = "full"
    probe: float | None = 0.4

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(
            self, "initial", _check_number("initial", self.initial, minimum=0, largest=MAX_SECONDS)
        )
        set_field(self, "multiplier", _check_number("multiplier", self.multiplier, minimum=1))
        set_field(
            self, "maximum", _check_number("maximum", self.maximum, minimum=0, largest=MAX_SECONDS)
        )
        if self.attempts is not None and (
            not isinstance(self.attempts, int) or isinstance(self.attempts, bool)
        ):
            raise PolicyError("attempts", f"must be an int >= 1 or None, got {self.attempts!r}")
        if self.attempts is not None and self.attempts < 1:
            raise PolicyError("attempts", f"must be >= 1 or None, got {self.attempts!r}")
        if self.timeout is not None:
            set_field(
                self,
                "timeout",
                _check_number("timeout", self.timeout, minimum=0, strict=True, largest=MAX_SECONDS),
            )
        set_field(self, "jitter", _check_jitter(self.jitter))
        if self.probe is not None:
            set_field(self, "probe", _check_number("probe", self.probe, minimum=0, strict=True))
        if self.jitter == "decorrelated" and self.initial == 0:
            raise PolicyError("jitter", "'decorrelated' needs initial > 0 (it grows from initial)")
        if self.attempts is None and (self.maximum == 0 or self.initial == 0):
            # Every delay is 0: without an attempt limit, a tight loop until the deadline
            # (thousands of attempts and log lines a second against a refused port).
            field = "maximum" if self.maximum == 0 else "initial"
            raise PolicyError(
                field,
                "0 never waits between attempts; give a positive delay (such as 0.01) "
                "or an attempt limit (attempts=N)",
            )

    def replace(self, **changes: Any) -> Backoff:
        """Return a copy with ``changes`` applied, validated again.

        The same as ``dataclasses.replace(self, **changes)`` (or ``copy.replace``
        on Python 3.13+), which type checkers check field by field.
        """
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls,
        prefix: str = ENV_PREFIX,
        *,
        base: Backoff | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Backoff:
        """Return ``base`` (default: ``Backoff()``) with overrides from the environment.

        One variable per field, named ``prefix + FIELD`` in upper case, for example
        ``RESILIENT_CONNECT_TIMEOUT=30``. ``ATTEMPTS`` and ``TIMEOUT`` accept
        ``none`` (or ``unlimited``) for no limit, ``PROBE`` accepts ``none``
        (or ``off``) for no pacing by cost. Unset or empty variables are
        ignored. A bad value raises ``ValueError`` naming the variable.
        """
        source = os.environ if environ is None else environ
        policy = cls() if base is None else base
        changes: dict[str, object] = {}
        variables: dict[str, str] = {}
        for field in (each.name for each in dataclasses.fields(cls)):
            variable = f"{prefix}{field.upper()}"
            raw = source.get(variable, "").strip()
            if raw:
                variables[field] = variable
                changes[field] = _parse_env(field, variable, raw)
        if not changes:
            return policy
        try:
            return dataclasses.replace(policy, **changes)  # type: ignore[arg-type]
        except PolicyError as error:
            variable = variables.get(error.field, next(iter(variables.values())))
            msg = f"{variable}={source[variable]!r}: {error}"
            raise ValueError(msg) from None

    def delay(
        self, retry: int, previous: float, rng: RandomSource, cost: Cost = "unknown"
    ) -> float:
        """Return the wait before attempt ``retry + 2``.

        ``retry`` counts from 0 (the wait after the first failure); ``previous``
        is the delay returned last time (used by ``decorrelated`` and by the
        server pause, which grows from it). ``cost`` is what the failure cost
        the server (the verdict's ``cost``); with ``probe=None`` it is ignored.
        """
        if cost != "unknown" and self.probe is not None:
            if cost == "server":
                return self._server_pause(previous, rng)
            if self.attempts is None:
                return self._probe_delay(rng)
        return self._backoff(retry, previous, rng)

    def _backoff(self, retry: int, previous: float, rng: RandomSource) -> float:
        """The wait after a failure of unknown cost: capped exponential, then jitter."""
        jitter = self.jitter
        if jitter == "decorrelated":
            # min(): a hard cap despite float rounding in lower + (upper - lower) * draw.
            return min(
                self.maximum,
                decorrelated_jitter(self.initial, self.maximum, previous, rng.random()),
            )
        ceiling = capped_exponential(self.initial, self.multiplier, self.maximum, retry)
        if jitter == "full":
            return full_jitter(ceiling, rng.random())
        if jitter == "equal":
            return equal_jitter(ceiling, rng.random())
        if jitter == "none":
            return ceiling
        assert isinstance(jitter, float)  # validated in __post_init__
        band_cap = self.maximum / (1 + jitter)
        centre = capped_exponential(self.initial, self.multiplier, band_cap, retry)
        # The band's top is `maximum` in exact arithmetic; the min() absorbs float rounding
        # (one ulp, or more for subnormal caps) so that the cap is a hard guarantee.
        return min(self.maximum, proportional_jitter(centre, jitter, rng.random()))

    def _probe_delay(self, rng: RandomSource) -> float:
        """The wait after a failure that cost the server nothing: ``probe`` +/- a spread.

        The spread is the float jitter if one is set, 0 for ``"none"`` (lock-step,
        for comparison) and :data:`PROBE_SPREAD` otherwise. A narrow band beats
        full jitter here: for the same attempt rate, regular probes leave less
        time between "the server listens" and "the next probe" (half the pace on
        average, against two thirds of it for ``uniform(0, 2 * probe)``).
        """
        assert self.probe is not None  # checked by delay()
        jitter = self.jitter
        if jitter == "none":
            return min(self.maximum, self.probe)
        spread = jitter if isinstance(jitter, float) else PROBE_SPREAD
        centre = min(self.probe, self.maximum / (1 + spread))
        return min(self.maximum, proportional_jitter(centre, spread, rng.random()))

    def _server_pause(self, previous: float, rng: RandomSource) -> float:
        """The wait after a failure that cost the server a process.

        At least :data:`SERVER_PAUSE` (or ``maximum`` if smaller). The first such
        wait after others aims at the pause itself; while they repeat, each aims
        at ``multiplier`` times the last one, up to ``maximum``. ``"none"`` waits
        exactly that aim, a float jitter spreads it by +/- the float, other
        modes draw from ``[pause, 1.5 * aim]``.
        """
        floor = min(SERVER_PAUSE, self.maximum)
        aim = floor if previous < floor else min(self.maximum, previous * self.multiplier)
        jitter = self.jitter
        if jitter == "none":
            return aim
        if isinstance(jitter, float):
            return min(self.maximum, max(floor, proportional_jitter(aim, jitter, rng.random())))
        upper = min(self.maximum, SERVER_SPREAD * aim)
        return min(upper, floor + (upper - floor) * rng.random())

    def delays(self, rng: RandomSource | None = None, *, cost: Cost = "unknown") -> Iterator[float]:
        """Yield the waits between attempts, in order, if every failure costs ``cost``.

        There are ``attempts - 1`` of them, or an endless stream when
        ``attempts`` is ``None``. ``timeout`` is not applied here: it depends on
        how long each attempt takes, which only the engine knows. ``rng``
        defaults to the ``random`` module.
        """
        if rng is None:
            import random

            rng = random
        previous = self.initial
        retry = 0
        while self.attempts is None or retry < self.attempts - 1:
            previous = self.delay(retry, previous, rng, cost)
            yield previous
            retry += 1


def capped_exponential(initial: float, multiplier: float, maximum: float, retry: int) -> float:
    """``min(maximum, initial * multiplier ** retry)``, safe for any ``retry``.

    Large retry numbers would overflow a float power; once the product is past
    the cap it cannot come back, so overflow simply means "the cap".
    """
    try:
        raw = initial * multiplier**retry
    except OverflowError:
        return maximum
    return min(maximum, raw)


def full_jitter(ceiling: float, draw: float) -> float:
    """``uniform(0, ceiling)``: the widest spread; some waits are near zero."""
    return ceiling * draw


def equal_jitter(ceiling: float, draw: float) -> float:
    """``ceiling / 2 + uniform(0, ceiling / 2)``: at least half the delay, always."""
    half = ceiling / 2
    return half + half * draw


def decorrelated_jitter(initial: float, maximum: float, previous: float, draw: float) -> float:
    """``uniform(initial, min(maximum, 3 * previous))``: grows from the last wait.

    The classic formula is ``min(maximum, uniform(initial, 3 * previous))``;
    clamping after the draw returns exactly ``maximum`` two times in three once
    ``previous`` reaches the cap. Drawing below the cap keeps the spread.
    ``multiplier`` is not used: the growth factor of this mode is 3.
    """
    upper = min(maximum, DECORRELATED_FACTOR * max(previous, initial))
    lower = min(initial, upper)
    return lower + (upper - lower) * draw


def proportional_jitter(centre: float, spread: float, draw: float) -> float:
    """``centre * uniform(1 - spread, 1 + spread)``.

    The policy computes ``centre`` with the cap ``maximum / (1 + spread)``, so
    the band's top is ``maximum`` and the jitter survives at the cap.
    """
    return centre * (1 - spread + 2 * spread * draw)


def _check_jitter(jitter: object) -> Jitter:
    if isinstance(jitter, str):
        mode = jitter.strip().lower()
        if mode in JITTER_MODES:
            return mode  # type: ignore[return-value]
    elif isinstance(jitter, (int, float)) and not isinstance(jitter, bool):
        spread = float(jitter)
        if math.isfinite(spread) and 0 <= spread <= 1:
            return spread
    raise PolicyError(
        "jitter",
        f"must be one of {', '.join(JITTER_MODES)} or a number in [0, 1], got {jitter!r}",
    )


def _parse_env(field: str, variable: str, raw: str) -> object:
    lowered = raw.lower()
    try:
        if field == "jitter":
            return lowered if lowered in JITTER_MODES else float(raw)
        if field in {"attempts", "timeout"} and lowered in _UNBOUNDED_WORDS:
            return None
        if field == "probe" and lowered in _UNBOUNDED_WORDS | {"off"}:
            return None
        if field == "attempts":
            return int(raw)
        return float(raw)
    except ValueError:
        kind = "an integer" if field == "attempts" else "a number"
        msg = f"{variable}={raw!r}: expected {kind}"
        if field in {"attempts", "timeout", "probe"}:
            msg += " or 'none'"
        if field == "jitter":
            msg = f"{variable}={raw!r}: expected one of {', '.join(JITTER_MODES)} or a number"
        raise ValueError(msg) from None


DEFAULT_RECONNECT = Backoff(initial=0.1, multiplier=2.0, maximum=1.0, timeout=15.0)
"""The runtime reconnect policy of the adapters when ``reconnect=None``.

It governs reconnects that a request waits for once the application runs (a
SQLAlchemy pool connect, a redis-py command): a restart takes well under a
second and a crash recovery some seconds, so waits at most 1 s apart notice the
comeback quickly, and the 15 s deadline keeps a request from hanging much
longer than that. psycopg_pool's background reconnects, which no request waits
for, have their own default (``resilient_connect.psycopg.DEFAULT_POOL_RECONNECT``).
"""


def parse_field(field: str, raw: str, *, source: str) -> object:
    """Parse ``raw`` as the value of Backoff field ``field``, as ``from_env`` does.

    The one parser for policy text, shared by the environment and the command
    line: ``none`` (also ``null``, ``unlimited``...) for no limit on
    ``attempts`` and ``timeout``. ``source`` names where the text came from (a
    variable, an option) in the ``ValueError`` for text that is not a value.
    The result is validated by ``Backoff`` itself.
    """
    return _parse_env(field, source, raw.strip())
