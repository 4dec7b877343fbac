"""Self-tests of the integration harness: each server and proxy mode does what it claims."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
import redis.sentinel

from harness import (
    DEFAULT_PASSWORD,
    FaultProxy,
    PostgresServer,
    RedisSentinel,
    RedisServer,
    kv_quote,
    pg_fatal_response,
    pid_alive,
    port_is_open,
)
from harness import (
    free_port as harness_free_port,
)

pytestmark = pytest.mark.integration

MakePostgres = Callable[..., PostgresServer]
MakeRedis = Callable[..., RedisServer]
MakeProxy = Callable[..., FaultProxy]


def _select_one(conninfo: str, **kwargs: object) -> int:
    with psycopg.connect(conninfo, connect_timeout=5, **kwargs) as conn:  # type: ignore[arg-type]
        row = conn.execute("select 1").fetchone()
    assert row is not None
    return int(row[0])


def _connect_error(conninfo: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo, connect_timeout=5).close()
    return str(info.value)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def _client(address: tuple[str, int], timeout: float = 2.0) -> Iterator[socket.socket]:
    sock = socket.create_connection(address, timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def _redis_ping_raw(sock: socket.socket) -> bytes:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    return sock.recv(64)


def _ping_on_new_connection(address: tuple[str, int]) -> bytes:
    with _client(address) as sock:
        return _redis_ping_raw(sock)


# --------------------------------------------------------------------------- basics


def test_free_port_fixture_gives_a_closed_loopback_port(free_port: int) -> None:
    """The free_port fixture is an int port on which nothing listens."""
    assert 1024 <= free_port <= 65535
    assert not port_is_open("127.0.0.1", free_port)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "localhost", "::"])
def test_harness_refuses_non_loopback_hosts(host: str) -> None:
    """Servers and proxies only ever bind loopback IP literals."""
    with pytest.raises(ValueError, match="loopback"):
        harness_free_port(host)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("127.0.0.1", 1), host=host)


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_accepts_odd_password_via_url_conninfo_and_kwargs(
    postgres: PostgresServer,
) -> None:
    """The app role logs in with a password full of URL/DSN metacharacters, in all 3 forms."""
    assert postgres.password == DEFAULT_PASSWORD
    assert set(" @:/%'") <= set(postgres.password)
    assert postgres.password not in postgres.url
    assert _select_one(postgres.url) == 1
    assert _select_one(postgres.conninfo) == 1
    with psycopg.connect(**postgres.connect_kwargs, connect_timeout=5) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == ("app", "app")
    assert postgres.host == "127.0.0.1"
    assert _select_one(postgres.superuser_conninfo) == 1
    assert _select_one(postgres.superuser_url) == 1


def test_kv_quote_round_trips_through_libpq() -> None:
    """kv_quote output parses back to the original value in libpq's conninfo parser."""
    for value in ["plain", "", "a b", "it's", "back\\slash", DEFAULT_PASSWORD]:
        parsed = psycopg.conninfo.conninfo_to_dict(f"password={kv_quote(value)}")
        assert parsed["password"] == value


def test_postgres_listens_on_loopback_tcp_only(postgres: PostgresServer) -> None:
    """Only 127.0.0.1 over TCP: unix sockets are off, scram-sha-256 is required."""
    rows = postgres.execute_as_superuser(
        "select name, setting from pg_settings where name in "
        "('listen_addresses', 'unix_socket_directories', 'password_encryption', 'fsync')"
    )
    assert dict(rows) == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",
        "password_encryption": "scram-sha-256",
        "fsync": "off",
    }
    assert "password authentication failed" in _connect_error(
        postgres.conninfo_for(password="wrong")
    )


def test_fresh_clusters_are_isolated_copies(make_postgres: MakePostgres) -> None:
    """Each fresh cluster has its own port, data dir and data; a copy starts in well under 2 s."""
    started = time.monotonic()
    first = make_postgres()
    second = make_postgres(extra_conf={"max_connections": 7})
    elapsed = time.monotonic() - started
    assert first.port != second.port
    assert first.datadir != second.datadir
    first.execute_as_superuser("create table only_here (x int)", dbname="app")
    assert second.execute_as_superuser(
        "select count(*) from pg_tables where tablename = 'only_here'", dbname="app"
    ) == [(0,)]
    assert second.execute_as_superuser("show max_connections") == [("7",)]
    # Includes building the template when this test runs first (initdb, about 0.7 s here).
    assert elapsed < 4.0


