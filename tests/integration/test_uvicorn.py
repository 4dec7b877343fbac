"""Start-up waits under a real uvicorn, and what SIGINT / SIGTERM do to them.

Pins what uvicorn does (its signal handlers only set a flag that it reads after the
lifespan start-up: a plain start-up wait runs to its deadline whatever signal comes) and
tests the two recipes of ``docs/uvicorn.md`` against a real PostgreSQL: the lifespan of
``examples/uvicorn_lifespan.py`` (``stop_on_signals()``) and the command line's wait
before it execs uvicorn. Every child starts with SIGINT and SIGTERM at their defaults
(``with_default_signals``), whatever the test run inherited.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import PostgresServer, wait_port_open, with_default_signals

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCHEME = "postgresql+psycopg"
# The lifespan of the docs' first recipe, without stop_on_signals(): what uvicorn does alone.
PLAIN_APP = """
import contextlib, os
from fastapi import FastAPI
from resilient_connect import Backoff
from resilient_connect.sqlalchemy import create_async_engine

@contextlib.asynccontextmanager
async def lifespan(app):
    url = os.environ["DATABASE_URL"]
    app.state.engine = await create_async_engine(url, retry=Backoff.from_env())
    yield

app = FastAPI(lifespan=lifespan)
"""


class Server:
    """A child process whose stderr lines are collected by a thread, so reads can time out."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            with_default_signals(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Read output until a line contains ``text``; fail with the output so far if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if text in line:
                return
        pytest.fail(f"no line with {text!r}; output:\n{''.join(self.seen)}")

    def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the exit; return the exit status and all output."""
        status = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)  # the output ends when the process does
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return status, "".join(self.seen)


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    """Start servers; any still running at teardown is killed."""
    started: list[Server] = []

    def run(argv: list[str], **env: str) -> Server:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
        environment.update(env)
        server = Server(argv, environment)
        started.append(server)
        return server

    yield run
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(timeout=10)
        server.reader.join(timeout=10)


def uvicorn(app: str, app_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(app_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]


def get_health(port: int) -> tuple[int, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def test_uvicorn_lets_a_plain_lifespan_wait_run_to_its_deadline(
    start: Callable[..., Server], tmp_path: Path, free_port: int
) -> None:
    """What uvicorn does: SIGTERM during the lifespan start-up only sets a flag. The wait
    (nothing listens) goes on until its deadline; then start-up fails (exit 3)."""
    (tmp_path / "plain_app.py").write_text(PLAIN_APP)
    down = f"{SCHEME}://app:pw@127.0.0.1:{free_port}/app"
    server = start(
        uvicorn("plain_app:app", tmp_path, free_port + 1),
        DATABASE_URL=down,
        RESILIENT_CONNECT_TIMEOUT="3",
    )
    server.wait_for("attempt 1 failed")
    server.proc.send_signal(signal.SIGTERM)
    status, output = server.finish(timeout=30)
    assert status == 3
    # The give-up line comes after the signal: the wait was not interrupted.
    assert "gave up after" in output
    assert "(deadline reached)" in output
    assert "Application startup failed" in output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_stop_on_signals_ends_the_lifespan_wait_at_once(
    start: Callable[..., Server], free_port: int, signum: signal.Signals
) -> None:
    """The recipe: with stop_on_signals() a signal cancels the 60 s wait at once; uvicorn
    reports the start-up as failed and exits 3, without waiting for the deadline."""
    down = f"{SCHEME}://app:pw@127.0.0.1:{free_port}/app"
    server = start(
        uvicorn("uvicorn_lifespan:app", EXAMPLES, free_port + 1),
        DATABASE_URL=down,
        RESILIENT_CONNECT_TIMEOUT="60",
    )
    server.wait_for("attempt 1 failed")
    sent = time.monotonic()
    server.proc.send_signal(signum)
    status, output = server.finish(timeout=30)
    assert status == 3
    assert f"StartupInterrupted: start-up stopped by {signum.name}" in output
    assert "gave up after" not in output
    assert time.monotonic() - sent < 20  # far from the 60 s deadline; no finer timing here


def test_stop_on_signals_app_serves_once_the_database_answers(
    start: Callable[..., Server], postgres: PostgresServer, free_port: int
) -> None:
    """The recipe's app starts against a live database, serves, and shuts down gracefully on
    SIGTERM: uvicorn's own handlers are back once start-up is over (after its shutdown,
    uvicorn re-raises the signal, so the process ends by SIGTERM)."""
    server = start(
        uvicorn("uvicorn_lifespan:app", EXAMPLES, free_port),
        DATABASE_URL=postgres.url_for(scheme=SCHEME),
    )
    server.wait_for("Application startup complete")
    wait_port_open("127.0.0.1", free_port)
    assert get_health(free_port) == (200, {"status": "ok"})
    server.proc.send_signal(signal.SIGTERM)
    status, output = server.finish(timeout=30)
    assert status == -signal.SIGTERM
    assert "Finished server process" in output


def test_the_command_line_waits_before_uvicorn_and_stops_on_sigterm(
    start: Callable[..., Server], free_port: int
) -> None:
    """The other recipe: ``resilient-connect wait --env DATABASE_URL -- uvicorn ...``. A
    SIGTERM during the wait ends it at once (143); uvicorn never starts."""
    down = f"{SCHEME}://app:pw@127.0.0.1:{free_port}/app"
    cli = [sys.executable, "-m", "resilient_connect", "wait", "--env", "DATABASE_URL"]
    server = start(
        [*cli, "--timeout", "60", "--", *uvicorn("uvicorn_lifespan:app", EXAMPLES, free_port + 1)],
        DATABASE_URL=down,
    )
    server.wait_for("attempt 1 failed")
    server.proc.send_signal(signal.SIGTERM)
    status, output = server.finish(timeout=30)
    assert status == 143
    assert "Started server process" not in output
    assert "pw" not in output.replace("postgresql+psycopg://app:***@", "")


def test_the_command_line_execs_uvicorn_once_the_database_answers(
    start: Callable[..., Server], postgres: PostgresServer, free_port: int
) -> None:
    """Once the database answers, the command line execs uvicorn in the same process, which
    then serves (its lifespan connects at once)."""
    cli = [sys.executable, "-m", "resilient_connect", "wait", "--env", "DATABASE_URL"]
    server = start(
        [*cli, "--", *uvicorn("uvicorn_lifespan:app", EXAMPLES, free_port)],
        DATABASE_URL=postgres.url_for(scheme=SCHEME),
    )
    server.wait_for(f"Started server process [{server.proc.pid}]")
    server.wait_for("Application startup complete")
    wait_port_open("127.0.0.1", free_port)
    assert get_health(free_port) == (200, {"status": "ok"})
    server.proc.send_signal(signal.SIGTERM)
    status, output = server.finish(timeout=30)
    assert status == -signal.SIGTERM
    assert "Finished server process" in output
