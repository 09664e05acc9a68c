"""`oneiric-session spool list|replay` against the bundled server, with real shells and agents."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.cli.spool import Progress
from oneiric_session.config.loader import load_config
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from oneiric_session.wakeup import agent_holds_lock
from tests.support.delivery import Scene, wait_until
from tests.support.faults import FAULT_SERVER

SLOW_AGENT = str(Path(__file__).parent / "support" / "slow_agent.py")


def test_events_spooled_under_a_broken_server_arrive_once_after_replay(scene: Scene) -> None:
    """Four shells while the server cannot start: eight events wait; replay delivers four sessions once."""
    scene.configure(server__command=str(scene.root / "no-such-server"), server__args=[])
    handles = [h for n in range(4) for h in scene.run_shell(1, component=f"shell{n}")]
    assert len(set(handles)) == 4

    listing = scene.run("spool", "list", "--json")
    assert listing.returncode == 1, listing.stderr  # 1: events remain
    report = json.loads(listing.stdout)
    assert len(report["pending"]) == 8
    assert {r["handle"] for r in report["pending"]} == set(handles)
    assert sorted(r["kind"] for r in report["pending"]) == ["end"] * 4 + ["start"] * 4
    assert report["dead"] == []

    scene.use_bundled_server()  # the configuration is fixed
    replay = scene.run("spool", "replay")
    assert replay.returncode == 0, replay.stderr
    assert "delivered 8 event(s)" in replay.stdout
    assert "8/8 delivered" in replay.stderr

    sessions = scene.sessions()
    assert sorted(s["component_name"] for s in sessions) == ["shell0", "shell1", "shell2", "shell3"]
    assert all(s["status"] == "ended" and s["exit_reason"] == "user_exit" for s in sessions)
    assert scene.depth() == 0

    again = scene.run("spool", "replay", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["delivered"] == 0
    assert len(scene.sessions()) == 4


def test_replay_takes_in_and_retargets_what_is_still_in_the_outbox(scene: Scene) -> None:
    """A shell's records not taken in yet (no agent got to them: none ever made the database) go
    with the rest: replay takes them in before it moves the failing destination's events."""
    scene.configure(server__command=str(scene.root / "no-such-server"), server__args=[])
    broken = load_config(environ=scene.env).destination()
    outbox = Outbox(scene.spool_path, caps=(10_000, 64 * 1024 * 1024, 30 * 86400.0))
    start = events.build_start_event(component_name="late", shell_type="S", metadata=None, limits=Limits())
    end = events.build_end_event(
        session_id="local-late", exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=Limits()
    )
    assert outbox.append_start(
        "local-late", broken, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )
    assert outbox.append_end("local-late", broken, end)
    assert not scene.spool_path.exists()

    scene.use_bundled_server()  # the configuration is fixed
    replay = scene.run("spool", "replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "delivered 2 event(s)" in replay.stdout
    (session,) = scene.sessions()
    assert (session["component_name"], session["status"]) == ("late", "ended")
    assert scene.depth() == 0


def test_replay_with_an_outbox_it_must_refuse_still_delivers_what_the_database_holds(scene: Scene) -> None:
    """An outbox others can write is never read (hardening): replay says so, and delivers the rest;
    it exits 1, as `spool list` does, since records may wait there unread (review O)."""
    scene.configure(server__command=str(scene.root / "no-such-server"), server__args=[])
    broken = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name="kept", shell_type="S", metadata=None, limits=Limits())
    end = events.build_end_event(
        session_id="local-kept", exit_reason="user_exit", duration_seconds=1.0, metadata=None, limits=Limits()
    )
    with scene.spool() as spool:
        assert spool.append_start(
            "local-kept", broken, start, pid=os.getpid(), pid_start_time=None, boot_id=None
        )
        assert spool.append_end("local-kept", broken, end)
    outbox = Path(outbox_dir(scene.spool_path))
    outbox.mkdir(mode=0o700)
    outbox.chmod(0o777)

    scene.use_bundled_server()
    replay = scene.run("spool", "replay")
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "delivered 2 event(s)" in replay.stdout
    assert "writable by other users" in replay.stderr
    assert "warning: outbox refused, its records are not read" in replay.stdout
    assert [s["component_name"] for s in scene.sessions()] == ["kept"]


