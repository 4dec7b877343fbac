"""Throwaway Redis servers, replicas and a Sentinel on loopback for integration tests.

Each server is a child process of the test process (``daemonize no``), so stopping it reaps it
at once: there is no orphaned daemon left as a zombie for PID 1 to collect.

Readiness checks and helper commands use a tiny RESP2 client over a raw socket rather than
redis-py. redis-py retries connections on its own (11 attempts with ``Redis()``), which is
exactly the behaviour the library under test deals with; the harness must not depend on it.

Getting a real ``LOADING`` window (``BusyLoadingError`` in redis-py)::

    server = RedisServer()
    server.start()
    server.populate_and_save(1000)  # DEBUG POPULATE + SAVE: a tiny dump.rdb
    server.start_loading(key_load_delay_us=1000)  # restart; returns once PING says LOADING
    ...  # about 1.1 s of LOADING replies here (1000 keys x ~1.1 ms each)
    server.wait_ready()  # PONG again: the data set is loaded

``start_loading`` relies on two hidden test settings (checked on Redis 7.0):
``key-load-delay`` sleeps that many microseconds per key while loading, and
``loading-process-events-interval-bytes`` makes the server answer clients (with LOADING) while
it loads a small file; without it, a small file is loaded without ever serving clients.
At natural speed, loading takes about 0.9 s per million 64-byte keys here (0.4 s for 500 k)
and ``populate_and_save`` about 1.8 s per million, so a 1-3 s natural window would cost 2-6 s
of set-up; the delay knob costs nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from .ports import (
    POLL_INTERVAL,
    HarnessError,
    Service,
    check_loopback,
    free_port,
    remove_scratch_dir,
    scratch_dir,
    stop_process,
    tail,
)

__all__ = [
    "RedisReplyError",
    "RedisSentinel",
    "RedisServer",
    "find_redis_server",
    "resp_command",
]

RespValue = str | int | bytes | list["RespValue"] | None

# Options the harness owns: changing them could expose a server beyond loopback or put a
# password on the command line (visible in ps).
_RESERVED_OPTIONS = frozenset(
    {"bind", "protected-mode", "port", "requirepass", "masterauth", "daemonize", "dir"}
)
_live: set[_RedisProcess] = set()


@atexit.register
def _cleanup_live() -> None:
    """Safety net for servers a test forgot: stop them when the interpreter exits."""
    for server in list(_live):
        server.cleanup()


def find_redis_server() -> str:
    """Path of ``redis-server`` (``$REDIS_SERVER`` or PATH); HarnessError names the package."""
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if path is None or not os.access(path, os.X_OK):
        raise HarnessError(
            "redis-server not found ($REDIS_SERVER or PATH): install the Debian/Ubuntu packages "
            "'redis-server' and 'redis-tools' (run .ci/install-servers as root)"
        )
    return path


class RedisReplyError(Exception):
    """The server answered with a RESP error (``-LOADING ...``, ``-NOAUTH ...``)."""


class _ClosedByServer(ConnectionError):
    """The server closed the connection instead of replying (as SHUTDOWN does)."""


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: BinaryIO) -> RespValue:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise _ClosedByServer("connection closed before a complete reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")


def resp_command(
    host: str,
    port: int,
    *args: str | bytes | int,
    password: str | None = None,
    timeout: float = 5.0,
) -> RespValue:
    """Send one command on a fresh connection (AUTH first if *password*) and return the reply.

    Raises ``OSError`` if the server cannot be reached and :class:`RedisReplyError` for an
    error reply. One connection per call keeps it simple and leak-free; it is only used for
    set-up and readiness checks.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        with sock.makefile("rb") as stream:
            if password is not None:
                sock.sendall(_encode(["AUTH", password]))
                _read_reply(stream)
            sock.sendall(_encode(args))
            return _read_reply(stream)


def _conf_quote(value: str) -> str:
    """Double-quote a value for redis.conf; escapes survive Redis' sdssplitargs parser."""
    out = []
    for char in value:
        if char in {'"', "\\"}:
            out.append("\\" + char)
        elif char.isprintable() and char.isascii():
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return '"' + "".join(out) + '"'


def _pairs(reply: RespValue) -> dict[str, str]:
    """A flat RESP array ``[k1, v1, k2, v2...]`` as a dict of strings."""
    assert isinstance(reply, list)
    fields = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    return dict(zip(fields[::2], fields[1::2], strict=True))


