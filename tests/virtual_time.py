"""A virtual clock for unit tests that inject ``clock=``, ``sleep=`` and ``asleep=``.

Sleeping advances the clock at once and records the delay, so a test reads the
waits a loop made and the time it thinks has passed, without waiting.
"""

from __future__ import annotations


class FakeTime:
    """Virtual time: :meth:`sleep` and :meth:`asleep` advance :attr:`now` and record
    the delay in :attr:`sleeps`.

    ``yields=True`` makes :meth:`asleep` also give the event loop one turn, for tests
    where other tasks must run between a loop's attempts.
    """

    def __init__(self, now: float = 1000.0, *, yields: bool = False) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.yields = yields

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        if self.yields:
            import asyncio

            await asyncio.sleep(0)
