"""The demo of the README runs as a new user runs it, and says what it does.

(The FastAPI example is run under uvicorn by ``test_uvicorn.py``.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_demo_names_what_it_connects_to_and_hides_the_password(tmp_path: Path) -> None:
    """``python examples/demo.py`` exits 0; each step announces the very target its log lines
    name (step 2 is a PostgreSQL URL, shown redacted), and the password never appears."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    announced = re.findall(r"^\d\) connecting to (\S+?),", result.stdout, re.MULTILINE)
    assert len(announced) == 2
    assert announced[0].startswith("tcp://127.0.0.1:")
    assert announced[1].startswith("postgresql://app:***@127.0.0.1:")
    logged = set(re.findall(r"(?:WARNING|ERROR|INFO) +(\S+): ", result.stderr))
    assert logged == set(announced)
    assert "s3cret" not in result.stdout + result.stderr
