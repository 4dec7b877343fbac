"""Wait until Redis answers, through redis-py (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.backoff
import redis.retry
import redis.sentinel

from .._budget import explicit_budget
from .._engine import Retrier
from .._policy import Backoff
from .._redact import secret_values
from ._bridge import (
    aruntime_retry,
    runtime_retry,
)
from ._rules import classify as _classify
from ._sentinel import AsyncSentinelConnection, SentinelConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping, Sequence

    from .._budget import RetryBudget
    from .._engine import Attempt
    from .._events import Hook


C = TypeVar("C")

DEFAULT_URL = "redis://localhost:6379/0"
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
    """A socket timeout for one attempt: the engine's one rule, but never below 10 ms."""
    share = attempt.share(current)
    return share if share is None else max(share, _MIN_TIMEOUT)


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
    reconnect: Backoff | None,
    *,
    target: str,
    hooks: Sequence[Hook] | None,
    secrets: Sequence[str],
    asyncio: bool,
    budget: RetryBudget | Literal["default"] | None,
) -> bool:
    """Put the runtime bridge into ``kwargs``; return ``True`` if the caller brought a ``retry``."""
    if "retry" in kwargs:
        if reconnect is not None:
            msg = "pass either retry= (redis-py's own) or reconnect=, not both"
            raise TypeError(msg)
        return True
    make = aruntime_retry if asyncio else runtime_retry
    kwargs["retry"] = make(reconnect, target=target, hooks=hooks, secrets=secrets, budget=budget)
    return False


def _no_retry(*, asyncio: bool) -> redis.retry.Retry | redis.asyncio.retry.Retry:
    if asyncio:
        return redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)
    return redis.retry.Retry(redis.backoff.NoBackoff(), 0)


class _Startup:
    """One start-up wait, prepared once and I/O-free: target, secrets, runtime bridge.

    Subclasses know how to make one attempt, sync (:meth:`attempt`) and async
    (:meth:`aattempt`); everything else is shared. The start-up loop owns its
    retries, so the bridge inside each probe makes a single attempt.
    """

    __slots__ = ("budget", "defaults", "kwargs", "secrets", "target", "user_retry")

    def __init__(
        self,
        target: str,
        kwargs: dict[str, Any],
        reconnect: Backoff | None,
        hooks: Sequence[Hook] | None,
        *,
        aio: bool,
        extra_secrets: Mapping[str, Any] | None = None,
        budget: RetryBudget | Literal["default"] | None = "default",
    ) -> None:
        self.target = target
        self.budget = budget
        self.kwargs = kwargs
        self.secrets = secret_values(kwargs, extra_secrets)
        self.user_retry = _with_runtime_retry(
            kwargs,
            reconnect,
            target=target,
            hooks=hooks,
            secrets=self.secrets,
            asyncio=aio,
            budget=budget,
        )
        self.defaults = _driver_defaults(redis.asyncio.connection if aio else redis.connection)

    def retrier(self, policy: Backoff | None, hooks: Sequence[Hook] | None) -> Retrier:
        return Retrier(
            policy=policy,
            classify=_classify,
            target=self.target,
            hooks=hooks,
            secrets=self.secrets,
            owns_retries=True,
            budget=explicit_budget(self.budget),
        )

    def _user_retry_replacement(self, *, aio: bool) -> object | None:
        """While probing, a caller's own redis-py ``retry`` makes one attempt too."""
        return _no_retry(asyncio=aio) if self.user_retry else None


class _UrlStartup(_Startup):
    """``Redis.from_url(url, **kwargs)``, probed with PING."""

    __slots__ = ()

    def attempt(self, attempt: Attempt) -> Any:
        client = redis.Redis.from_url(self.target, **self.kwargs)
        try:
            probe = _PoolProbe(
                client.connection_pool,
                attempt,
                self.defaults,
                self._user_retry_replacement(aio=False),
            )
            client.ping()
        except BaseException:
            client.close()
            raise
        if probe.restore():
            _drop_connections(client.connection_pool)
        return client

    async def aattempt(self, attempt: Attempt) -> Any:
        client = redis.asyncio.Redis.from_url(self.target, **self.kwargs)
        try:
            probe = _PoolProbe(
                client.connection_pool,
                attempt,
                self.defaults,
                self._user_retry_replacement(aio=True),
            )
            await client.ping()
        except BaseException:
            await _aclose(client)
            raise
        if probe.restore():
            await _adrop_connections(client.connection_pool)
        return client


