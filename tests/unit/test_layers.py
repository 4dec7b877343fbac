"""The layers of the package, checked on the source: core, shared knowledge, adapters, CLI.

* The core (modules directly in ``resilient_connect/``) imports no adapter, no CLI
  module and no driver, anywhere in the module (functions included): adapters are
  found through the classification registry, by name.
* ``_postgres`` (PostgreSQL knowledge shared by the adapters) imports only the core.
* An adapter (``psycopg``, ``sqlalchemy``, ``redis``) imports the core, ``_postgres``
  and its own modules; never another adapter's private modules.
* The command line uses adapters through their public packages only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "resilient_connect"
ADAPTERS = ("psycopg", "sqlalchemy", "redis")
SHARED = ("_postgres",)
EXPORTERS = ("opentelemetry", "prometheus", "structlog")
DRIVERS = frozenset(
    {
        "psycopg",
        "psycopg_pool",
        "psycopg2",
        "asyncpg",
        "redis",
        "sqlalchemy",
        "greenlet",
        "opentelemetry",
        "prometheus_client",
        "structlog",
    }
)


def _layer(module: tuple[str, ...]) -> str:
    """``core``, ``shared``, ``adapter``, ``exporter`` or ``cli`` for a module path."""
    first = module[0] if module else ""
    if first in ADAPTERS:
        return "adapter"
    if first in SHARED:
        return "shared"
    if first in EXPORTERS:
        return "exporter"
    if first in {"_cli", "__main__"}:
        return "cli"
    return "core"


def _modules() -> list[tuple[tuple[str, ...], Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((parts, path))
    return found


def _imports(module: tuple[str, ...], path: Path) -> list[tuple[str, tuple[str, ...] | None]]:
    """Every import in the file: ``("driver", top-level name)`` or ``("ours", module path)``."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module[:-1]
    found: list[tuple[str, tuple[str, ...] | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "resilient_connect":
                    found.append(("ours", tuple(alias.name.split(".")[1:])))
                else:
                    found.append(("driver", (top,)))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                top = name.split(".")[0]
                if top == "resilient_connect":
                    found.append(("ours", tuple(name.split(".")[1:])))
                else:
                    found.append(("driver", (top,)))
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + tuple((node.module or "").split(".")) if node.module else base
            if node.module is None:  # from . import x
                found.extend(("ours", (*base, alias.name)) for alias in node.names)
            else:
                found.append(("ours", target))
    return found


def _violations(modules: list[tuple[tuple[str, ...], Path]]) -> list[str]:
    problems = []
    for module, path in modules:
        layer = _layer(module)
        name = ".".join(("resilient_connect", *module))
        for kind, target in _imports(module, path):
            assert target is not None
            if kind == "driver":
                if layer in {"core", "shared"} and target[0] in DRIVERS:
                    problems.append(f"{name} ({layer}) imports the driver {target[0]}")
                continue
            target_layer = _layer(target)
            private = any(part.startswith("_") for part in target[1:])
            if layer in {"core", "shared"} and target_layer not in {"core", "shared"}:
                problems.append(f"{name} ({layer}) imports {'.'.join(target)}")
            if layer == "shared" and target_layer == "shared" and target[0] != module[0]:
                problems.append(f"{name} imports another shared package {'.'.join(target)}")
            own = module[0] if module else ""
            foreign = bool(target) and target[0] != own
            if (
                layer in {"adapter", "exporter"}
                and target_layer in {"adapter", "exporter", "cli"}
                and foreign
                and (private or target_layer == "cli")
            ):
                problems.append(f"{name} imports {'.'.join(target)}, not its own")
            if layer == "cli" and target_layer in {"adapter", "exporter"} and private:
                problems.append(f"{name} imports the private {'.'.join(target)}")
    return problems


def test_no_module_crosses_its_layer() -> None:
    """Core and shared modules import no adapter or driver; adapters none of each other."""
    assert _violations(_modules()) == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from .psycopg import classify", ("_classify",), "imports psycopg"),
        ("import psycopg", ("_engine",), "imports the driver psycopg"),
        ("from ..psycopg._rules import x", ("sqlalchemy", "_classify"), "not its own"),
        ("from ..redis._connect import x", ("_cli", "_probes"), "private"),
        ("from ..redis import connect", ("_postgres", "_rules"), "imports redis"),
    ],
)
def test_the_layer_check_catches_a_crossing(
    tmp_path: Path, source: str, module: tuple[str, ...], expected: str
) -> None:
    """Each rule fires on a file that breaks it (so the check above can fail)."""
    path = tmp_path / "probe.py"
    path.write_text(source + "\n")
    problems = _violations([(module, path)])
    assert len(problems) == 1
    assert expected in problems[0]
