"""`oneiric-session who` / `last` as real processes: the bundled server's database and a central server.

Sessions from several simulated hosts are recorded through real tool calls; `who` and `last` read
them back from the database file (`--db`) and from `serve --http` (`--url`), which must agree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from oneiric_session.server.store import NewSession, SessionStore
from tests.support.delivery import WAIT_SECONDS, Scene, wait_until
from tests.support.http_server import HttpServer
from tests.support.server_process import connect, end_event, start_event, structured_answer, text_of

CLI = [sys.executable, "-m", "oneiric_session"]
SECRET = "who-last-test-secret-" + "0123456789abcdef" * 3
NOW = datetime.now(UTC).replace(microsecond=0)
# A zone without tzdata: POSIX TZ "IST-5:30" is UTC+05:30.
TZ = "IST-5:30"
ZONE_OFFSET = timedelta(hours=5, minutes=30)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# (component, shell type, user, host, pid, started this long ago, end: (after, reason) or None)
FLEET: list[tuple[str, str, str, str, int, timedelta, tuple[float, str] | None]] = [
    ("oneiric", "OneiricShell", "alice", "alpha", 1001, timedelta(hours=5), (3723.0, "user_exit")),
    ("mahavishnu", "MahavishnuShell", "bob", "beta", 1002, timedelta(hours=3), (600.0, "abnormal")),
    ("oneiric", "OneiricShell", "alice", "gamma", 1003, timedelta(minutes=90), None),
    ("session-buddy", "SessionBuddyShell", "carol", "beta", 1004, timedelta(minutes=20), None),
    ("oneiric", "OneiricShell", "bob", "alpha", 1005, timedelta(minutes=10), (30.0, "sigterm")),
]


def token(secret: str = SECRET) -> str:
    now = int(time.time())
    claims = {"iss": "session-buddy", "aud": "session-buddy", "iat": now, "exp": now + 600}
    return jwt.encode(claims, secret, algorithm="HS256")


def seed(url: str, home: Path, auth: str | None = None) -> dict[int, str]:
    """Record FLEET through the server's tracking tools; pid -> session id."""
    extra = {"token": auth} if auth else {}
    ids: dict[int, str] = {}
    with connect(home=home, url=url) as server:
        for component, shell, user, host, pid, ago, end in FLEET:
            started = NOW - ago
            event = start_event(
                component_name=component,
                shell_type=shell,
                user={"username": user, "home": f"/home/{user}"},
                hostname=host,
                pid=pid,
                timestamp=_stamp(started),
                **extra,
            )
            session_id = structured_answer(server.call("track_session_start", event))["session_id"]
            ids[pid] = session_id
            if end is not None:
                after, reason = end
                ended = end_event(
                    session_id,
                    timestamp=_stamp(started + timedelta(seconds=after)),
                    metadata={"exit_reason": reason, "duration_seconds": after},
                    **extra,
                )
                assert structured_answer(server.call("track_session_end", ended))["status"] == "ended"
    return ids


