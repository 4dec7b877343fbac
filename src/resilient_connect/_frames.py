"""Let go of what a failed attempt's frames still hold (a half-open socket, say).

A driver error often sits in a reference cycle with the frames it passed through:
psycopg's ``Connection.connect`` keeps its errors in a local list, and the error's
traceback keeps that frame (and the abandoned libpq connection in another local)
alive. Such a cycle is freed only by the garbage collector, so every timed-out
attempt kept a socket open until the next collection (tens of descriptors after a
few hundred attempts against a blackhole). The engine calls :func:`release_frames`
on every error it is done with: retried ones after the hooks have seen them, and the
last one when it gives up. Tracebacks still print (file, line, source); only the
finished frames' local variables are dropped.
"""

from __future__ import annotations

#: How many exceptions of a ``__cause__`` / ``__context__`` chain are visited at most.
_MAX_CHAIN = 16


def release_frames(error: BaseException) -> None:
    """Clear the local variables of the finished frames in ``error``'s tracebacks.

    Walks ``error`` and its cause/context chain. Frames still running (the engine's
    own, the caller's) cannot be cleared and are skipped.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        tb = current.__traceback__
        if current is error and tb is not None:
            # The first entry is the frame that caught the error (the engine's loop, still
            # running): skip it rather than pay for the RuntimeError that clear() raises.
            tb = tb.tb_next
        while tb is not None:
            # contextlib.suppress would import contextlib with the package (start-up cost).
            try:  # noqa: SIM105
                tb.tb_frame.clear()
            except RuntimeError:  # still executing (or a suspended generator): not ours
                pass
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
