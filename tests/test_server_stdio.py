"""The bundled server as a real subprocess over stdio, through the SDK's own client."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneiric_session.server.store import SessionStore
from tests.support.delivery import wait_until
from tests.support.server_process import (
    SERVE,
    ServerConnection,
    connect,
    end_event,
    isolated_env,
    start_event,
    structured_answer,
    text_of,
)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def db(home: Path) -> Path:
    return home / "sessions.sqlite3"


@pytest.fixture(scope="module")
def server(home: Path, db: Path) -> Iterator[ServerConnection]:
    with connect(home=home, db=db) as connection:
        yield connection


def stored(db: Path) -> dict[str, dict[str, object]]:
    store = SessionStore(db)
    try:
        return {row["session_id"]: row for row in store.list_sessions()}
    finally:
        store.close()


def test_tools_have_the_real_argument_names_and_refuse_unknown_ones(server: ServerConnection) -> None:
    """The input schemas name exactly 0.23.0's arguments, required ones included, and are closed."""
    tools = server.input_schemas()
    # 0.23.0's three, and our own read-only list_sessions (for `who` / `last --url`).
    assert set(tools) == {"track_session_start", "track_session_end", "health_check", "list_sessions"}
    start = tools["track_session_start"]
    assert set(start["properties"]) == {
        "event_version",
        "event_id",
        "event_type",
        "component_name",
        "shell_type",
        "timestamp",
        "pid",
        "user",
        "hostname",
        "environment",
        "metadata",
        "token",
    }
    assert set(start["required"]) == set(start["properties"]) - {"metadata", "token"}
    end = tools["track_session_end"]
    assert set(end["properties"]) == {"session_id", "timestamp", "event_type", "metadata", "token"}
    assert set(end["required"]) == {"session_id", "timestamp"}
    assert all(schema["additionalProperties"] is False for schema in tools.values())


def test_start_then_end_round_trip(server: ServerConnection, db: Path) -> None:
    """A start is tracked under `<component>-<YYYYMMDD-HHMMSS>`, its end recorded with reason and duration."""
    event = start_event(component_name="roundtrip", shell_type="RoundTripShell")
    started = structured_answer(server.call("track_session_start", event))
    assert started == {"session_id": "roundtrip-20260206-123456", "status": "tracked", "error": None}
    ended = structured_answer(server.call("track_session_end", end_event("roundtrip-20260206-123456")))
    assert ended == {"session_id": "roundtrip-20260206-123456", "status": "ended", "error": None}
    row = stored(db)["roundtrip-20260206-123456"]
    assert row["shell_type"] == "RoundTripShell"
    assert row["status"] == "ended"
    assert (row["exit_reason"], row["duration_seconds"]) == ("user_exit", 10.0)
    assert (row["started_at"], row["ended_at"]) == ("2026-02-06T12:34:56.789Z", "2026-02-06T12:35:06.789Z")


def test_answer_text_is_the_compact_json_the_real_server_sends(server: ServerConnection) -> None:
    result = server.call("track_session_start", start_event(component_name="compact"))
    assert text_of(result) == '{"session_id":"compact-20260206-123456","status":"tracked","error":null}'


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (start_event(unexpected="x"), "unexpected\n  Extra inputs are not permitted"),
        (start_event(pid="not a number"), "pid\n  Input should be a valid integer"),
        (start_event(user="tester"), "user\n  Input should be a valid dictionary"),
        ({k: v for k, v in start_event().items() if k != "hostname"}, "hostname\n  Field required"),
    ],
    ids=["unknown-argument", "pid-not-int", "user-not-dict", "missing-argument"],
)
def test_argument_errors_are_mcp_validation_errors(
    server: ServerConnection, arguments: dict[str, object], reason: str
) -> None:
    """Wrong, missing or unknown arguments answer isError and no structuredContent, like 0.23.0."""
    result = server.call("track_session_start", arguments)
    assert result.is_error
    assert result.structured_content is None
    assert "1 validation error for call[track_session_start]" in text_of(result)
    assert reason in text_of(result)