def test_postgres_restart_keeps_port_and_data(make_postgres: MakePostgres) -> None:
    """stop() makes connects refused; restart() comes back on the same port with the data."""
    server = make_postgres()
    port = server.port
    server.execute_as_superuser("create table kept (x int)", dbname="app")
    server.stop()
    assert not server.is_running()
    assert "Connection refused" in _connect_error(server.conninfo)
    server.start()
    assert server.port == port
    assert server.execute_as_superuser(
        "select count(*) from pg_tables where tablename = 'kept'", dbname="app"
    ) == [(1,)]
    server.restart(mode="immediate")  # crash recovery path
    assert _select_one(server.url) == 1


def test_launch_returns_before_the_server_accepts(make_postgres: MakePostgres) -> None:
    """launch() does not wait: the first connect fails, wait_ready() then succeeds."""
    server = make_postgres(start=False)
    server.launch()
    assert server.is_running()
    # A postmaster needs well over 10 ms to listen; this connect happens within microseconds.
    message = _connect_error(server.conninfo)
    assert "Connection refused" in message or "starting up" in message
    server.wait_ready(timeout=10)
    assert _select_one(server.conninfo) == 1


def test_standby_answers_57p03_until_ended(make_postgres: MakePostgres) -> None:
    """start_as_standby() gives a stable 57P03 'not accepting connections'; end_standby() heals."""
    server = make_postgres()
    server.start_as_standby()
    for _ in range(2):
        message = _connect_error(server.conninfo)
        assert "the database system is not accepting connections" in message
        assert "Hot standby mode is disabled" in message
    assert psycopg.pq.PGconn.ping(server.conninfo.encode()) == psycopg.pq.Ping.REJECT
    server.end_standby()
    assert _select_one(server.conninfo) == 1


def test_smart_stop_without_wait_answers_shutting_down(make_postgres: MakePostgres) -> None:
    """stop('smart', wait=False) with an open session: new connects get 'shutting down'."""
    server = make_postgres()
    with psycopg.connect(server.conninfo, connect_timeout=5) as session:
        server.stop("smart", wait=False)
        deadline = time.monotonic() + 5
        while "shutting down" not in (message := _connect_error(server.conninfo)):
            assert time.monotonic() < deadline, message
        assert session.execute("select 1").fetchone() == (1,)
    server.wait_stopped(timeout=10)
    assert not server.is_running()


def test_superuser_helpers_create_roles_and_terminate_sessions(
    make_postgres: MakePostgres,
) -> None:
    """execute_as_superuser() makes a NOLOGIN role; terminate_backends() gives 57P01."""
    server = make_postgres()
    server.execute_as_superuser("create role nologin_role password 'x'")
    message = _connect_error(server.conninfo_for(user="nologin_role", password="x"))
    assert 'role "nologin_role" is not permitted to log in' in message
    with psycopg.connect(server.conninfo, connect_timeout=5) as session:
        assert server.terminate_backends() == 1
        with pytest.raises(psycopg.errors.AdminShutdown):
            session.execute("select 1")


def test_postgres_cleanup_removes_process_and_directory(make_postgres: MakePostgres) -> None:
    """cleanup() reaps the postmaster (no zombie), frees the port and deletes the data dir."""
    server = make_postgres()
    pid, base, port = server.pid, server.base_dir, server.port
    assert pid is not None
    server.cleanup()
    server.cleanup()  # idempotent
    assert not pid_alive(pid)
    assert not base.exists()
    assert not port_is_open("127.0.0.1", port)


# --------------------------------------------------------------------------- Redis


def test_redis_servers_answer_ping_with_and_without_password(
    redis_server: RedisServer, redis_auth: RedisServer
) -> None:
    """Both shared servers answer PING; requirepass is enforced and stays off the command line."""
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping() is True
    assert redis_auth.password is not None
    assert redis_auth.password not in redis_auth.url
    with redis.Redis.from_url(redis_auth.url) as client:
        assert client.ping() is True
    with (
        redis.Redis.from_url(redis_auth.url_for(password=""), protocol=2) as client,
        pytest.raises(redis.AuthenticationError),
    ):
        client.ping()
    assert redis_auth.pid is not None
    cmdline = Path(f"/proc/{redis_auth.pid}/cmdline").read_bytes()
    assert redis_auth.password.encode() not in cmdline
    assert redis_auth.config_path.stat().st_mode & 0o777 == 0o600


