"""Checked by mypy --strict in CI: the decorator and helpers keep exact types."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

import resilient_connect as rc


@rc.retry(on=ConnectionError)
def fetch(url: str, *, retries: int = 3) -> bytes:
    return url.encode() * retries


@rc.retry(on=(ConnectionError, TimeoutError), policy=rc.Backoff(timeout=5))
async def afetch(url: str, count: int) -> list[str]:
    return [url] * count


@rc.retry(on=lambda exc: isinstance(exc, OSError))
def nothing() -> None:
    return None


assert_type(fetch("x"), bytes)
assert_type(fetch("x", retries=1), bytes)


async def awaited() -> None:
    assert_type(await afetch("x", 2), list[str])
    coroutine = afetch("x", 2)
    assert_type(coroutine, Coroutine[Any, Any, list[str]])  # type: ignore[unused-coroutine]
    await coroutine


assert_type(nothing(), None)


def make_socket(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port))


async def amake(host: str) -> dict[str, int]:
    return {host: 1}


def sync_helpers() -> None:
    conn = rc.connect_with_retry(make_socket, "localhost", 1, policy=rc.Backoff(attempts=3))
    assert_type(conn, socket.socket)


async def async_helpers() -> None:
    result = await rc.aconnect_with_retry(amake, "h", on=OSError)
    assert_type(result, dict[str, int])


def events(event: rc.Event) -> None:
    if isinstance(event, rc.RetryScheduled):
        assert_type(event.delay, float)
    assert_type(event.target, str)


def policies() -> None:
    policy = rc.Backoff(initial=0.5, jitter=0.1)
    assert_type(policy.replace(timeout=None), rc.Backoff)
    assert_type(policy.timeout, float | None)
    assert_type(rc.Backoff.from_env("APP_"), rc.Backoff)
    error = rc.RetryExhausted(target="t", attempts=1, elapsed=0.0, last_exception=OSError())
    assert_type(error.last_exception, BaseException)


hook: Callable[[rc.Event], object] = rc.log_event
wrapped: Callable[[str, int], Awaitable[list[str]]] = afetch


def dataclass_values() -> None:
    """Values are dataclasses to type checkers too: replace() is checked field by field
    (each ignore below must be needed: warn_unused_ignores)."""
    policy = rc.Backoff()
    assert_type(dataclasses.replace(policy, timeout=5), rc.Backoff)
    dataclasses.replace(policy, timout=5)  # type: ignore[call-arg]  # codespell:ignore
    dataclasses.replace(policy, timeout="5")  # type: ignore[arg-type]
    rc.Backoff(1)  # type: ignore[call-arg]
    verdict = rc.Verdict(transient=True, rule="pg:refused")
    assert_type(dataclasses.replace(verdict, report=False), rc.Verdict)
    assert_type(rc.DEFAULT_RECONNECT, rc.Backoff)
