"""The ``resilient-connect`` command line, in-process: parsing, usage errors, policy and env
configuration, output modes and redaction, exec, and tcp/http probes against loopback servers.

Engine waits are virtual (``instant_waits``); the probes' sockets are real, on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilient_connect import Backoff
from resilient_connect._cli import _main as _cli
from resilient_connect._cli._main import UsageError, main, parse
from resilient_connect._cli._output import Reporter, choose_mode
from resilient_connect._cli._probes import (
    HTTPStatusError,
    TargetError,
    classify_http,
    classify_network,
    parse_target,
)
from resilient_connect.testing import instant_waits

SECRET = "S3cr3t-PW-7f1c"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RESILIENT_CONNECT_* variable from the caller changes these tests' policies."""
    import os

    for name in list(os.environ):
        if name.startswith("RESILIENT_CONNECT_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_probe_outlives_its_test() -> Iterator[None]:
    """Probe threads that main() left behind (after a permanent failure or a signal) stop at
    their next event; wait for that, so they cannot touch the next test's virtual clock."""
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("resilient-connect-probe"):
            thread.join(timeout=10)
            assert not thread.is_alive(), f"{thread.name} still running"


@pytest.fixture
def waits() -> Iterator[Any]:
    """Virtual engine waits for the duration of a test."""
    with instant_waits() as virtual:
        yield virtual


# Every line the command line writes in text mode starts with a UTC timestamp.
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", re.MULTILINE)


def unstamped(text: str) -> str:
    """``text`` without the timestamps that start its lines."""
    return STAMP.sub("", text)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``main`` and return its exit code and everything it wrote to stderr, every line's
    timestamp checked and removed."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    lines = [line for line in err.split("\n") if line and not line.startswith("{")]
    usage = code == 2  # a usage error is written before any reporter exists
    assert usage or all(STAMP.match(line) for line in lines), err
    return code, unstamped(err)


@pytest.fixture
def refused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers from the server's script: a list of (status, headers) consumed per request."""

    server: _ScriptedServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization")))
        if self.server.latency:
            threading.Event().wait(self.server.latency)  # a slow service, not a test sleep
        status, headers = self.server.next_answer()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, fmt: str, *args: Any) -> None:
        """Keep the test output clean."""


class _ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.latency = 0.0

    def next_answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def http_server() -> Iterator[Callable[..., _ScriptedServer]]:
    """Factory: ``http_server((status, headers), ...)`` serves those answers in turn, then the
    last one forever."""
    servers: list[_ScriptedServer] = []

    def start(*answers: tuple[int, dict[str, str]] | int) -> _ScriptedServer:
        script = [(a, {}) if isinstance(a, int) else a for a in answers]
        server = _ScriptedServer(script)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- parsing
def test_parse_splits_the_command_after_double_dash() -> None:
    """Everything after the first ``--`` is the command, untouched, even option-like words."""
    request = parse(["wait", "tcp://db:5432", "--", "app", "--timeout", "3", "--"], {})
    assert request.command == ["app", "--timeout", "3", "--"]
    assert [t.label for t in request.targets] == ["tcp://db:5432"]
    assert request.policy == Backoff(maximum=_cli.WAIT_MAXIMUM)


def test_parse_accepts_options_between_targets() -> None:
    """Options may come before, between or after the targets."""
    request = parse(
        ["wait", "tcp://a:1", "--timeout", "5", "tcp://b:2", "--initial", "0.5", "--json"], {}
    )
    assert [t.label for t in request.targets] == ["tcp://a:1", "tcp://b:2"]
    assert request.policy.timeout == 5
    assert request.policy.initial == 0.5
    assert request.as_json


def test_parse_maps_every_policy_option() -> None:
    """--initial, --max-delay, --attempts, --jitter and --timeout set the policy fields."""
    request = parse(
        [
            "wait",
            "tcp://a:1",
            "--initial=0.2",
            "--max-delay=3",
            "--attempts=7",
            "--jitter=equal",
            "--timeout=9",
        ],
        {},
    )
    assert request.policy == Backoff(initial=0.2, maximum=3, attempts=7, jitter="equal", timeout=9)


def test_parse_none_means_unbounded() -> None:
    """``--timeout none --attempts none`` waits until cancelled, as the policy allows."""
    request = parse(["wait", "tcp://a:1", "--timeout", "none", "--attempts", "none"], {})
    assert request.policy.timeout is None
    assert request.policy.attempts is None


@pytest.mark.parametrize(
    ("option", "variable", "raw"),
    [
        ("--timeout", "RESILIENT_CONNECT_TIMEOUT", "null"),
        ("--timeout", "RESILIENT_CONNECT_TIMEOUT", " Unlimited "),
        ("--attempts", "RESILIENT_CONNECT_ATTEMPTS", "12"),
        ("--jitter", "RESILIENT_CONNECT_JITTER", "Equal"),
        ("--jitter", "RESILIENT_CONNECT_JITTER", "0.3"),
        ("--initial", "RESILIENT_CONNECT_INITIAL", "0.25"),
        ("--max-delay", "RESILIENT_CONNECT_MAXIMUM", "4"),
    ],
)
def test_options_and_variables_share_the_policy_parser(
    option: str, variable: str, raw: str
) -> None:
    """An option and its RESILIENT_CONNECT_* variable accept the same text and give the same
    policy (``--timeout null`` was a usage error while the variable accepted it)."""
    from_option = parse(["wait", "tcp://a:1", option, raw], {}).policy
    from_variable = parse(["wait", "tcp://a:1"], {variable: raw}).policy
    assert from_option == from_variable
    assert from_option != parse(["wait", "tcp://a:1"], {}).policy


@pytest.mark.parametrize(
    ("option", "variable", "raw"),
    [
        ("--timeout", "RESILIENT_CONNECT_TIMEOUT", "soon"),
        ("--attempts", "RESILIENT_CONNECT_ATTEMPTS", "2.5"),
        ("--jitter", "RESILIENT_CONNECT_JITTER", "lots"),
    ],
)
def test_options_and_variables_reject_the_same_text_alike(
    option: str, variable: str, raw: str
) -> None:
    """Text that is no value is a usage error in both places, with the same explanation."""
    with pytest.raises(UsageError) as by_option:
        parse(["wait", "tcp://a:1", option, raw], {})
    with pytest.raises(UsageError) as by_variable:
        parse(["wait", "tcp://a:1"], {variable: raw})
    assert f"{option}={raw!r}: " in str(by_option.value)
    assert f"{variable}={raw!r}: " in str(by_variable.value)
    explanation = str(by_variable.value).partition(": expected")[2]
    assert str(by_option.value).partition(": expected")[2] == explanation


def test_parse_proportional_jitter() -> None:
    """A number is proportional jitter."""
    assert parse(["wait", "tcp://a:1", "--jitter", "0.25"], {}).policy.jitter == 0.25


def test_wait_caps_delays_at_one_second_unless_told_otherwise() -> None:
    """``wait`` notices a service soon after it comes up: 1 s cap, from env or option too."""
    assert parse(["wait", "tcp://a:1"], {}).policy.maximum == 1.0
    environ = {"RESILIENT_CONNECT_MAXIMUM": "5"}
    assert parse(["wait", "tcp://a:1"], environ).policy.maximum == 5
    assert parse(["wait", "tcp://a:1", "--max-delay", "2"], environ).policy.maximum == 2


def test_check_makes_one_attempt_with_a_short_default_deadline() -> None:
    """``check`` is one attempt per target, 10 s unless told otherwise."""
    policy = parse(["check", "tcp://a:1"], {}).policy
    assert policy.attempts == 1
    assert policy.timeout == _cli.CHECK_TIMEOUT
    assert parse(["check", "tcp://a:1", "--timeout", "2"], {}).policy.timeout == 2


def test_policy_defaults_come_from_the_environment() -> None:
    """RESILIENT_CONNECT_* variables set the policy; options override them."""
    environ = {"RESILIENT_CONNECT_TIMEOUT": "7", "RESILIENT_CONNECT_MAXIMUM": "2"}
    policy = parse(["wait", "tcp://a:1"], environ).policy
    assert (policy.timeout, policy.maximum) == (7, 2)
    policy = parse(["wait", "tcp://a:1", "--timeout", "3"], environ).policy
    assert (policy.timeout, policy.maximum) == (3, 2)


def test_check_takes_its_deadline_from_the_environment() -> None:
    """RESILIENT_CONNECT_TIMEOUT also applies to ``check``; attempts stay 1."""
    policy = parse(["check", "tcp://a:1"], {"RESILIENT_CONNECT_TIMEOUT": "4"}).policy
    assert (policy.timeout, policy.attempts) == (4, 1)


def test_retry_budget_from_the_option_or_the_environment() -> None:
    """``--retry-budget N`` (or RESILIENT_CONNECT_RETRY_BUDGET) shares N retries between the
    targets: one token a retry, none back; 'none' and no setting mean no budget."""
    request = parse(["wait", "tcp://a:1", "tcp://b:2", "--retry-budget", "12"], {})
    assert request.budget is not None
    assert (request.budget.capacity, request.budget.retry_cost) == (12, 1)
    assert request.budget.success_refund == 0
    assert request.budget.retries_left == 12
    from_env = parse(["wait", "tcp://a:1"], {_cli.BUDGET_VARIABLE: " 4 "}).budget
    assert from_env is not None
    assert from_env.retries_left == 4
    overridden = parse(["wait", "tcp://a:1", "--retry-budget=none"], {_cli.BUDGET_VARIABLE: "4"})
    assert overridden.budget is None
    assert parse(["wait", "tcp://a:1"], {}).budget is None
    assert parse(["check", "tcp://a:1"], {_cli.BUDGET_VARIABLE: "4"}).budget is None


@pytest.mark.parametrize("raw", ["0", "-3", "2.5", "lots", ""])
def test_retry_budget_rejects_what_is_no_count(raw: str) -> None:
    """A budget is a whole number of retries >= 1; the error names the option or variable."""
    with pytest.raises(UsageError, match=r"--retry-budget='.*': expected a whole number"):
        parse(["wait", "tcp://a:1", "--retry-budget", raw], {})
    if raw:
        with pytest.raises(UsageError, match=rf"{_cli.BUDGET_VARIABLE}='.*': expected a whole"):
            parse(["wait", "tcp://a:1"], {_cli.BUDGET_VARIABLE: raw})
    if raw == "0":
        with pytest.raises(UsageError, match="use --attempts 1"):
            parse(["wait", "tcp://a:1", "--retry-budget", raw], {})


def test_key_value_conninfo_is_a_postgres_target_with_its_password_hidden() -> None:
    """A libpq key=value string is accepted as a PostgreSQL target, password masked."""
    target = parse_target(f"host=db dbname=app password={SECRET}")
    assert target.label == "host=db dbname=app password=***"


def test_targets_from_named_environment_variables() -> None:
    """``--env VAR`` adds the target held in VAR, after the positional targets."""
    environ = {"DB": "postgresql://app:pw@db/app", "CACHE": "redis://cache:6379/0"}
    request = parse(["wait", "tcp://x:1", "--env", "DB", "--env", "CACHE"], environ)
    assert [t.scheme for t in request.targets] == ["tcp", "postgresql", "redis"]
    assert request.targets[1].label == "postgresql://app:***@db/app"


@pytest.mark.parametrize(
    ("raw", "scheme", "url"),
    [
        ("postgresql://u@h/db", "postgresql", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgres", "postgres://u@h/db"),
        ("postgresql+psycopg://u@h:5/db", "postgresql", "postgresql://u@h:5/db"),
        ("POSTGRESQL+psycopg2://u@h/db", "postgresql", "postgresql://u@h/db"),
        ("redis://h:6379/0", "redis", "redis://h:6379/0"),
        ("rediss://h", "rediss", "rediss://h"),
        ("tcp://[::1]:80", "tcp", "tcp://[::1]:80"),
        ("https://h/health?x=1", "https", "https://h/health?x=1"),
        ("host=db dbname=app password=pw", "postgresql", "host=db dbname=app password=pw"),
    ],
)
def test_parse_target_schemes(raw: str, scheme: str, url: str) -> None:
    """Each supported scheme maps to its probe; SQLAlchemy's +driver suffix is dropped."""
    target = parse_target(raw)
    assert (target.scheme, target.url) == (scheme, url)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("mysql://u:pw@h/db", "unsupported scheme 'mysql'"),
        ("db:5432", "has no scheme"),
        ("tcp://h", "expected tcp://HOST:PORT"),
        ("tcp://h:99999", "out of range"),
        ("http:///path", "expected http://HOST"),
        ("postgresql://u@h:notaport/db", "invalid port 'notaport'"),
        ("redis://h:abc/0", "Port could not be cast"),
        ("redis+x://h", "driver suffix"),
        ("host=db port=5432x", "invalid port '5432x'"),
        ("host=db 'unterminated", 'missing "="'),
    ],
)
def test_parse_target_rejects_unusable_targets(raw: str, fragment: str) -> None:
    """Typos are found before waiting: each raises TargetError with a helpful message."""
    with pytest.raises(TargetError, match="target") as info:
        parse_target(raw)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["--bogus"],
        ["wait"],
        ["wait", "tcp://h:1", "--timeout", "soon"],
        ["wait", "tcp://h:1", "--timeout", "-1"],
        ["wait", "tcp://h:1", "--attempts", "0"],
        ["wait", "tcp://h:1", "--attempts", "2.5"],
        ["wait", "tcp://h:1", "--jitter", "lots"],
        ["wait", "tcp://h:1", "--jitter", "2"],
        ["wait", "tcp://h:1", "--initial", "-3"],
        ["wait", "tcp://h:1", "--quiet", "--json"],
        ["wait", "tcp://h:1", "--no-such-option"],
        ["wait", "tcp://h:1", "--"],
        ["wait", "--env", "RC_TEST_UNSET_VARIABLE"],
        ["wait", "ftp://h/x"],
        ["wait", "tcp://h:1", "python", "app.py"],
        ["check", "tcp://h:1", "--", "true"],
        ["check", "--attempts", "3", "tcp://h:1"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Every usage error is exit 2 and exactly one line on stderr, never a traceback."""
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("resilient-connect")
    assert "Traceback" not in err


def test_usage_error_names_the_bad_environment_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad RESILIENT_CONNECT_* value is a usage error naming the variable."""
    monkeypatch.setenv("RESILIENT_CONNECT_TIMEOUT", "soon")
    code, err = run(capsys, "wait", "tcp://h:1")
    assert code == 2
    assert "RESILIENT_CONNECT_TIMEOUT" in err


def test_usage_error_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """A policy value the engine rejects is reported under the option's name."""
    code, err = run(capsys, "wait", "tcp://h:1", "--max-delay", "-1")
    assert code == 2
    assert "--max-delay" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["wait", f"mysql://app:{SECRET}@db/app"],
        ["wait", f"postgresql://app:{SECRET}%zz@db/app"],
        ["wait", f"postgresql://app:{SECRET} x@db/app"],
        ["wait", f"--bogus=postgresql://app:{SECRET}@db/app"],
        ["wait", "tcp://h:1", f"redis://:{SECRET}@h/0", "--timeout", "x"],
        ["wait", f"tcp://app:{SECRET}@h"],
    ],
)
def test_usage_errors_never_show_passwords(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """The one-line message redacts passwords, including the ones libpq echoes."""
    code, err = run(capsys, *argv)
    assert code == 2
    assert SECRET not in err
    assert err.strip()


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints the usage to stdout and exits 0."""
    assert main(["wait", "--help"]) == 0
    assert "-- COMMAND ARGS" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["wait", "check"])
def test_help_names_every_kind_of_target_and_recommends_env(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--help`` lists the libpq key=value form with the URL schemes, and says to pass a
    target with a password through --env (arguments show in ``ps``)."""
    assert main([action, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for form in ("postgresql://", "redis://", "tcp://HOST:PORT", "https://", "key=value"):
        assert form in text
    assert "'host=db dbname=app user=app'" in text
    assert "use --env" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version and exits 0."""
    from resilient_connect import __version__

    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


# ---------------------------------------------------------------------------- tcp probe
def test_wait_tcp_ready(capsys: pytest.CaptureFixture[str], listener: int) -> None:
    """A listening port is ready on the first attempt: exit 0 and one 'ready' line."""
    code, err = run(capsys, "wait", f"tcp://127.0.0.1:{listener}")
    assert code == 0
    assert f"tcp://127.0.0.1:{listener}: ready after 1 attempt" in err


def test_wait_tcp_gives_up_with_exit_1(
    capsys: pytest.CaptureFixture[str], refused_port: int, waits: Any
) -> None:
    """A refused port is transient: one line per retry with attempt, cause and delay, then 1."""
    code, err = run(capsys, "wait", f"tcp://127.0.0.1:{refused_port}", "--attempts", "3")
    assert code == 1
    lines = err.splitlines()
    retries = [line for line in lines if "failed" in line]
    assert len(retries) == 2
    assert "attempt 1 failed (os-error:ConnectionRefusedError)" in retries[0]
    assert "next attempt in" in retries[0]
    assert "gave up after 3 attempts" in err
    assert lines[-1].startswith("resilient-connect: not ready")
    assert len(waits.sleeps) == 2


def test_wait_tcp_deadline_in_virtual_time(
    capsys: pytest.CaptureFixture[str], refused_port: int, waits: Any
) -> None:
    """--timeout bounds the wait: the virtual waits add up to less than the deadline."""
    code, _ = run(capsys, "wait", f"tcp://127.0.0.1:{refused_port}", "--timeout", "20")
    assert code == 1
    assert 5 < waits.total < 20


def test_wait_retry_budget_is_shared_by_the_targets(
    capsys: pytest.CaptureFixture[str], refused_port: int
) -> None:
    """Two refused targets share ``--retry-budget 3``: three retries in all, then both give
    up (exit 1) with a line that names the option, not the library's RetryBudget."""
    from resilient_connect import _budget

    with instant_waits() as virtual:
        _budget.UNLIMITED = False  # instant_waits lifts budgets; this test needs its own
        code, err = run(
            capsys,
            "wait",
            f"tcp://127.0.0.1:{refused_port}",
            f"tcp://localhost:{refused_port}",
            "--retry-budget",
            "3",
        )
    assert code == 1
    # Three waits before the three retries, and one per target before it found the bucket
    # empty (a token is taken when the retry is made, after the wait).
    assert len(virtual.sleeps) == 3 + 2
    attempts = [int(n) for n in re.findall(r"gave up after (\d+) attempts?", err)]
    assert len(attempts) == 2
    assert sum(attempts) == 2 + 3  # each target's first attempt, and the three retries
    assert err.count("the 3 retries of --retry-budget (or RESILIENT_CONNECT_RETRY_BUDGET)") == 2
    assert "RetryBudget(capacity" not in err


def test_check_tcp_up_and_down(
    capsys: pytest.CaptureFixture[str], listener: int, refused_port: int
) -> None:
    """``check`` exits 0 when every target answers and 1 when one is down, after one try."""
    code, err = run(capsys, "check", f"tcp://127.0.0.1:{listener}")
    assert code == 0
    assert "ready in" in err
    code, err = run(
        capsys, "check", f"tcp://127.0.0.1:{listener}", f"tcp://127.0.0.1:{refused_port}"
    )
    assert code == 1
    assert "not ready: ConnectionRefusedError" in err
    assert "attempt 1 failed" not in err


def test_classify_network() -> None:
    """Socket errors are transient; certificate errors and non-socket errors are permanent."""
    import ssl

    assert classify_network(ConnectionRefusedError()).transient
    assert classify_network(socket.gaierror(-2, "Name or service not known")).transient
    assert classify_network(TimeoutError()).transient
    assert not classify_network(ssl.SSLCertVerificationError("bad cert")).transient
    assert not classify_network(ValueError("x")).transient


# ---------------------------------------------------------------------------- http probe
def test_wait_http_ready_after_503(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer], waits: Any
) -> None:
    """503 is retried; the first 2xx makes the target ready."""
    server = http_server(503, 503, 204)
    code, err = run(capsys, "wait", f"{server.url}/api/health?deep=1")
    assert code == 0
    assert "attempt 2 failed (http:503)" in err
    assert "ready after 3 attempts" in err
    assert server.requests[0][0] == "/api/health?deep=1"


def test_http_sends_basic_auth_and_never_prints_it(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer], waits: Any
) -> None:
    """user:password in the URL becomes a Basic header; the password is hidden in the output."""
    import base64

    server = http_server(500, 200)
    target = server.url.replace("http://", f"http://probe:{SECRET}@") + "/health"
    code, err = run(capsys, "wait", target)
    assert code == 0
    expected = "Basic " + base64.b64encode(f"probe:{SECRET}".encode()).decode()
    assert server.requests[-1][1] == expected
    assert SECRET not in err
    assert "probe:***@" in err


@pytest.mark.parametrize("status", [401, 403, 400])
def test_http_client_errors_are_permanent(
    capsys: pytest.CaptureFixture[str],
    http_server: Callable[..., _ScriptedServer],
    waits: Any,
    status: int,
) -> None:
    """401/403/400 will not fix themselves: exit 3 after one attempt."""
    server = http_server(status)
    code, err = run(capsys, "wait", server.url)
    assert code == 3
    assert len(server.requests) == 1
    assert f"HTTP {status}" in err
    assert waits.sleeps == []


def test_http_redirect_is_permanent_and_explained(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer]
) -> None:
    """Redirects are not followed: exit 3 and the message says where it pointed."""
    server = http_server((301, {"Location": "https://example.invalid/health"}))
    code, err = run(capsys, "wait", server.url)
    assert code == 3
    assert "redirects are not followed" in err