def test_redis_kill_and_restart(make_redis: MakeRedis) -> None:
    """kill() drops the server at once (refused); restart() brings it back on the same port."""
    server = make_redis()
    pid = server.pid
    assert pid is not None
    server.kill()
    assert not pid_alive(pid)
    with redis.Redis.from_url(server.url) as client, pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    with redis.Redis.from_url(server.url) as client:
        assert client.ping() is True


def test_redis_loading_window_raises_busy_loading(make_redis: MakeRedis) -> None:
    """start_loading() leaves a real LOADING window: redis-py raises BusyLoadingError."""
    server = make_redis()
    server.populate_and_save(1000)
    server.start_loading(key_load_delay_us=1000)
    started = time.monotonic()
    with redis.Redis.from_url(server.url) as client:
        with pytest.raises(redis.BusyLoadingError):
            client.ping()
        server.wait_ready(timeout=15)
        window = time.monotonic() - started
        assert client.dbsize() == 1000
    assert window > 0.3


def test_sentinel_discovers_master_and_fails_over(
    make_redis: MakeRedis, make_redis_sentinel: Callable[..., RedisSentinel]
) -> None:
    """redis-py's Sentinel finds the master, and the replica after the master is killed."""
    master = make_redis(password="s3nt pw")
    replica = make_redis(password="s3nt pw", replicaof=master)
    replica.wait_replication_synced()
    sentinel = make_redis_sentinel(master, down_after_ms=500, failover_timeout_ms=2000)
    sentinel.wait_for_replicas(1)
    client = redis.sentinel.Sentinel([sentinel.address], socket_timeout=1)
    try:
        assert client.discover_master("mymaster") == master.address
        master.kill()
        sentinel.wait_for_master(replica.address, timeout=20)
        assert client.discover_master("mymaster") == replica.address
        assert replica.info("replication")["role"] == "master"
    finally:
        for sentinel_client in client.sentinels:
            sentinel_client.close()


# --------------------------------------------------------------------------- FaultProxy


def test_proxy_passes_postgres_and_redis_traffic(
    postgres: PostgresServer, redis_server: RedisServer, fault_proxy: MakeProxy
) -> None:
    """pass_through forwards a full PostgreSQL login and Redis commands both ways."""
    pg_proxy = fault_proxy(postgres.address)
    assert _select_one(postgres.conninfo_for(port=pg_proxy.port)) == 1
    redis_proxy = fault_proxy(redis_server.address)
    with redis.Redis.from_url(redis_server.url_for(port=redis_proxy.port)) as client:
        client.set("through-proxy", b"x" * 200_000)
        assert client.get("through-proxy") == b"x" * 200_000
        client.delete("through-proxy")


def test_proxy_refuse_closes_the_port_and_reopens_it(
    redis_server: RedisServer, fault_proxy: MakeProxy
) -> None:
    """refuse() gives ConnectionRefusedError; pass_through() listens again on the same port."""
    proxy = fault_proxy(redis_server.address)
    port = proxy.port
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=2).close()
    proxy.pass_through()
    assert proxy.port == port
    with _client(proxy.address) as sock:
        assert _redis_ping_raw(sock) == b"+PONG\r\n"


def test_proxy_blackhole_never_answers(redis_server: RedisServer, fault_proxy: MakeProxy) -> None:
    """blackhole() accepts and reads, but never answers and never closes."""
    proxy = fault_proxy(redis_server.address)
    proxy.blackhole()
    with _client(proxy.address, timeout=0.3) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(64)
    assert proxy.accepted == 1


def test_proxy_records_accept_times(redis_server: RedisServer, fault_proxy: MakeProxy) -> None:
    """accept_times() has one monotonic timestamp per accepted connection, in order."""
    proxy = fault_proxy(redis_server.address)
    before = time.monotonic()
    for _ in range(3):
        with _client(proxy.address) as sock:
            assert _redis_ping_raw(sock) == b"+PONG\r\n"
    stamps = proxy.accept_times()
    assert len(stamps) == proxy.accepted == 3
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= time.monotonic()


def test_proxy_reset_sends_rst(redis_server: RedisServer, fault_proxy: MakeProxy) -> None:
    """reset() accepts and immediately resets: the client's read fails with ECONNRESET."""
    proxy = fault_proxy(redis_server.address)
    proxy.reset()
    # Depending on timing the RST surfaces in connect(), send() or recv(): all ECONNRESET.
    with pytest.raises(ConnectionResetError):
        _ping_on_new_connection(proxy.address)


