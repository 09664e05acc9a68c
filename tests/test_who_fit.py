"""`who`'s column fitting called without `last` columns (mypy found `shrink + None` there)."""

from __future__ import annotations

from oneiric_session.cli.who import fit


def test_fit_without_last_columns_cuts_the_shrink_ones() -> None:
    header = ["NAME", "WHERE"]
    rows = [["a-rather-long-component-name", "somewhere-far-away"]]
    text = fit(header, rows, 20, shrink=[0, 1])  # no `last`, no `optional`: used to raise TypeError
    lines = text.splitlines()
    assert lines[0].startswith("NAME")
    assert all(len(line) <= 20 for line in lines)
