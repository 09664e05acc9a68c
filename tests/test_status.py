"""`oneiric-session status`: provider and ranking, every setting with its source, secrets redacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.cli import main
from oneiric_session.cli.status import collect
from oneiric_session.config.sources import SETTING_NAMES
from oneiric_session.tracking.registry import resolve_tracker


def settings_dir(tmp_path: Path, adapters: str = "") -> Path:
    directory = tmp_path / "settings"
    directory.mkdir()
    if adapters:
        (directory / "adapters.yml").write_text(adapters)
    return directory


def test_collect_reports_provider_ranking_settings_and_sources(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path, "provider_settings:\n  session-buddy:\n    retry: {attempts: 4}\n")
    env = {"ONEIRIC_SESSION_PROVIDER": "memory", "ONEIRIC_SESSION_BREAKER__THRESHOLD": "2"}
    report = collect(directory, environ=env)
    assert report["provider"] == {"name": "memory", "source": "env:ONEIRIC_SESSION_PROVIDER"}
    candidates = report["ranking"]["candidates"]
    assert (candidates[0]["provider"], candidates[0]["selected"]) == ("memory", True)
    assert {c["provider"] for c in candidates} >= {"memory", "noop", "session-buddy"}
    settings = report["settings"]
    assert settings["retry.attempts"] == {"value": 4, "source": f"file:{directory / 'adapters.yml'}"}
    assert settings["breaker.threshold"] == {"value": 2, "source": "env:ONEIRIC_SESSION_BREAKER__THRESHOLD"}
    assert settings["retry.multiplier"] == {"value": 2.0, "source": "default"}
    assert {name.split(".")[0] for name in settings} == SETTING_NAMES
    assert {"path": str(directory / "adapters.yml"), "present": True} in report["files"]
    assert report["token"] == {"env": "SESSION_BUDDY_TOKEN", "file": None, "available": False}
    assert "spool_path" in report["delivery"]


@pytest.mark.parametrize("written", ["noop ", " memory", "\tnoop\n"])
def test_status_names_the_provider_every_shell_uses(tmp_path: Path, written: str) -> None:
    """A stray space in the selection: shells strip it, and `status` called it an unknown provider."""
    directory = settings_dir(tmp_path)
    env = {"ONEIRIC_SESSION_PROVIDER": written}
    used = resolve_tracker(directory, environ=env).provider
    assert used == written.strip()
    assert collect(directory, environ=env)["provider"]["name"] == used


def test_secrets_are_redacted(tmp_path: Path) -> None:
    env = {
        "SESSION_BUDDY_TOKEN": "tok-value-7731",
        "ONEIRIC_SESSION_SERVER__ENV": '{"SESSION_BUDDY_SECRET": "sec-value-4410"}',
        "ONEIRIC_SESSION_TRANSPORT": "http",
        "ONEIRIC_SESSION_URL": "https://u:pw-value-9920@example.org/mcp",
    }
    report = collect(settings_dir(tmp_path), environ=env)
    text = json.dumps(report)
    assert report["token"]["available"] is True
    for secret in ("tok-value-7731", "sec-value-4410", "pw-value-9920"):
        assert secret not in text


def test_cli_json_and_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    directory = settings_dir(tmp_path, "session_tracker: noop\n")
    monkeypatch.delenv("ONEIRIC_SESSION_PROVIDER", raising=False)
    assert main(["--settings", str(directory), "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provider"]["name"] == "noop"
    assert main(["--settings", str(directory), "status"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"provider: noop  (file:{directory / 'adapters.yml'})\n")
    assert "  * noop " in text and "\n  retry.attempts " in text


def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("adapters", "env", "expected"),
    [
        ("session_tracker: [noop\n", {}, "adapters.yml line 2"),
        ("session_tracker: redis\n", {}, "unknown session tracker provider 'redis'"),
        ("", {"ONEIRIC_SESSION_TIMEOUTS__CALL_SECONDS": "0"}, "ONEIRIC_SESSION_TIMEOUTS__CALL_SECONDS"),
    ],
    ids=["bad-yaml", "unknown-provider", "out-of-range"],
)
def test_config_error_exits_2_with_one_line(
    tmp_path: Path, adapters: str, env: dict[str, str], expected: str
):
    directory = settings_dir(tmp_path, adapters)
    done = run_cli(tmp_path, "-m", "oneiric_session", "--settings", str(directory), "status", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("oneiric-session: configuration error: ")
    assert expected in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_status_with_noop_imports_no_mcp(tmp_path: Path) -> None:
    """`python -X importtime -m oneiric_session status` with provider noop never imports mcp."""
    directory = settings_dir(tmp_path)
    done = run_cli(
        tmp_path,
        "-X",
        "importtime",
        "-m",
        "oneiric_session",
        "status",
        env={"ONEIRIC_SESSION_PROVIDER": "noop", "ONEIRIC_SESSION_SETTINGS_DIR": str(directory)},
    )
    assert done.returncode == 0, done.stderr
    imported = [
        line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    ]
    # the measurement is real (modules loaded by importlib.import_module are not listed by importtime)
    assert "oneiric_session.config.loader" in imported
    assert [name for name in imported if name == "mcp" or name.startswith("mcp.")] == []
    # importtime does not list modules loaded through importlib: check sys.modules as well
    code = "import json, sys, oneiric_session.cli as c; c.main(['status']); print(json.dumps([*sys.modules]))"
    done = run_cli(tmp_path, "-c", code, env={"ONEIRIC_SESSION_PROVIDER": "noop"})
    assert done.returncode == 0, done.stderr
    assert [name for name in json.loads(done.stdout.splitlines()[-1]) if name.split(".")[0] == "mcp"] == []


def test_status_in_a_deleted_working_directory_says_there_is_no_settings_directory(tmp_path: Path) -> None:
    """It showed "settings directory: /dev/null/settings" and three files "absent" under it: a
    path below a device, the stand-in that makes every settings file read as absent."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (
        "import os, sys\n"
        f"os.chdir({str(gone)!r}); os.rmdir({str(gone)!r})\n"
        "from oneiric_session.cli import main\n"
        "sys.argv[0] = 'oneiric-session'\n"
        "print('--json--'); main(['status', '--json']); print('--text--'); sys.exit(main(['status']))\n"
    )
    done = run_cli(tmp_path, "-c", code, env={"ONEIRIC_SESSION_PROVIDER": "noop"})
    assert done.returncode == 0, done.stderr
    as_json, _, text = done.stdout.partition("--text--\n")
    report = json.loads(as_json.partition("--json--\n")[2])
    assert report["settings_dir"] is None
    assert [f for f in report["files"] if f["path"].startswith(os.devnull)] == []
    assert os.devnull not in text
    assert "settings directory: none (the working directory no longer exists, so no ./settings)\n" in text