class _FactoryStartup(_Startup):
    """``factory(url, **kwargs)`` (a Cluster client, say), probed with PING."""

    __slots__ = ("factory",)

    def __init__(self, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.factory = factory

    def _probe_kwargs(self, attempt: Attempt, *, aio: bool) -> dict[str, Any]:
        """Keywords for one probe: no retry, timeouts bounded (the client keeps them)."""
        probe = dict(self.kwargs)
        probe["retry"] = _no_retry(asyncio=aio)
        for key in _TIMEOUT_KEYS:
            current = probe.get(key, self.defaults[key])
            bounded = _bounded(current, attempt)
            if bounded != current:
                probe[key] = bounded
        return probe

    def attempt(self, attempt: Attempt) -> Any:
        client = self.factory(self.target, **self._probe_kwargs(attempt, aio=False))
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        client.set_retry(self.kwargs["retry"])
        return client

    async def aattempt(self, attempt: Attempt) -> Any:
        client = self.factory(self.target, **self._probe_kwargs(attempt, aio=True))
        try:
            await client.ping()
        except BaseException:
            await _aclose(client)
            raise
        client.set_retry(self.kwargs["retry"])
        return client


class _SentinelStartup(_Startup):
    """``Sentinel(...).master_for(service_name)``, probed with PING."""

    __slots__ = (
        "master_options",
        "sentinel_settings",
        "sentinels",
        "service_name",
        "user_sentinel_retry",
    )

    def __init__(
        self,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        *,
        sentinel_kwargs: Mapping[str, Any] | None,
        kwargs: dict[str, Any],
        reconnect: Backoff | None,
        hooks: Sequence[Hook] | None,
        aio: bool,
        budget: RetryBudget | Literal["default"] | None = "default",
    ) -> None:
        target = _sentinel_target(sentinels, service_name)
        super().__init__(
            target,
            kwargs,
            reconnect,
            hooks,
            aio=aio,
            extra_secrets=sentinel_kwargs,
            budget=budget,
        )
        self.sentinels = sentinels
        self.service_name = service_name
        if sentinel_kwargs is None:
            settings = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
        else:
            settings = dict(sentinel_kwargs)
        self.user_sentinel_retry = "retry" in settings
        settings.setdefault("retry", _no_retry(asyncio=aio))
        self.sentinel_settings = settings
        connection_class = AsyncSentinelConnection if aio else SentinelConnection
        # Our rediscovering connection class, unless the caller chose one or asked for TLS
        # (redis-py then picks its SSL sentinel connection).
        if "connection_class" in kwargs or kwargs.get("ssl"):
            self.master_options: dict[str, Any] = {}
        else:
            self.master_options = {"connection_class": connection_class}

    def _connect(self, sentinel_class: Any) -> tuple[Any, Any]:
        sentinel = sentinel_class(
            self.sentinels, sentinel_kwargs=self.sentinel_settings, **self.kwargs
        )
        return sentinel, sentinel.master_for(self.service_name, **self.master_options)

    def _probes(
        self, sentinel: Any, client: Any, attempt: Attempt, *, aio: bool
    ) -> list[_PoolProbe]:
        replace = _no_retry(asyncio=aio) if self.user_sentinel_retry else None
        probes = [
            _PoolProbe(s.connection_pool, attempt, self.defaults, replace)
            for s in sentinel.sentinels
        ]
        probes.append(
            _PoolProbe(
                client.connection_pool,
                attempt,
                self.defaults,
                self._user_retry_replacement(aio=aio),
            )
        )
        return probes

    def attempt(self, attempt: Attempt) -> Any:
        # redis.sentinel is not annotated; typed as Any so strict mode accepts the calls.
        sentinel_class: Any = redis.sentinel.Sentinel
        sentinel, client = self._connect(sentinel_class)
        try:
            probes = self._probes(sentinel, client, attempt, aio=False)
            client.ping()
        except BaseException:
            client.close()
            for sentinel_client in sentinel.sentinels:
                sentinel_client.close()
            raise
        for probe in probes:
            if probe.restore():
                _drop_connections(probe.pool)
        return client

    async def aattempt(self, attempt: Attempt) -> Any:
        sentinel_class: Any = redis.asyncio.sentinel.Sentinel
        sentinel, client = self._connect(sentinel_class)
        try:
            probes = self._probes(sentinel, client, attempt, aio=True)
            await client.ping()
        except BaseException:
            await _aclose(client)
            for sentinel_client in sentinel.sentinels:
                await _aclose(sentinel_client)
            raise
        for probe in probes:
            if probe.restore():
                await _adrop_connections(probe.pool)
        return client


def _renamed_reconnect(reconnect: Backoff | None, kwargs: dict[str, Any]) -> Backoff | None:
    """``reconnect``, or the policy passed under its old name ``runtime_policy`` (which warns)."""
    if "runtime_policy" not in kwargs:
        return reconnect
    old: Backoff | None = kwargs.pop("runtime_policy")
    if reconnect is not None:
        msg = "pass reconnect= or its old name runtime_policy=, not both"
        raise TypeError(msg)
    import warnings

    warnings.warn(
        "runtime_policy= is deprecated: pass the same policy as reconnect=",
        DeprecationWarning,
        stacklevel=3,
    )
    return old


def _startup(
    url: str,
    factory: Callable[..., Any] | None,
    kwargs: dict[str, Any],
    reconnect: Backoff | None,
    hooks: Sequence[Hook] | None,
    *,
    aio: bool,
    budget: RetryBudget | Literal["default"] | None,
) -> _UrlStartup | _FactoryStartup:
    if factory is not None:
        return _FactoryStartup(factory, url, kwargs, reconnect, hooks, aio=aio, budget=budget)
    return _UrlStartup(url, kwargs, reconnect, hooks, aio=aio, budget=budget)


async def _aclose(client: Any) -> None:
    close = getattr(client, "aclose", None) or client.close
    await close()


def _sentinel_target(sentinels: Sequence[tuple[str, int]], service_name: str) -> str:
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)
    return f"redis+sentinel://{hosts}/{service_name}"


