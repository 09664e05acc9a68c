"""The command dispatcher: where `--settings` may stand, and one line (never a traceback) on errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneiric_session.cli import EXIT_FAILED, main


@pytest.fixture
def noop_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A settings directory that is not ./settings, so only the flag can select it."""
    directory = tmp_path / "conf"
    directory.mkdir()
    (directory / "adapters.yml").write_text("session_tracker: noop\n")
    monkeypatch.delenv("ONEIRIC_SESSION_PROVIDER", raising=False)
    monkeypatch.delenv("ONEIRIC_SESSION_SETTINGS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return directory


@pytest.mark.parametrize("where", ["before", "after"])
def test_settings_before_or_after_the_command(noop_settings: Path, where: str, capsys) -> None:
    flag = ["--settings", str(noop_settings)]
    argv = [*flag, "status", "--json"] if where == "before" else ["status", "--json", *flag]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["settings_dir"], report["provider"]["name"]) == (str(noop_settings), "noop")


def test_settings_after_a_nested_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    directory = tmp_path / "conf"
    directory.mkdir()
    spool = tmp_path / "spool.sqlite3"
    (directory / "adapters.yml").write_text(
        f"provider_settings:\n  session-buddy:\n    spool: {{path: {spool}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["spool", "list", "--json", "--settings", str(directory)]) == 0
    assert json.loads(capsys.readouterr().out)["spool_path"] == str(spool)


def test_unusable_spool_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    (tmp_path / "a-directory").mkdir()
    assert main(["spool", "list", "--spool", str(tmp_path / "a-directory")]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("oneiric-session: spool ") and err.count("\n") == 1
    assert "Traceback" not in err
