"""Throwaway PostgreSQL clusters on loopback for integration tests.

A fresh cluster costs one ``cp -a`` of a cached template plus a postmaster start (about 0.2 s)
instead of an ``initdb`` (0.7-2.3 s here). The template is built once per process and key
(user, password, database), then copied for every :class:`PostgresServer`.

The postmaster is started directly as a child of the test process (dropping to the
``postgres`` user when running as root), not through ``pg_ctl``: a daemon re-parented to PID 1
stays a zombie until PID 1 reaps it (about 1.4 s under gVisor), whereas our own child is
reaped by ``Popen.wait`` the moment it exits. Shutdown modes are the signals ``pg_ctl`` would
send (smart = SIGTERM, fast = SIGINT, immediate = SIGQUIT).

Everything listens on 127.0.0.1 only, over TCP (unix sockets are off), with scram-sha-256.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    remove_scratch_dir,
    scratch_dir,
    stop_process,
    tail,
)

__all__ = [
    "DEFAULT_PASSWORD",
    "PostgresServer",
    "find_pg_bindir",
    "kv_quote",
    "require_locale",
]

#: The app role's default password: a space, a quote, ``@``, ``:``, ``/`` and ``%`` catch
#: every quoting and percent-encoding mistake in URL and key=value DSN handling.
DEFAULT_PASSWORD = "p@ss w:rd/%'x"

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[str, int] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
_SUPERUSER = "postgres"
# Settings the harness owns: changing them would break "loopback only, TCP only".
_RESERVED_SETTINGS = frozenset({"port", "listen_addresses", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
_INSTALL_HINT = (
    "install the Debian/Ubuntu packages 'postgresql' and 'redis-server' "
    "(run .ci/install-servers as root)"
)


def find_pg_bindir() -> Path:
    """Directory holding ``initdb`` and ``postgres``: ``$PG_BINDIR``, else the newest
    ``/usr/lib/postgresql/N/bin`` (Debian keeps them off PATH), else PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    if which := shutil.which("initdb"):
        candidates.append(Path(which).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return bindir
    raise HarnessError(
        "PostgreSQL server binaries (initdb, postgres) not found in $PG_BINDIR, "
        f"/usr/lib/postgresql/*/bin or PATH: {_INSTALL_HINT}"
    )


def require_locale(name: str) -> str:
    """Return *name* if the system has that locale (``locale -a``), else raise HarnessError.

    PostgreSQL silently keeps English messages for a locale it cannot set, which would make a
    "localised server" test pass without testing anything.
    """
    result = subprocess.run(
        ["locale", "-a"], capture_output=True, text=True, check=False, timeout=30
    )

    def normal(locale_name: str) -> str:
        return locale_name.lower().replace("-", "")

    if normal(name) not in {normal(line.strip()) for line in result.stdout.splitlines()}:
        raise HarnessError(
            f"locale {name!r} is not installed (locale -a): run .ci/install-servers as root, "
            "which installs the 'locales' package and generates de_DE.UTF-8 and fr_FR.UTF-8"
        )
    return name


def kv_quote(value: str) -> str:
    """Quote *value* for a libpq key=value conninfo string (single quotes, backslash escapes)."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conf_quote(value: str) -> str:
    """Quote a postgresql.conf value; quoting numbers and booleans is accepted too."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class _RunAs:
    """Who runs initdb and postgres: the ``postgres`` user when we are root, else ourselves."""

    uid: int | None
    gid: int | None

    @classmethod
    def detect(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls(None, None)
        try:
            entry = pwd.getpwnam(_SUPERUSER)
        except KeyError:
            raise HarnessError(
                "running as root, but there is no 'postgres' user to run PostgreSQL as "
                "(postgres refuses to run as root): run .ci/install-servers, which creates it"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def write(self, path: Path, text: str, mode: int = 0o600) -> None:
        """Write a file the server user can read, and nobody else."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)
        self.chown(path)


def _server_env(process_locale: str = "C") -> dict[str, str]:
    """A minimal environment: no PG* variables from the caller can redirect the server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(LC_ALL=process_locale, LANG=process_locale)
    env.pop("LANGUAGE", None)  # would override lc_messages in gettext
    return env


@dataclass(frozen=True)
class _Template:
    datadir: Path
    superuser_password: str


_templates: dict[tuple[str, str, str, str], _Template] = {}
_templates_lock = threading.Lock()
_live: set[PostgresServer] = set()


@atexit.register
def _cleanup_live_servers() -> None:
    """Safety net for servers a test forgot: stop them when the interpreter exits."""
    for server in list(_live):
        server.cleanup()


def _template_for(user: str, password: str, dbname: str) -> _Template:
    """Build (once per process and key) an initialised, cleanly shut down cluster to copy."""
    bindir = find_pg_bindir()
    key = (str(bindir), user, password, dbname)
    with _templates_lock:
        if key not in _templates:
            _templates[key] = _build_template(bindir, user, password, dbname)
        return _templates[key]


def _build_template(bindir: Path, user: str, password: str, dbname: str) -> _Template:
    run_as = _RunAs.detect()
    base = scratch_dir("pg-template")
    run_as.chown(base)
    superuser_password = secrets.token_urlsafe(16)
    datadir = base / "data"
    server = PostgresServer(user=user, password=password, dbname=dbname, template=False)
    try:
        _initdb(bindir, run_as, base, datadir, superuser_password)
        server._adopt_datadir(datadir, superuser_password)
        # Ends with a clean (fast) shutdown, so copies start without crash recovery.
        server._create_app_role_and_db()
    except BaseException:
        server._kill()
        remove_scratch_dir(base)
        raise
    # Each copy writes its own harness.conf (port and settings) at every start.
    (datadir / "harness.conf").unlink(missing_ok=True)
    return _Template(datadir, superuser_password)


def _initdb(bindir: Path, run_as: _RunAs, base: Path, datadir: Path, su_password: str) -> None:
    pwfile = base / "superuser.pw"
    run_as.write(pwfile, su_password + "\n")
    try:
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(datadir),
                "--username",
                _SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=reject",
                "--no-sync",
                "--locale=C",
                "--encoding=UTF8",
                # 1 MB WAL segments: the data dir shrinks from 39 MB to 28 MB, so copies are faster.
                "--wal-segsize=1",
            ],
            cwd=base,
            env=_server_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **run_as.popen_kwargs(),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise HarnessError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# Per-server settings written by tests/harness/postgres.py\n")
        conf.write("include_if_exists = 'harness.conf'\n")


class PostgresServer(Service):
    """One PostgreSQL cluster on 127.0.0.1 with an app role and database, for one test or more.

    ``start()`` initialises the cluster on first use (a copy of the cached template, or a real
    ``initdb`` with ``template=False``). ``cleanup()`` stops it and deletes its directory; it is
    idempotent, and a process-exit hook calls it for servers a test forgot.

    ``extra_conf`` is a mutable mapping of postgresql.conf settings, written at every start:
    change it and ``restart()`` to reconfigure. ``port``, ``listen_addresses`` and
    ``unix_socket_directories`` belong to the harness and are refused.

    ``lc_messages="de_DE.UTF-8"`` (or ``fr_FR.UTF-8``...) makes the server send its messages in
    that language; the locale must be installed (``.ci/install-servers`` generates German and
    French), else :class:`HarnessError` says so. ``process_locale`` is the postmaster's
    ``LC_ALL``: it decides the character set of the errors sent before a database is chosen
    (connect-time errors). ``"C"`` (the default) makes gettext transliterate translations to
    ASCII (``f?r``, ``>>app<<``); ``"C.UTF-8"`` keeps them as UTF-8.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "app",
        password: str = DEFAULT_PASSWORD,
        dbname: str = "app",
        extra_conf: Mapping[str, str | int | float | bool] | None = None,
        base_dir: Path | None = None,
        template: bool = True,
        host: str = "127.0.0.1",
        lc_messages: str | None = None,
        process_locale: str = "C",
    ) -> None:
        self._host = check_loopback(host)
        self._auto_port = port is None
        self._port = free_port(host) if port is None else port
        self._user = user
        self._password = password
        self._dbname = dbname
        self.extra_conf: dict[str, str] = {}
        for name, value in (extra_conf or {}).items():
            self.set_conf(name, value)
        if lc_messages is not None:
            self.set_conf("lc_messages", require_locale(lc_messages))
        self._process_locale = (
            process_locale if process_locale == "C" else require_locale(process_locale)
        )
        self._base_arg = base_dir
        self._use_template = template
        self._run_as = _RunAs.detect()
        self._bindir = find_pg_bindir()
        self._base: Path | None = None
        self._datadir: Path | None = None
        self._superuser_password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._standby = False
        self._ever_started = False

    # ------------------------------------------------------------------ addresses and DSNs
    @property
    def user(self) -> str:
        return self._user

    @property
    def password(self) -> str:
        return self._password

    @property
    def dbname(self) -> str:
        return self._dbname

    @property
    def superuser(self) -> str:
        return _SUPERUSER

    @property
    def superuser_password(self) -> str:
        self._require_init()
        assert self._superuser_password is not None
        return self._superuser_password

    @property
    def datadir(self) -> Path:
        self._require_init()
        assert self._datadir is not None
        return self._datadir

    @property
    def base_dir(self) -> Path:
        """The directory holding ``data/`` and ``postgres.log``; removed by ``cleanup()``."""
        self._require_init()
        assert self._base is not None
        return self._base

    @property
    def log_path(self) -> Path:
        """The server's stderr log (appended to across restarts)."""
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        """``postgresql://app:<percent-encoded pw>@127.0.0.1:PORT/app``."""
        return self.url_for()

    @property
    def conninfo(self) -> str:
        """libpq key=value string for the app role, the password quoted as libpq requires."""
        return self.conninfo_for()

    @property
    def superuser_url(self) -> str:
        return self.url_for(user=_SUPERUSER, password=self.superuser_password, dbname="postgres")

    @property
    def superuser_conninfo(self) -> str:
        return self.conninfo_for(
            user=_SUPERUSER, password=self.superuser_password, dbname="postgres"
        )

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect(**kwargs)``; no quoting involved."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.dbname,
        }

    def url_for(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        port: int | None = None,
        scheme: str = "postgresql",
    ) -> str:
        """A URL with some parts replaced (wrong password, unknown db, proxy port...).

        ``password=""`` leaves the password out entirely.
        """
        user = self.user if user is None else user
        password = self.password if password is None else password
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        db = quote(self.dbname if dbname is None else dbname, safe="")
        return f"{scheme}://{auth}@{host}:{self.port if port is None else port}/{db}"

    def conninfo_for(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        port: int | None = None,
        **extra: str | int,
    ) -> str:
        """A key=value conninfo with some parts replaced; *extra* adds options such as
        ``connect_timeout=2``. ``password=""`` leaves the password out."""
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port if port is None else port,
            "user": self.user if user is None else user,
            "dbname": self.dbname if dbname is None else dbname,
        }
        password = self.password if password is None else password
        if password:
            params["password"] = password
        params.update(extra)
        return " ".join(f"{key}={kv_quote(str(value))}" for key, value in params.items())

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostgresServer {self.host}:{self.port} user={self.user} db={self.dbname} {state}>"

    # ------------------------------------------------------------------ configuration
    def set_conf(self, name: str, value: str | int | float | bool) -> None:
        """Set a postgresql.conf value for the next start (call ``restart()`` to apply)."""
        if not _SETTING_NAME.match(name) or name in _RESERVED_SETTINGS:
            raise ValueError(f"setting {name!r} is invalid or owned by the harness")
        if isinstance(value, bool):
            value = "on" if value else "off"
        self.extra_conf[name] = str(value)

    def _harness_conf(self) -> str:
        settings: dict[str, str] = {
            "port": str(self.port),
            "listen_addresses": self.host,
            "unix_socket_directories": "",
            # Durability is pointless for throwaway clusters and costs time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # Many servers may run at once on a small machine.
            "shared_buffers": "16MB",
        }
        if self._standby:
            settings["hot_standby"] = "off"
        for name, value in self.extra_conf.items():
            if name in _RESERVED_SETTINGS:
                raise ValueError(f"setting {name!r} is owned by the harness")
            settings[name] = value
        return "".join(f"{name} = {_conf_quote(value)}\n" for name, value in settings.items())

    # ------------------------------------------------------------------ lifecycle
    def init(self) -> None:
        """Create the cluster (copy of the template, or initdb) if not done yet; idempotent."""
        if self._datadir is not None:
            return
        base = scratch_dir("pg", self._base_arg)
        self._run_as.chown(base)
        datadir = base / "data"
        try:
            if self._use_template:
                template = _template_for(self.user, self.password, self.dbname)
                # cp -a keeps the owner (postgres) and the 0700 mode postgres insists on.
                subprocess.run(
                    ["cp", "-a", str(template.datadir), str(datadir)],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                su_password = template.superuser_password
            else:
                su_password = secrets.token_urlsafe(16)
                _initdb(self._bindir, self._run_as, base, datadir, su_password)
        except BaseException:
            remove_scratch_dir(base)
            raise
        self._base = base
        self._adopt_datadir(datadir, su_password)
        if not self._use_template:
            self._create_app_role_and_db()

    def _adopt_datadir(self, datadir: Path, superuser_password: str) -> None:
        self._base = datadir.parent
        self._datadir = datadir
        self._superuser_password = superuser_password

    def _create_app_role_and_db(self) -> None:
        from psycopg import sql

        self.start()
        try:
            self.execute_as_superuser(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            self.execute_as_superuser(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.dbname), sql.Identifier(self.user)
                )
            )
        finally:
            self.stop("fast")

    def _require_init(self) -> None:
        if self._datadir is None:
            raise HarnessError("the cluster is not initialised yet: call init() or start()")

    def launch(self) -> None:
        """Start the postmaster and return at once (late-start and 57P03 scenarios)."""
        self.start(wait=False)

    start_async = launch

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the postmaster; with *wait*, return once it accepts connections.

        "Accepts" is the ``ready`` status in ``postmaster.pid`` (``standby`` for
        :meth:`start_as_standby`), the same signal ``pg_ctl -w`` uses, but polled every 5 ms.
        If the harness chose the port and someone else took it meanwhile, a new port is tried.
        """
        if self.is_running():
            raise HarnessError(f"{self!r} is already running")
        self.init()
        for attempt in range(3):
            self._launch()
            if not wait:
                return
            try:
                self.wait_ready(timeout)
            except HarnessError as exc:
                port_taken = "could not bind" in str(exc) or "already in use" in str(exc)
                if port_taken and self._auto_port and not self._ever_started and attempt < 2:
                    self._port = free_port(self.host)
                    continue
                raise
            self._ever_started = True
            return

    def _launch(self) -> None:
        self._run_as.write(self.datadir / "harness.conf", self._harness_conf())
        standby_signal = self.datadir / "standby.signal"
        if self._standby:
            self._run_as.write(standby_signal, "")
        else:
            standby_signal.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self._bindir / "postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_server_env(self._process_locale),
                # Own session: Ctrl-C in the terminal must not shut servers down behind
                # pytest's back, and killpg can reach the backends.
                start_new_session=True,
                **self._run_as.popen_kwargs(),
            )
        _live.add(self)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``postmaster.pid`` until the server accepts connections (or is a standby).

        Raises :class:`HarnessError` with the log tail if the postmaster exits, and
        ``TimeoutError`` after *timeout* seconds.
        """
        wanted = "standby" if self._standby else "ready"
        pidfile = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                self._proc = None
                _live.discard(self)
                raise HarnessError(
                    f"postgres exited with code {code} while starting; log "
                    f"{self.log_path}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == wanted:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self!r} not ready after {timeout} s:\n{tail(self.log_path)}")
            time.sleep(POLL_INTERVAL)

    def is_running(self) -> bool:
        """True while the postmaster process started by this object has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while running."""
        return self._proc.pid if self.is_running() and self._proc is not None else None

    def stop(self, mode: StopMode = "fast", *, wait: bool = True, timeout: float = 30.0) -> None:
        """Shut down like ``pg_ctl stop -m MODE``; no-op if not running.

        ``smart`` waits for sessions to end (new connects get 57P03 "shutting down"), ``fast``
        terminates them (57P01 in open sessions), ``immediate`` quits without a checkpoint (the
        next start does crash recovery). With ``wait=False`` the signal is sent and the call
        returns; use :meth:`wait_stopped`. ``TimeoutError`` if it is still up after *timeout*.
        """
        if not self.is_running():
            self._proc = None
            _live.discard(self)
            return
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(_STOP_SIGNALS[mode])
        if wait:
            self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float = 30.0) -> None:
        """Wait until the postmaster has exited (and been reaped)."""
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self!r} still running after {timeout} s") from None
        self._proc = None
        _live.discard(self)

    def restart(self, mode: StopMode = "fast", *, wait: bool = True) -> None:
        """Stop (if running) with *mode*, then start again on the same port and data dir."""
        self.stop(mode)
        self.start(wait=wait)

    def start_as_standby(self, *, wait: bool = True) -> None:
        """(Re)start as a standby with ``hot_standby=off``: a real, stable 57P03.

        Every connect then fails with ``FATAL: the database system is not accepting
        connections`` / ``DETAIL: Hot standby mode is disabled.`` until :meth:`end_standby`.
        PQping reports REJECT.
        """
        self.stop("fast")
        self._standby = True
        self.start(wait=wait)

    def end_standby(self, *, wait: bool = True) -> None:
        """Stop the standby, remove ``standby.signal`` and start as a normal primary."""
        self.stop("fast")
        self._standby = False
        self.start(wait=wait)

    @property
    def is_standby(self) -> bool:
        return self._standby

    def _kill(self) -> None:
        if self._proc is not None:
            kill_process_group(self._proc)
            self._proc = None
        _live.discard(self)

    def cleanup(self) -> None:
        """Stop (fast, escalating to SIGKILL after 10 s) and delete the directory; idempotent."""
        if self._proc is not None:
            stop_process(self._proc, _STOP_SIGNALS["fast"], timeout=10.0)
            self._proc = None
        _live.discard(self)
        if self._base is not None:
            remove_scratch_dir(self._base)
            self._base = None
            self._datadir = None

    # ------------------------------------------------------------------ SQL helpers
    def execute_as_superuser(
        self,
        query: Any,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser in autocommit mode (CREATE DATABASE works).

        *query* is a ``str`` or a ``psycopg.sql`` composable; returns the rows, or ``[]``.
        """
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=_SUPERUSER,
            password=self.superuser_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description is not None else []

    def terminate_backends(self, user: str | None = None) -> int:
        """``pg_terminate_backend`` every client session of *user* (default: the app role).

        The sessions' next statement fails with 57P01 (``AdminShutdown``). Returns the count.
        """
        rows = self.execute_as_superuser(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = %s AND pid <> pg_backend_pid()",
            (self.user if user is None else user,),
        )
        return int(rows[0][0])