def run(
    *args: str, env: dict[str, str] | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SESSION_BUDDY_TOKEN", "ONEIRIC_SESSION_DB")}
    full = {**base, "TZ": TZ, "COLUMNS": str(columns), "LINES": "50", **(env or {})}
    return subprocess.run([*CLI, *args], env=full, capture_output=True, text=True, timeout=WAIT_SECONDS)


def listed(*args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = run(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    root = tmp_path_factory.mktemp("central")
    server = HttpServer(root)
    server.start()
    seed(server.url, root / "client")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["db", "url"])
def source(request: pytest.FixtureRequest, central: HttpServer) -> list[str]:
    """Read the central server's sessions from its database file, or ask it over HTTP."""
    return ["--db", str(central.db)] if request.param == "db" else ["--url", central.url]


def pids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["pid"] for row in rows]


def test_who_lists_open_sessions_newest_first(source: list[str]) -> None:
    rows = listed("who", *source)
    assert pids(rows) == [1004, 1003]
    assert rows[0]["hostname"] == "beta" and rows[0]["user"] == "carol"
    assert rows[0]["status"] == "open" and rows[0]["ended_at"] is None
    # Nobody on this host watched these pids: idle is not known.
    assert all(row["idle_seconds"] is None for row in rows)


def test_last_lists_the_history_newest_first_with_every_documented_field(source: list[str]) -> None:
    rows = listed("last", *source)
    assert pids(rows) == [1005, 1004, 1003, 1002, 1001]
    assert set(rows[0]) == {
        "session_id",
        "component_name",
        "shell_type",
        "user",
        "hostname",
        "pid",
        "started_at",
        "ended_at",
        "status",
        "exit_reason",
        "duration_seconds",
    }
    abnormal = rows[3]
    assert (abnormal["exit_reason"], abnormal["duration_seconds"], abnormal["status"]) == (
        "abnormal",
        600.0,
        "ended",
    )


@pytest.mark.parametrize(
    ("command", "filters", "expected"),
    [
        ("last", ["--component", "oneiric"], [1005, 1003, 1001]),
        ("last", ["--user", "alice"], [1003, 1001]),
        ("last", ["--host", "beta"], [1004, 1002]),
        ("last", ["--since", "2h"], [1005, 1004, 1003]),
        ("last", ["--until", "2h"], [1002, 1001]),
        ("last", ["--since", "4h", "--until", "1h"], [1003, 1002]),
        ("last", ["--host", "alpha", "--user", "bob"], [1005]),
        ("last", ["-n", "2"], [1005, 1004]),
        ("last", ["--component", "nobody"], []),
        ("who", ["--host", "beta"], [1004]),
        ("who", ["--user", "alice"], [1003]),
        ("who", ["--since", "1h"], [1004]),
        ("who", ["--component", "oneiric", "-n", "1"], [1003]),
    ],
)
def test_filters(source: list[str], command: str, filters: list[str], expected: list[int]) -> None:
    assert pids(listed(command, *source, *filters)) == expected


def test_iso_since_until_in_local_time(source: list[str]) -> None:
    """A date-time without a zone is local (TZ is UTC+05:30 here); one with a zone is that zone."""
    since_local = (NOW - timedelta(hours=4) + ZONE_OFFSET).strftime("%Y-%m-%dT%H:%M:%S")
    until_utc = _stamp(NOW - timedelta(hours=1))
    assert pids(listed("last", *source, "--since", since_local, "--until", until_utc)) == [1003, 1002]


def test_tables_read_like_who_and_last(source: list[str]) -> None:
    last = run("last", *source)
    assert last.returncode == 0, last.stderr
    lines = last.stdout.splitlines()
    assert lines[0].split() == [
        "COMPONENT",
        "SHELL",
        "USER",
        "HOST",
        "STARTED",
        "ENDED",
        "DURATION",
        "EXIT",
        "SESSION",
    ]
    by_pid = dict(zip([1005, 1004, 1003, 1002, 1001], lines[1:], strict=True))
    assert "gone - no logout" in by_pid[1002] and "0:10:00" in by_pid[1002]
    assert "1:02:03" in by_pid[1001] and "user_exit" in by_pid[1001]
    assert "still logged in" in by_pid[1004]
    assert "sigterm" in by_pid[1005] and "0:00:30" in by_pid[1005]
    # Times in the local zone (UTC+05:30), to the minute.
    started = NOW - timedelta(hours=5) + ZONE_OFFSET
    assert started.strftime("%m-%d %H:%M") in by_pid[1001]

    who = run("who", *source)
    assert who.returncode == 0, who.stderr
    header, *rows = who.stdout.splitlines()
    assert header.split() == ["COMPONENT", "SHELL", "USER", "HOST", "PID", "SINCE", "IDLE"]
    assert rows[0].split()[:5] == ["session-buddy", "SessionBuddyShell", "carol", "beta", "1004"]
    assert rows[0].split()[-1] == "?"
    assert (NOW - timedelta(minutes=20) + ZONE_OFFSET).strftime("%m-%d %H:%M") in rows[0]


def test_the_table_fits_the_terminal_with_ellipses(source: list[str]) -> None:
    for command, columns in (("last", 72), ("who", 50)):
        result = run(command, *source, columns=columns)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) > 1
        assert max(len(line) for line in lines) <= columns, result.stdout
        assert "…" in result.stdout
    wide = run("last", *source, columns=250).stdout
    assert "…" not in wide and "SESSION" in wide


