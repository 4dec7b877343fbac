"""Loopback ports, child processes and scratch directories shared by the harness modules.

Only loopback addresses are ever used: :func:`check_loopback` guards every place where a host
comes in from a caller, so a typo can never make the test suite listen on a real interface.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

from typing_extensions import Self

__all__ = [
    "HarnessError",
    "check_loopback",
    "free_port",
    "kill_process_group",
    "pid_alive",
    "port_is_open",
    "remove_scratch_dir",
    "scratch_dir",
    "stop_process",
    "tail",
    "wait_pid_gone",
    "wait_port_closed",
    "wait_port_open",
    "with_default_signals",
]

#: How often the polling helpers look again, in seconds. Small: loopback answers in microseconds.
POLL_INTERVAL = 0.005


class Listening:
    """``host``, ``port`` and ``address`` of a loopback service (``_host`` and ``_port``
    are set by the subclass; the port stays the same across restarts)."""

    _host: str
    _port: int

    @property
    def host(self) -> str:
        """The loopback address it listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; stable across restarts once it has started."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, e.g. as a FaultProxy upstream."""
        return (self._host, self._port)


class Service(Listening):
    """A server process run by the harness: ``with`` starts it and cleans it up."""

    def start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.cleanup()


class HarnessError(RuntimeError):
    """A test server or proxy could not be set up; the message says what to fix."""


def check_loopback(host: str) -> str:
    """Return *host* if it is a loopback IP literal, else raise ``ValueError``.

    Names such as ``localhost`` are refused on purpose: they may resolve to several addresses,
    which makes "the port is free" and "the port is closed" ambiguous.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"harness hosts must be loopback IP literals, got {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"harness hosts must be loopback addresses, got {host!r}")
    return host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def with_default_signals(argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT and SIGTERM at their defaults, whatever this process inherited.

    CI runs the suite with SIGINT ignored, and an ignored signal stays ignored across
    ``exec``; a program that keeps an inherited "ignore" (as a background job should) would
    then never see the SIGINT a test sends. A small Python prelude resets both signals and
    execs ``argv`` (looked up on PATH), so the program starts as it would from a shell.
    """
    prelude = (
        "import os, signal, sys\n"
        "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_DFL)\n"
        "os.execvp(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", prelude, *argv]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on *host* a moment ago (bind to port 0, then close).

    There is an unavoidable race with other processes grabbing the port before the caller binds
    it; the server classes retry with a fresh port when they picked the port themselves.
    """
    check_loopback(host)
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connect to (*host*, *port*) succeeds within *timeout* seconds."""
    check_loopback(host)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_open(host: str, port: int, timeout: float = 10.0) -> None:
    """Poll until (*host*, *port*) accepts connections; ``TimeoutError`` after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not port_is_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not open within {timeout} s")
        time.sleep(POLL_INTERVAL)


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> None:
    """Poll until (*host*, *port*) refuses connections; ``TimeoutError`` after *timeout* s."""
    deadline = time.monotonic() + timeout
    while port_is_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} still accepts connections after {timeout} s")
        time.sleep(POLL_INTERVAL)


def pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie.

    ``os.kill(pid, 0)`` succeeds for a zombie, and an orphaned daemon stays a zombie until
    PID 1 reaps it (about 1.4 s under gVisor), so ``/proc/PID/stat`` is read instead.
    """
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        # No /proc (not Linux): fall back to the signal probe.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The command name in parentheses may contain spaces; the state follows the last ')'.
    state = stat.rpartition(")")[2].split()[0]
    return state not in {"Z", "X"}


def wait_pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """Poll until *pid* is gone or a zombie; return False if it is still alive after *timeout* s."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def tail(path: Path, lines: int = 20) -> str:
    """The last *lines* lines of a log file, for error messages; empty if it does not exist."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# One world-traversable root per process for every server directory. pytest's tmp_path lives
# under a 0700 directory owned by root, which the ``postgres`` user cannot enter.
_root_lock = threading.Lock()
_root: Path | None = None
# The root (and any template cluster inside it) is removed when the interpreter exits. This
# handler is registered at import time, before the server modules register theirs, so it runs
# after them (atexit is LIFO): servers are stopped before their directories disappear.
_MARKER = ".resilient-connect-harness"


def _remove_root() -> None:
    if _root is not None and (_root / _MARKER).exists():
        shutil.rmtree(_root, ignore_errors=True)


atexit.register(_remove_root)


#: Minimum free space for using /dev/shm (Docker's default 64 MB /dev/shm is too small).
_MIN_SHM_FREE = 1 << 30


def _pick_root_parent() -> str:
    """``$RC_HARNESS_TMPDIR``, else /dev/shm when it is a roomy tmpfs, else the temp dir.

    A PostgreSQL data dir is about 1000 small files. Copying it onto the VM's ext4 disk took
    0.6-0.9 s of kernel time (sometimes 0.1 s); onto tmpfs it takes about 0.05 s.
    """
    if env := os.environ.get("RC_HARNESS_TMPDIR"):
        return env
    shm = "/dev/shm"
    with contextlib.suppress(OSError):
        stat = os.statvfs(shm)
        if os.access(shm, os.W_OK) and stat.f_bavail * stat.f_frsize >= _MIN_SHM_FREE:
            return shm
    return tempfile.gettempdir()


def _sweep_stale_roots(parent: Path) -> None:
    """Delete roots left by test processes that died without running atexit (SIGKILL).

    On tmpfs such leftovers hold RAM. Only directories with the harness marker whose creating
    PID is gone are touched. A PostgreSQL orphan whose data dir vanishes shuts itself down
    within a minute (it re-checks its lock file).
    """
    for entry in parent.glob("rc-harness-*-*"):
        pid = entry.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)) and (entry / _MARKER).exists():
            shutil.rmtree(entry, ignore_errors=True)


def scratch_dir(prefix: str, base: Path | None = None) -> Path:
    """Create a fresh directory for one server, under *base* or the per-process harness root.

    The directory is mode 0711 so that a server running as another user (postgres) can reach
    its own subdirectories, and it carries a marker file so that cleanup only ever deletes
    directories the harness created.
    """
    global _root  # noqa: PLW0603 - one lazily created root per process is the point
    if base is None:
        with _root_lock:
            if _root is None:
                parent = _pick_root_parent()
                _sweep_stale_roots(Path(parent))
                _root = Path(tempfile.mkdtemp(prefix=f"rc-harness-{os.getpid()}-", dir=parent))
                _root.chmod(0o711)
                (_root / _MARKER).touch()
            base = _root
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))
    path.chmod(0o711)
    (path / _MARKER).touch()
    return path


def remove_scratch_dir(path: Path) -> None:
    """Delete *path* if (and only if) :func:`scratch_dir` created it."""
    if (path / _MARKER).exists():
        shutil.rmtree(path, ignore_errors=True)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """Send *sig* to a child started with ``start_new_session=True`` and reap it.

    If it has not exited after *timeout* seconds, its whole process group gets SIGKILL, so
    helpers it forked (postgres backends) cannot outlive it. Reaping our own child means there
    is never a zombie to wait for.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(proc)


def kill_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL the process group led by *proc* (its session) and reap *proc*."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(timeout)