def test_unknown_argument_to_end_is_refused(server: ServerConnection) -> None:
    result = server.call("track_session_end", end_event("x", user_id="u"))
    assert result.is_error
    assert "1 validation error for call[track_session_end]" in text_of(result)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"timestamp": "2026-02-06 12:34:56"},
            "Invalid ISO 8601 timestamp: 2026-02-06 12:34:56 (missing time",
        ),
        ({"timestamp": "2026-02-06T12:34"}, "Invalid ISO 8601 timestamp: 2026-02-06T12:34 (expected format"),
        ({"timestamp": "2026-02-06T12:34:56 Z"}, "Invalid ISO 8601 timestamp"),
        ({"timestamp": "2026-13-06T12:34:56Z"}, "Session start failed: month must be in 1..12"),
        # Python's own words: "day is out of range for month" (3.13), "day 30 must be in range ..." (3.14).
        ({"timestamp": "2026-02-30T12:34:56Z"}, "Session start failed: day "),
        ({"component_name": "has space"}, "Invalid component_name 'has space'"),
        ({"component_name": "line\nbreak"}, "Invalid component_name"),
        ({"component_name": ""}, "Invalid component_name"),
        ({"pid": 0}, "pid\n  Input should be greater than or equal to 1"),
        ({"pid": 4194305}, "pid\n  Input should be less than or equal to 4194304"),
        ({"user": {"username": "tester"}}, "1 validation error for UserInfo\nhome\n  Field required"),
        ({"user": {"home": "/h"}}, "1 validation error for UserInfo\nusername\n  Field required"),
        (
            {"user": {"username": "u" * 101, "home": "/h"}},
            "username\n  String should have at most 100 characters",
        ),
        ({"user": {"username": "u", "home": "/" * 501}}, "home\n  String should have at most 500 characters"),
        (
            {"environment": {"python_version": "3.11", "platform": "linux"}},
            "EnvironmentInfo\ncwd\n  Field required",
        ),
        ({"environment": {"cwd": "/x"}}, "2 validation errors for EnvironmentInfo"),
        (
            {"environment": {"python_version": "3.11", "platform": "linux", "cwd": "/" * 501}},
            "cwd\n  String should have at most 500 characters",
        ),
        ({"event_version": "2.0"}, "Unsupported event version: 2.0 (expected '1.0')"),
        ({"event_id": "not-a-uuid"}, "Invalid UUID v4 format: not-a-uuid"),
        ({"event_type": "session_end"}, "Invalid event_type for SessionStartEvent: session_end"),
    ],
)
def test_event_rule_violations_answer_status_error(
    server: ServerConnection, overrides: dict[str, object], message: str
) -> None:
    """Each of 0.23.0's event rules refuses the event with `status: "error"` and its message."""
    answer = structured_answer(server.call("track_session_start", start_event(**overrides)))
    assert answer["session_id"] is None
    assert answer["status"] == "error"
    assert message in answer["error"]


def test_valid_edge_values_are_tracked(server: ServerConnection) -> None:
    """The boundaries the rules allow: pid 1 and 4194304, offsets, no zone, extra user keys."""
    for overrides in (
        {"pid": 1, "timestamp": "2026-03-01T00:00:00+05:30"},
        {"pid": 4194304, "timestamp": "2026-03-01T00:00:01"},
        {"user": {"username": "u", "home": "/h", "shell": "/bin/zsh"}, "timestamp": "2026-03-01T00:00:02.1Z"},
        {"metadata": None, "timestamp": "2026-03-01T00:00:03Z"},
    ):
        answer = structured_answer(
            server.call("track_session_start", start_event(component_name="edge", **overrides))
        )
        assert answer["status"] == "tracked", (overrides, answer)
    assert answer["session_id"] == "edge-20260301-000003"