def test_http_404_is_retried_until_the_deadline(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer], waits: Any
) -> None:
    """404 (a proxy whose backend has not registered yet) is retried, then exit 1."""
    server = http_server(404)
    code, err = run(capsys, "wait", server.url, "--attempts", "3")
    assert code == 1
    assert len(server.requests) == 3
    assert "HTTP 404" in err


def test_classify_http_statuses() -> None:
    """5xx, 404, 408, 425 and 429 are transient; other statuses are permanent."""
    transient = {s for s in range(300, 600) if classify_http(HTTPStatusError(s, "")).transient}
    assert transient == {404, 408, 425, 429, *range(500, 600)}
    assert classify_http(HTTPStatusError(503, "")).rule == "http:503"


def test_classify_http_garbled_response_is_transient() -> None:
    """A non-HTTP answer (another process on the port while the app starts) is retried."""
    import http.client

    assert classify_http(http.client.BadStatusLine("SSH-2.0")).transient


def test_wait_http_against_a_raw_non_http_server(
    capsys: pytest.CaptureFixture[str], waits: Any
) -> None:
    """A port that answers garbage is transient, reported with the http rule."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        stop = threading.Event()

        def answer() -> None:
            sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"SSH-2.0-OpenSSH\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            code, err = run(capsys, "wait", f"http://127.0.0.1:{port}/", "--attempts", "2")
        finally:
            stop.set()
            thread.join()
    assert code == 1
    assert "(http:BadStatusLine)" in err


# ---------------------------------------------------------------------------- several targets
def test_most_severe_exit_code_wins(
    capsys: pytest.CaptureFixture[str],
    http_server: Callable[..., _ScriptedServer],
    refused_port: int,
    waits: Any,
) -> None:
    """A permanent failure (3) beats a transient one (1) and ends the wait at once."""
    server = http_server(401)
    code, err = run(
        capsys, "wait", f"tcp://127.0.0.1:{refused_port}", server.url, "--timeout", "none"
    )
    assert code == 3
    assert "permanent failure" in err


def test_all_targets_ready_reports_each(
    capsys: pytest.CaptureFixture[str], listener: int, http_server: Callable[..., _ScriptedServer]
) -> None:
    """Several ready targets: one line each and a summary."""
    server = http_server(200)
    code, err = run(capsys, "wait", f"tcp://127.0.0.1:{listener}", server.url)
    assert code == 0
    assert err.count(": ready after 1 attempt") == 2
    assert "all 2 targets ready" in err.splitlines()[-1]


def test_targets_are_probed_concurrently(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer]
) -> None:
    """Three services that each take 1 s to answer are ready in about 1 s, not 3 s."""
    import time

    servers = [http_server(200) for _ in range(3)]
    for server in servers:
        server.latency = 1.0
    start = time.monotonic()
    code, err = run(capsys, "wait", *(server.url for server in servers))
    elapsed = time.monotonic() - start
    assert code == 0
    assert err.count("ready after 1 attempt") == 3
    assert 1.0 <= elapsed < 2.5


# ---------------------------------------------------------------------------- output modes
def json_lines(err: str) -> list[dict[str, Any]]:
    """Parse stderr as JSON lines; every line must be one object."""
    records = [json.loads(line) for line in err.splitlines()]
    assert all(isinstance(record, dict) for record in records)
    return records


def test_json_output_shape(
    capsys: pytest.CaptureFixture[str], refused_port: int, listener: int, waits: Any
) -> None:
    """--json: one object per line for each retry, give-up, outcome and the final result."""
    code, err = run(
        capsys,
        "wait",
        "--json",
        f"tcp://127.0.0.1:{refused_port}",
        f"tcp://127.0.0.1:{listener}",
        "--attempts",
        "2",
    )
    assert code == 1
    records = json_lines(err)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        assert record["time"].endswith("Z")
        by_event.setdefault(record["event"], []).append(record)
    retry = by_event["retry"][0]
    assert retry["target"] == f"tcp://127.0.0.1:{refused_port}"
    assert retry["attempt"] == 1
    assert retry["rule"] == "os-error:ConnectionRefusedError"
    assert retry["cause"].startswith("ConnectionRefusedError")
    assert isinstance(retry["delay"], float)
    assert by_event["gave_up"][0]["reason"] == "attempts"
    assert by_event["ready"][0]["target"] == f"tcp://127.0.0.1:{listener}"
    failed = by_event["failed"][0]
    assert (failed["exit_code"], failed["permanent"], failed["attempts"]) == (1, False, 2)
    done = records[-1]
    assert done["event"] == "done"
    assert (done["action"], done["exit_code"]) == ("wait", 1)


def test_json_permanent_failure(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer]
) -> None:
    """A permanent failure shows as not_retried, then failed with permanent=true and exit 3."""
    server = http_server(403)
    code, err = run(capsys, "wait", "--json", server.url)
    assert code == 3
    events = [record["event"] for record in json_lines(err)]
    assert events == ["not_retried", "failed", "done"]
    failed = json_lines(err)[1]
    assert failed["permanent"] is True
    assert failed["rule"] == "http:403"


def test_quiet_prints_nothing_on_success(capsys: pytest.CaptureFixture[str], listener: int) -> None:
    """--quiet: silence when all is well."""
    code, err = run(capsys, "wait", "--quiet", f"tcp://127.0.0.1:{listener}")
    assert (code, err) == (0, "")


def test_quiet_still_reports_the_failure(
    capsys: pytest.CaptureFixture[str], refused_port: int, waits: Any
) -> None:
    """--quiet: no retry lines, but the reason for a non-zero exit is printed."""
    code, err = run(capsys, "wait", "-q", f"tcp://127.0.0.1:{refused_port}", "--attempts", "3")
    assert code == 1
    assert "attempt 1 failed" not in err
    assert "gave up after 3 attempts" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_status_line_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, refused_port: int, waits: Any
) -> None:
    """On a terminal: a redrawn status line instead of retry lines, then the outcome lines."""
    terminal = _Terminal()
    monkeypatch.setenv("TERM", "xterm")
    with contextlib.redirect_stderr(terminal):
        code = main(["wait", f"tcp://127.0.0.1:{refused_port}", "--attempts", "4"])
    assert code == 1
    text = terminal.getvalue()
    assert "\r\x1b[K" in text
    assert "waiting" in text
    # The part is cut to fit an 80-column line: the rule name ends in "...".
    assert f"tcp://127.0.0.1:{refused_port} attempt 4 (os-error:ConnectionRef" in text
    assert "attempt 1 failed" not in text
    assert "gave up after 4 attempts" in text
    assert text.endswith("\n")


def test_choose_mode() -> None:
    """JSON and quiet win; a terminal gets the live line unless TERM=dumb; else text."""
    tty, pipe = _Terminal(), io.StringIO()
    assert choose_mode(tty, quiet=False, as_json=True, environ={}) == "json"
    assert choose_mode(tty, quiet=True, as_json=False, environ={}) == "quiet"
    assert choose_mode(tty, quiet=False, as_json=False, environ={"TERM": "xterm"}) == "live"
    assert choose_mode(tty, quiet=False, as_json=False, environ={"TERM": "dumb"}) == "text"
    assert choose_mode(pipe, quiet=False, as_json=False, environ={}) == "text"


def test_reporter_survives_a_closed_stream() -> None:
    """Progress is best effort: a closed stderr does not turn into an error."""
    stream = io.StringIO()
    reporter = Reporter(stream, "text", ["tcp://h:1"], "wait")
    stream.close()
    reporter.ready(0, 0.1)
    reporter.finish(0, "done", 0.1)
    assert reporter.closed


@pytest.mark.parametrize("mode", [[], ["--json"], ["--quiet"], ["live"]])
def test_passwords_never_appear_in_any_mode(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    http_server: Callable[..., _ScriptedServer],
    refused_port: int,
    waits: Any,
    mode: list[str],
) -> None:
    """Retries, give-ups, permanent errors and summaries hide the password in every mode."""
    terminal = _Terminal()
    # Not monkeypatch.setattr: its undo runs after capsys' teardown and would leave the
    # closed capture stream in sys.stderr for the tests that follow.
    stderr: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if mode == ["live"]:
        stderr = contextlib.redirect_stderr(terminal)
        monkeypatch.setenv("TERM", "xterm")
        mode = []
    server = http_server(503, 401)
    base = server.url.replace("http://", f"http://u:{SECRET}@")
    argv = [
        "wait",
        *mode,
        f"http://u:{SECRET}@127.0.0.1:{refused_port}/",
        f"{base}/?password={SECRET}",
        "--attempts",
        "3",
    ]
    with stderr:
        code = main(argv)
    err = unstamped(capsys.readouterr().err + terminal.getvalue())
    assert code == 3
    assert err
    assert SECRET not in err
    assert "***" in err


# ---------------------------------------------------------------------------- exec
def test_exec_runs_the_command_after_ready(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    """Once ready, the command is exec'd (program looked up on PATH, argv passed whole)."""
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(_cli, "_execvp", lambda file, args: calls.append((file, list(args))))
    code, err = run(capsys, "wait", f"tcp://127.0.0.1:{listener}", "--", "true", "--flag", "x")
    assert code == 0
    assert calls == [("true", ["true", "--flag", "x"])]
    assert "running true" in err


