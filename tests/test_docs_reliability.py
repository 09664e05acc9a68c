"""docs/reliability.md's hardening section is what the tests marked `hardening` say."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reliability", ROOT / "scripts" / "gen_reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_per_marked_test_in_item_order(generator: ModuleType) -> None:
    """Rows follow the item number, a `|` in a cell is escaped, and the test id is named."""
    rows = [
        {"item": 10, "fault": "b", "outcome": "y", "test": "tests/t.py::b"},
        {"item": 2, "fault": "a | pipe", "outcome": "x", "test": "tests/t.py::a"},
    ]
    lines = [
        line
        for line in generator.render_hardening(rows).splitlines()
        if line.startswith("| ") and "`" in line
    ]
    assert lines == ["| 2 | a \\| pipe | x | `tests/t.py::a` |", "| 10 | b | y | `tests/t.py::b` |"]


def test_the_committed_section_matches_the_marked_tests(generator: ModuleType) -> None:
    """Regenerate with `python scripts/gen_reliability.py` when a hardening test is added or changed."""
    current = DOC.read_text(encoding="utf-8")
    expected = generator.render_hardening(generator.collect_hardening())
    section = current[len(generator.fault_part(current)) :]
    assert section == expected, (
        "docs/reliability.md's hardening section is stale: run scripts/gen_reliability.py"
    )