def test_a_count_that_cuts_says_so(source: list[str]) -> None:
    result = run("last", *source, "-n", "2")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 4  # header, two rows, the note
    assert "only the newest 2" in result.stdout


def test_bad_filters_are_one_clear_message(source: list[str]) -> None:
    for args in (["--since", "yesterday"], ["--until", "2026-13-01"], ["-n", "-1"]):
        result = run("last", *source, *args)
        assert result.returncode == 2, result
        assert result.stdout == ""
        assert "Traceback" not in result.stderr and args[0] in result.stderr


def test_no_database_lists_nothing_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "none.sqlite3"
    result = run("last", "--db", str(db))
    assert result.returncode == 0 and "no sessions" in result.stdout
    assert listed("who", "--db", str(db)) == []
    assert not db.exists()


def test_an_unreachable_central_server_is_a_clear_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run("who", "--url", f"http://127.0.0.1:{port}/mcp")
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr


# -- the list_sessions tool: pages and auth ------------------------------------------


def test_the_tool_pages_with_a_cursor_without_gaps_or_repeats(central: HttpServer, tmp_path: Path) -> None:
    seen: list[int] = []
    pages = 0
    with connect(home=tmp_path, url=central.url) as server:
        arguments: dict[str, Any] = {"limit": 2}
        while True:
            page = structured_answer(server.call("list_sessions", arguments))
            assert page["status"] == "ok" and len(page["sessions"]) <= 2
            seen += pids(page["sessions"])
            pages += 1
            if page["next_cursor"] is None:
                break
            arguments = {"limit": 2, "cursor": page["next_cursor"]}
        assert (seen, pages) == ([1005, 1004, 1003, 1002, 1001], 3)
        bad = structured_answer(server.call("list_sessions", {"cursor": "not-a-cursor"}))
        assert bad["status"] == "error" and "cursor" in bad["error"] and bad["sessions"] == []
        zero = structured_answer(server.call("list_sessions", {"limit": 0}))
        assert zero["status"] == "error" and "limit" in zero["error"]
        tools = {tool.name: tool for tool in server.list_tools().tools}
        assert tools["list_sessions"].annotations.read_only_hint is True


def _store_sessions(db: Path, count: int) -> None:
    """`count` sessions recorded by the real store (faster than as many tool calls)."""
    store = SessionStore(db)
    try:
        for i in range(count):
            started = NOW - timedelta(seconds=count - i)
            store.record_start(
                NewSession(
                    event_id=f"00000000-0000-4000-8000-{i:012x}",
                    base_session_id=f"bulk-{started:%Y%m%d-%H%M%S}",
                    component_name="bulk",
                    shell_type="BulkShell",
                    hostname=f"host-{i % 7}",
                    pid=10_000 + i,
                    user={"username": "bulk", "home": "/home/bulk"},
                    environment={"python_version": "3.13", "platform": "Linux", "cwd": "/srv"},
                    # The same second twice: paging must keep both (ties broken by row).
                    started_at=_stamp(started if i % 3 else started + timedelta(seconds=1)),
                    metadata={},
                )
            )
    finally:
        store.close()


def test_cli_pages_across_a_large_fleet(tmp_path: Path) -> None:
    """1203 sessions: more than two of the server's bounded pages, listed whole and cut in the middle."""
    server = HttpServer(tmp_path)
    _store_sessions(server.db, 1203)
    server.start()
    try:
        for source in (["--url", server.url], ["--db", str(server.db)]):
            everything = listed("last", *source, "-n", "0")
            assert len(everything) == 1203
            assert len({row["session_id"] for row in everything}) == 1203
            keys = [(row["started_at"], row["pid"]) for row in everything]
            assert keys == sorted(keys, reverse=True)
            assert pids(listed("last", *source, "-n", "600")) == pids(everything[:600])
            assert len(listed("last", *source)) == 100  # the default count
            assert pids(listed("who", *source, "--host", "host-3", "-n", "0")) == [
                row["pid"] for row in everything if row["hostname"] == "host-3"
            ]
        with connect(home=tmp_path / "client", url=server.url) as client:
            page = structured_answer(client.call("list_sessions", {"limit": 10_000}))
            assert len(page["sessions"]) == 500 and page["next_cursor"]  # the bound
    finally:
        server.stop()