def test_replay_while_the_agent_holds_the_lock_but_does_not_listen_yet(scene: Scene) -> None:
    """A hand-over sent before the agent bound its socket is lost: replay asks again until the agent
    steps aside (a busy agent never idles out, so one lost request failed the replay after 15 s)."""
    agent = subprocess.Popen(
        [sys.executable, SLOW_AGENT, "4", "--foreground", "--spool", str(scene.spool_path)],
        env=scene.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=scene.root,
    )
    try:
        wait_until(lambda: agent_holds_lock(scene.spool_path), what="the agent to take the lock")
        shell = scene.shell(1, hold=True)  # an open session: the agent stays busy
        assert shell.stdout is not None and shell.stdin is not None
        shell.stdout.readline()
        replay = scene.run("spool", "replay")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert agent.wait(timeout=30) == 0  # it stepped aside
        shell.stdin.close()
        assert shell.wait(timeout=60) == 0
        wait_until(lambda: [s["status"] for s in scene.sessions()] == ["ended"], what="the end")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_refusals_are_listed_as_dead_letters_and_replay_retries_them_on_request(scene: Scene) -> None:
    """A server that refuses starts: the start and its end are dead letters with the server's reason."""
    scene.configure(
        server__command=sys.executable,
        server__args=[FAULT_SERVER],
        server__env={"FAULT_MODE": "status_error"},
    )
    scene.run_shell(1)
    wait_until(lambda: scene.dead() == 2, what="two dead letters")

    report = json.loads(scene.run("spool", "list", "--json").stdout)
    assert report["pending"] == []
    reasons = {row["kind"]: (row["dead_category"], row["dead_reason"]) for row in report["dead"]}
    assert reasons["start"][0] == "rejected"
    assert "Path does not exist" in reasons["start"][1]
    assert reasons["end"][0] == "start refused"
    listed = scene.run("spool", "list")
    assert listed.returncode == 1
    assert "0 waiting, 2 dead letter(s)" in listed.stdout and "Path does not exist" in listed.stdout

    plain = scene.run("spool", "replay", "--json")
    assert (plain.returncode, json.loads(plain.stdout)["delivered"]) == (0, 0)
    retried = scene.run("spool", "replay", "--dead", "--json")
    assert retried.returncode == 1
    assert json.loads(retried.stdout)["dead_lettered"] == 1
    assert scene.dead() == 2


def test_listing_a_missing_spool_creates_nothing(scene: Scene) -> None:
    result = scene.run("spool", "list")
    assert result.returncode == 0
    assert "0 waiting" in result.stdout
    assert not scene.spool_path.exists()


def test_listing_shows_the_outbox_before_any_agent_made_the_database(scene: Scene) -> None:
    """`spool list` said "0 waiting" and exited 0 while `status` counted the shells' records still in
    the outbox: no agent had made the database yet (one never started: review L)."""
    destination = load_config(environ=scene.env).destination()
    outbox = Outbox(scene.spool_path, caps=(10_000, 64 * 1024 * 1024, 30 * 86400.0))
    start = events.build_start_event(component_name="early", shell_type="S", metadata=None, limits=Limits())
    assert outbox.append_start(
        "local-early", destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )
    result = scene.run("spool", "list", "--json")
    assert result.returncode == 1, result.stdout + result.stderr  # events wait: scriptable
    (row,) = json.loads(result.stdout)["pending"]
    assert (row["kind"], row["handle"], row["component_name"]) == ("start", "local-early", "early")
    assert "1 waiting" in scene.run("spool", "list").stdout
    assert not scene.spool_path.exists()  # listing still creates nothing


@pytest.mark.parametrize(
    "command",
    [
        ("who", "--db"),
        ("last", "--db"),
        ("sessions", "--db"),
        ("serve", "--db"),
        ("spool", "list", "--spool"),
        ("spool", "replay", "--spool"),
        ("agent", "--foreground", "--spool"),
    ],
)
def test_a_path_option_naming_an_unknown_users_home_is_a_configuration_error(
    scene: Scene, command: tuple[str, ...]
) -> None:
    """`--db ~nosuchuser/x` was a RuntimeError traceback; `serve` and `sessions` did not expand `~`
    at all while `who` and `last` did, so they read different files (review L)."""
    result = scene.run(*command, "~oneiric-session-no-such-user/x")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"oneiric-session: configuration error: {command[-1]} names a home directory ('~') this system does "
        "not know: '~oneiric-session-no-such-user/x'\n"
    )
    assert "Traceback" not in result.stderr