def test_cwd_is_checked_for_shape_only_and_never_touched(server: ServerConnection, tmp_path: Path) -> None:
    """A cwd that does not exist is accepted, and an existing one is left exactly as it was."""
    missing = start_event(
        component_name="nocwd", environment={"python_version": "3", "platform": "p", "cwd": "/no/such"}
    )
    assert structured_answer(server.call("track_session_start", missing))["status"] == "tracked"
    project = tmp_path / "project"
    project.mkdir()
    env = {"python_version": "3", "platform": "p", "cwd": str(project)}
    started = structured_answer(
        server.call("track_session_start", start_event(component_name="cwd", environment=env))
    )
    structured_answer(server.call("track_session_end", end_event(started["session_id"])))
    assert list(project.iterdir()) == []


def test_a_start_sent_again_answers_the_same_session_id(server: ServerConnection, db: Path) -> None:
    """Idempotent by event_id: the delivery agent may resend a start whose answer it lost."""
    event = start_event(component_name="resend")
    first = structured_answer(server.call("track_session_start", event))
    again = structured_answer(
        server.call("track_session_start", {**event, "timestamp": "2026-12-31T23:59:59Z"})
    )
    assert first == again == {"session_id": "resend-20260206-123456", "status": "tracked", "error": None}
    assert [sid for sid in stored(db) if sid.startswith("resend-")] == ["resend-20260206-123456"]


def test_other_starts_in_the_same_second_get_distinct_ids(server: ServerConnection) -> None:
    """Unlike 0.23.0, two shells started in one second are two sessions: -2, -3 ..."""
    ids = [
        structured_answer(server.call("track_session_start", start_event(component_name="busy")))[
            "session_id"
        ]
        for _ in range(3)
    ]
    assert ids == ["busy-20260206-123456", "busy-20260206-123456-2", "busy-20260206-123456-3"]


def test_end_of_an_unknown_session_is_not_found(server: ServerConnection) -> None:
    answer = structured_answer(server.call("track_session_end", end_event("ghost-20260206-123456")))
    assert answer == {"session_id": "ghost-20260206-123456", "status": "not_found", "error": None}


def test_a_second_end_answers_ended_and_changes_nothing(server: ServerConnection, db: Path) -> None:
    session_id = structured_answer(server.call("track_session_start", start_event(component_name="twice")))[
        "session_id"
    ]
    structured_answer(server.call("track_session_end", end_event(session_id)))
    again = end_event(session_id, timestamp="2026-02-07T00:00:00Z", metadata={"exit_reason": "abnormal"})
    assert structured_answer(server.call("track_session_end", again))["status"] == "ended"
    row = stored(db)[session_id]
    assert (row["exit_reason"], row["duration_seconds"], row["ended_at"]) == (
        "user_exit",
        10.0,
        "2026-02-06T12:35:06.789Z",
    )


def test_duration_comes_from_the_timestamps_when_the_shell_sends_none(
    server: ServerConnection, db: Path
) -> None:
    """Oneiric's AdminShell sends `duration_seconds: None`; the server fills it in."""
    session_id = structured_answer(server.call("track_session_start", start_event(component_name="nodur")))[
        "session_id"
    ]
    end = end_event(session_id, timestamp="2026-02-06T13:34:56.789Z", metadata={"duration_seconds": None})
    structured_answer(server.call("track_session_end", end))
    row = stored(db)[session_id]
    assert (row["exit_reason"], row["duration_seconds"]) == (None, 3600.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timestamp": "yesterday"}, "Invalid ISO 8601 timestamp: yesterday"),
        ({"event_type": "session_start"}, "Invalid event_type for SessionEndEvent: session_start"),
    ],
)
def test_end_rule_violations_answer_status_error(
    server: ServerConnection, overrides: dict[str, object], message: str
) -> None:
    answer = structured_answer(server.call("track_session_end", end_event("some-id", **overrides)))
    assert (answer["session_id"], answer["status"]) == ("some-id", "error")
    assert answer["error"].startswith("Session end tracking failed: 1 validation error for SessionEndEvent")
    assert message in answer["error"]