def test_exec_is_not_attempted_when_not_ready(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    refused_port: int,
    waits: Any,
) -> None:
    """A failed wait never runs the command."""
    calls: list[str] = []
    monkeypatch.setattr(_cli, "_execvp", lambda file, args: calls.append(file))
    code, _ = run(capsys, "wait", f"tcp://127.0.0.1:{refused_port}", "--attempts=2", "--", "true")
    assert code == 1
    assert calls == []


def test_command_not_found_exits_127_before_waiting(
    capsys: pytest.CaptureFixture[str], refused_port: int
) -> None:
    """An unknown command is reported at once (127), not after the wait."""
    code, err = run(
        capsys, "wait", f"tcp://127.0.0.1:{refused_port}", "--", "no-such-command-rc-test"
    )
    assert code == 127
    assert err == "resilient-connect: cannot run 'no-such-command-rc-test': command not found\n"


def test_exec_failure_exits_126(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    """A command that exists but cannot be executed exits 126 with a clear line."""

    def refuse(file: str, args: list[str]) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_cli, "_execvp", refuse)
    code, err = run(capsys, "wait", f"tcp://127.0.0.1:{listener}", "--", "true")
    assert code == 126
    assert "cannot run 'true': Permission denied" in err


def test_exec_restores_default_sigpipe(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    """Python ignores SIGPIPE; the exec'd program must get the default disposition back."""
    import signal

    seen: list[object] = []
    monkeypatch.setattr(
        _cli, "_execvp", lambda file, args: seen.append(signal.getsignal(signal.SIGPIPE))
    )
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        code, _ = run(capsys, "wait", f"tcp://127.0.0.1:{listener}", "--", "true")
    finally:
        signal.signal(signal.SIGPIPE, previous)
    assert code == 0
    assert seen == [signal.SIG_DFL]


def test_signal_handlers_are_restored(capsys: pytest.CaptureFixture[str], listener: int) -> None:
    """main() installs its SIGTERM and SIGINT handlers only while waiting."""
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["wait", f"tcp://127.0.0.1:{listener}"]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigterm_after_the_last_ready_target_prevents_the_exec(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, listener: int
) -> None:
    """A stop request that arrives as the wait succeeds still wins: 143, no exec."""
    import os
    import signal

    original = Reporter.ready

    def ready_then_signal(self: Reporter, index: int, elapsed: float) -> None:
        original(self, index, elapsed)
        os.kill(os.getpid(), signal.SIGTERM)

    calls: list[str] = []
    monkeypatch.setattr(Reporter, "ready", ready_then_signal)
    monkeypatch.setattr(_cli, "_execvp", lambda file, args: calls.append(file))
    code, _ = run(capsys, "wait", f"tcp://127.0.0.1:{listener}", "--", "true")
    assert code == 143
    assert calls == []


def test_usage_error_class_is_a_one_liner() -> None:
    """parse() raises UsageError (no SystemExit) for a bad option value."""
    with pytest.raises(UsageError, match="--timeout"):
        parse(["wait", "tcp://h:1", "--timeout", "x"], {})


@pytest.fixture
def default_signals() -> Iterator[None]:
    """SIGINT and SIGTERM with their default dispositions, whatever the run inherited.

    A run started as a background job (``nohup``, some CI runners) ignores SIGINT, and the
    command line rightly keeps an ignored signal ignored; tests of the default case must
    not depend on how pytest was started.
    """
    import signal

    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


@pytest.mark.parametrize(
    ("signame", "expected"), [("SIGTERM", 143), ("SIGINT", 130)], ids=["TERM", "INT"]
)
@pytest.mark.usefixtures("default_signals")
def test_signal_during_the_wait_ends_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    refused_port: int,
    signame: str,
    expected: int,
) -> None:
    """A signal that arrives while waiting (here: at the first retry) ends main() with 143/130."""
    import os
    import signal

    signum = getattr(signal, signame)
    original = Reporter.event
    sent: list[int] = []

    def event_then_signal(self: Reporter, index: int, event: Any) -> None:
        original(self, index, event)
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Reporter, "event", event_then_signal)
    code, err = run(capsys, "wait", f"tcp://127.0.0.1:{refused_port}", "--timeout", "none")
    assert code == expected
    assert sent == [signum]
    assert err.splitlines()[-1].startswith(
        "resilient-connect: terminated" if expected == 143 else "resilient-connect: interrupted"
    )


