"""Wait until Redis answers, through redis-py (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, overload

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.retry
import redis.sentinel

from .._engine import Retrier
from .._policy import Backoff
from .._redact import secret_values
from ._bridge import (
    aruntime_retry,
    in_loop,
    leave_loop,
    runtime_retry,
)
from ._rules import classify as _classify
from ._sentinel import AsyncSentinelConnection, SentinelConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence

    from .._engine import Attempt
    from .._events import Hook


C = TypeVar("C")

DEFAULT_URL = "redis://localhost:6379/0"
_STARTUP_POLICY = Backoff()
# A socket timeout of 0 means "non-blocking" to Python; the smallest bound we hand out.
_MIN_TIMEOUT = 0.01
_TIMEOUT_KEYS = ("socket_connect_timeout", "socket_timeout")
_MISSING = object()


# --------------------------------------------------------------------------------------
# Probing one attempt


def _driver_defaults(module: Any) -> dict[str, float | None]:
    """redis-py's default socket timeouts for connections the pool makes (5 s in redis-py 8)."""
    return {
        "socket_connect_timeout": getattr(module, "DEFAULT_SOCKET_CONNECT_TIMEOUT", None),
        "socket_timeout": getattr(module, "DEFAULT_SOCKET_TIMEOUT", None),
    }


def _bounded(current: float | None, attempt: Attempt) -> float | None:
    bound = attempt.bound(current)
    return bound if bound is None else max(bound, _MIN_TIMEOUT)


class _PoolProbe:
    """Holds a connection pool to one attempt's budget, and undoes it afterwards.

    redis-py's pools build each connection from ``pool.connection_kwargs``, where
    URL query options have already overridden keyword arguments. Adjusting that
    dict (rather than passing keywords) is what makes the bound stick whatever
    the URL says. Only values that must change are touched: with the default
    5 s timeouts and more than 5 s left, nothing is, and the probe's connection
    stays in the pool as the client's first connection.
    """

    __slots__ = ("_saved", "pool")

    def __init__(
        self,
        pool: Any,
        attempt: Attempt,
        defaults: Mapping[str, float | None],
        replace_retry: object | None,
    ) -> None:
        self.pool = pool
        kwargs: MutableMapping[str, Any] = pool.connection_kwargs
        self._saved: dict[str, object] = {}
        for key in _TIMEOUT_KEYS:
            current = kwargs.get(key, defaults[key])
            bounded = _bounded(current, attempt)
            if bounded != current:
                self._saved[key] = kwargs.get(key, _MISSING)
                kwargs[key] = bounded
        if replace_retry is not None:
            self._saved["retry"] = kwargs.get("retry", _MISSING)
            kwargs["retry"] = replace_retry

    def restore(self) -> bool:
        """Put the pool's settings back; ``True`` if its connections must be dropped."""
        kwargs: MutableMapping[str, object] = self.pool.connection_kwargs
        for key, saved in self._saved.items():
            if saved is _MISSING:
                kwargs.pop(key, None)
            else:
                kwargs[key] = saved
        return bool(self._saved)


def _drop_connections(pool: Any) -> None:
    """Close the probe's connections and forget them: the next ones are built from the
    restored settings (a kept connection object would reconnect with the probe's)."""
    pool.disconnect()
    pool.reset()


async def _adrop_connections(pool: Any) -> None:
    await pool.disconnect()
    pool.reset()


def _with_runtime_retry(
    kwargs: dict[str, Any],
    runtime_policy: Backoff | None,
    *,
    target: str,
    hooks: Sequence[Hook] | None,
    secrets: Sequence[str],
    asyncio: bool,
) -> bool:
    """Put the runtime bridge into ``kwargs``; return ``True`` if the caller brought a ``retry``."""
    if "retry" in kwargs:
        if runtime_policy is not None:
            msg = "pass either retry= (redis-py's own) or runtime_policy=, not both"
            raise TypeError(msg)
        return True
    make = aruntime_retry if asyncio else runtime_retry
    kwargs["retry"] = make(runtime_policy, target=target, hooks=hooks, secrets=secrets)
    return False


def _no_retry(*, asyncio: bool) -> redis.retry.Retry | redis.asyncio.retry.Retry:
    if asyncio:
        return redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)
    return redis.retry.Retry(redis.backoff.NoBackoff(), 0)


