"""Paths the commands cannot read, or that are not what they should be, said plainly (review O).

Each test failed on a334371: an outbox or spool directory that cannot be read (a traceback, or
"nothing waits" while records wait), a refusal blaming another user for what could not be
examined, a spool replay cannot write, `./~user` in a setting read as a home directory, a
relative $ONEIRIC_SESSION_DB, and `serve` waiting for ever on a FIFO.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
from collections.abc import Iterator

import pytest

from oneiric_session.config.loader import load_config
from oneiric_session.errors import ConfigError
from oneiric_session.spool.outbox import Outbox, outbox_dir
from oneiric_session.tracking import events
from oneiric_session.tracking.limits import Limits
from tests.support.delivery import CLI, Scene

CAPS = (10_000, 64 * 1024 * 1024, 30 * 86400.0)


@contextlib.contextmanager
def _mode(path: str | os.PathLike[str], mode: int, *, back: int) -> Iterator[None]:
    """`path` with `mode` for the block, `back` after it."""
    os.chmod(path, mode)
    try:
        yield
    finally:
        os.chmod(path, back)


def _write_start(scene: Scene, name: str = "early") -> None:
    destination = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name=name, shell_type="S", metadata=None, limits=Limits())
    assert Outbox(scene.spool_path, caps=CAPS).append_start(
        f"local-{name}", destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
    )


def _spool_with_a_row(scene: Scene, name: str = "kept") -> None:
    destination = load_config(environ=scene.env).destination()
    start = events.build_start_event(component_name=name, shell_type="S", metadata=None, limits=Limits())
    ended = {"exit_reason": "user_exit", "duration_seconds": 1.0, "metadata": None}
    end = events.build_end_event(session_id=f"local-{name}", limits=Limits(), **ended)
    with scene.spool() as spool:
        assert spool.append_start(
            f"local-{name}", destination, start, pid=os.getpid(), pid_start_time=None, boot_id=None
        )
        assert spool.append_end(f"local-{name}", destination, end)


# -- 1. an own outbox that cannot be listed, beside a spool database: tracebacks -------------------


@pytest.mark.parametrize(
    "args",
    [("status",), ("spool", "list"), ("spool", "replay")],
    ids=["status", "spool-list", "spool-replay"],
)
def test_an_unreadable_own_outbox_beside_a_spool_database_is_said_not_a_traceback(
    scene: Scene, args: tuple[str, ...]
) -> None:
    """Intake.stats -> outbox_waiting -> record_names raises PermissionError (b51f79b made it
    re-raise every OSError but 'absent'), and nothing above it catches it."""
    _spool_with_a_row(scene)
    _write_start(scene)
    directory = outbox_dir(scene.spool_path)
    with _mode(directory, 0, back=0o700):
        result = scene.run(*args, ordinary_user=True)
    assert "Traceback" not in result.stderr, result.stderr[-1500:]


def test_replay_delivers_what_the_database_holds_when_the_outbox_cannot_be_listed(scene: Scene) -> None:
    """The agent delivers these rows (its take_in says the outbox cannot be read and goes on);
    replay dies in DeliveryAgent.replay's first stats() and delivers nothing."""
    _spool_with_a_row(scene)
    _write_start(scene)
    directory = outbox_dir(scene.spool_path)
    with _mode(directory, 0, back=0o700):
        scene.run("spool", "replay", ordinary_user=True)
    assert [s["component_name"] for s in scene.sessions()] == ["kept"]


# -- 2. replay / status with an own outbox mode 000 and no database: "nothing waits" ---------------


def test_replay_of_an_unreadable_outbox_does_not_say_nothing_waits(scene: Scene) -> None:
    """`spool list` warns and exits 1 (review N); replay says 'delivered 0 ... 0 still waiting'
    and exits 0 (CONTRACT: all delivered) while the records wait, unread."""
    _write_start(scene)
    directory = outbox_dir(scene.spool_path)
    with _mode(directory, 0, back=0o700):
        listing = scene.run("spool", "list", ordinary_user=True)
        replay = scene.run("spool", "replay", ordinary_user=True)
    assert listing.returncode == 1
    assert replay.returncode == 1, replay.stdout + replay.stderr


def test_status_says_an_unreadable_outbox_cannot_be_read(scene: Scene) -> None:
    """`status` shows depth 0 and no warning at all for an outbox of ours that cannot be listed
    (it checks outbox_problem, not outbox_unreadable), while `spool list` warns."""
    _write_start(scene)
    directory = outbox_dir(scene.spool_path)
    with _mode(directory, 0, back=0o700):
        result = scene.run("status", "--json", ordinary_user=True)
    delivery = json.loads(result.stdout)["delivery"]
    said = " ".join(delivery.get("warnings", [])) + delivery.get("error", "")
    assert delivery["depth"] > 0 or "cannot be read" in said, delivery


# -- 3. status with a spool directory that cannot be searched ---------------------------------------


def test_status_with_an_unreadable_spool_directory_says_it_cannot_be_examined(scene: Scene) -> None:
    """os.path.exists is False for permission denied (the defect review M fixed for spool list,
    not for status): depth 0, no error; `spool list` exits 1 'cannot be examined'."""
    _spool_with_a_row(scene)
    directory = scene.spool_path.parent
    with _mode(directory, 0, back=0o700):
        result = scene.run("status", "--json", ordinary_user=True)
    delivery = json.loads(result.stdout)["delivery"]
    assert "error" in delivery, delivery


