"""The package surface: curated __all__, lean import, typed marker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import resilient_connect
import resilient_connect.testing


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and lists every public name the package defines."""
    exported = resilient_connect.__all__
    assert exported == sorted(exported)
    public = {
        name
        for name in vars(resilient_connect)
        if not name.startswith("_") and name not in {"testing", "TYPE_CHECKING"}
    }
    # Submodules imported by adapters or tests show up as attributes; they are not API names.
    public -= {"psycopg", "redis", "sqlalchemy", "opentelemetry", "prometheus", "structlog"}
    assert public | {"__version__"} == set(exported)
    assert all(hasattr(resilient_connect, name) for name in exported)


def test_testing_all_is_sorted_and_complete() -> None:
    """resilient_connect.testing exports exactly its public names."""
    exported = resilient_connect.testing.__all__
    assert exported == sorted(exported)
    assert all(hasattr(resilient_connect.testing, name) for name in exported)


def test_import_loads_no_driver_and_no_asyncio() -> None:
    """`import resilient_connect` loads no driver, exporter, asyncio, logging or threading."""
    code = "import sys, json, resilient_connect; print(json.dumps(sorted(m for m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    modules = set(json.loads(result.stdout))
    # json itself is imported by the probe after resilient_connect; it is not counted.
    forbidden = {"psycopg", "redis", "sqlalchemy", "asyncio", "logging", "typing_extensions"}
    forbidden |= EXPORTER_LIBRARIES | {"threading"}
    loaded = {m for m in modules if m.split(".")[0] in forbidden}
    assert loaded == set()


EXPORTER_LIBRARIES = {"opentelemetry", "prometheus_client", "structlog"}


@pytest.mark.parametrize("module", ["opentelemetry", "prometheus", "structlog"])
def test_exporter_modules_import_their_library_only_in_hook(module: str) -> None:
    """Importing an exporter module loads no exporter library; calling hook() loads its own."""
    code = (
        "import sys, json\n"
        f"import resilient_connect.{module} as exporter\n"
        "before = sorted(m for m in sys.modules)\n"
        "exporter.hook()\n"
        "print(json.dumps([before, sorted(m for m in sys.modules)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after = (set(names) for names in json.loads(result.stdout))
    assert {m.split(".")[0] for m in before} & EXPORTER_LIBRARIES == set()
    library = {"opentelemetry": "opentelemetry", "prometheus": "prometheus_client"}.get(
        module, module
    )
    assert {m.split(".")[0] for m in after} & EXPORTER_LIBRARIES == {library}


def test_ships_py_typed_and_version() -> None:
    """The package carries the PEP 561 marker and a version string."""
    assert (Path(resilient_connect.__file__).parent / "py.typed").is_file()
    assert resilient_connect.__version__.count(".") >= 2


def test_python_dash_m_runs_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m resilient_connect` runs the CLI entry point and exits with its code."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["resilient-connect", "--help"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("resilient_connect", run_name="__main__", alter_sys=False)
    assert caught.value.code == 0


def test_classifying_a_redis_error_loads_only_the_adapters_rules() -> None:
    """The default classifier judges a redis error with the rule table alone: nothing of the
    bridge, the connect functions or Sentinel, and no redis-py module the driver had not
    loaded already."""
    code = (
        "import sys, json, redis.exceptions\n"
        "from resilient_connect._classify import default_classifier\n"
        "before = set(sys.modules)\n"
        "rule = default_classifier(redis.exceptions.BusyLoadingError('LOADING')).rule\n"
        "print(json.dumps([rule, sorted(set(sys.modules) - before)]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    rule, added = json.loads(result.stdout)
    assert rule == "redis:loading"
    assert "resilient_connect.redis._rules" in added
    assert [m for m in added if m.startswith("redis")] == []
    assert not {
        "resilient_connect.redis._bridge",
        "resilient_connect.redis._connect",
        "resilient_connect.redis._sentinel",
    } & set(added)