def _factory_kwargs(
    kwargs: Mapping[str, Any], attempt: Attempt, defaults: Mapping[str, float | None], *, aio: bool
) -> dict[str, Any]:
    """Keywords for one probe through a custom factory: no retry, timeouts bounded."""
    probe = dict(kwargs)
    probe["retry"] = _no_retry(asyncio=aio)
    for key in _TIMEOUT_KEYS:
        current = probe.get(key, defaults[key])
        bounded = _bounded(current, attempt)
        if bounded != current:
            probe[key] = bounded
    return probe


def _startup_retrier(
    policy: Backoff | None, target: str, hooks: Sequence[Hook] | None, secrets: Iterable[str]
) -> Retrier:
    return Retrier(
        policy=_STARTUP_POLICY if policy is None else policy,
        classify=_classify,
        target=target,
        hooks=hooks,
        secrets=secrets,
    )


# --------------------------------------------------------------------------------------
# Sync


@overload
def connect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    runtime_policy: Backoff | None = ...,
    factory: None = ...,
    **kwargs: Any,
) -> redis.Redis: ...


@overload
def connect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    runtime_policy: Backoff | None = ...,
    factory: Callable[..., C],
    **kwargs: Any,
) -> C: ...


def connect_with_retry(
    url: str = DEFAULT_URL,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    runtime_policy: Backoff | None = None,
    factory: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Wait until Redis at ``url`` answers ``PING``; return the connected client.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL, as for
            ``redis.Redis.from_url`` (query options included).
        policy: how long to wait; ``None`` for ``Backoff()`` (60 s deadline).
        hooks: event callbacks, for the wait and for the runtime bridge;
            ``None`` logs on the ``resilient_connect`` logger, ``()`` is silent.
        runtime_policy: the policy of the runtime bridge the client carries
            (``None``: :data:`DEFAULT_RUNTIME_POLICY`). Not allowed together
            with ``retry=``, which installs redis-py's own ``Retry`` instead.
        factory: build the client with ``factory(url, **kwargs)`` instead of
            ``redis.Redis.from_url``, e.g. ``redis.cluster.RedisCluster.from_url``.
            Each attempt calls it with ``retry=Retry(NoBackoff(), 0)`` and bounded
            socket timeouts (which the client keeps), pings, then installs the
            runtime ``retry`` with ``client.set_retry()``.
        kwargs: passed to ``from_url`` (``password=``, ``decode_responses=``,
            ``socket_timeout=``, ``ssl_*``...).

    Raises:
        RetryExhausted: transient failures until the deadline (or attempts).
        redis.exceptions.RedisError, ValueError: a permanent error (wrong
            password, ACL denial, malformed URL), unchanged, after one attempt.
    """
    secrets = secret_values(kwargs)
    user_retry = _with_runtime_retry(
        kwargs, runtime_policy, target=url, hooks=hooks, secrets=secrets, asyncio=False
    )
    retrier = _startup_retrier(policy, url, hooks, secrets)
    if factory is not None:
        return retrier.call(lambda attempt: _probe_factory(factory, url, kwargs, attempt))
    return retrier.call(lambda attempt: _probe_url(url, kwargs, attempt, user_retry=user_retry))


def _probe_url(url: str, kwargs: dict[str, Any], attempt: Attempt, *, user_retry: bool) -> Any:
    token = in_loop()
    try:
        client = redis.Redis.from_url(url, **kwargs)
        try:
            probe = _PoolProbe(
                client.connection_pool,
                attempt,
                _driver_defaults(redis.connection),
                _no_retry(asyncio=False) if user_retry else None,
            )
            client.ping()
        except BaseException:
            client.close()
            raise
    finally:
        leave_loop(token)
    if probe.restore():
        _drop_connections(client.connection_pool)
    return client


def _probe_factory(
    factory: Callable[..., Any], url: str, kwargs: dict[str, Any], attempt: Attempt
) -> Any:
    token = in_loop()
    try:
        probe = _factory_kwargs(kwargs, attempt, _driver_defaults(redis.connection), aio=False)
        client = factory(url, **probe)
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
    finally:
        leave_loop(token)
    client.set_retry(kwargs["retry"])
    return client


def connect_sentinel_with_retry(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    runtime_policy: Backoff | None = None,
    sentinel_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> redis.Redis:
    """Wait for the sentinels and for a master of ``service_name``; return its client.

    The client comes from ``redis.sentinel.Sentinel(...).master_for(service_name)``
    and has answered ``PING``; it carries the runtime bridge, so after a
    failover its next command rediscovers the master with our backoff.
    ``sentinel_kwargs`` go to the clients that talk to the sentinels (default:
    the ``socket_*`` keywords, as redis-py does); those clients never retry on
    their own (``Retry(NoBackoff(), 0)`` unless you pass ``retry``), because the
    master's retry loop already repeats the whole discovery. Other ``kwargs``
    go to the master's connections (``password=``, ``db=``...).
    """
    # redis.sentinel is not annotated; typed as Any so strict mode accepts the calls.
    sentinel_class: Any = redis.sentinel.Sentinel
    target = _sentinel_target(sentinels, service_name)
    secrets = secret_values(kwargs, sentinel_kwargs)
    user_retry = _with_runtime_retry(
        kwargs, runtime_policy, target=target, hooks=hooks, secrets=secrets, asyncio=False
    )
    sentinel_settings, user_sentinel_retry = _sentinel_settings(sentinel_kwargs, kwargs, aio=False)
    master_options = _master_options(kwargs, SentinelConnection)
    defaults = _driver_defaults(redis.connection)

    def attempt_once(attempt: Attempt) -> Any:
        token = in_loop()
        try:
            sentinel = sentinel_class(sentinels, sentinel_kwargs=sentinel_settings, **kwargs)
            client: Any = sentinel.master_for(service_name, **master_options)
            try:
                probes = _sentinel_probes(
                    sentinel, attempt, defaults, user_sentinel_retry, aio=False
                )
                probes.append(
                    _PoolProbe(
                        client.connection_pool,
                        attempt,
                        defaults,
                        _no_retry(asyncio=False) if user_retry else None,
                    )
                )
                client.ping()
            except BaseException:
                client.close()
                _close_all(sentinel.sentinels)
                raise
        finally:
            leave_loop(token)
        for probe in probes:
            if probe.restore():
                _drop_connections(probe.pool)
        return client

    master: redis.Redis = _startup_retrier(policy, target, hooks, secrets).call(attempt_once)
    return master


def _sentinel_target(sentinels: Sequence[tuple[str, int]], service_name: str) -> str:
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)
    return f"redis+sentinel://{hosts}/{service_name}"


def _sentinel_settings(
    sentinel_kwargs: Mapping[str, Any] | None, kwargs: Mapping[str, Any], *, aio: bool
) -> tuple[dict[str, Any], bool]:
    if sentinel_kwargs is None:
        settings = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    else:
        settings = dict(sentinel_kwargs)
    user_retry = "retry" in settings
    settings.setdefault("retry", _no_retry(asyncio=aio))
    return settings, user_retry


def _master_options(kwargs: Mapping[str, Any], connection_class: type) -> dict[str, Any]:
    """``master_for`` options: our rediscovering connection class, unless the caller chose
    one or asked for TLS (redis-py then picks its SSL sentinel connection)."""
    if "connection_class" in kwargs or kwargs.get("ssl"):
        return {}
    return {"connection_class": connection_class}


def _sentinel_probes(
    sentinel: Any,
    attempt: Attempt,
    defaults: Mapping[str, float | None],
    user_retry: bool,  # noqa: FBT001 - private helper
    *,
    aio: bool,
) -> list[_PoolProbe]:
    replace = _no_retry(asyncio=aio) if user_retry else None
    return [_PoolProbe(s.connection_pool, attempt, defaults, replace) for s in sentinel.sentinels]


def _close_all(clients: Iterable[Any]) -> None:
    for client in clients:
        client.close()


# --------------------------------------------------------------------------------------
# Async


@overload
async def aconnect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    runtime_policy: Backoff | None = ...,
    factory: None = ...,
    **kwargs: Any,
) -> redis.asyncio.Redis: ...


@overload
async def aconnect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    runtime_policy: Backoff | None = ...,
    factory: Callable[..., C],
    **kwargs: Any,
) -> C: ...


async def aconnect_with_retry(
    url: str = DEFAULT_URL,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    runtime_policy: Backoff | None = None,
    factory: Callable[..., Any] | None = None,
    **kwargs: Any,
) -> Any:
    """The asyncio twin of :func:`connect_with_retry`: returns a ``redis.asyncio.Redis``.

    Waits with ``asyncio.sleep``, so cancelling the task ends the wait at once;
    the runtime bridge is :func:`aruntime_retry`. ``factory`` builds the client
    (``redis.asyncio.cluster.RedisCluster.from_url``, say); it must not be a
    coroutine function.
    """
    secrets = secret_values(kwargs)
    user_retry = _with_runtime_retry(
        kwargs, runtime_policy, target=url, hooks=hooks, secrets=secrets, asyncio=True
    )
    retrier = _startup_retrier(policy, url, hooks, secrets)
    if factory is not None:
        return await retrier.acall(lambda attempt: _aprobe_factory(factory, url, kwargs, attempt))
    return await retrier.acall(
        lambda attempt: _aprobe_url(url, kwargs, attempt, user_retry=user_retry)
    )


async def _aclose(client: Any) -> None:
    close = getattr(client, "aclose", None) or client.close
    await close()


async def _aprobe_url(
    url: str, kwargs: dict[str, Any], attempt: Attempt, *, user_retry: bool
) -> Any:
    token = in_loop()
    try:
        client = redis.asyncio.Redis.from_url(url, **kwargs)
        try:
            probe = _PoolProbe(
                client.connection_pool,
                attempt,
                _driver_defaults(redis.asyncio.connection),
                _no_retry(asyncio=True) if user_retry else None,
            )
            await client.ping()
        except BaseException:
            await _aclose(client)
            raise
    finally:
        leave_loop(token)
    if probe.restore():
        await _adrop_connections(client.connection_pool)
    return client


async def _aprobe_factory(
    factory: Callable[..., Any], url: str, kwargs: dict[str, Any], attempt: Attempt
) -> Any:
    token = in_loop()
    try:
        defaults = _driver_defaults(redis.asyncio.connection)
        client = factory(url, **_factory_kwargs(kwargs, attempt, defaults, aio=True))
        try:
            await client.ping()
        except BaseException:
            await _aclose(client)
            raise
    finally:
        leave_loop(token)
    client.set_retry(kwargs["retry"])
    return client


async def aconnect_sentinel_with_retry(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    runtime_policy: Backoff | None = None,
    sentinel_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect_sentinel_with_retry` (``redis.asyncio.sentinel``)."""
    sentinel_class: Any = redis.asyncio.sentinel.Sentinel
    target = _sentinel_target(sentinels, service_name)
    secrets = secret_values(kwargs, sentinel_kwargs)
    user_retry = _with_runtime_retry(
        kwargs, runtime_policy, target=target, hooks=hooks, secrets=secrets, asyncio=True
    )
    sentinel_settings, user_sentinel_retry = _sentinel_settings(sentinel_kwargs, kwargs, aio=True)
    master_options = _master_options(kwargs, AsyncSentinelConnection)
    defaults = _driver_defaults(redis.asyncio.connection)

    async def attempt_once(attempt: Attempt) -> Any:
        token = in_loop()
        try:
            sentinel = sentinel_class(sentinels, sentinel_kwargs=sentinel_settings, **kwargs)
            client: Any = sentinel.master_for(service_name, **master_options)
            try:
                probes = _sentinel_probes(
                    sentinel, attempt, defaults, user_sentinel_retry, aio=True
                )
                probes.append(
                    _PoolProbe(
                        client.connection_pool,
                        attempt,
                        defaults,
                        _no_retry(asyncio=True) if user_retry else None,
                    )
                )
                await client.ping()
            except BaseException:
                await _aclose(client)
                for sentinel_client in sentinel.sentinels:
                    await _aclose(sentinel_client)
                raise
        finally:
            leave_loop(token)
        for probe in probes:
            if probe.restore():
                await _adrop_connections(probe.pool)
        return client

    master: redis.asyncio.Redis = await _startup_retrier(policy, target, hooks, secrets).acall(
        attempt_once
    )
    return master
