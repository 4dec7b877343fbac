"""Shared fixtures: real PostgreSQL / Redis servers and a fault proxy, all on loopback.

Shared (session) servers are for tests that only connect; a test that stops, restarts or
reconfigures a server takes a fresh one from ``make_postgres`` / ``make_redis``. Every server
and proxy is cleaned up at teardown, also when the test fails. Missing server binaries are a
test failure with install instructions, never a silent skip.
"""

from __future__ import annotations

import signal
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness import (
    FaultProxy,
    HarnessError,
    PostgresServer,
    RedisSentinel,
    RedisServer,
    find_pg_bindir,
    find_redis_server,
)
from harness import free_port as _free_port
from harness.pgbouncer import PgBouncer, find_pgbouncer


def _sigterm_as_interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Treat SIGTERM (``timeout``, CI cancellation) like Ctrl-C.

    By default SIGTERM ends Python at once, skipping fixture teardown and atexit hooks, and
    the servers (in their own sessions) would outlive the run. As KeyboardInterrupt, pytest
    tears fixtures down. A handler someone else installed is left alone.
    """
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def _require(find: Callable[[], object]) -> None:
    """Fail (not skip) with the harness' message, which names the apt packages to install."""
    try:
        find()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


class _Teardown:
    """Collects cleanups and runs them all, even when some of them fail."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def run(self) -> None:
        errors = [error for callback in reversed(self._callbacks) if (error := _call(callback))]
        self._callbacks.clear()
        if errors:
            raise errors[0]


def _call(callback: Callable[[], None]) -> Exception | None:
    """Run one cleanup, returning its exception instead of raising it."""
    try:
        callback()
    except Exception as exc:  # the remaining cleanups must still run
        return exc
    return None


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Each test starts with a full process-wide retry budget and no outage in the log hook.

    Both are process-wide by design (every loop of a process shares them); a test that
    drained the budget must not make a later test's reconnects give up early.
    """
    import resilient_connect as rc

    saved = rc.default_budget()
    rc.set_default_budget(rc.RetryBudget(refill_per_second=1.0))
    rc.log_event.reset()
    try:
        yield
    finally:
        rc.set_default_budget(saved)
        rc.log_event.reset()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running cluster shared by the session; do not stop or reconfigure it."""
    _require(find_pg_bindir)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A running Redis without a password, shared by the session; do not stop it."""
    _require(find_redis_server)
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_auth() -> Iterator[RedisServer]:
    """A running Redis with ``requirepass`` (an awkward password), shared by the session."""
    _require(find_redis_server)
    server = RedisServer(password="r3d!s p@ss:w/%'x")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def make_postgres() -> Iterator[Callable[..., PostgresServer]]:
    """Factory for fresh clusters a test may stop, restart or break.

    ``make_postgres(start=True, **PostgresServer kwargs)``; ``start=False`` returns an
    initialised but stopped cluster (for late-start scenarios).
    """
    _require(find_pg_bindir)
    teardown = _Teardown()

    def factory(*, start: bool = True, **kwargs: Any) -> PostgresServer:
        server = PostgresServer(**kwargs)
        teardown.add(server.cleanup)
        if start:
            server.start()
        else:
            server.init()
        return server

    try:
        yield factory
    finally:
        teardown.run()


@pytest.fixture
def make_redis() -> Iterator[Callable[..., RedisServer]]:
    """Factory for fresh Redis servers: ``make_redis(start=True, **RedisServer kwargs)``."""
    _require(find_redis_server)
    teardown = _Teardown()

    def factory(*, start: bool = True, **kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        teardown.add(server.cleanup)
        if start:
            server.start()
        return server

    try:
        yield factory
    finally:
        teardown.run()


@pytest.fixture
def make_redis_sentinel() -> Iterator[Callable[..., RedisSentinel]]:
    """Factory for Sentinels: ``make_redis_sentinel(master, start=True, **kwargs)``."""
    _require(find_redis_server)
    teardown = _Teardown()

    def factory(master: RedisServer, *, start: bool = True, **kwargs: Any) -> RedisSentinel:
        sentinel = RedisSentinel(master, **kwargs)
        teardown.add(sentinel.cleanup)
        if start:
            sentinel.start()
        return sentinel

    try:
        yield factory
    finally:
        teardown.run()


@pytest.fixture
def make_pgbouncer() -> Iterator[Callable[..., PgBouncer]]:
    """Factory for pgbouncers in front of a server: ``make_pgbouncer(upstream, start=True,
    **PgBouncer kwargs)`` (SCRAM auth, admin console, fast ``server_login_retry``)."""
    _require(find_pgbouncer)
    teardown = _Teardown()

    def factory(upstream: PostgresServer, *, start: bool = True, **kwargs: Any) -> PgBouncer:
        bouncer = PgBouncer(upstream, **kwargs)
        teardown.add(bouncer.cleanup)
        if start:
            bouncer.start()
        return bouncer

    try:
        yield factory
    finally:
        teardown.run()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory for proxies: ``fault_proxy((host, port), **FaultProxy kwargs)``; all closed
    (threads joined, sockets closed) at teardown."""
    teardown = _Teardown()

    def factory(upstream: tuple[str, int], **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **kwargs)
        teardown.add(proxy.close)
        return proxy

    try:
        yield factory
    finally:
        teardown.run()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    return _free_port()
