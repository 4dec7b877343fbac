"""Every public sync entry point has an asyncio twin with the same parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType

import pytest

import resilient_connect
import resilient_connect.psycopg
import resilient_connect.redis
import resilient_connect.sqlalchemy

MODULES = [
    resilient_connect,
    resilient_connect.psycopg,
    resilient_connect.redis,
    resilient_connect.sqlalchemy,
]
# Functions that do no I/O, so they have no twin.
NO_IO = {
    "classify",
    "collect_statistics",
    "conninfo_problems",
    "default_budget",
    "default_hooks",
    "is_transient",
    "log_event",
    "redact",
    "retry",
    "set_default_budget",
    "set_default_hooks",
}
# Twins not spelled with the "a" prefix (SQLAlchemy's own naming is kept).
SPELLED = {"create_engine": "create_async_engine"}


def _sync_functions(module: ModuleType) -> list[str]:
    names = []
    for name in module.__all__:
        value = getattr(module, name)
        if not inspect.isfunction(value) or inspect.iscoroutinefunction(value):
            continue
        if name in NO_IO or (name.startswith("a") and name[1:] in module.__all__):
            continue
        names.append(name)
    return names


def _parameters(function: Callable[..., object]) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


PAIRS = [
    (module, name, SPELLED.get(name, "a" + name))
    for module in MODULES
    for name in _sync_functions(module)
]


def test_the_public_sync_functions_are_found() -> None:
    """The check below covers the entry points it should (so it can fail)."""
    found = {(module.__name__, name) for module, name, _ in PAIRS}
    assert ("resilient_connect", "connect_with_retry") in found
    assert ("resilient_connect.redis", "connect_sentinel_with_retry") in found
    assert ("resilient_connect.redis", "runtime_retry") in found
    assert ("resilient_connect.sqlalchemy", "create_engine") in found
    assert ("resilient_connect.psycopg", "create_pool") in found


@pytest.mark.parametrize(
    ("module", "name", "twin"), PAIRS, ids=[f"{m.__name__}.{n}" for m, n, _ in PAIRS]
)
def test_sync_function_has_an_async_twin_with_the_same_parameters(
    module: ModuleType, name: str, twin: str
) -> None:
    """``X`` and its twin take the same parameters, in the same order, with the same defaults."""
    assert twin in module.__all__, f"{module.__name__}.{name} has no twin {twin}"
    sync, asynchronous = getattr(module, name), getattr(module, twin)
    if name != "runtime_retry":  # builds a redis-py Retry: no I/O of its own, no coroutine
        assert inspect.iscoroutinefunction(asynchronous)
    assert _parameters(sync) == _parameters(asynchronous)