class _RedisProcess(Service):
    """Process and directory handling shared by servers and sentinels."""

    _kind = "redis"

    def __init__(self, *, port: int | None, host: str, base_dir: Path | None) -> None:
        self._host = check_loopback(host)
        self._auto_port = port is None
        self._port = free_port(host) if port is None else port
        self._binary = find_redis_server()
        self._dir = scratch_dir(self._kind, base_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        self._cleaned = False

    @property
    def dir(self) -> Path:
        """The working directory: config file, log and ``dump.rdb``; removed by cleanup()."""
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / f"{self._kind}.log"

    @property
    def config_path(self) -> Path:
        return self._dir / f"{self._kind}.conf"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def _auth(self) -> str | None:
        return None

    def is_running(self) -> bool:
        """True while the process started by this object has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> str:
        raise NotImplementedError

    def _argv(self, extra: Sequence[str]) -> list[str]:
        return [self._binary, str(self.config_path), *extra]

    def _launch(self, extra: Sequence[str] = ()) -> None:
        if self._cleaned:
            raise HarnessError(f"{self!r} was cleaned up")
        if self.is_running():
            raise HarnessError(f"{self!r} is already running")
        # The config holds the password: created 0600, never passed on the command line.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self._config())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv(extra),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        _live.add(self)

    def launch(self) -> None:
        """Start the process and return at once, without waiting for PONG."""
        self._launch()

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> RespValue:
        """Run one command (authenticated if needed) on a fresh connection."""
        return resp_command(self.host, self.port, *args, password=self._auth, timeout=timeout)

    def ping(self, timeout: float = 1.0) -> str:
        """``PING`` and return the reply; a LOADING answer raises :class:`RedisReplyError`."""
        return str(self.command("PING", timeout=timeout))

    def _wait(self, timeout: float, *, accept_loading: bool) -> str:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                self._proc = None
                _live.discard(self)
                raise HarnessError(
                    f"{self._kind} exited with code {code}; log {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            try:
                return self.ping(timeout=1.0)
            except RedisReplyError as exc:
                if accept_loading and str(exc).startswith("LOADING"):
                    return str(exc)
                last = exc
            except OSError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self!r} not ready after {timeout} s: {last!r}")
            time.sleep(POLL_INTERVAL)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until ``PING`` answers ``PONG`` (so not while LOADING)."""
        self._wait(timeout, accept_loading=False)

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start; with *wait*, return after the first PONG (about 20 ms after launch).

        If the harness chose the port and another process took it meanwhile, retry on a
        new port (only before the first successful start: the port is stable afterwards).
        """
        for attempt in range(3):
            self._launch()
            if not wait:
                return
            try:
                self.wait_ready(timeout)
            except HarnessError as exc:
                in_use = "already in use" in str(exc)
                if in_use and self._auto_port and not self._ever_started and attempt < 2:
                    self._port = free_port(self.host)
                    continue
                raise
            self._ever_started = True
            return

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly and reap (SIGKILL after *timeout* s); no-op if not running.

        The ``SHUTDOWN`` command acts at once, whereas SIGTERM is only noticed by the next
        cron tick (up to 100 ms at the default ``hz 10``). SIGTERM is the fallback when the
        command cannot be delivered.
        """
        if self._proc is not None and self._proc.poll() is None:
            try:
                self.command("SHUTDOWN", timeout=0.5)
            except _ClosedByServer:
                # The expected answer: the server closed the connection while exiting.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(min(timeout, 2.0))
            except (OSError, RedisReplyError):
                pass
            stop_process(self._proc, signal.SIGTERM, timeout)
        self._proc = None
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL and reap: a crash, without any shutdown work (no RDB save)."""
        if self._proc is not None:
            stop_process(self._proc, signal.SIGKILL, 10.0)
            self._proc = None
        _live.discard(self)

    def restart(self, *, wait: bool = True) -> None:
        """Stop (SIGTERM), then start again on the same port and directory."""
        self.stop()
        self.start(wait=wait)

    def cleanup(self) -> None:
        """Stop the process and delete the directory; idempotent."""
        self.stop()
        if not self._cleaned:
            remove_scratch_dir(self._dir)
            self._cleaned = True

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class RedisServer(_RedisProcess):
    """One redis-server on loopback: no persistence by default, ``DEBUG`` allowed locally.

    *password* sets ``requirepass`` (written to the 0600 config file). *replicaof* makes it a
    replica of another server (its password is used as ``masterauth``). *extra_args* are
    appended to the command line, e.g. ``["--maxclients", "2"]``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        replicaof: RedisServer | None = None,
        base_dir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        for arg in extra_args:
            if arg.startswith("--") and arg[2:].lower() in _RESERVED_OPTIONS:
                raise ValueError(f"{arg} is set by the harness; use the constructor argument")
        super().__init__(port=port, host=host, base_dir=base_dir)
        self._password = password
        self.extra_args = list(extra_args)
        self._replicaof = replicaof

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def _auth(self) -> str | None:
        return self._password

    @property
    def url(self) -> str:
        """``redis://[:pw@]127.0.0.1:PORT/0`` with the password percent-encoded."""
        return self.url_for()

    def url_for(
        self,
        *,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        port: int | None = None,
    ) -> str:
        """A URL with parts replaced (wrong password, proxy port); ``password=""`` drops it."""
        password = self._password if password is None else password
        auth = ""
        if password or username:
            auth = quote(username or "", safe="")
            if password:
                auth += ":" + quote(password, safe="")
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port if port is None else port}/{db}"

    @property
    def connect_kwargs(self) -> dict[str, str | int | None]:
        """Keyword arguments for ``redis.Redis(**kwargs)``."""
        return {"host": self.host, "port": self.port, "password": self._password}

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            "protected-mode yes",
            f"dir {_conf_quote(str(self._dir))}",
            "dbfilename dump.rdb",
            'save ""',
            "appendonly no",
            "daemonize no",
            'logfile ""',
            "enable-debug-command local",
            # Full syncs to replicas start at once instead of after the default 5 s pause.
            "repl-diskless-sync-delay 0",
        ]
        if self._password is not None:
            lines.append(f"requirepass {_conf_quote(self._password)}")
        if self._replicaof is not None:
            lines.append(f"replicaof {self._replicaof.host} {self._replicaof.port}")
            if self._replicaof.password is not None:
                lines.append(f"masterauth {_conf_quote(self._replicaof.password)}")
        return "\n".join(lines) + "\n"

    def _argv(self, extra: Sequence[str]) -> list[str]:
        return [self._binary, str(self.config_path), *self.extra_args, *extra]

    def populate_and_save(self, n_keys: int, value_size: int = 64) -> None:
        """``DEBUG POPULATE n_keys key value_size`` then ``SAVE``: a dump.rdb to load later."""
        self.command("DEBUG", "POPULATE", n_keys, "key", value_size, timeout=120)
        self.command("SAVE", timeout=120)

    def start_loading(self, *, key_load_delay_us: int = 1000, timeout: float = 30.0) -> None:
        """Restart on the saved dump.rdb and return once ``PING`` answers ``LOADING``.

        The window lasts about ``keys x (key_load_delay_us + ~200 us)`` (1000 keys at the
        default: about 1.1 s here). ``key_load_delay_us=0`` loads at natural speed. A later
        ``restart()`` or ``start()`` loads normally. Raises HarnessError if loading ended
        before it was observed (use more keys or a larger delay).
        """
        if not (self._dir / "dump.rdb").exists():
            raise HarnessError("no dump.rdb: call populate_and_save() first")
        self.stop()
        extra: list[str] = []
        if key_load_delay_us:
            extra = [
                "--key-load-delay",
                str(key_load_delay_us),
                "--loading-process-events-interval-bytes",
                "1024",
            ]
        self._launch(extra)
        reply = self._wait(timeout, accept_loading=True)
        if not reply.startswith("LOADING"):
            raise HarnessError(f"{self!r} finished loading before LOADING was seen: {reply}")

    def is_loading(self) -> bool:
        """True if the server currently answers PING with LOADING."""
        try:
            self.ping()
        except RedisReplyError as exc:
            return str(exc).startswith("LOADING")
        return False

    def info(self, section: str = "default") -> dict[str, str]:
        """``INFO section`` parsed into a dict of strings."""
        raw = self.command("INFO", section)
        assert isinstance(raw, bytes)
        pairs = (line.split(":", 1) for line in raw.decode().splitlines() if ":" in line)
        return dict(pairs)

    def wait_replication_synced(self, timeout: float = 15.0) -> None:
        """For a replica: poll until ``master_link_status:up`` (the initial sync is done)."""
        deadline = time.monotonic() + timeout
        while self.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self!r} not in sync with its master after {timeout} s")
            time.sleep(POLL_INTERVAL * 4)


