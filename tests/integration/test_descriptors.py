"""Failed attempts against a blackhole leave no descriptor open, with the collector off.

psycopg's timed-out connect leaves its half-open libpq connection in a reference cycle
(error -> traceback -> ``Connection.connect`` frame -> its list of errors -> error); the
engine releases those frames as soon as it is done with an error, so the socket closes
then, not at the next garbage collection. Counted in ``/proc/self/fd``.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

import resilient_connect as rc
from harness import FaultProxy, PostgresServer
from resilient_connect import psycopg as rc_psycopg
from resilient_connect._bounded import THREAD_NAME

pytestmark = pytest.mark.integration


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def blackhole(
    postgres: PostgresServer, fault_proxy: Callable[..., FaultProxy]
) -> Iterator[FaultProxy]:
    """A proxy in front of the real server that accepts and never answers; gc off."""
    proxy = fault_proxy(postgres.address)
    proxy.blackhole()
    gc.collect()
    gc.disable()
    try:
        yield proxy
    finally:
        gc.enable()


def _settle(proxy: FaultProxy) -> None:
    """Wait out the abandoned helper threads, then drop the proxy's side of every socket."""
    deadline = time.monotonic() + 15
    while any(t.name == THREAD_NAME for t in threading.enumerate()):
        assert time.monotonic() < deadline, "helper threads still running"
        time.sleep(0.02)
    proxy.cut_all()


def test_adapter_attempts_cut_at_the_deadline_leave_no_socket(
    postgres: PostgresServer, blackhole: FaultProxy
) -> None:
    """Many psycopg adapter connects cut at a 0.05 s deadline: every socket closes."""
    url = postgres.url_for(port=blackhole.port)
    before = open_fds()
    for _ in range(40):
        with pytest.raises(rc.RetryExhausted):
            rc_psycopg.connect_with_retry(url, policy=rc.Backoff(timeout=0.05), hooks=())
    _settle(blackhole)
    assert open_fds() <= before


@pytest.mark.parametrize("entry", ["connect_with_retry", "retry"])
def test_core_helpers_release_a_timed_out_connect(
    postgres: PostgresServer, blackhole: FaultProxy, entry: str
) -> None:
    """The core helper and the decorator around plain ``psycopg.connect``: the timed-out
    attempts (libpq's 2 s minimum, run concurrently) keep no socket once given up on."""
    url = postgres.url_for(port=blackhole.port)
    policy = rc.Backoff(attempts=1)

    @rc.retry(on=psycopg.OperationalError, policy=policy, hooks=())
    def decorated() -> psycopg.Connection:
        return psycopg.connect(url, connect_timeout=2)

    def one() -> None:
        try:
            if entry == "retry":
                decorated()
            else:
                rc.connect_with_retry(
                    psycopg.connect, url, connect_timeout=2, policy=policy, hooks=()
                )
        except rc.RetryExhausted as exc:
            errors.append(type(exc.last_exception).__name__)

    errors: list[str] = []
    before = open_fds()
    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == ["ConnectionTimeout"] * 8
    _settle(blackhole)
    assert open_fds() <= before
