"""`Record` behaves as the NamedTuples it replaces on the shell's path: built the same ways, a tuple
where it counts (equal, hashable, iterable, JSON as a list), immutable, with the same helpers."""

from __future__ import annotations

import copy
import json
import pickle
import re
import sys
import textwrap
from typing import NamedTuple

import pytest

from oneiric_session.common.record import Record
from oneiric_session.tracking.destination import Destination, Tuning


class Plain(NamedTuple):
    name: str
    size: int = 3
    tags: tuple[str, ...] = ()


class Light(Record):
    name: str
    size: int = 3
    tags: tuple[str, ...] = ()

    def doubled(self) -> int:
        return self.size * 2


class Wider(Light):
    extra: bool = False


def test_built_by_position_and_keyword_with_defaults_like_a_namedtuple() -> None:
    for args, kwargs in [
        (("a",), {}),
        (("a", 5), {}),
        ((), {"name": "a", "tags": ("x",)}),
        (("a",), {"size": 1}),
    ]:
        light, plain = Light(*args, **kwargs), Plain(*args, **kwargs)
        assert tuple(light) == tuple(plain)
        assert light == plain  # a tuple of the same values, as a NamedTuple is
        assert hash(light) == hash(plain)
        assert repr(light) == repr(plain).replace("Plain", "Light")
        assert light._asdict() == plain._asdict()
    assert Light._fields == Plain._fields
    assert Light._field_defaults == Plain._field_defaults
    assert Light("a").doubled() == 6


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing field name"),
        (("a", 1, (), "x"), {}, "takes 3 fields, got 4"),
        (("a",), {"colour": 1}, "unexpected or repeated fields ['colour']"),
        (("a",), {"name": "b"}, "unexpected or repeated fields ['name']"),
    ],
)
def test_wrong_fields_are_refused_by_name(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        Light(*args, **kwargs)


def test_immutable_and_replaced_into_a_new_record() -> None:
    light = Light("a")
    with pytest.raises(AttributeError, match="immutable"):
        light.size = 4  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        light.anything = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del light.name  # type: ignore[misc]
    changed = light._replace(size=4)
    assert (light.size, changed.size, type(changed)) == (3, 4, Light)
    with pytest.raises(TypeError, match="colour"):
        light._replace(colour=1)


def test_copied_pickled_and_written_as_json_like_a_tuple() -> None:
    destination = Destination(command="srv", args=("-v",), env=(("A", "1"),), tuning=Tuning(attempts=1))
    assert copy.copy(destination) == destination
    assert copy.deepcopy(destination) == destination
    assert pickle.loads(pickle.dumps(destination)) == destination
    assert type(pickle.loads(pickle.dumps(destination)).tuning) is Tuning
    assert json.loads(json.dumps(Light("a", tags=("x",)))) == ["a", 3, ["x"]]


def test_a_subclass_adds_its_fields_after_its_parents() -> None:
    wider = Wider("a", extra=True)
    assert Wider._fields == ("name", "size", "tags", "extra")
    assert (wider.name, wider.extra, wider.doubled()) == ("a", True, 6)


def test_a_field_without_default_after_one_with_a_default_is_refused() -> None:
    with pytest.raises(TypeError, match="field late without a default follows one with a default"):

        class Broken(Record):
            early: int = 1
            late: int


def test_a_record_needs_annotations_it_can_read_without_evaluating_them() -> None:
    """Python 3.14 defers annotations unless the module says `from __future__ import annotations`:
    a Record there without it would have no fields, so it is refused by name."""
    source = textwrap.dedent(
        """
        from oneiric_session.common.record import Record
        class Late(Record):
            size: int = 3
        """
    )
    namespace: dict[str, object] = {"__name__": "late_module"}
    # dont_inherit: exec would otherwise compile it with this module's `from __future__ import annotations`.
    code = compile(source, "late_module", "exec", dont_inherit=True)
    if sys.version_info >= (3, 14):
        with pytest.raises(TypeError, match="needs `from __future__ import annotations`"):
            exec(code, namespace)
    else:  # annotations are a dict at once: the record has its field
        exec(code, namespace)
        assert namespace["Late"]._fields == ("size",)  # type: ignore[attr-defined]