def test_proxy_late_start_listens_after_the_delay(
    redis_server: RedisServer, fault_proxy: MakeProxy
) -> None:
    """late_start(s) refuses until s seconds have passed, then forwards."""
    proxy = fault_proxy(redis_server.address)
    started = time.monotonic()
    proxy.late_start(0.4)
    assert not port_is_open(*proxy.address)
    deadline = started + 5
    while not port_is_open(*proxy.address):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert time.monotonic() - started >= 0.4
    with _client(proxy.address) as sock:
        assert _redis_ping_raw(sock) == b"+PONG\r\n"


def test_proxy_delay_adds_latency_each_way_and_on_connect(
    redis_server: RedisServer, fault_proxy: MakeProxy
) -> None:
    """delay(d) adds d per direction (a round trip >= 2d); delay(connect=c) holds the connect."""
    proxy = fault_proxy(redis_server.address)
    proxy.delay(0.15)
    with _client(proxy.address) as sock:
        started = time.monotonic()
        assert _redis_ping_raw(sock) == b"+PONG\r\n"
        assert time.monotonic() - started >= 0.3
    proxy.delay(connect=0.3)
    with _client(proxy.address) as sock:
        started = time.monotonic()
        assert _redis_ping_raw(sock) == b"+PONG\r\n"
        assert time.monotonic() - started >= 0.3
    proxy.pass_through()
    with _client(proxy.address) as sock:
        started = time.monotonic()
        assert _redis_ping_raw(sock) == b"+PONG\r\n"
        assert time.monotonic() - started < 0.3


def test_proxy_cut_all_drops_live_sessions(
    postgres: PostgresServer, fault_proxy: MakeProxy
) -> None:
    """cut_all() kills a live psycopg session; new connections still work afterwards."""
    proxy = fault_proxy(postgres.address)
    conninfo = postgres.conninfo_for(port=proxy.port)
    with psycopg.connect(conninfo, connect_timeout=5) as session:
        assert session.execute("select 1").fetchone() == (1,)
        assert proxy.cut_all() == 1
        with pytest.raises(psycopg.OperationalError):
            session.execute("select 1")
        assert session.broken
    assert proxy.active_connections == 0
    assert _select_one(conninfo) == 1


def test_proxy_abortive_cut_resets_and_set_upstream_retargets(
    make_redis: MakeRedis, fault_proxy: MakeProxy
) -> None:
    """cut_all(abortive=True) RSTs live sessions; set_upstream() moves new connections."""
    first, second = make_redis(), make_redis()
    second.command("SET", "which", "second")
    proxy = fault_proxy(first.address)
    with _client(proxy.address) as sock:
        assert _redis_ping_raw(sock) == b"+PONG\r\n"
        proxy.set_upstream(second.address)
        assert _redis_ping_raw(sock) == b"+PONG\r\n"  # a live session keeps its upstream
        assert proxy.cut_all(abortive=True) == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(64)
    with redis.Redis.from_url(second.url_for(port=proxy.port)) as client:
        assert client.get("which") == b"second"


def test_proxy_replays_a_postgres_fatal(fault_proxy: MakeProxy, free_port: int) -> None:
    """replay(pg_fatal_response(...)) makes libpq report that server error verbatim."""
    proxy = fault_proxy(("127.0.0.1", free_port))
    proxy.replay_pg_fatal("57P03", "the database system is starting up")
    message = _connect_error(f"host=127.0.0.1 port={proxy.port} user=u dbname=d password=p")
    assert "FATAL:  the database system is starting up" in message
    raw = pg_fatal_response("53300", "sorry, too many clients already")
    assert raw[:1] == b"E"
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 1


def test_proxy_resets_clients_when_upstream_is_down(fault_proxy: MakeProxy, free_port: int) -> None:
    """With nothing listening upstream, the proxied client connection is reset, not hung."""
    proxy = fault_proxy(("127.0.0.1", free_port))
    with pytest.raises(ConnectionResetError):
        _ping_on_new_connection(proxy.address)


def test_proxy_close_leaks_no_threads_or_fds(redis_server: RedisServer) -> None:
    """After close(), the proxy's thread is joined and every socket it opened is closed."""
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    proxy = FaultProxy(redis_server.address)
    held = [socket.create_connection(proxy.address, timeout=2) for _ in range(3)]
    assert _redis_ping_raw(held[0]) == b"+PONG\r\n"
    proxy.blackhole()
    held.append(socket.create_connection(proxy.address, timeout=2))
    proxy.delay(0.05)
    proxy.wait_for_connections(4)
    proxy.close()
    proxy.close()  # idempotent
    for sock in held:
        sock.close()
    assert set(threading.enumerate()) == threads_before
    assert _open_fds() == fds_before
