"""The install of docs/install.md: a wheel built from the checkout works in a fresh virtualenv.

``python -m build`` makes the sdist and then the wheel from it (so a file missing from the
sdist fails here too); the wheel is installed into a new virtual environment that has
nothing else, and imported from outside the checkout. The build runs without isolation,
with the hatchling of the test environment, so that it needs no network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import resilient_connect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``python -m build`` makes from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("resilient_connect-*.whl")
    assert len(list(out.glob("resilient_connect-*.tar.gz"))) == 1
    return built


def test_wheel_installs_in_a_fresh_venv_and_imports(wheel: Path, tmp_path: Path) -> None:
    """``pip install the.whl`` into an empty virtualenv; ``import resilient_connect`` and the
    console script work there, from outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)),
        ],
        check=True,
        timeout=300,
    )
    code = (
        "import json, pathlib, resilient_connect as rc\n"
        "here = pathlib.Path(rc.__file__).parent\n"
        "print(json.dumps([rc.__version__, str(here), (here / 'py.typed').is_file(),"
        " repr(rc.Backoff(timeout=5))]))"
    )
    result = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    version, location, typed, policy = json.loads(result.stdout)
    assert version == resilient_connect.__version__
    assert Path(location).is_relative_to(venv)
    assert typed is True
    assert policy.startswith("Backoff(initial=0.1,")
    cli = subprocess.run(
        [str(venv / "bin" / "resilient-connect"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.strip() == f"resilient-connect {resilient_connect.__version__}"


def test_wheel_declares_the_dependency_and_the_extras(wheel: Path) -> None:
    """The wheel's metadata names typing-extensions and the extras the install page lists."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
        files = archive.namelist()
    assert "Requires-Dist: typing-extensions" in metadata
    assert "Project-URL" not in metadata  # no repository or site to point to (yet)
    extras = {
        line.split(": ", 1)[1]
        for line in metadata.splitlines()
        if line.startswith("Provides-Extra:")
    }
    assert extras == {"psycopg", "redis", "sqlalchemy", "otel", "prometheus", "structlog", "all"}
    assert "resilient_connect/_postgres/_messages.py" in files
    assert not [f for f in files if f.startswith(("tests/", "docs/"))]
