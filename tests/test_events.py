"""Start/end events match the wire contract, and hostile input is cut cheaply and made safe."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from oneiric_session.common.safetext import sanitize_text
from oneiric_session.tracking.events import (
    build_end_event,
    build_start_event,
    sanitize_component_name,
    sanitize_metadata,
)
from oneiric_session.tracking.limits import Limits

# The real server's timestamp rule (CONTRACT.md).
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")
COMPONENT = re.compile(r"^[a-zA-Z0-9_-]+$")
LIMITS = Limits()
START_KEYS = {
    "event_version", "event_id", "event_type", "component_name", "shell_type", "timestamp",
    "pid", "user", "hostname", "environment", "metadata",
}  # fmt: skip


def start(**kwargs: object) -> dict:
    args = {"component_name": "demo", "shell_type": "DemoShell", "metadata": None, "limits": LIMITS, **kwargs}
    return build_start_event(**args)  # type: ignore[arg-type]


def size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def test_start_event_follows_the_contract() -> None:
    """Exactly the contract's arguments, each with the type and shape the real server enforces."""
    event = start(metadata={"component_version": "1.2"})
    assert set(event) == START_KEYS
    assert event["event_version"] == "1.0" and event["event_type"] == "session_start"
    assert uuid.UUID(event["event_id"]).version == 4
    assert TIMESTAMP.match(event["timestamp"]) and event["timestamp"].endswith("Z")
    assert dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert event["pid"] == os.getpid()
    assert event["user"]["home"] == os.path.expanduser("~") and event["user"]["username"]
    assert set(event["environment"]) == {"python_version", "platform", "cwd"}
    assert event["environment"]["cwd"] == os.getcwd()
    assert event["metadata"] == {"component_version": "1.2"}
    assert "token" not in event
    json.dumps(event)


def test_timestamp_is_utc_whatever_the_given_zone() -> None:
    """An aware time is converted to UTC; a naive one is taken as UTC."""
    paris = dt.datetime(2026, 3, 1, 13, 30, 5, 250000, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert start(now=paris)["timestamp"] == "2026-03-01T12:30:05.250000Z"
    assert start(now=dt.datetime(2026, 3, 1, 12, 0))["timestamp"] == "2026-03-01T12:00:00.000000Z"


def test_report_cwd_replaces_cwd_and_keeps_the_real_one_in_metadata() -> None:
    event = start(report_cwd="/tmp", metadata={"a": 1})
    assert event["environment"]["cwd"] == "/tmp"
    assert event["metadata"] == {"shell_cwd": os.getcwd(), "a": 1}


def test_a_removed_cwd_is_reported_as_home(tmp_path: Path) -> None:
    """A cwd deleted under the shell cannot be sent (the server needs it to exist): home instead."""
    gone = tmp_path / "gone"
    gone.mkdir()
    old = os.getcwd()
    os.chdir(gone)
    try:
        gone.rmdir()
        event = start()
    finally:
        os.chdir(old)
    assert event["environment"]["cwd"] == os.path.expanduser("~")
    assert event["metadata"] == {"shell_cwd": None}


def test_pid_out_of_the_servers_range_is_replaced() -> None:
    assert start(pid=0)["pid"] == os.getpid()
    assert start(pid=4242)["pid"] == 4242


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("my shell\nname", "my_shell_name"),
        ("  \x1b[31mred\x1b[0m  ", "31mred_0m"),
        ("ok-name_1", "ok-name_1"),
        ("", "shell"),
        ("\n\t ", "shell"),
        ("café", "caf"),
    ],
)
def test_component_name_is_forced_to_the_allowed_characters(raw: str, expected: str) -> None:
    assert sanitize_component_name(raw, 64) == expected
    assert COMPONENT.match(start(component_name=raw)["component_name"])


def test_component_name_is_capped() -> None:
    name = start(component_name="x" * 10_000_000)["component_name"]
    assert name == "x" * LIMITS.max_component_chars


def test_control_characters_and_ansi_escapes_are_removed() -> None:
    text = "a\x00b\x1b[31mred\x1b[0m\x1b]0;title\x07c\x07\x7f\x9b\u202eevil\nnext\tcol"
    assert sanitize_text(text, 100) == "abredcevil next col"


def test_lone_surrogates_are_replaced_so_utf8_encoding_works() -> None:
    event = start(metadata={"s": "ok\ud800x\udfff", "\udc80key": 1})
    json.dumps(event, ensure_ascii=False).encode("utf-8")
    assert event["metadata"] == {"s": "ok\ufffdx\ufffd", "\ufffdkey": 1}


