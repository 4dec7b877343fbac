"""The ``resilient-connect`` command line against real servers, run as a subprocess.

Everything a container entrypoint relies on: late-starting PostgreSQL and Redis (waited for
concurrently), ``exec`` keeping the process id, exit codes 0/1/2/3, ``check``, HTTP targets,
SIGTERM while waiting, no password in any output mode, and configuration from the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from harness import FaultProxy, PostgresServer, RedisServer

pytestmark = pytest.mark.integration

SECRET = "S3cr3t-PW-7f1c"
CLI = [sys.executable, "-m", "resilient_connect"]
# Reports the moment the exec'd program starts, on the system-wide monotonic clock.
PRINT_PID_AND_CLOCK = "import os, time; print(os.getpid(), time.monotonic(), flush=True)"


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without RESILIENT_CONNECT_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_CONNECT_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion and capture its output."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env() if env is None else env,
        check=False,
    )


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start the CLI in the background; any still running at teardown is killed."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env() if env is None else env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def assert_no_secret(*texts: str, secrets: Sequence[str] = ()) -> None:
    """No password, raw or percent-encoded, in any of ``texts``."""
    from urllib.parse import quote

    for secret in (SECRET, *secrets):
        for variant in {secret, quote(secret, safe="")}:
            for text in texts:
                assert variant not in text


# ---------------------------------------------------------------------------- late start
def test_postgres_and_redis_starting_late_are_waited_for_concurrently(
    make_postgres: Callable[..., PostgresServer],
    make_redis: Callable[..., RedisServer],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    """Both servers start late, each on its own schedule: the command runs soon after the
    slower one is ready, so the total is close to the slower start, not a sum of waits."""
    pg = make_postgres(start=False)
    cache = make_redis(start=False)
    started = time.monotonic()
    proc = spawn(
        "wait",
        pg.url,
        cache.url,
        "--max-delay",
        "0.5",
        "--timeout",
        "30",
        "--",
        sys.executable,
        "-c",
        PRINT_PID_AND_CLOCK,
    )
    ready_at: dict[str, float] = {}

    def bring_up(name: str, server: PostgresServer | RedisServer, after: float) -> None:
        time.sleep(after)  # the scenario: this server starts late
        server.start()
        ready_at[name] = time.monotonic()

    threads = [
        threading.Thread(target=bring_up, args=("postgres", pg, 1.0)),
        threading.Thread(target=bring_up, args=("redis", cache, 1.8)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pid, exec_clock = out.split()
    exec_at = float(exec_clock)
    slower = max(ready_at.values())
    time_to_exec = exec_at - slower
    total = exec_at - started
    print(
        f"late start: postgres ready {ready_at['postgres'] - started:.2f}s, redis ready "
        f"{ready_at['redis'] - started:.2f}s after launch; exec {time_to_exec:.3f}s after the "
        f"slower; total {total:.2f}s"
    )
    assert "attempt 1 failed" in err  # it really waited for both
    assert err.count("ready after") == 2
    assert time_to_exec < 2.5  # one capped delay (0.5 s) + an attempt + interpreter start
    assert total < (slower - started) + 2.5
    assert int(pid) == proc.pid


# ---------------------------------------------------------------------------- exec
def test_exec_keeps_the_pid_and_passes_arguments(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """The command replaces the CLI: same process id, argv passed through unchanged."""
    proc = subprocess.Popen(
        [
            *CLI,
            "wait",
            postgres.url,
            redis_server.url,
            "--",
            sys.executable,
            "-c",
            "import os, sys; print(os.getpid(), sys.argv[1:])",
            "--flag",
            "two words",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    pid, _, argv = out.strip().partition(" ")
    assert int(pid) == proc.pid
    assert argv == "['--flag', 'two words']"


def test_exec_command_exit_code_is_the_process_exit_code(postgres: PostgresServer) -> None:
    """After exec the exit status is the application's own."""
    result = run_cli("wait", postgres.url, "--", sys.executable, "-c", "raise SystemExit(7)")
    assert result.returncode == 7


def test_command_not_found_exits_127(postgres: PostgresServer) -> None:
    """A missing program is a clear one-line message and 127."""
    result = run_cli("wait", postgres.url, "--", "no-such-program-rc")
    assert result.returncode == 127
    assert result.stderr.strip().endswith("'no-such-program-rc': command not found")