def test_replay_sends_only_its_own_destinations_rows(scene: Scene) -> None:
    """Another project's server that answers keeps its events, and replay never sends them itself:
    it has no token for that server (only that project's shells bring it), so a refusal would make
    them dead letters, reported as the replay's own."""
    from oneiric_session.agent.status import DestinationStatus, publish_destinations
    from oneiric_session.tracking.destination import Destination

    fleet = Destination(transport="http", url="http://127.0.0.1:9/mcp")  # nothing answers there
    ours = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name="other", shell_type="S", metadata=None, limits=Limits())
    with scene.spool() as spool:
        assert spool.append_start("local-theirs", fleet, start, pid=None, pid_start_time=None, boot_id=None)
        mine = {**start, "event_id": "00000000-0000-4000-8000-000000000001", "component_name": "mine"}
        assert spool.append_start("local-mine", ours, mine, pid=None, pid_start_time=None, boot_id=None)
    publish_destinations(scene.spool_path, {fleet.key: DestinationStatus(target="fleet")}, None)
    try:
        replay = scene.run("spool", "replay", "--json")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert json.loads(replay.stdout) == {
            "destination": ours.describe(),
            "delivered": 1,
            "remaining": 0,
            "dead_lettered": 0,
        }
        with scene.spool() as spool:
            (theirs,) = spool.list_pending()
            assert theirs.handle == "local-theirs" and theirs.attempts == 0 and spool.list_dead() == []
    finally:
        scene.stop_agents()  # the one replay handed the other destination's row to


def test_the_agent_replay_hands_back_to_gets_the_secret_server_env(scene: Scene) -> None:
    """Secret server.env values travel in memory only: the agent replay spawns for what is left
    (here, a session to watch) gets them from the replay, as one a shell spawns gets them from it."""
    import signal

    del scene.env["ONEIRIC_SESSION_SETTINGS_DIR"]  # ./settings: the agent, run in "/", cannot read it
    (scene.root / "settings" / "adapters.yml").write_text(
        "provider_settings:\n  session-buddy:\n    server: {env: {DEMO_API_KEY: hunter2}}\n"
    )
    holder = scene.shell(1, hold=True)
    assert holder.stdout is not None
    holder.stdout.readline()
    try:
        wait_until(lambda: len(scene.sessions()) == 1 and scene.depth() == 0, what="the start delivered")
        replay = scene.run("spool", "replay")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        wait_until(lambda: scene.agent_pid() is not None, what="the agent replay handed back to")
        holder.send_signal(signal.SIGKILL)  # its end: the agent's to send, launching the server anew
        holder.wait()
        wait_until(lambda: [s["status"] for s in scene.sessions()] == ["ended"], what="the abnormal end")
    finally:
        if holder.poll() is None:
            holder.kill()
        scene.stop_agents()


def test_replay_progress_counts_the_events_shells_write_meanwhile(capsys: pytest.CaptureFixture[str]) -> None:
    """Events taken in during the replay are delivered too: the count never reads 3/2."""
    progress = Progress(2)
    assert not progress.shown
    for delivered in (1, 2, 3):
        progress(delivered)
    assert progress.shown
    assert capsys.readouterr().err == "\rreplay: 1/2 delivered\rreplay: 2/2 delivered\rreplay: 3/3 delivered"


@pytest.mark.parametrize("command", ["sessions", "who", "last"])
def test_the_server_database_variable_naming_an_unknown_users_home_is_a_configuration_error(
    scene: Scene, command: str
) -> None:
    """$ONEIRIC_SESSION_DB=~nosuchuser/x was a RuntimeError traceback (review L)."""
    result = scene.run(command, env={"ONEIRIC_SESSION_DB": "~oneiric-session-no-such-user/x"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ONEIRIC_SESSION_DB names a home directory ('~') this system does not know" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "code", "said"),
    [
        (
            ("status",),
            {"ONEIRIC_SESSION_SETTINGS_DIR": "/tmp/" + "L" * 300},
            2,
            "does not exist or is not a directory",
        ),
        (("sessions", "--db", "/tmp/" + "L" * 300), {}, 0, "no sessions recorded"),
        (("who", "--db", "/tmp/" + "L" * 300), {}, 0, "no sessions"),
        (("spool", "list", "--spool", "{root}/" + "L" * 300), {}, 0, "0 waiting"),
    ],
    ids=["settings-dir", "sessions", "who", "spool-list"],
)
def test_a_path_too_long_to_look_at_is_said_not_raised(
    scene: Scene, args: tuple[str, ...], env: dict[str, str], code: int, said: str
) -> None:
    """On Python 3.11 and 3.12 `Path.exists()`/`is_dir()` raise for ENAMETOOLONG (and EACCES) where
    3.13 answers False: tracebacks from status, sessions, who and spool list (review L)."""
    result = scene.run(*(a.replace("{root}", str(scene.root)) for a in args), env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stdout + result.stderr
    assert said in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("spool", "list", "--spool"), "spool"),
        (("spool", "replay", "--spool"), "spool"),
        (("sessions", "--db"), "session database"),
        (("who", "--db"), "session database"),
        (("last", "--db"), "session database"),
    ],
    ids=["spool-list", "spool-replay", "sessions", "who", "last"],
)
def test_a_database_that_cannot_be_examined_is_said_not_taken_for_absent(
    scene: Scene, args: tuple[str, ...], what: str
) -> None:
    """`os.path.exists` is False for permission denied too: an unreadable spool listed as "0
    waiting" and exit 0 (CONTRACT.md: nothing remains), a replay "delivered 0" (review M)."""
    locked = scene.root / "locked"
    locked.mkdir(mode=0o700)
    (locked / "spool.sqlite3").write_bytes(b"")
    path = locked / "spool.sqlite3"
    os.chmod(locked, 0)
    try:
        result = scene.run(*args, str(path), ordinary_user=True)
    finally:
        os.chmod(locked, 0o700)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{what} cannot be examined (Permission denied): {path}" in result.stderr