def test_https_against_a_plain_http_port_is_transient(
    capsys: pytest.CaptureFixture[str], http_server: Callable[..., _ScriptedServer], waits: Any
) -> None:
    """A TLS handshake with a server that is not (yet) speaking TLS is retried, then exit 1."""
    server = http_server(200)
    url = server.url.replace("http://", "https://")
    code, err = run(capsys, "wait", url, "--attempts", "2")
    assert code == 1
    assert "(os-error:SSLError)" in err


def test_missing_driver_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A postgres target without psycopg installed says which extra to install (exit 2)."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "psycopg" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    code, err = run(capsys, "wait", "postgresql://app@db/app")
    assert code == 2
    assert "install resilient-connect with its 'psycopg' extra" in err


def test_tcp_and_http_targets_load_no_driver() -> None:
    """Waiting for tcp/http targets imports neither psycopg nor redis (nor asyncio)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from resilient_connect._cli import main\n"
        "main(['check', '--quiet', '--timeout', '1', 'tcp://127.0.0.1:1', 'http://127.0.0.1:1/'])\n"
        "drivers = ('psycopg', 'redis', 'sqlalchemy', 'asyncio')\n"
        "print(sorted(m for m in drivers if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "[]", result.stderr


class _FakeConnection:
    """Stands in for a psycopg connection whose first query fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    def execute(self, query: str) -> Any:
        raise self.error

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("error_name", "expected"),
    [("AdminShutdown", 1), ("InsufficientPrivilege", 3)],
)
def test_postgres_query_failure_after_connect(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error_name: str,
    expected: int,
) -> None:
    """Connected but ``SELECT 1`` failed: transient is not ready (1), permanent is 3; the
    connection is closed either way and the password stays hidden."""
    import psycopg

    import resilient_connect.psycopg as adapter

    error = getattr(psycopg.errors, error_name)("query failed")
    fake = _FakeConnection(error)
    monkeypatch.setattr(adapter, "connect_with_retry", lambda *args, **kwargs: fake)
    code, err = run(capsys, "wait", f"postgresql://app:{SECRET}@db/app")
    assert code == expected
    assert fake.closed
    assert f"{error_name}: query failed" in err
    assert SECRET not in err


