"""Every row of docs/hostile-input.md: malformed input gets one clear error at once.

The page is the table of record: each row is parsed here and becomes a test, so the
documentation cannot drift from the code. No row may retry, print a traceback or show a
password (``s3cr3t`` and its pieces ``s3``, ``cr3t``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "hostile-input.md"
SECRET_PIECES = ("s3cr3t", "cr3t", "s3cr?t", ":s3@")


def _rows(marker: str) -> list[tuple[str, str, str]]:
    """The table rows after ``<!-- marker: ... -->``: (code cell, second cell, third cell)."""
    text = DOC.read_text()
    table = text[text.index(f"<!-- {marker}:") :].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, line
        rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[2]))
    return rows


CLI_ROWS = _rows("hostile-cli")
LIBRARY_ROWS = _rows("hostile-library")


def test_the_tables_are_there() -> None:
    """The page has both tables, so the tests below cannot pass by finding no rows."""
    assert len(CLI_ROWS) >= 30
    assert len(LIBRARY_ROWS) >= 10


@pytest.mark.parametrize(("arguments", "code", "fragment"), CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_command_line_row(
    arguments: str,
    code: str,
    fragment: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command line exits with the row's code and message, before any attempt."""
    import os

    from resilient_connect._cli import main
    from resilient_connect.testing import instant_waits

    for name in list(os.environ):
        if name.startswith("RESILIENT_CONNECT_"):
            monkeypatch.delenv(name)
    with instant_waits() as waits:
        exit_code = main(shlex.split(arguments))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert exit_code == int(code), output
    assert fragment in output
    assert waits.sleeps == []  # refused before the first attempt: no retry loop
    assert "attempt 1 failed" not in output
    assert "Traceback" not in output
    assert len(captured.err.strip().splitlines()) == 1  # one clear line
    for piece in SECRET_PIECES:
        assert piece not in output


@pytest.mark.parametrize(
    ("expression", "error", "fragment"), LIBRARY_ROWS, ids=[r[0] for r in LIBRARY_ROWS]
)
def test_library_row(expression: str, error: str, fragment: str) -> None:
    """The library raises the row's error with its message before any attempt."""
    import traceback

    import psycopg

    import resilient_connect as rc
    from resilient_connect import psycopg as rc_psycopg
    from resilient_connect import sqlalchemy as rc_sqlalchemy
    from resilient_connect.testing import instant_waits

    namespace = {
        "rc": rc,
        "rc_psycopg": rc_psycopg,
        "rc_sqlalchemy": rc_sqlalchemy,
        "psycopg": psycopg,
    }
    with instant_waits() as waits, pytest.raises(Exception) as caught:
        eval(expression, namespace)  # the docs' own example, not outside input
    assert type(caught.value).__name__ == error
    assert fragment in str(caught.value)
    assert waits.sleeps == []
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    for piece in SECRET_PIECES:
        assert piece not in shown
    assert not re.search(r"\bs3\b", str(caught.value))