def test_health_check_answers_a_string(server: ServerConnection) -> None:
    result = server.call("health_check", {})
    assert not result.is_error
    assert "operational" in text_of(result)
    assert result.structured_content == {"result": text_of(result)}


def test_two_server_processes_share_one_database(home: Path, tmp_path: Path) -> None:
    """Concurrent servers on one database never hand out the same id (the write lock is taken first)."""
    db = tmp_path / "shared.sqlite3"
    ids: list[str] = []
    with connect(home=home, db=db) as first, connect(home=home, db=db) as second:

        def send(connection: ServerConnection) -> None:
            for _ in range(10):
                answer = structured_answer(
                    connection.call("track_session_start", start_event(component_name="race"))
                )
                ids.append(answer["session_id"])

        threads = [threading.Thread(target=send, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(ids) == len(set(ids)) == 20
    assert set(stored(db)) == set(ids)


def _spawn(home: Path, db: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*SERVE, "--db", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=isolated_env(home),
    )


def _blocked_signals_per_thread(pid: int) -> dict[int, set[int]]:
    """Each thread's blocked signals, from the SigBlk mask in /proc/PID/task/TID/status."""
    masks: dict[int, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        bits = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
        masks[int(task.name)] = {signum for signum in range(1, 65) if bits >> (signum - 1) & 1}
    return masks


def _initialize(process: subprocess.Popen[bytes]) -> dict[str, object]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())


def test_stdin_close_ends_the_server_and_stdout_holds_only_json_rpc(tmp_path: Path) -> None:
    process = _spawn(tmp_path, tmp_path / "s.sqlite3")
    assert _initialize(process)["id"] == 1
    stdout, stderr = process.communicate(timeout=20)  # closes stdin
    assert process.returncode == 0, stderr
    assert stdout == b""  # nothing after the one answer: no banner, no log line
    assert b"Traceback" not in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_termination_signal_ends_the_server_cleanly(tmp_path: Path, signum: int) -> None:
    """Exit status 0 and no traceback, even while stdin stays open, whichever thread the kernel picks.

    A process-directed signal goes to any thread that does not block it. Before the fix the
    SDK's stdin reader could take it; the main thread, asleep in epoll_wait(), then never ran
    the handler and the server stayed up (seen once in CI on Python 3.14). Now every thread
    blocks the exit signals but one, which waits for them in sigwait() (the kernel unblocks
    them for a thread only while it waits there).
    """
    process = _spawn(tmp_path, tmp_path / "s.sqlite3")
    _initialize(process)
    exit_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

    def takers() -> list[int]:
        masks = _blocked_signals_per_thread(process.pid)
        assert len(masks) >= 2, masks  # the main thread, the SDK's stdin reader, our waiter
        return [tid for tid, blocked in masks.items() if not exit_signals & blocked]

    thread_ids = wait_until(takers, what="a thread waiting for the exit signals")
    assert len(thread_ids) == 1 and thread_ids[0] != process.pid, thread_ids
    process.send_signal(signum)
    try:
        process.wait(timeout=20)
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert b"Traceback" not in stderr


@pytest.mark.parametrize("stdin", ["devnull", "file"])
def test_input_an_event_loop_cannot_watch_is_served_to_its_end(tmp_path: Path, stdin: str) -> None:
    """/dev/null or a regular file as stdin (epoll refuses both): the server reads them to their end
    and exits 0, as with a pipe; a request in the file is answered."""
    source = tmp_path / "requests.jsonl"
    source.write_text(json.dumps(INITIALIZE) + "\n")
    with open(source if stdin == "file" else "/dev/null", "rb") as given:
        done = subprocess.run(
            [*SERVE, "--db", str(tmp_path / "s.sqlite3")],
            stdin=given,
            capture_output=True,
            timeout=30,
            env=isolated_env(tmp_path / "home"),
        )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == ([1] if stdin == "file" else [])