def test_listing_an_outbox_in_a_directory_others_can_write_is_refused_as_replay_refuses_it(
    scene: Scene,
) -> None:
    """With no database yet, `spool list` listed the records of a spool every other command refuses
    (another user could have written its directory): events shown waiting that nothing would ever
    deliver (review M)."""
    shared = scene.root / "shared"
    shared.mkdir()
    path = shared / "spool.sqlite3"
    outbox = Outbox(path, caps=(10_000, 64 * 1024 * 1024, 30 * 86400.0))
    start = events.build_start_event(component_name="early", shell_type="S", metadata=None, limits=Limits())
    destination = load_config(environ=scene.env).destination()
    assert outbox.append_start(
        "local-early", destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )
    os.chmod(shared, 0o777)
    listing, replay = (
        scene.run("spool", "list", "--spool", str(path)),
        scene.run("spool", "replay", "--spool", str(path)),
    )
    for result in (listing, replay):
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"spool {path} refused: directory {shared} is writable by other users" in result.stderr


def test_a_tilde_after_a_leading_dot_slash_is_a_file_name(scene: Scene) -> None:
    """`--db ./~old.sqlite3` names a file in this directory: pathlib drops the `./` and then
    expanded it as the home of a user `old.sqlite3`, a configuration error (review M)."""
    result = scene.run("sessions", "--db", "./~old.sqlite3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no sessions recorded in {scene.root / '~old.sqlite3'}" in result.stdout


def test_listing_agrees_with_replay_on_a_spool_that_holds_nothing_yet(scene: Scene) -> None:
    """`spool list` refused a spool path under /tmp whose directory does not exist yet, while
    replay said "delivered 0" for it: nothing is listed, so nothing is refused (review N)."""
    path = Path("/tmp") / f"oneiric-session-test-{os.urandom(6).hex()}" / "spool.sqlite3"
    try:
        listing = scene.run("spool", "list", "--spool", str(path))
        replay = scene.run("spool", "replay", "--spool", str(path))
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    assert (listing.returncode, replay.returncode) == (0, 0), listing.stderr + replay.stderr
    assert "0 waiting" in listing.stdout


def test_a_fifo_where_the_database_should_be_is_refused_not_waited_on(scene: Scene) -> None:
    """`sessions --db <fifo>` hung for ever opening it (review N)."""
    fifo = scene.root / "db.sqlite3"
    os.mkfifo(fifo)
    result = scene.run("sessions", "--db", str(fifo), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"session database is not a regular file: {fifo}" in result.stderr


def test_the_database_variable_reads_a_tilde_after_dot_slash_as_a_file_name(scene: Scene) -> None:
    """$ONEIRIC_SESSION_DB=./~old.sqlite3 was refused as the home of a user `old.sqlite3`, while
    `--db ./~old.sqlite3` was a file here (review N)."""
    result = scene.run("sessions", env={"ONEIRIC_SESSION_DB": "./~old.sqlite3"})
    assert result.returncode == 0, result.stdout + result.stderr
    # A file named `~old.sqlite3` in the working directory, named in full as `--db` names its file.
    assert f"no sessions recorded in {scene.root / '~old.sqlite3'}" in result.stdout


@pytest.mark.parametrize("how", ["others-can-write", "unreadable"])
def test_records_in_an_outbox_that_cannot_be_read_are_said_not_hidden(scene: Scene, how: str) -> None:
    """An outbox another user could have written, or one that cannot be listed: `spool list` said
    "0 waiting" and exit 0 (nothing remains) while records waited there, or raised PermissionError
    (review N). It says the outbox is refused, and exits 1."""
    destination = load_config(environ=scene.env).destination()
    outbox = Outbox(scene.spool_path, caps=(10_000, 64 * 1024 * 1024, 30 * 86400.0))
    start = events.build_start_event(component_name="early", shell_type="S", metadata=None, limits=Limits())
    assert outbox.append_start(
        "local-early", destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )
    directory = outbox_dir(scene.spool_path)
    os.chmod(directory, 0o777 if how == "others-can-write" else 0)
    try:
        result = scene.run("spool", "list", ordinary_user=True)
    finally:
        os.chmod(directory, 0o700)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert "warning: outbox refused, its records are not read:" in result.stdout
