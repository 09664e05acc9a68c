"""docs/configuration.md is generated from the settings models; these tests fail when it drifts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from oneiric_session.config import sources
from oneiric_session.config.models import SessionBuddySettings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(
    model: type[BaseModel] = SessionBuddySettings, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    for name, info in model.model_fields.items():
        yield f"{prefix}{name}", info
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _fields(info.annotation, f"{prefix}{name}.")


def _is_section(info: FieldInfo) -> bool:
    return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows keyed by their environment variable (the first name in the second cell)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[1].split("`")[1]] = cells
    return rows


def test_committed_file_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_or_missing_file(
    generator: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "configuration.md"
    assert generator.main(["--check", "--output", str(target)]) == 1  # missing
    assert generator.main(["--output", str(target)]) == 0
    assert generator.main(["--check", "--output", str(target)]) == 0
    target.write_text(target.read_text().replace("[1, 20]", "[1, 30]"), encoding="utf-8")
    capsys.readouterr()
    assert generator.main(["--check", "--output", str(target)]) == 1
    err = capsys.readouterr().err
    assert "is stale: run `python scripts/gen_config_docs.py`" in err
    assert "-| `retry.attempts`" in err and "+| `retry.attempts`" in err


def test_every_model_field_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = _rows(text)
    leaves = [(name, info) for name, info in _fields() if not _is_section(info)]
    assert len(rows) == len(leaves), "one table row per setting, no more"
    for name, info in _fields():
        var = sources.env_var(name)
        if _is_section(info):
            assert f"### `{name}`: {info.description}" in text
            continue
        cells = rows[var]
        if name != "provider":  # the selection's YAML key is selections.session_tracker
            assert cells[0] == f"`{name}`"
        default = info.get_default(call_default_factory=True)
        assert cells[3] == ("unset" if default is None else f"`{json.dumps(default)}`"), name
        for bound in info.metadata:
            for attr in ("ge", "gt", "le", "lt"):
                if hasattr(bound, attr):
                    assert str(getattr(bound, attr)) in cells[4], name
        assert cells[5] == info.description, name


@pytest.mark.parametrize("name", [name for name, _ in _fields()])
def test_documented_variable_sets_its_setting(name: str, tmp_path: Path) -> None:
    # The names the page shows are the ones the loader really reads.
    var = sources.env_var(name)
    merged = sources.read(tmp_path, environ={var: "null" if name in sources.JSON_SETTINGS else "x"})
    assert merged.source_of(name) == f"env:{var}"


def test_oneiric_variables_are_documented_on_their_setting() -> None:
    rows = _rows(DOC.read_text(encoding="utf-8"))
    for var, name in sources.ONEIRIC_ENV_SETTINGS.items():
        assert f"`{var}`" in rows[sources.env_var(name)][1]