# --------------------------------------------------------------------------------------
# The public functions, sync and async


@overload
def connect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    reconnect: Backoff | None = ...,
    factory: None = ...,
    budget: RetryBudget | Literal["default"] | None = ...,
    **kwargs: Any,
) -> redis.Redis: ...


@overload
def connect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    reconnect: Backoff | None = ...,
    factory: Callable[..., C],
    budget: RetryBudget | Literal["default"] | None = ...,
    **kwargs: Any,
) -> C: ...


def connect_with_retry(
    url: str = DEFAULT_URL,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    reconnect: Backoff | None = None,
    factory: Callable[..., Any] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
    **kwargs: Any,
) -> Any:
    """Wait until Redis at ``url`` answers ``PING``; return the connected client.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL, as for
            ``redis.Redis.from_url`` (query options included).
        policy: how long to wait; ``None`` for ``Backoff()`` (60 s deadline).
        hooks: event callbacks, for the wait and for the runtime bridge;
            ``None`` logs on the ``resilient_connect`` logger, ``()`` is silent.
        reconnect: the policy of the runtime bridge the client carries
            (``None``: :data:`~resilient_connect.DEFAULT_RECONNECT`, at most
            15 s per command). Not allowed together with ``retry=``, which
            installs redis-py's own ``Retry`` instead. ``runtime_policy=``, its
            old name, still works and warns (``DeprecationWarning``).
        factory: build the client with ``factory(url, **kwargs)`` instead of
            ``redis.Redis.from_url``, e.g. ``redis.cluster.RedisCluster.from_url``.
            Each attempt calls it with ``retry=Retry(NoBackoff(), 0)`` and bounded
            socket timeouts (which the client keeps), pings, then installs the
            runtime ``retry`` with ``client.set_retry()``.
        budget: the :class:`~resilient_connect.RetryBudget` the runtime
            bridge's retries take tokens from (``"default"``:
            :func:`~resilient_connect.default_budget`; ``None``: none). Given a
            budget of your own, the wait takes its retries from it too.
        kwargs: passed to ``from_url`` (``password=``, ``decode_responses=``,
            ``socket_timeout=``, ``ssl_*``...).

    Raises:
        RetryExhausted: transient failures until the deadline (or attempts).
        redis.exceptions.RedisError, ValueError: a permanent error (wrong
            password, ACL denial, malformed URL), unchanged, after one attempt.
    """
    reconnect = _renamed_reconnect(reconnect, kwargs)
    startup = _startup(url, factory, kwargs, reconnect, hooks, aio=False, budget=budget)
    return startup.retrier(policy, hooks).call(startup.attempt)


