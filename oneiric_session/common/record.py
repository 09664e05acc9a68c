"""`Record`: an immutable record for the types a shell defines, a NamedTuple at a fraction of its cost.

A shell pays for every class it defines before its prompt. `typing.NamedTuple` builds each
class with `eval` and checks each annotation (0.1-0.3 ms a class on the 2-core benchmark
machine, ten of them on a tracked shell's path); a frozen dataclass costs importing
`dataclasses` (~6 ms). A `Record` subclass is declared like a NamedTuple (annotated fields,
defaults after the fields without one, methods) and is one where it counts: a tuple (equal,
hashable, ordered, iterable, JSON as a list), with `_fields`, `_field_defaults`, `_asdict()`,
`_replace()` and the NamedTuple's repr. Type checkers read a subclass as a frozen dataclass
(PEP 681). Every annotation in its body is a field. Its module must use `from __future__ import
annotations`: only the annotations' names are read, never their values (evaluating them is what
makes a NamedTuple slow). Standard library only.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, ClassVar, Self, dataclass_transform

__all__ = ["Record"]


@dataclass_transform(frozen_default=True)
class Record(tuple[Any, ...]):
    """Subclass with annotated fields; instances are built by keyword or position, like a NamedTuple's."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _field_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only this class's own annotations: a subclass of a Record adds fields after its parent's.
        # Read from the class's namespace (`inspect.get_annotations` would cost a shell `inspect`).
        own = cls.__dict__.get("__annotations__")  # noqa: RUF063
        if own is None and "__annotate_func__" in cls.__dict__:  # Python 3.14's deferred annotations
            raise TypeError(f"{cls.__name__}: a Record's module needs `from __future__ import annotations`")
        names = list(own or {})
        fields = cls._fields + tuple(names)
        defaults = dict(cls._field_defaults)
        for index, name in enumerate(fields):
            if name in names and name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
            elif name in names and defaults:
                raise TypeError(f"{cls.__name__}: field {name} without a default follows one with a default")
            setattr(cls, name, property(itemgetter(index), doc=f"Field {index}: {name}"))
        cls._fields = fields
        cls._field_defaults = defaults

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__} takes {len(fields)} fields, got {len(args)}")
        values = list(args)
        for name in fields[len(args) :]:
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif name in cls._field_defaults:
                values.append(cls._field_defaults[name])
            else:
                raise TypeError(f"{cls.__name__}: missing field {name}")
        if kwargs:
            raise TypeError(f"{cls.__name__}: unexpected or repeated fields {sorted(kwargs)}")
        return tuple.__new__(cls, values)

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it by position
        return tuple(self)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: use _replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({inner})"

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def _replace(self, **changes: Any) -> Self:
        return type(self)(**{**self._asdict(), **changes})
