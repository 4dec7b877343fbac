"""Integration-test harness: throwaway PostgreSQL and Redis servers and a fault proxy.

Everything listens on loopback only and cleans up after itself (fixtures in
``tests/conftest.py``; a process-exit hook stops servers a test forgot). See each module's
docstring for the why; the short version:

- :class:`PostgresServer` - a cluster copied from a per-process template (~0.15 s), app role
  with an awkward password, ``start_as_standby()`` for a stable 57P03.
- :class:`RedisServer` / :class:`RedisSentinel` - Redis with optional requirepass, replicas,
  Sentinel failover, and ``start_loading()`` for a real LOADING window.
- :class:`FaultProxy` - refuse / blackhole / reset / delay / late start / replay / cut.
"""

from .ports import (
    HarnessError,
    free_port,
    pid_alive,
    port_is_open,
    wait_pid_gone,
    wait_port_closed,
    wait_port_open,
    with_default_signals,
)
from .postgres import DEFAULT_PASSWORD, PostgresServer, find_pg_bindir, kv_quote
from .proxy import FaultProxy, pg_fatal_response, resp_error
from .redis import RedisReplyError, RedisSentinel, RedisServer, find_redis_server, resp_command

__all__ = [
    "DEFAULT_PASSWORD",
    "FaultProxy",
    "HarnessError",
    "PostgresServer",
    "RedisReplyError",
    "RedisSentinel",
    "RedisServer",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
    "kv_quote",
    "pg_fatal_response",
    "pid_alive",
    "port_is_open",
    "resp_command",
    "resp_error",
    "wait_pid_gone",
    "wait_port_closed",
    "wait_port_open",
    "with_default_signals",
]
