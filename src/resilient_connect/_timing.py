"""Where the engine gets the time and how it waits, unless told otherwise.

Each retrying call can be given its own ``clock``, ``sleep`` and ``asleep``;
when it is not, the engine reads these module attributes *at call time*, so
that :func:`resilient_connect.testing.instant_waits` can swap them for a
whole test. Nothing else changes them.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

    Clock = Callable[[], float]
    Sleep = Callable[[float], object]
    AsyncSleep = Callable[[float], Coroutine[Any, Any, object]]


async def _asyncio_sleep(seconds: float) -> None:
    """``asyncio.sleep``, imported on first use so the package does not load asyncio."""
    import asyncio

    await asyncio.sleep(seconds)


clock: Clock = time.monotonic
sleep: Sleep = time.sleep
asleep: AsyncSleep = _asyncio_sleep