def test_with_a_secret_nothing_is_listed_without_a_valid_token(tmp_path: Path) -> None:
    server = HttpServer(tmp_path, secret=SECRET)
    server.start()
    try:
        seed(server.url, tmp_path / "client", auth=token())
        for env in ({}, {"SESSION_BUDDY_TOKEN": token("another-secret-" + "x" * 40)}):
            for command in ("who", "last"):
                result = run(command, "--url", server.url, env=env)
                assert result.returncode == 1, result
                assert result.stdout == ""
                assert "Authentication failed" in result.stderr and "SESSION_BUDDY_TOKEN" in result.stderr
                assert "Traceback" not in result.stderr and "alpha" not in result.stderr
        with connect(home=tmp_path / "client", url=server.url) as client:
            refused = client.call("list_sessions", {})
            assert refused.is_error and refused.structured_content is None
            assert "Authentication failed" in text_of(refused) and "alpha" not in text_of(refused)
        good = {"SESSION_BUDDY_TOKEN": token()}
        assert pids(listed("last", "--url", server.url, env=good)) == [1005, 1004, 1003, 1002, 1001]
        assert token() not in run("last", "--url", server.url, env=good).stdout
    finally:
        server.stop()


# -- the store: a schema-1 database is migrated ------------------------------------------

_SCHEMA_1 = """
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, component_name TEXT NOT NULL,
    shell_type TEXT NOT NULL, hostname TEXT NOT NULL, pid INTEGER NOT NULL, user TEXT NOT NULL,
    environment TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT,
    status TEXT NOT NULL DEFAULT 'open', exit_reason TEXT, duration_seconds REAL,
    start_metadata TEXT NOT NULL, end_metadata TEXT, recorded_at TEXT NOT NULL
)
"""