@overload
async def aconnect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    reconnect: Backoff | None = ...,
    factory: None = ...,
    budget: RetryBudget | Literal["default"] | None = ...,
    **kwargs: Any,
) -> redis.asyncio.Redis: ...


@overload
async def aconnect_with_retry(
    url: str = ...,
    *,
    policy: Backoff | None = ...,
    hooks: Sequence[Hook] | None = ...,
    reconnect: Backoff | None = ...,
    factory: Callable[..., C],
    budget: RetryBudget | Literal["default"] | None = ...,
    **kwargs: Any,
) -> C: ...


async def aconnect_with_retry(
    url: str = DEFAULT_URL,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    reconnect: Backoff | None = None,
    factory: Callable[..., Any] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
    **kwargs: Any,
) -> Any:
    """The asyncio twin of :func:`connect_with_retry`: returns a ``redis.asyncio.Redis``.

    Waits with ``asyncio.sleep``, so cancelling the task ends the wait at once;
    the runtime bridge is :func:`aruntime_retry`. ``factory`` builds the client
    (``redis.asyncio.cluster.RedisCluster.from_url``, say); it must not be a
    coroutine function.
    """
    reconnect = _renamed_reconnect(reconnect, kwargs)
    startup = _startup(url, factory, kwargs, reconnect, hooks, aio=True, budget=budget)
    return await startup.retrier(policy, hooks).acall(startup.aattempt)


def connect_sentinel_with_retry(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    reconnect: Backoff | None = None,
    sentinel_kwargs: Mapping[str, Any] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
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
    startup = _SentinelStartup(
        sentinels,
        service_name,
        sentinel_kwargs=sentinel_kwargs,
        kwargs=kwargs,
        reconnect=_renamed_reconnect(reconnect, kwargs),
        hooks=hooks,
        aio=False,
        budget=budget,
    )
    master: redis.Redis = startup.retrier(policy, hooks).call(startup.attempt)
    return master


async def aconnect_sentinel_with_retry(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    policy: Backoff | None = None,
    hooks: Sequence[Hook] | None = None,
    reconnect: Backoff | None = None,
    sentinel_kwargs: Mapping[str, Any] | None = None,
    budget: RetryBudget | Literal["default"] | None = "default",
    **kwargs: Any,
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect_sentinel_with_retry` (``redis.asyncio.sentinel``)."""
    startup = _SentinelStartup(
        sentinels,
        service_name,
        sentinel_kwargs=sentinel_kwargs,
        kwargs=kwargs,
        reconnect=_renamed_reconnect(reconnect, kwargs),
        hooks=hooks,
        aio=True,
        budget=budget,
    )
    master: redis.asyncio.Redis = await startup.retrier(policy, hooks).acall(startup.aattempt)
    return master
