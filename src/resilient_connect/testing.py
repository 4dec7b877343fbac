"""Make every wait instant in your own test suite.

Code that connects with resilient_connect waits between attempts; your tests
should not. :func:`instant_waits` replaces the engine's default clock and
sleeps with a virtual clock that jumps forward instead of sleeping, for every
retrying call that was not given its own ``clock``/``sleep``/``asleep``.
Retry budgets are unlimited meanwhile (one test's retries must not starve the
next test's), and the default logging hook writes every line at once instead
of aggregating them. Deadlines still apply, in virtual time, so a test of "gives up after 60 s"
runs in microseconds.

As a context manager::

    from resilient_connect.testing import instant_waits


    def test_gives_up():
        with instant_waits() as waits:
            with pytest.raises(RetryExhausted):
                connect()
        assert waits.total == pytest.approx(60, abs=5)

As a pytest fixture (put it in ``conftest.py``)::

    @pytest.fixture(autouse=True)
    def _no_waiting():
        with instant_waits() as waits:
            yield waits

Only the engine's waits are virtual: a driver's own connect timeout still
takes real time. Not thread-safe to enter from several threads at once; enter
it once around the test.
"""

from __future__ import annotations

from . import _budget, _timing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["VirtualWaits", "instant_waits"]


class VirtualWaits:
    """A virtual clock: ``sleep`` records the delay and moves the clock instead of waiting.

    Attributes:
        sleeps: every delay requested, in order, sync and async alike.
    """

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self._offset = 0.0
        self._saved: tuple[object, object, object] | None = None
        self._saved_budgets = False

    @property
    def total(self) -> float:
        """Sum of all recorded delays, in seconds."""
        return sum(self.sleeps)

    def clock(self) -> float:
        """Real monotonic time plus every delay slept so far."""
        import time

        return time.monotonic() + self._offset

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` without waiting."""
        self.sleeps.append(seconds)
        self._offset += seconds

    async def asleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds``, yielding to the event loop once."""
        import asyncio

        self.sleep(seconds)
        await asyncio.sleep(0)

    def __enter__(self) -> Self:
        if self._saved is not None:
            msg = "instant_waits() is already active"
            raise RuntimeError(msg)
        self._saved = (_timing.clock, _timing.sleep, _timing.asleep)
        _timing.clock = self.clock
        _timing.sleep = self.sleep
        _timing.asleep = self.asleep
        self._saved_budgets = _budget.UNLIMITED
        _budget.UNLIMITED = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._saved is not None
        _timing.clock, _timing.sleep, _timing.asleep = self._saved  # type: ignore[assignment]
        _budget.UNLIMITED = self._saved_budgets
        self._saved = None


def instant_waits() -> VirtualWaits:
    """Return a context manager under which every engine wait is virtual and instant."""
    return VirtualWaits()
