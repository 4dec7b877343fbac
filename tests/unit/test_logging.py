"""The default logging hook: levels, stable messages, extra fields, unconfigured fallback."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap

import pytest

import resilient_connect as rc
from resilient_connect.testing import instant_waits

# Every line on the stderr fallback starts with a UTC timestamp.
STAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


def failing_then_ok(failures: int) -> object:
    state = {"calls": 0}

    def connect() -> str:
        state["calls"] += 1
        if state["calls"] <= failures:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    return connect


def test_levels_messages_and_extra(caplog: pytest.LogCaptureFixture) -> None:
    """WARNING per retry, INFO on recovery, each with namespaced extra fields."""
    caplog.set_level(logging.DEBUG, logger="resilient_connect")
    with instant_waits():
        rc.connect_with_retry(failing_then_ok(2), target="postgresql://u:pw@db/app")  # type: ignore[arg-type]
    records = [r for r in caplog.records if r.name == "resilient_connect"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING, logging.INFO]
    first = records[0]
    assert first.msg == "%s: attempt %d failed: %s; retrying in %.2fs (%s, %.2fs elapsed)"
    assert first.getMessage().startswith(
        "postgresql://u:***@db/app: attempt 1 failed: ConnectionRefusedError: "
        "[Errno 111] Connection refused; retrying in "
    )
    assert first.resilient_connect_event == "RetryScheduled"  # type: ignore[attr-defined]
    assert first.resilient_connect_attempt == 1  # type: ignore[attr-defined]
    assert first.resilient_connect_target == "postgresql://u:***@db/app"  # type: ignore[attr-defined]
    assert first.resilient_connect_delay >= 0  # type: ignore[attr-defined]
    assert records[-1].getMessage().startswith("postgresql://u:***@db/app: succeeded on attempt 3")
    assert all("pw@" not in r.getMessage() for r in records)


def test_give_up_and_permanent_are_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Giving up and permanent errors log at ERROR with the reason."""
    caplog.set_level(logging.DEBUG, logger="resilient_connect")
    with instant_waits(), pytest.raises(rc.RetryExhausted):
        rc.connect_with_retry(failing_then_ok(9), policy=rc.Backoff(attempts=2), target="db")
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == (
        "db: gave up after 2 attempts in "
        f"{caplog.records[-1].resilient_connect_elapsed:.2f}s (no attempts left); "  # type: ignore[attr-defined]
        "last error: ConnectionRefusedError: [Errno 111] Connection refused"
    )
    caplog.clear()

    def bad() -> None:
        raise PermissionError(13, "denied")

    with pytest.raises(PermissionError):
        rc.connect_with_retry(bad, on=ConnectionError, target="db")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert "not retrying (not on=(ConnectionError))" in record.getMessage()


def test_other_events_render_generically() -> None:
    """A base Event (not emitted by the engine) still renders."""
    from resilient_connect._logging import _render

    level, message, args = _render(
        rc.Event(target="t", attempt=1, elapsed=0.0, exception=None, cause="c")
    )
    assert (level, message % args) == (logging.INFO, "t: attempt 1: c")


def run_unconfigured(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PROGRAM = """
    import resilient_connect as rc
    from resilient_connect.testing import instant_waits
    calls = []
    def connect():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"
    {setup}
    with instant_waits():
        rc.connect_with_retry(connect, target="redis://:secret@cache:6379/0")
"""


def test_visible_on_stderr_without_logging_configuration() -> None:
    """With no handlers anywhere, retries and recovery are still written to stderr."""
    result = run_unconfigured(PROGRAM.format(setup=""))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert all(re.match(STAMP, line) for line in lines), lines
    lines = [re.sub(STAMP, "", line) for line in lines]
    assert lines[0].startswith(
        "resilient_connect WARNING: redis://:***@cache:6379/0: attempt 1 failed:"
    )
    assert lines[2].startswith("resilient_connect INFO: redis://:***@cache:6379/0: succeeded")
    assert "secret" not in result.stderr


def test_unconfigured_fallback_respects_an_explicit_level() -> None:
    """Setting the logger's level silences the fallback below it."""
    setup = "import logging; logging.getLogger('resilient_connect').setLevel(logging.ERROR)"
    result = run_unconfigured(PROGRAM.format(setup=setup))
    assert result.returncode == 0
    assert result.stderr == ""


def test_configured_logging_is_used_not_duplicated() -> None:
    """When the application configured logging, records go through it exactly once."""
    setup = (
        "import logging; "
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')"
    )
    result = run_unconfigured(PROGRAM.format(setup=setup))
    lines = result.stderr.splitlines()
    assert [line.split()[0] for line in lines] == ["WARNING", "WARNING", "INFO"]


def test_fallback_in_process_without_handlers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no handler reachable, the default hook writes INFO and above to stderr itself."""
    logger = logging.getLogger("resilient_connect")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [])
    rc.log_event(
        rc.Recovered(target="redis://:***@h", attempt=2, elapsed=1.5, exception=None, cause="")
    )
    monkeypatch.setattr(logger, "disabled", True)
    rc.log_event(rc.Recovered(target="hidden", attempt=2, elapsed=1.5, exception=None, cause=""))
    err = capsys.readouterr().err
    assert re.match(STAMP, err)
    assert re.sub(STAMP, "", err) == (
        "resilient_connect INFO: redis://:***@h: succeeded on attempt 2 after 1.50s\n"
    )