@pytest.mark.usefixtures("default_signals")
def test_an_ignored_sigint_stays_ignored(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, refused_port: int
) -> None:
    """Started with SIGINT ignored (a background job), the wait keeps ignoring it, as a shell
    would expect; SIGTERM still ends it (143)."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    original = Reporter.event
    sent: list[int] = []

    def event_then_signals(self: Reporter, index: int, event: Any) -> None:
        original(self, index, event)
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # ignored
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Reporter, "event", event_then_signals)
    code, _ = run(capsys, "wait", f"tcp://127.0.0.1:{refused_port}", "--timeout", "none")
    assert code == 143
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_text_mode_writes_the_first_failure_then_a_summary_per_interval() -> None:
    """Outside a test suite's instant waits, a target's retries are one line, then a
    "still waiting" summary at most every interval, each line timestamped."""
    from resilient_connect import RetryScheduled

    stream = io.StringIO()
    reporter = Reporter(stream, "text", ["tcp://db:5432"], "wait")
    reporter.summary_interval = 3600.0

    def fail(attempt: int) -> None:
        reporter.event(
            0,
            RetryScheduled(
                target="tcp://db:5432",
                attempt=attempt,
                elapsed=0.0,
                exception=None,
                cause="ConnectionRefusedError: refused",
                delay=0.4,
                rule="os-error:ConnectionRefusedError",
            ),
        )

    for attempt in range(1, 6):
        fail(attempt)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "attempt 1 failed (os-error:ConnectionRefusedError)" in lines[0]
    reporter.targets[0].last_line = -1e9  # the interval has passed
    fail(6)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "still waiting: 6 failed attempts over" in lines[1]
    assert all(STAMP.match(line) for line in lines)
