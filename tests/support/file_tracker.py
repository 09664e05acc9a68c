"""A test-only tracker that appends what it is told to a JSON-lines file, so a parent
process can read what a child recorded after the child is gone.

`install()` registers it as provider `file` in the default registry; a child selects
it the usual way, with ONEIRIC_SESSION_PROVIDER=file, so the configuration and
registry path under test is the real one. Each line is written with one `write` and
fsync'd before the call returns, like a real spool append.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD_ENV = "ONEIRIC_SESSION_TEST_RECORD"
# Seconds end() waits before writing: stands for a slow disk, to test the exit hook's wait.
END_DELAY_ENV = "ONEIRIC_SESSION_TEST_END_DELAY"
# Set when some end() call has begun: lets a test host make an end be "in flight" at exit.
END_ENTERED = threading.Event()


class FileTracker:
    provider = "file"

    def __init__(self, path: str | os.PathLike[str], *, end_delay_seconds: float = 0.0) -> None:
        self.path = Path(path)
        self.end_delay_seconds = end_delay_seconds
        self._numbers = itertools.count(1)

    def _append(self, record: dict[str, Any]) -> None:
        thread = threading.current_thread()
        record |= {"pid": os.getpid(), "thread": thread.name, "daemon": thread.daemon}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def start(
        self, *, component_name: str, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str | None:
        handle = f"file-{os.getpid()}-{next(self._numbers)}"
        self._append(
            {
                "op": "start",
                "handle": handle,
                "component_name": component_name,
                "shell_type": shell_type,
                "metadata": dict(metadata or {}),
            }
        )
        return handle

    def end(
        self,
        handle: str,
        *,
        exit_reason: str = "user_exit",
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        END_ENTERED.set()
        if self.end_delay_seconds:
            time.sleep(self.end_delay_seconds)  # sleep-ok: a deliberately slow end
        self._append(
            {
                "op": "end",
                "handle": handle,
                "exit_reason": exit_reason,
                "duration_seconds": duration_seconds,
                "metadata": dict(metadata or {}),
            }
        )
        return True

    def close(self) -> None:
        self._append({"op": "close"})

    def health(self) -> bool:
        return True


def create(config: object = None) -> FileTracker:
    return FileTracker(os.environ[RECORD_ENV], end_delay_seconds=float(os.environ.get(END_DELAY_ENV, "0")))


def install() -> None:
    """Make provider `file` selectable in this process."""
    from oneiric_session.tracking.registry import Candidate, default_registry

    default_registry().register(Candidate("file", create, "test: records to a file", needs_config=False))


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def sessions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One dict per started session: its start record plus `ends`, every end recorded for it."""
    records = read_records(path)
    found = {r["handle"]: {**r, "ends": []} for r in records if r["op"] == "start"}
    for r in records:
        if r["op"] == "end":
            found.setdefault(r["handle"], {"handle": r["handle"], "ends": []})["ends"].append(r)
    return list(found.values())


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a child that records to `tmp_path/record.jsonl` and writes nothing outside tmp_path."""
    repo = str(Path(__file__).resolve().parents[2])  # where `tests.support` imports from
    (tmp_path / "settings").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "ONEIRIC_SESSION_SETTINGS_DIR": str(tmp_path / "settings"),
        "ONEIRIC_SESSION_PROVIDER": "file",
        RECORD_ENV: str(tmp_path / "record.jsonl"),
        "PYTHONPATH": repo,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env