@pytest.mark.parametrize("how", ["permission-denied", "too-long"])
def test_status_does_not_blame_another_user_for_a_spool_it_cannot_examine(scene: Scene, how: str) -> None:
    """foreign_reason's 'cannot be examined: Permission denied' / 'File name too long' is shown as
    '(another user could have written its launch lines)'."""
    env = None
    if how == "too-long":
        env = {"ONEIRIC_SESSION_SPOOL__PATH": str(scene.root / ("a" * 300))}
        result = scene.run("status", "--json", env=env)
    else:
        scene.spool_path.parent.mkdir(parents=True, mode=0o700)
        with _mode(scene.spool_path.parent, 0, back=0o700):
            result = scene.run("status", "--json", ordinary_user=True)
    warnings = json.loads(result.stdout)["delivery"].get("warnings", [])
    blamed = [w for w in warnings if "cannot be examined" in w and "another user could have written" in w]
    assert not blamed, blamed


def test_the_agent_does_not_blame_another_user_for_a_spool_it_cannot_examine(scene: Scene) -> None:
    """cli/agent.py: 'refusing to deliver X: X cannot be examined: Permission denied, so another
    user could have written it; set spool.path to a directory only you can write'."""
    locked = scene.root / "locked"
    locked.mkdir(mode=0o700)
    with _mode(locked, 0, back=0o700):
        result = scene.run(
            "agent", "--foreground", "--spool", str(locked / "spool.sqlite3"), ordinary_user=True
        )
    assert "Permission denied" in result.stderr, result.stderr
    assert "so another user could have written it" not in result.stderr, result.stderr


# -- 4. spool file not writable: replay traceback --------------------------------------------------


@pytest.mark.parametrize("mode", [0o400, 0o000])
def test_replay_of_a_spool_it_cannot_write_is_said_not_a_traceback(scene: Scene, mode: int) -> None:
    """AgentLock._claim turns the SpoolError into OSError, which main() does not catch."""
    _spool_with_a_row(scene)
    with _mode(scene.spool_path, mode, back=0o600):
        result = scene.run("spool", "replay", ordinary_user=True)
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert result.returncode == 1


# -- 5. './~user' in a settings file is the home of `user` ------------------------------------------


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize("given", ["./~{me}/spool.sqlite3", "./~old/spool.sqlite3", "spool.sqlite3"])
def test_a_relative_spool_path_is_refused_as_relative_and_named_as_given(scene: Scene, given: str) -> None:
    """pydantic's Path drops './', and pathlib then read './~root/spool.sqlite3' as
    /root/spool.sqlite3 (while --spool './~root/...' is a file here), and './~old/...' as the home
    of an unknown user; the refusal then named 'spool.sqlite3' as './spool.sqlite3' (review P)."""
    given = given.format(me=_me())
    result = scene.run("status", env={"ONEIRIC_SESSION_SPOOL__PATH": given})
    assert result.returncode == 2, result.stdout
    assert f"spool.path: '{given}' is a relative path" in result.stderr, result.stderr


def test_a_token_file_starting_with_dot_slash_tilde_is_a_file_here(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_file './~root/token' read /root/token (a file of another place, or another user's)."""
    here = scene.root / f"~{_me()}"
    here.mkdir()
    (here / "token").write_text("T0KEN\n")
    os.chmod(here / "token", 0o600)
    monkeypatch.chdir(scene.root)
    config = load_config(environ={**scene.env, "ONEIRIC_SESSION_TOKEN_FILE": f"./~{_me()}/token"})
    try:
        token = config.token()
    except ConfigError as exc:
        pytest.fail(str(exc))
    assert token == "T0KEN"


# -- 6. $ONEIRIC_SESSION_DB relative: not as --db -------------------------------------------------


def test_the_database_variable_is_made_absolute_as_db_is(scene: Scene) -> None:
    """--db rel.sqlite3 shows <cwd>/rel.sqlite3; $ONEIRIC_SESSION_DB=rel.sqlite3 shows 'rel.sqlite3'."""
    by_option = scene.run("sessions", "--db", "rel.sqlite3")
    by_variable = scene.run("sessions", env={"ONEIRIC_SESSION_DB": "rel.sqlite3"})
    assert by_option.stdout == by_variable.stdout, (by_option.stdout, by_variable.stdout)


def test_the_database_variable_in_a_deleted_directory_is_refused_as_db_is(scene: Scene) -> None:
    """--db rel.sqlite3 in a deleted working directory: a configuration error; the variable:
    'no sessions recorded in rel.sqlite3', exit 0."""
    gone = scene.root / "gone"
    gone.mkdir()

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(gone), *CLI, *args],
            env={**scene.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    by_option = run("sessions", "--db", "rel.sqlite3")
    gone.mkdir()
    by_variable = run("sessions", env={"ONEIRIC_SESSION_DB": "rel.sqlite3"})
    assert by_option.returncode == 2, by_option.stderr
    assert by_variable.returncode == by_option.returncode, by_variable.stdout + by_variable.stderr


# -- 8. serve on a FIFO: hangs, deaf to SIGTERM and ^C -----------------------------------------------


def test_serve_on_a_fifo_is_refused_not_waited_on(scene: Scene) -> None:
    """sessions/who/last refuse a FIFO where the database should be (review N); `serve --db <fifo>`
    blocks in open() for ever, and it has blocked SIGTERM/SIGINT/SIGHUP first (stdio mode), so
    neither ^C nor `kill` ends it."""
    fifo = scene.root / "db.sqlite3"
    os.mkfifo(fifo)
    process = scene.start("serve", "--db", str(fifo))
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.terminate()  # as `kill` and ^C would: blocked
        try:
            process.wait(timeout=5)
            ended = "SIGTERM ended it"
        except subprocess.TimeoutExpired:
            ended = "SIGTERM did not end it"
        process.kill()
        process.communicate()
        pytest.fail(f"serve --db <fifo> still waiting after 20 s; {ended}")
    assert process.returncode != 0
    assert "not a regular file" in stderr, stderr
