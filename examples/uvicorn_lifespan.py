"""A FastAPI app that waits for its database at start-up, and stops when told to.

uvicorn handles SIGINT (Ctrl-C) and SIGTERM (``docker stop``) by setting a flag
that it reads only once the application's lifespan start-up has finished; a
start-up that waits for a database is not interrupted. ``stop_on_signals()``
makes those two signals cancel the start-up wait instead, for as long as it
runs, then gives uvicorn its own handlers back: the start-up fails at once
("start-up stopped by SIGTERM"), uvicorn exits with its start-up failure
status (3), and a process manager sees the process end.

Run it (``tests/integration/test_uvicorn.py`` does, against a real PostgreSQL)::

    export DATABASE_URL=postgresql+psycopg://app:secret@db/app
    uvicorn uvicorn_lifespan:app --app-dir examples

The start-up policy comes from ``RESILIENT_CONNECT_*`` variables (default: 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator

from fastapi import FastAPI, Request
from sqlalchemy import text

from resilient_connect import Backoff
from resilient_connect.sqlalchemy import create_async_engine


class StartupInterrupted(Exception):
    """SIGINT or SIGTERM arrived while the application was still starting."""


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """While the block runs, the first of ``signals`` cancels the current task.

    Use it in an async function (a lifespan), in the main thread. The server's
    own handlers are put back when the block ends, however it ends.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "stop_on_signals() runs inside a task"
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    saved = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals:
        loop.add_signal_handler(signum, stop, signum)
    try:
        yield
    except asyncio.CancelledError:
        if not received:
            raise  # cancelled by someone else: not ours to explain
        if sys.version_info >= (3, 11):
            task.uncancel()
        name = signal.Signals(received[0]).name
        raise StartupInterrupted(f"start-up stopped by {name}") from None
    finally:
        for signum, handler in saved.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    with stop_on_signals():
        # Serve only once the database answers; Ctrl-C or SIGTERM end the wait at once.
        app.state.engine = await create_async_engine(
            os.environ["DATABASE_URL"], retry=Backoff.from_env()
        )
    yield
    await app.state.engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health(request: Request) -> dict[str, str]:
    async with request.app.state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return {"status": "ok"}
