"""The package surface: curated __all__, lean import, typed marker."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import resilient_connect
import resilient_connect.testing

# Every public module: its __all__ is sorted (constants, classes, then functions, as ruff's
# RUF022 sorts), complete (every public name it has is exported) and resolvable.
PUBLIC_PACKAGES = (
    "resilient_connect",
    "resilient_connect.psycopg",
    "resilient_connect.redis",
    "resilient_connect.sqlalchemy",
    "resilient_connect.testing",
)
EXPORTER_MODULES = (
    "resilient_connect.opentelemetry",
    "resilient_connect.prometheus",
    "resilient_connect.structlog",
)
# Submodules show up as attributes once imported; they are not API names.
SUBMODULES = {"psycopg", "redis", "sqlalchemy", "opentelemetry", "prometheus", "structlog"}
SUBMODULES |= {"testing"}


def _isort_key(name: str) -> tuple[int, str]:
    """RUF022's order: SCREAMING_CASE, then CamelCase, then the rest."""
    group = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return (group, name)


@pytest.mark.parametrize("name", PUBLIC_PACKAGES + EXPORTER_MODULES)
def test_all_is_sorted_and_resolvable(name: str) -> None:
    """__all__ is sorted and every name in it can be imported from the module."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=_isort_key)
    assert len(set(exported)) == len(exported)
    assert all(hasattr(module, each) for each in exported)


@pytest.mark.parametrize("name", PUBLIC_PACKAGES)
def test_all_is_complete(name: str) -> None:
    """A public package exports every public name it has, the lazily loaded ones included."""
    module = importlib.import_module(name)
    for each in module.__all__:
        getattr(module, each)  # loads the lazy ones into the namespace
    public = {
        each
        for each in vars(module)
        if not each.startswith("_") and each not in {"TYPE_CHECKING", "annotations"} | SUBMODULES
    }
    assert public | {"__version__"} >= set(module.__all__)
    assert public <= set(module.__all__)
    assert sorted(set(dir(module)) & public) == sorted(public)


@pytest.mark.parametrize("name", PUBLIC_PACKAGES + EXPORTER_MODULES)
def test_exported_names_belong_to_the_public_module(name: str) -> None:
    """Exported classes and functions name a public module in __module__ (tracebacks say
    ``resilient_connect.RetryExhausted``), and pickles of them resolve."""
    module = importlib.import_module(name)
    for each in module.__all__:
        obj = getattr(module, each)
        if (isinstance(obj, type) or hasattr(obj, "__code__")) and obj.__qualname__ == each:
            owner = obj.__module__
            assert not any(part.startswith("_") for part in owner.split(".")), (each, owner)
            assert getattr(importlib.import_module(owner), obj.__qualname__) is obj


def test_traceback_names_the_public_class() -> None:
    """A RetryExhausted traceback line reads ``resilient_connect.RetryExhausted: ...``."""
    import traceback

    error = resilient_connect.RetryExhausted(
        target="db", attempts=1, elapsed=0.0, last_exception=OSError("refused")
    )
    line = traceback.format_exception_only(type(error), error)[-1]
    assert line.startswith("resilient_connect.RetryExhausted: db: gave up after 1 attempt")


def test_verdict_is_public() -> None:
    """classify() returns a Verdict, importable from the package (not only a private module)."""
    from resilient_connect import Verdict
    from resilient_connect.redis import classify

    assert isinstance(classify(ConnectionError("refused")), Verdict)


def test_event_records_load_with_the_first_event() -> None:
    """The six event dataclasses load on first use, not with ``import resilient_connect``;
    ``from resilient_connect import GaveUp`` still works and names the package."""
    code = (
        "import sys, json, resilient_connect\n"
        "before = '_events' in str(sorted(sys.modules))\n"
        "from resilient_connect import GaveUp\n"
        "print(json.dumps([before, GaveUp.__module__, 'resilient_connect._events' in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == [False, "resilient_connect", True]


def test_one_place_builds_the_give_up_line() -> None:
    """Only ``_errors.gave_up_line`` spells "gave up after": every message, log line, CLI line
    and span status that says it calls that function."""
    package = Path(resilient_connect.__file__).parent
    spelled = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        spelled.extend(
            f"{path.relative_to(package)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "gave up after" in node.value
            and id(node) not in docstrings
        )
    assert [place.partition(":")[0] for place in spelled] == ["_errors.py"]


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


def test_api_reference_renders_every_exported_name() -> None:
    """The generated API pages have a ``::: module.name`` entry for every name in every
    public module's __all__, and nothing that is not exported."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    rendered = {
        line.removeprefix("::: ").strip()
        for page in sorted(docs.glob("api*.md"))
        for line in page.read_text().splitlines()
        if line.startswith("::: ")
    }
    modules = PUBLIC_PACKAGES + EXPORTER_MODULES
    exported = {
        f"{name}.{each}" for name in modules for each in importlib.import_module(name).__all__
    }
    assert rendered - set(modules) == exported


def test_publish_leaves_aliases_and_foreign_objects_alone() -> None:
    """publish() renames what a private module defines under its own name, nothing else: an
    alias keeps its module (pickle finds it there by its own name), as do stdlib objects."""
    import types

    from resilient_connect._public import publish

    def problems() -> None:
        return None

    problems.__module__ = "resilient_connect.psycopg._checks"
    own = types.new_class("Rule")
    own.__module__ = "resilient_connect._postgres._rules"
    namespace = {"conninfo_problems": problems, "Rule": own, "Path": Path, "RULES": ()}
    publish("resilient_connect.psycopg", namespace, namespace)
    assert problems.__module__ == "resilient_connect.psycopg._checks"
    assert own.__module__ == "resilient_connect.psycopg"
    assert Path.__module__ == "pathlib"