def test_a_ten_megabyte_string_is_cut_cheaply() -> None:
    """Cutting happens before any scan or serialization of the whole string."""
    huge = "y" * 10_000_000
    started = time.perf_counter()
    event = start(shell_type=huge, metadata={"big": huge, huge: "key"})
    elapsed = time.perf_counter() - started
    assert elapsed < 0.2
    assert len(event["shell_type"]) == LIMITS.max_string_chars
    assert event["metadata"]["big"].endswith("…") and len(event["metadata"]["big"]) == LIMITS.max_string_chars
    assert size(event["metadata"]) <= LIMITS.max_metadata_bytes


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_non_json_values_become_json_safe() -> None:
    """Objects become repr-like strings, bytes text, keys strings, NaN/inf strings, big ints a note."""
    meta = sanitize_metadata(
        {
            "obj": object(),
            "hostile": Hostile(),
            "bytes": b"\xff\xfeok\x00",
            "nan": float("nan"),
            "inf": float("inf"),
            "ninf": -float("inf"),
            "big": 10**5000,
            "when": dt.date(2026, 1, 2),
            "path": Path("/a/b"),
            "set": {1},
            "tuple": (1, "two"),
            3: "int key",
            None: "none key",
            (1, 2): "tuple key",
        },
        LIMITS,
    )
    json.dumps(meta, allow_nan=False)
    assert meta["obj"].startswith("<object object at")
    assert meta["hostile"] == "<Hostile object>"
    assert meta["bytes"] == "\ufffd\ufffdok"
    assert (meta["nan"], meta["inf"], meta["ninf"]) == ("NaN", "Infinity", "-Infinity")
    assert meta["big"] == f"<int of {(10**5000).bit_length()} bits>"
    assert meta["when"] == "2026-01-02" and meta["path"] == "/a/b"
    assert meta["set"] == [1] and meta["tuple"] == [1, "two"]
    assert meta["3"] == "int key" and meta["null"] == "none key" and meta["(1, 2)"] == "tuple key"


def test_deep_nesting_and_cycles_stop_at_the_depth_limit() -> None:
    deep: list = []
    cursor = deep
    for _ in range(10_000):
        cursor.append([])
        cursor = cursor[0]
    cycle: dict = {}
    cycle["self"] = cycle
    meta = sanitize_metadata({"deep": deep, "cycle": cycle}, Limits(max_metadata_depth=3))
    # Depth counts container levels, the top-level mapping being the first.
    assert meta["deep"] == [["<nested too deep>"]]
    assert meta["cycle"] == {"self": {"self": "<nested too deep>"}}


@pytest.mark.parametrize("max_bytes", [256, 300, 1000, 4096, 16384])
def test_metadata_never_exceeds_its_byte_cap(max_bytes: int) -> None:
    """Many entries, long values, nested containers: always within max_metadata_bytes, marked when cut."""
    limits = Limits(max_metadata_bytes=max_bytes, max_string_chars=64)
    hostile = {
        "many": list(range(100_000)),
        "wide": {f"k{i}": "é" * 80 for i in range(5000)},
        "nested": [{"a": ["x" * 100] * 50}] * 50,
    }
    meta = sanitize_metadata(hostile, limits)
    assert size(meta) <= max_bytes
    assert meta.get("_truncated") is True


def test_a_non_mapping_is_wrapped() -> None:
    assert sanitize_metadata(["a"], LIMITS) == {"value": ["a"]}
    assert sanitize_metadata(None, LIMITS) == {}


def test_end_event_carries_exit_reason_and_duration_in_metadata() -> None:
    """Our keys come first and win; a duration that is not a finite non-negative number is null."""
    event = build_end_event(
        session_id="demo-20260101-000000",
        exit_reason="user\nexit",
        duration_seconds=12.34567,
        metadata={"exit_reason": "spoofed", "x": 1},
        limits=LIMITS,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    assert event == {
        "session_id": "demo-20260101-000000",
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "event_type": "session_end",
        "metadata": {"exit_reason": "user exit", "duration_seconds": 12.346, "x": 1},
    }
    for bad in (float("inf"), float("nan"), -1.0, None, True):
        end = build_end_event(
            session_id="s", exit_reason="r", duration_seconds=bad, metadata=None, limits=LIMITS
        )
        assert end["metadata"]["duration_seconds"] is None


def test_events_module_needs_only_the_standard_library() -> None:
    """It runs in the shell's process: importing it must not pull in mcp or pydantic."""
    code = (
        "import sys, oneiric_session.tracking.events\n"
        "heavy = {'mcp', 'pydantic', 'anyio', 'tenacity'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
