"""Frozen, slotted, keyword-only value classes.

This is the small part of :mod:`dataclasses` the package needs. We do not import
:mod:`dataclasses` itself because it pulls in :mod:`inspect` and :mod:`re`, which
cost 15-20 ms at start-up on a small container; ``import resilient_connect`` must
stay cheap because it runs in every process that starts next to a database.

Type checkers see the classes as frozen keyword-only dataclasses through
``dataclass_transform``. At run time a value class gets ``__init__`` (keyword
arguments only, then ``__post_init__`` for validation), ``__repr__``, ``__eq__``,
``__hash__``, pickling, and ``__replace__`` (the protocol behind
:func:`copy.replace` on Python 3.13+), all derived from one field list.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from typing_extensions import dataclass_transform

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[_T], _T]:
        return lambda decorated: decorated


class FrozenInstanceError(AttributeError):
    """Raised when code tries to change a field of a value object."""


_SKIPPED = frozenset({"__dict__", "__weakref__", "__annotations__"})


def _restore(cls: type[_T], values: tuple[Any, ...]) -> _T:
    """Rebuild a value object from its field values (used by pickle)."""
    return cls(**dict(zip(cls._fields, values, strict=True)))  # type: ignore[attr-defined]


@dataclass_transform(frozen_default=True, kw_only_default=True)
def value(cls: type[_T]) -> type[_T]:
    """Turn an annotated class into a frozen, slotted, keyword-only value class.

    Fields are the class's own annotations in order, after those of a value base
    class. A class attribute with the same name is the field's default. Fields
    named in a ``_repr_hidden`` class attribute show only their type in the repr.
    """
    own = tuple(cls.__dict__.get("__annotations__", {}))
    inherited: tuple[str, ...] = getattr(cls, "_fields", ())
    fields = inherited + tuple(name for name in own if name not in inherited)
    defaults: dict[str, Any] = dict(getattr(cls, "_defaults", {}))
    defaults.update({name: cls.__dict__[name] for name in own if name in cls.__dict__})
    namespace = {k: v for k, v in cls.__dict__.items() if k not in own and k not in _SKIPPED}
    namespace["__slots__"] = tuple(name for name in own if name not in inherited)
    namespace["_fields"] = fields
    namespace["_defaults"] = defaults
    namespace["__match_args__"] = ()
    name = cls.__name__

    def __init__(self: Any, **kwargs: Any) -> None:
        for field in fields:
            if field in kwargs:
                object.__setattr__(self, field, kwargs.pop(field))
            elif field in defaults:
                object.__setattr__(self, field, defaults[field])
            else:
                msg = f"{name}() missing keyword argument {field!r}"
                raise TypeError(msg)
        if kwargs:
            msg = f"{name}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}"
            raise TypeError(msg)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, field) for field in fields)

    hidden = frozenset(getattr(cls, "_repr_hidden", ()))

    def __repr__(self: Any) -> str:
        inner = ", ".join(
            f"{field}=<{type(getattr(self, field)).__name__}>"
            if field in hidden
            else f"{field}={getattr(self, field)!r}"
            for field in fields
        )
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(_values(self) == _values(other))

    def __hash__(self: Any) -> int:
        return hash(_values(self))

    def __setattr__(self: Any, field: str, _value: object) -> None:
        msg = f"cannot assign to field {field!r}: {name} is frozen; use .replace()"
        raise FrozenInstanceError(msg)

    def __delattr__(self: Any, field: str) -> None:
        msg = f"cannot delete field {field!r}: {name} is frozen"
        raise FrozenInstanceError(msg)

    def __reduce__(self: Any) -> tuple[Any, ...]:
        return (_restore, (type(self), _values(self)))

    def __replace__(self: Any, **changes: Any) -> Any:
        current = {field: getattr(self, field) for field in fields}
        current.update(changes)
        return type(self)(**current)

    namespace.update(
        __init__=__init__,
        __repr__=__repr__,
        __eq__=__eq__,
        __hash__=__hash__,
        __setattr__=__setattr__,
        __delattr__=__delattr__,
        __reduce__=__reduce__,
        __replace__=__replace__,
        replace=__replace__,
    )
    for method in ("__init__", "__repr__", "__eq__", "__hash__", "__replace__"):
        namespace[method].__qualname__ = f"{cls.__qualname__}.{method}"
    made: type[_T] = type(cls)(name, cls.__bases__, namespace)  # type: ignore[misc]
    return made
