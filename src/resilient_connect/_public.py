"""Public names say where to import them from.

A class or function defined in a private module (``resilient_connect._errors``)
and exported by a public package is given that package as its ``__module__``,
so that tracebacks, reprs and pickles name what users import:
``resilient_connect.RetryExhausted``, not ``resilient_connect._errors.RetryExhausted``.
Pickles stay loadable: the public package has every name it exports.

The price is that ``inspect.getsource()`` of such a class looks for it in the
package's ``__init__.py`` and does not find it (functions are unaffected: their
code object knows its file).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


def publish(module: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` to ``module`` on the classes and functions among ``names``.

    Only objects defined in a private module of this package are changed (so a
    name is published once, by the first public package that exports it), and
    only under their own name: an object exported as an alias
    (``from ._checks import problems as conninfo_problems``) keeps its module,
    where pickle finds it by its own name. Constants (policies, tables,
    strings) have no ``__module__`` of their own.
    """
    for name in names:
        obj = namespace.get(name)
        if not (isinstance(obj, type) or hasattr(obj, "__code__")):
            continue
        if getattr(obj, "__qualname__", None) != name:
            continue
        defined_in = getattr(obj, "__module__", "")
        parts = defined_in.split(".")
        if parts[0] == "resilient_connect" and any(part.startswith("_") for part in parts):
            obj.__module__ = module
