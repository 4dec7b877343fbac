"""A throwaway pgbouncer on loopback, in front of a :class:`~harness.postgres.PostgresServer`.

Users rarely talk to a bare PostgreSQL: pgbouncer sits in between and answers with texts of its
own (``SASL authentication failed``, ``no such database: x``, ``server login has been failing``),
always with SQLSTATE 08P01 before version 1.21, and holds queries while paused. This starts the
Debian package's binary as our own child (as the ``postgres`` user when we are root: pgbouncer
refuses to run as root), on a free 127.0.0.1 port, with SCRAM authentication for clients and an
admin console for PAUSE / RESUME / KILL / SHUTDOWN.

Configuration is a plain ``pgbouncer.ini`` written at every start from the constructor's
arguments and :attr:`PgBouncer.settings`; users and passwords go to a mode-0600 ``userlist.txt``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from .ports import (
    POLL_INTERVAL,
    HarnessError,
    Service,
    check_loopback,
    free_port,
    kill_process_group,
    port_is_open,
    remove_scratch_dir,
    scratch_dir,
    stop_process,
    tail,
)
from .postgres import PostgresServer, _RunAs, kv_quote

__all__ = ["ADMIN_USER", "PgBouncer", "find_pgbouncer", "pgbouncer_version"]

#: The admin console's user (listed in ``admin_users``); its password is random per instance.
ADMIN_USER = "bouncer_admin"
_INSTALL_HINT = "install the Debian/Ubuntu package 'pgbouncer' (run .ci/install-servers as root)"
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Settings the harness owns: changing them would break "loopback only, TCP only, our files".
_RESERVED = frozenset(
    {"listen_addr", "listen_port", "unix_socket_dir", "auth_file", "logfile", "pidfile"}
)
ShutdownMode = Literal["safe", "immediate"]


def find_pgbouncer() -> Path:
    """The pgbouncer binary: ``$PGBOUNCER``, else ``/usr/sbin/pgbouncer`` (Debian), else PATH."""
    candidates = [os.environ.get("PGBOUNCER", ""), "/usr/sbin/pgbouncer", shutil.which("pgbouncer")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise HarnessError(f"pgbouncer not found in $PGBOUNCER, /usr/sbin or PATH: {_INSTALL_HINT}")


def pgbouncer_version() -> tuple[int, ...]:
    """The installed pgbouncer's version, e.g. ``(1, 18, 0)``."""
    result = subprocess.run(
        [str(find_pgbouncer()), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    found = re.search(r"PgBouncer (\d+(?:\.\d+)+)", result.stdout)
    if found is None:
        raise HarnessError(f"cannot read the pgbouncer version from {result.stdout!r}")
    return tuple(int(part) for part in found.group(1).split("."))


def _ini_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    if "\n" in text:
        raise ValueError(f"a pgbouncer setting cannot span lines: {text!r}")
    return text


def _userlist_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer(Service):
    """One pgbouncer on 127.0.0.1 forwarding to ``upstream``.

    Args:
        upstream: the PostgreSQL server (it may be stopped; pgbouncer connects lazily).
        databases: pgbouncer database names to upstream database names; default: the
            upstream's own database under its own name.
        fallback: add a ``*`` entry, so any other database name is tried on the upstream
            (the server's own "database ... does not exist" then reaches the client).
        auth_type: how clients authenticate (``scram-sha-256`` by default).
        pool_mode: ``session`` (default), ``transaction`` or ``statement``.
        settings: more ``[pgbouncer]`` settings (``default_pool_size``, ``max_client_conn``,
            ``max_db_connections``, ``server_login_retry``, ``query_wait_timeout``...);
            :attr:`settings` can be changed before a restart.

    The client user and password are the upstream's (pgbouncer logs in to the server with
    them, so the auth file holds the password in clear, as pgbouncer needs for SCRAM).
    """

    def __init__(
        self,
        upstream: PostgresServer,
        *,
        databases: Mapping[str, str] | None = None,
        fallback: bool = False,
        auth_type: str = "scram-sha-256",
        pool_mode: str = "session",
        settings: Mapping[str, str | int | float | bool] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream
        self._host = check_loopback(host)
        self._port = free_port(host) if port is None else port
        self._databases = dict(databases or {upstream.dbname: upstream.dbname})
        self._fallback = fallback
        self.settings: dict[str, str] = {}
        base: dict[str, str | int | float | bool] = {
            "auth_type": auth_type,
            "pool_mode": pool_mode,
            # Fail fast in tests unless a test asks for pgbouncer's (long) defaults.
            "server_login_retry": 1,
            "server_connect_timeout": 5,
            "client_login_timeout": 15,
            "query_wait_timeout": 30,
            # Drivers send this; pgbouncer would refuse the login otherwise.
            "ignore_startup_parameters": "extra_float_digits",
            "log_connections": 1,
            "log_disconnections": 1,
            "log_pooler_errors": 1,
        }
        for name, value in {**base, **(settings or {})}.items():
            self.set(name, value)
        self.admin_password = secrets.token_urlsafe(16)
        self._run_as = _RunAs.detect()
        self._binary = find_pgbouncer()
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def user(self) -> str:
        return self.upstream.user

    @property
    def password(self) -> str:
        return self.upstream.password

    @property
    def dbname(self) -> str:
        return next(iter(self._databases))

    @property
    def log_path(self) -> Path:
        return self._require_base() / "pgbouncer.log"

    def url_for(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        scheme: str = "postgresql",
    ) -> str:
        """A URL through pgbouncer, with some parts replaced (``password=""`` leaves it out)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        db = quote(self.dbname if dbname is None else dbname, safe="")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for()

    def conninfo_for(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        **extra: str | int,
    ) -> str:
        """A key=value conninfo through pgbouncer; *extra* adds options (``connect_timeout``)."""
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "user": self.user if user is None else user,
            "dbname": self.dbname if dbname is None else dbname,
        }
        password = self.password if password is None else password
        if password:
            params["password"] = password
        params.update(extra)
        return " ".join(f"{key}={kv_quote(str(value))}" for key, value in params.items())

    @property
    def conninfo(self) -> str:
        return self.conninfo_for()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PgBouncer {self.host}:{self.port} -> {self.upstream.port} {state}>"

    # ------------------------------------------------------------------ configuration
    def set(self, name: str, value: str | int | float | bool) -> None:
        """Set a ``[pgbouncer]`` setting for the next start (or :meth:`reload`)."""
        if not _SETTING_NAME.match(name) or name in _RESERVED:
            raise ValueError(f"setting {name!r} is invalid or owned by the harness")
        self.settings[name] = _ini_value(value)

    def _ini(self, base: Path) -> str:
        upstream = f"host={self.upstream.host} port={self.upstream.port}"
        lines = ["[databases]"]
        lines += [f"{name} = {upstream} dbname={db}" for name, db in self._databases.items()]
        if self._fallback:
            lines.append(f"* = {upstream}")
        lines += [
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"auth_file = {base / 'userlist.txt'}",
            f"logfile = {base / 'pgbouncer.log'}",
            f"admin_users = {ADMIN_USER}",
        ]
        lines += [f"{name} = {value}" for name, value in self.settings.items()]
        return "\n".join(lines) + "\n"

    def _userlist(self) -> str:
        entries = [(self.user, self.password), (ADMIN_USER, self.admin_password)]
        return "".join(f"{_userlist_quote(u)} {_userlist_quote(p)}\n" for u, p in entries)

    def _write_config(self) -> Path:
        base = self._require_base()
        self._run_as.write(base / "userlist.txt", self._userlist())
        self._run_as.write(base / "pgbouncer.ini", self._ini(base))
        return base / "pgbouncer.ini"

    def _require_base(self) -> Path:
        if self._base is None:
            self._base = scratch_dir("pgbouncer")
            self._run_as.chown(self._base)
        return self._base

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, timeout: float = 15.0) -> None:
        """Start pgbouncer and return once it listens; :class:`HarnessError` if it exits."""
        if self.is_running():
            raise HarnessError(f"{self!r} is already running")
        ini = self._write_config()
        with (self._require_base() / "stderr.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self._binary), str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._require_base(),
                env={key: value for key, value in os.environ.items() if not key.startswith("PG")},
                start_new_session=True,
                **self._run_as.popen_kwargs(),
            )
        deadline = time.monotonic() + timeout
        while not port_is_open(self.host, self.port):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise HarnessError(
                    f"pgbouncer exited with code {code} while starting:\n"
                    f"{tail(self._require_base() / 'stderr.log')}\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                log = tail(self.log_path)
                raise TimeoutError(f"{self!r} not listening after {timeout} s:\n{log}")
            time.sleep(POLL_INTERVAL)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, mode: ShutdownMode = "immediate", *, timeout: float = 10.0) -> None:
        """Stop: ``immediate`` (SIGTERM: close everything now) or ``safe`` (SIGINT: wait for
        clients to release their servers). No-op if not running."""
        if self._proc is None:
            return
        sig = signal.SIGTERM if mode == "immediate" else signal.SIGINT
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self!r} still running after {timeout} s") from None
        self._proc = None

    def wait_stopped(self, timeout: float = 10.0) -> None:
        """Wait until the process has exited (after ``SHUTDOWN`` on the console, say)."""
        if self._proc is None:
            return
        self._proc.wait(timeout)
        self._proc = None

    def reload(self) -> None:
        """Rewrite the configuration and send SIGHUP (pgbouncer re-reads it)."""
        self._write_config()
        if self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    def cleanup(self) -> None:
        """Stop (escalating to SIGKILL) and delete the directory; idempotent."""
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, timeout=5.0)
            if self._proc.poll() is None:
                kill_process_group(self._proc)
            self._proc = None
        if self._base is not None:
            remove_scratch_dir(self._base)
            self._base = None

    # ------------------------------------------------------------------ admin console
    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one admin console command (``PAUSE app``, ``SHOW POOLS``...); returns the rows.

        The console speaks the simple query protocol only, which psycopg uses for a
        statement without parameters. ``SHUTDOWN`` closes the connection under us: the
        resulting error is swallowed and the process reaped.
        """
        import psycopg

        conn = psycopg.connect(
            host=self.host,
            port=self.port,
            user=ADMIN_USER,
            password=self.admin_password,
            dbname="pgbouncer",
            autocommit=True,
            connect_timeout=5,
        )
        try:
            cur = conn.execute(command)
            return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.OperationalError:
            if command.strip().upper().startswith("SHUTDOWN"):
                self.wait_stopped()
                return []
            raise
        finally:
            conn.close()

    def pause(self, db: str | None = None) -> None:
        """``PAUSE [db]``: new queries wait; returns once the servers are released."""
        self.admin(f"PAUSE {db}" if db else "PAUSE")

    def resume(self, db: str | None = None) -> None:
        self.admin(f"RESUME {db}" if db else "RESUME")

    def kill(self, db: str) -> None:
        """``KILL db``: drop every client and server connection of *db* (and pause it)."""
        self.admin(f"KILL {db}")

    def shutdown(self) -> None:
        """``SHUTDOWN``: pgbouncer exits at once."""
        self.admin("SHUTDOWN")