def test_a_schema_1_database_is_migrated_and_keeps_its_sessions(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(db)
    raw.execute(_SCHEMA_1)
    raw.execute(
        "INSERT INTO sessions VALUES ('old-20261201-100000', 'e1', 'old', 'OldShell', 'legacy', 7,"
        ' \'{"username":"dave","home":"/home/dave"}\', \'{}\', \'2026-12-01T10:00:00+02:00\','
        " '2026-12-01T09:00:05Z', 'ended', 'user_exit', 5.0, '{}', '{}', '2026-12-01T08:00:00Z')"
    )
    raw.execute("PRAGMA user_version=1")
    raw.commit()
    raw.close()
    rows = listed("last", "--db", str(db), "--user", "dave", "--since", "2026-12-01T08:00:00Z")
    assert [(row["session_id"], row["user"], row["hostname"]) for row in rows] == [
        ("old-20261201-100000", "dave", "legacy")
    ]
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == 2
        indexes = {row[1] for row in check.execute("PRAGMA index_list(sessions)")}
    check.close()
    assert {"sessions_by_start", "sessions_open", "sessions_by_user", "sessions_by_host"} <= indexes
    # Opening again changes nothing; the old `sessions` command still reads it.
    assert len(listed("last", "--db", str(db))) == 1
    result = run("sessions", "--db", str(db), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["session_id"] == "old-20261201-100000"


@pytest.mark.parametrize(
    "where",
    [
        {},
        {"open_only": True},
        {"host": "h"},
        {"user": "u"},
        {"component": "c"},
        {"since": NOW, "until": NOW},
        {"open_only": True, "since": NOW},
    ],
)
def test_the_queries_use_the_indexes(tmp_path: Path, where: dict[str, Any]) -> None:
    """No full scan and no sort for what `who` and `last` ask, on the first page and a later one."""
    from oneiric_session.server.listing import SessionFilter, encode_cursor, page_query

    store = SessionStore(tmp_path / "plan.sqlite3")
    store.close()
    db = sqlite3.connect(tmp_path / "plan.sqlite3")
    try:
        for cursor in (None, encode_cursor(1.5, 7)):
            sql, params = page_query(SessionFilter(**where), cursor, 100)
            plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, (where, plan)
            if cursor is not None:  # a later page seeks to the cursor: it never scans from the top
                assert plan.startswith("SEARCH") and "<expr><?" in plan, plan
    finally:
        db.close()


def test_the_benchmark_generates_migrates_and_answers(tmp_path: Path) -> None:
    """benchmarks/sessions_query.py on a small database: runs, and its pages are full."""
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "sessions_query.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--sessions", "3000", "--runs", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        cwd=tmp_path,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["sessions"] == 3000 and report["cli_rows"] == 100
    assert report["rows_per_query"]["last_first_page"] == 100
    assert report["rows_per_query"]["last_by_host_and_user_none"] == 0
    assert report["rows_per_query"]["who_first_page"] == 30  # 1 % open
    assert report["query_ms"]["last_first_page"]["n"] == 2


# -- idle and an abnormal end, with a real shell and its delivery agent ---------------------------


def test_idle_comes_from_the_agent_and_a_killed_shell_is_gone_no_logout(tmp_path: Path) -> None:
    scene = Scene(tmp_path, agent__idle_exit_seconds="30")
    shell = scene.shell(hold=True, component="idle-probe")
    try:
        assert shell.stdout is not None
        shell.stdout.readline()  # its handle: the start is spooled
        wait_until(lambda: scene.sessions(), what="the start delivered")
        env = {k: v for k, v in scene.env.items() if k != "PATH"}

        def watched() -> list[dict[str, Any]]:
            rows = listed("who", "--db", str(scene.db), env=env)
            return rows if rows and rows[0]["idle_seconds"] is not None else []

        rows = wait_until(watched, what="who to show the agent's last sighting")
        assert rows[0]["pid"] == shell.pid and rows[0]["hostname"] == socket.gethostname()
        assert 0 <= rows[0]["idle_seconds"] < WAIT_SECONDS
        table = run("who", "--db", str(scene.db), env=env).stdout.splitlines()
        assert table[1].split()[-1].count(":") == 2  # H:MM:SS, not "?"

        shell.send_signal(signal.SIGKILL)
        shell.wait(WAIT_SECONDS)

        def ended() -> list[dict[str, Any]]:
            rows = listed("last", "--db", str(scene.db), env=env)
            return rows if rows[0]["status"] == "ended" else []

        assert wait_until(ended, what="the agent to end the killed shell")[0]["exit_reason"] == "abnormal"
        assert "gone - no logout" in run("last", "--db", str(scene.db), env=env).stdout
        assert listed("who", "--db", str(scene.db), env=env) == []
    finally:
        shell.kill()
        shell.wait(WAIT_SECONDS)
        scene.stop_agents()


# A Session-Buddy-like server: the tracking side only, no list_sessions (as the real 0.23.0 / 0.36.0).
_PLAIN_SERVER = """
import sys, uvicorn
from mcp.server.mcpserver import MCPServer
server = MCPServer("plain")
@server.tool()
def health_check() -> str:
    return "ok"
app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_a_server_without_list_sessions_is_named_as_such(tmp_path: Path) -> None:
    from tests.support.http_server import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _PLAIN_SERVER, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="the plain server to listen")
        result = run("last", "--url", f"http://127.0.0.1:{port}/mcp")
        assert result.returncode == 1 and result.stdout == ""
        assert "no list_sessions tool" in result.stderr and "Traceback" not in result.stderr
    finally:
        process.kill()
        process.wait(WAIT_SECONDS)


@pytest.mark.parametrize(
    "option, value",
    [("--since", "99999999d"), ("--since", "99999999999999999999s"), ("--until", "0001-01-01T00:00")],
)
def test_a_moment_out_of_range_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, option: str, value: str
) -> None:
    """They raised OverflowError or ValueError out of `who`/`last`: a traceback, not exit 2."""
    from oneiric_session.cli._who_query import parse_when
    from oneiric_session.errors import ConfigError

    monkeypatch.setenv("TZ", "Europe/Paris")  # east of UTC: year 1 at local midnight is year 0 in UTC
    time.tzset()
    try:
        with pytest.raises(ConfigError, match=rf"^{option} '{value}': out of range"):
            parse_when(value, option)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_start_at_the_edge_of_the_calendar_is_shown_as_written() -> None:
    """Year 1 east of UTC is year 0 in the local zone west of it: OverflowError out of who/last."""
    from oneiric_session.cli.who import end_time, local_time

    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        assert local_time(moment) == moment
        assert end_time(moment, moment) == moment