class RedisSentinel(_RedisProcess):
    """A Sentinel (``redis-server CONF --sentinel``) monitoring one master as *name*.

    Short timeouts make failover take a few seconds: the master is subjectively down after
    *down_after_ms* without replies, and with ``quorum=1`` this single sentinel fails over at
    once, promoting a replica it learnt about from the master's ``INFO``. Call
    :meth:`wait_for_replicas` before killing the master, or there is nobody to promote.
    """

    _kind = "sentinel"

    def __init__(
        self,
        master: RedisServer,
        *,
        name: str = "mymaster",
        port: int | None = None,
        quorum: int = 1,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        base_dir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(port=port, host=host, base_dir=base_dir)
        self._master = master
        self._name = name
        self._quorum = quorum
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._config_written = False

    @property
    def name(self) -> str:
        """The monitored master's name (``mymaster``)."""
        return self._name

    def _config(self) -> str:
        # Sentinel rewrites its config (state, discovered replicas); after the first start
        # that state must survive a restart, so the file is written only once.
        if self._config_written and self.config_path.exists():
            return self.config_path.read_text()
        self._config_written = True
        master = self._master
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            "protected-mode yes",
            f"dir {_conf_quote(str(self._dir))}",
            "daemonize no",
            'logfile ""',
            "sentinel resolve-hostnames no",
            f"sentinel monitor {self._name} {master.host} {master.port} {self._quorum}",
            f"sentinel down-after-milliseconds {self._name} {self._down_after_ms}",
            f"sentinel failover-timeout {self._name} {self._failover_timeout_ms}",
            f"sentinel parallel-syncs {self._name} 1",
        ]
        if master.password is not None:
            lines.append(f"sentinel auth-pass {self._name} {_conf_quote(master.password)}")
        return "\n".join(lines) + "\n"

    def _argv(self, extra: Sequence[str]) -> list[str]:
        return [self._binary, str(self.config_path), "--sentinel", *extra]

    def master_address(self) -> tuple[str, int] | None:
        """What the sentinel currently reports for the master (``get-master-addr-by-name``)."""
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._name)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        host, port = reply
        assert isinstance(host, bytes)
        assert isinstance(port, bytes)
        return (host.decode(), int(port))

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER name`` as a dict (``ip``, ``port``, ``flags``...).

        This (``SENTINEL MASTERS``) is what redis-py's ``discover_master`` reads; during a
        failover it still shows the old master while ``get-master-addr-by-name`` already
        names the promoted replica.
        """
        return _pairs(self.command("SENTINEL", "MASTER", self._name))

    def replicas(self) -> list[dict[str, str]]:
        """``SENTINEL REPLICAS name`` as a list of field dicts (``ip``, ``port``, ``flags``...)."""
        reply = self.command("SENTINEL", "REPLICAS", self._name)
        assert isinstance(reply, list)
        return [_pairs(entry) for entry in reply]

    def wait_for_replicas(self, count: int = 1, timeout: float = 15.0) -> None:
        """Poll until the sentinel knows *count* healthy replicas (flags exactly ``slave``)."""
        deadline = time.monotonic() + timeout
        while sum(r.get("flags") == "slave" for r in self.replicas()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self!r} does not see {count} replica(s) after {timeout} s")
            time.sleep(POLL_INTERVAL * 4)

    def wait_for_master(self, address: tuple[str, int], timeout: float = 20.0) -> None:
        """Poll until a failover to *address* is complete: both ``get-master-addr-by-name``
        and ``SENTINEL MASTER`` name it, with flags exactly ``master`` (no failover running)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, RedisReplyError):
                state = self.master_state()
                if (
                    self.master_address() == address
                    and (state.get("ip"), state.get("port")) == (address[0], str(address[1]))
                    and state.get("flags") == "master"
                ):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self!r} still reports {self.master_address()} instead of {address} "
                    f"after {timeout} s:\n{tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL * 4)

    def failover(self) -> None:
        """``SENTINEL FAILOVER name``: promote a replica without waiting for the master to fail."""
        self.command("SENTINEL", "FAILOVER", self._name)