def _documented_line(prefix: str) -> str:
    """The first line of docs/containers.md that starts with ``prefix`` (stripped)."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "containers.md"
    for line in docs.read_text().splitlines():
        if line.strip().startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting with {prefix!r} in {docs}")


def test_documented_entrypoint_line_works(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """The one-line entrypoint from docs/containers.md, pasted into ``sh``, waits for both
    services from the compose-style variables and execs the command as the same process."""
    line = _documented_line("exec resilient-connect wait")
    env = cli_env(
        DATABASE_URL=postgres.url_for(scheme="postgresql+psycopg"),
        REDIS_URL=redis_server.url,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    proc = subprocess.Popen(
        ["sh", "-c", line, "docker-entrypoint.sh", sys.executable, "-c", PRINT_PID_AND_CLOCK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(out.split()[0]) == proc.pid
    assert "all 2 targets ready" in err
    assert_no_secret(err, secrets=[postgres.password])


def test_documented_healthcheck_line_works(tmp_path: Path, free_port: int) -> None:
    """The HEALTHCHECK command from docs/containers.md: silent 0 when healthy, 1 when not."""
    line = _documented_line("CMD resilient-connect check").removeprefix("CMD ")
    line = line.replace("127.0.0.1:8000", f"127.0.0.1:{free_port}")
    env = cli_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    down = subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, check=False)
    assert down.returncode == 1
    assert "not ready" in down.stderr
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "health").write_text("ok\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(free_port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        # Poll until the server listens: the check itself must not be what waits.
        deadline = time.monotonic() + 10
        while True:
            up = subprocess.run(
                ["sh", "-c", line], capture_output=True, text=True, env=env, check=False
            )
            if up.returncode == 0 or time.monotonic() > deadline:
                break
    finally:
        server.terminate()
        server.wait(10)
    assert up.returncode == 0, up.stderr
    assert (up.stdout, up.stderr) == ("", "")


# ---------------------------------------------------------------------------- exit codes
def test_exit_0_when_ready(postgres: PostgresServer, redis_server: RedisServer) -> None:
    """All targets up: 0, one ready line each."""
    result = run_cli("wait", postgres.url, redis_server.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ready after 1 attempt") == 2


def test_exit_1_when_a_server_never_comes(free_port: int) -> None:
    """Transient failures until the deadline: 1, with the last error named."""
    url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port}/app"
    started = time.monotonic()
    result = run_cli("wait", url, "--timeout", "1.5")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "(deadline reached); last error: OperationalError" in result.stderr
    assert "Connection refused" in result.stderr
    assert elapsed < 10
    assert_no_secret(result.stderr)


def test_exit_2_on_a_bad_url() -> None:
    """A malformed URL is a one-line usage error (2), password hidden, no traceback."""
    result = run_cli("wait", f"postgresql://app:{SECRET} x@127.0.0.1/app")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert_no_secret(result.stderr)


@pytest.mark.parametrize(
    "case", ["wrong password", "unknown database", "unknown user", "redis wrong password"]
)
def test_exit_3_on_permanent_failures(
    postgres: PostgresServer, redis_auth: RedisServer, case: str
) -> None:
    """Authentication and unknown-database errors fail at once with 3, not after the deadline."""
    url = {
        "wrong password": postgres.url_for(password=SECRET),
        "unknown database": postgres.url_for(dbname="no_such_db"),
        "unknown user": postgres.url_for(user="nobody", password=SECRET),
        "redis wrong password": redis_auth.url_for(password=SECRET),
    }[case]
    started = time.monotonic()
    result = run_cli("wait", url, "--timeout", "30")
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - started < 10  # not the 30 s deadline
    assert "permanent failure" in result.stderr
    assert_no_secret(result.stderr, secrets=[postgres.password, redis_auth.password or ""])


def test_permanent_failure_ends_the_wait_while_another_probe_hangs(
    postgres: PostgresServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    """A wrong password (3) ends the wait at once even though another target is stuck in a
    connect that would only time out much later."""
    hole = fault_proxy(postgres.address)
    hole.blackhole()
    started = time.monotonic()
    result = run_cli(
        "wait",
        postgres.url_for(port=hole.port),
        postgres.url_for(password=SECRET),
        "--timeout",
        "60",
    )
    assert result.returncode == 3
    assert time.monotonic() - started < 10
    assert hole.accepted >= 1  # the stuck probe really was connecting


def test_permanent_failure_beats_a_transient_one(postgres: PostgresServer, free_port: int) -> None:
    """With one target refused and one rejecting the password, the exit code is 3, at once."""
    started = time.monotonic()
    result = run_cli(
        "wait", f"tcp://127.0.0.1:{free_port}", postgres.url_for(password=SECRET), "--timeout", "30"
    )
    assert result.returncode == 3
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------- check
def test_check_up_and_down(
    make_postgres: Callable[..., PostgresServer], redis_server: RedisServer
) -> None:
    """``check`` is one attempt: 0 when up, 1 as soon as a target is down, 3 when misconfigured."""
    pg = make_postgres()
    assert run_cli("check", pg.url, redis_server.url).returncode == 0
    pg.stop()
    started = time.monotonic()
    down = run_cli("check", pg.url, redis_server.url)
    assert down.returncode == 1
    assert time.monotonic() - started < 5
    assert "not ready: OperationalError" in down.stderr
    assert "attempt 1 failed" not in down.stderr  # one attempt, no retries
    pg.start()
    assert run_cli("check", pg.url).returncode == 0
    assert run_cli("check", pg.url_for(password=SECRET)).returncode == 3


def test_check_reports_a_starting_postgres_as_not_ready(
    make_postgres: Callable[..., PostgresServer],
) -> None:
    """A standby that refuses connections (57P03, a port that accepts TCP) is not healthy."""
    pg = make_postgres()
    pg.start_as_standby()
    assert run_cli("check", f"tcp://127.0.0.1:{pg.port}").returncode == 0
    result = run_cli("check", pg.url)
    assert result.returncode == 1
    assert "not accepting connections" in result.stderr


def test_redis_loading_its_dataset_is_not_ready(make_redis: Callable[..., RedisServer]) -> None:
    """Redis answering LOADING accepts TCP but is not ready: ``check`` says 1, ``wait``
    retries until the dataset is loaded."""
    cache = make_redis()
    cache.populate_and_save(2000)
    cache.start_loading(key_load_delay_us=2000)  # about 4 s of LOADING
    assert run_cli("check", f"tcp://127.0.0.1:{cache.port}").returncode == 0
    loading = run_cli("check", cache.url)
    waited = run_cli("wait", cache.url, "--max-delay", "0.3", "--timeout", "30")
    assert loading.returncode == 1
    assert "LOADING" in loading.stderr or "loading" in loading.stderr
    assert waited.returncode == 0, waited.stderr
    assert "attempt 1 failed (redis:loading)" in waited.stderr


# ---------------------------------------------------------------------------- http
def test_http_target_against_a_late_http_server(
    tmp_path: Path, free_port: int, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """An http:// target waits for the server to come up and for a 2xx on the path."""
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "health").write_text("ok\n")
    url = f"http://127.0.0.1:{free_port}/api/health"
    proc = spawn("wait", url, "--max-delay", "0.3", "--timeout", "30")
    time.sleep(0.5)
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(free_port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        _, err = proc.communicate(timeout=30)
        missing = run_cli("wait", f"http://127.0.0.1:{free_port}/nope", "--attempts", "2")
    finally:
        server.terminate()
        server.wait(10)
    assert proc.returncode == 0, err
    assert "Connection refused" in err
    assert f"{url}: ready after" in err
    assert missing.returncode == 1
    assert "HTTP 404" in missing.stderr


# ---------------------------------------------------------------------------- signals
@pytest.mark.parametrize(
    ("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_signal_while_waiting_exits_promptly(
    free_port: int,
    postgres: PostgresServer,
    fault_proxy: Callable[..., FaultProxy],
    spawn: Callable[..., subprocess.Popen[str]],
    signum: int,
    expected: int,
) -> None:
    """SIGTERM / Ctrl-C during a wait ends it at once with 143 / 130, also while a probe is
    stuck in a connect to a server that never answers; the command never runs."""
    url = f"postgresql://app:{SECRET}@127.0.0.1:{free_port}/app"
    hole = fault_proxy(postgres.address)
    hole.blackhole()
    stuck = postgres.url_for(port=hole.port)
    proc = spawn("wait", url, stuck, "--timeout", "60", "--", sys.executable, "-c", "print('ran')")
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first retry line: it is waiting now
    assert "attempt 1 failed" in first
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == expected
    assert time.monotonic() - sent < 2.0
    assert out == ""
    assert_no_secret(first, err)


# ---------------------------------------------------------------------------- redaction
def _live_output(args: Sequence[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; return the exit code and what it drew."""
    import pty

    main_fd, child_fd = pty.openpty()
    env = cli_env(TERM="xterm")
    proc = subprocess.Popen(
        [*CLI, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=child_fd, env=env
    )
    os.close(child_fd)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.stdout is not None
    proc.stdout.close()
    return proc.wait(10), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("mode", ["text", "json", "quiet", "live"])
def test_no_password_in_any_output_mode(
    postgres: PostgresServer, redis_auth: RedisServer, free_port: int, mode: str
) -> None:
    """Retries, give-ups, permanent failures and summaries never show a password."""
    args = [
        "wait",
        f"postgresql://app:{SECRET}@127.0.0.1:{free_port}/app",  # refused: retried, gives up
        postgres.url_for(password=SECRET + "x"),  # wrong password: permanent
        redis_auth.url,  # fine, with its own awkward password
        "--timeout",
        "1",
    ]
    if mode in {"json", "quiet"}:
        args.append(f"--{mode}")
    if mode == "live":
        code, err = _live_output(args)
        assert "\r\x1b[K" in err
    else:
        result = run_cli(*args)
        code, err = result.returncode, result.stderr
    assert code == 3
    assert "***" in err or mode == "quiet"
    assert err.strip()
    assert_no_secret(err, secrets=[postgres.password, redis_auth.password or ""])


# ---------------------------------------------------------------------------- environment
def test_targets_and_policy_from_the_environment(
    postgres: PostgresServer, redis_server: RedisServer, free_port: int
) -> None:
    """--env names the variables holding targets (SQLAlchemy URLs too); RESILIENT_CONNECT_*
    set the policy, and command-line options override it."""
    env = cli_env(
        DATABASE_URL=postgres.url_for(scheme="postgresql+psycopg"),
        REDIS_URL=redis_server.url,
        RESILIENT_CONNECT_TIMEOUT="1",
    )
    ready = run_cli("wait", "--env", "DATABASE_URL", "--env", "REDIS_URL", env=env)
    assert ready.returncode == 0, ready.stderr
    assert "postgresql+psycopg://app:***@" in ready.stderr

    env["DATABASE_URL"] = f"postgresql://app:{SECRET}@127.0.0.1:{free_port}/app"
    started = time.monotonic()
    down = run_cli("wait", "--env", "DATABASE_URL", "--json", env=env)
    short = time.monotonic() - started
    assert down.returncode == 1
    assert '"reason":"deadline"' in down.stderr
    assert short < 6

    env["RESILIENT_CONNECT_ATTEMPTS"] = "2"
    env["RESILIENT_CONNECT_TIMEOUT"] = "none"
    two = run_cli("wait", "--env", "DATABASE_URL", "--json", env=env)
    assert two.returncode == 1
    assert '"event":"gave_up"' in two.stderr
    assert '"reason":"attempts"' in two.stderr
    overridden = run_cli("wait", "--env", "DATABASE_URL", "--attempts", "1", env=env)
    assert "gave up after 1 attempt " in overridden.stderr

    env["RESILIENT_CONNECT_TIMEOUT"] = "soon"
    bad = run_cli("wait", "--env", "DATABASE_URL", env=env)
    assert bad.returncode == 2
    assert "RESILIENT_CONNECT_TIMEOUT" in bad.stderr
    unset = run_cli("wait", "--env", "NOT_SET_ANYWHERE", env=cli_env())
    assert unset.returncode == 2
    assert_no_secret(down.stderr, two.stderr, overridden.stderr, bad.stderr)


def test_main_in_process_with_real_servers(
    postgres: PostgresServer, redis_auth: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main(argv)`` drives the same probes in-process: ready is 0, a bad password is 3."""
    from resilient_connect._cli import main

    assert main(["wait", postgres.url, redis_auth.url, "--json"]) == 0
    ready = capsys.readouterr().err
    assert ready.count('"event":"ready"') == 2
    assert main(["check", postgres.url, redis_auth.url_for(password=SECRET)]) == 3
    failed = capsys.readouterr().err
    assert "permanent failure (redis:" in failed
    assert_no_secret(ready, failed, secrets=[postgres.password, redis_auth.password or ""])
