"""Sentinel-managed connections that rediscover the master on every reconnect.

redis-py 8's ``SentinelManagedConnection`` asks the sentinels for the master only in
``connect()``. When a command fails and redis-py's retry loop reconnects, the reconnect
goes through ``send_packed_command`` -> ``connect_check_health()``, which dials the
*stored* address: after a failover every retry hits the old master until the command's
retries run out (redis/redis-py#3874, open at the time of writing). With a runtime retry
that waits for the failover, that means waiting for the deadline and failing anyway.

These subclasses route that inner reconnect through the sentinel discovery as well: one
discovery and one connect per attempt, the retry loop around the command doing the
waiting. redis-py versions without ``connect_check_health`` never call the override.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio.sentinel
import redis.sentinel


class SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """A sync sentinel connection whose every reconnect asks the sentinels first."""

    def connect_check_health(
        self,
        check_health: bool = True,  # noqa: FBT001, FBT002 - redis-py's signature
        retry_socket_connect: bool = True,  # noqa: FBT001, FBT002
    ) -> Any:
        # connect_to() (after discovery) calls back with retry_socket_connect=False.
        if retry_socket_connect:
            discover_and_connect: Any = self._connect_retry  # not annotated in redis-py
            return discover_and_connect()
        return super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class AsyncSentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """The asyncio twin of :class:`SentinelConnection`."""

    async def connect_check_health(
        self,
        check_health: bool = True,  # noqa: FBT001, FBT002 - redis-py's signature
        retry_socket_connect: bool = True,  # noqa: FBT001, FBT002
    ) -> Any:
        if retry_socket_connect:
            discover_and_connect: Any = self._connect_retry
            return await discover_and_connect()
        return await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )
