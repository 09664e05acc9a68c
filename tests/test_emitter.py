"""SessionEventEmitter: the drop-in for Oneiric 0.17.0's emitter, called the ways Oneiric calls it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from oneiric_session import SessionEventEmitter
from tests.support.delivery import Scene, wait_until
from tests.support.file_tracker import child_env, read_records, sessions


class RecordingTracker:
    """Records calls in memory; `end` can be held until the test releases it."""

    provider = "recording"

    def __init__(self, *, exit_wait_seconds: float | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.hold_end = threading.Event()
        self.hold_end.set()
        self.end_entered = threading.Event()
        if exit_wait_seconds is not None:
            self.exit_wait_seconds = exit_wait_seconds

    def start(
        self, *, component_name: str, shell_type: str, metadata: Mapping[str, Any] | None = None
    ) -> str:
        self.calls.append(("start", (component_name, shell_type, metadata)))
        return f"h{len(self.calls)}"

    def end(
        self,
        handle: str,
        *,
        exit_reason: str = "user_exit",
        duration_seconds: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        self.end_entered.set()
        self.hold_end.wait(10)
        self.calls.append(("end", (handle, exit_reason, duration_seconds, metadata)))
        return True

    def close(self) -> None:
        self.calls.append(("close", None))

    def health(self) -> bool:
        return True

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_start_and_end_inside_asyncio_run_fill_duration_and_reason() -> None:
    """The end carries the duration the emitter measured and the default exit_reason."""
    tracker, clock = RecordingTracker(), FakeClock()
    emitter = SessionEventEmitter("demo", tracker=tracker, clock=clock)
    handle = asyncio.run(emitter.emit_session_start(shell_type="DemoShell", metadata={"adapters": []}))
    assert handle == "h1"
    clock.now += 12.5
    assert (
        asyncio.run(emitter.emit_session_end(session_id=handle, metadata={"duration_seconds": None})) is True
    )
    assert tracker.calls[0] == ("start", ("demo", "DemoShell", {"adapters": []}))
    assert tracker.calls[1] == ("end", ("h1", "user_exit", 12.5, None))
    asyncio.run(emitter.close())
    assert tracker.ops() == ["start", "end"]  # an injected tracker belongs to the caller


def test_end_takes_reason_duration_and_extra_metadata_from_the_host() -> None:
    tracker = RecordingTracker()
    emitter = SessionEventEmitter("demo", tracker=tracker)
    handle = emitter.start_session("DemoShell")
    metadata = {"exit_reason": "exception", "duration_seconds": 3.0, "note": "x"}
    assert asyncio.run(emitter.emit_session_end(handle, metadata)) is True
    assert tracker.calls[1] == ("end", (handle, "exception", 3.0, {"note": "x"}))


def test_a_second_end_records_nothing_and_answers_true() -> None:
    tracker = RecordingTracker()
    emitter = SessionEventEmitter("demo", tracker=tracker)
    handle = emitter.start_session("DemoShell")
    assert emitter.end_session(handle) is True
    assert emitter.end_session(handle, exit_reason="sigterm") is True
    assert tracker.ops() == ["start", "end"]


def test_no_handle_means_no_end() -> None:
    tracker = RecordingTracker()
    emitter = SessionEventEmitter("demo", tracker=tracker)
    assert asyncio.run(emitter.emit_session_end("")) is False
    assert tracker.ops() == []


async def test_start_from_a_task_nobody_keeps() -> None:
    """Oneiric's running-loop path: create_task, no reference kept; the start is recorded at once."""
    tracker = RecordingTracker()
    emitter = SessionEventEmitter("demo", tracker=tracker)
    asyncio.get_running_loop().create_task(emitter.emit_session_start("DemoShell"))
    await asyncio.sleep(0)
    assert tracker.ops() == ["start"]


def test_a_failing_tracker_never_raises_into_the_host() -> None:
    class Broken(RecordingTracker):
        def start(self, **kwargs: Any) -> str:
            raise OSError("disk on fire")

        def end(self, handle: str, **kwargs: Any) -> bool:
            raise OSError("disk on fire")

    emitter = SessionEventEmitter("demo", tracker=Broken())
    assert asyncio.run(emitter.emit_session_start("DemoShell")) is None
    assert asyncio.run(emitter.emit_session_end("h1")) is False


def test_a_configuration_error_gives_noop_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built without a tracker, the emitter resolves the configured one; a bad selection means noop."""
    monkeypatch.setenv("ONEIRIC_SESSION_PROVIDER", "no-such-provider")
    emitter = SessionEventEmitter("demo", settings_dir=tmp_path)
    assert asyncio.run(emitter.emit_session_start("DemoShell")) is None
    asyncio.run(emitter.close())


def test_shutdown_ends_what_the_host_left_open_and_closes_its_own_tracker(
    session_tracker: Any, tmp_path: Path
) -> None:
    emitter = SessionEventEmitter("demo", settings_dir=tmp_path)  # resolves `memory` (the fixture selects it)
    handle = emitter.start_session("DemoShell")
    emitter.shutdown()
    (session,) = session_tracker.sessions
    assert (session.handle, session.exit_reason) == (handle, "user_exit")
    assert session.duration_seconds is not None


def test_shutdown_waits_for_an_end_in_flight_in_another_thread() -> None:
    tracker = RecordingTracker()
    emitter = SessionEventEmitter("demo", tracker=tracker)
    handle = emitter.start_session("DemoShell")
    tracker.hold_end.clear()
    ender = threading.Thread(target=emitter.end_session, args=(handle,), daemon=True)
    ender.start()
    assert tracker.end_entered.wait(10)
    waiter = threading.Thread(target=emitter.shutdown, kwargs={"wait_seconds": 30})
    waiter.start()
    waiter.join(0.05)  # sleep-ok: shutdown must still be waiting for the held end
    assert waiter.is_alive()
    tracker.hold_end.set()
    waiter.join(10)
    assert not waiter.is_alive()
    assert tracker.ops() == ["start", "end"]


def test_shutdown_gives_up_after_its_deadline() -> None:
    tracker = RecordingTracker()
    emitter = SessionEventEmitter("demo", tracker=tracker)
    handle = emitter.start_session("DemoShell")
    tracker.hold_end.clear()
    threading.Thread(target=emitter.end_session, args=(handle,), daemon=True).start()
    assert tracker.end_entered.wait(10)
    emitter.shutdown(wait_seconds=0.05)  # sleep-ok: a deliberately short deadline
    tracker.hold_end.set()


# Oneiric 0.17.0's AdminShell, reduced to exactly how it calls the emitter (oneiric/shell/core.py):
# the emitter is built inside the start coroutine, the start awaited in asyncio.run (or created as a
# task on a running loop), then the atexit hook ends the session from a daemon thread never joined.
ONEIRIC_HOST = textwrap.dedent(
    """
    import asyncio, atexit, sys, threading
    from tests.support.file_tracker import END_ENTERED, install
    install()
    import oneiric_session

    class Host:
        session_tracker = None
        session_id = None

        async def _notify_session_start(self):
            self.session_tracker = oneiric_session.SessionEventEmitter(component_name="demo")
            self.session_id = await self.session_tracker.emit_session_start(
                shell_type="DemoShell", metadata={"component_version": "1.0", "adapters": []}
            )

        async def _notify_session_end(self):
            await self.session_tracker.emit_session_end(
                session_id=self.session_id, metadata={"duration_seconds": None}
            )

        def _sync_session_end(self):
            if self.session_id and self.session_tracker:
                def emit_in_thread():
                    loop = asyncio.new_event_loop()
                    asyncio.set_event_loop(loop)
                    try:
                        loop.run_until_complete(self._notify_session_end())
                    finally:
                        loop.close()
                threading.Thread(target=emit_in_thread, daemon=True).start()
                if IN_FLIGHT:  # not Oneiric: make sure its end is under way when our hook runs
                    END_ENTERED.wait(5)

        def start(self):
            try:
                asyncio.get_running_loop()
                asyncio.create_task(self._notify_session_start())
            except RuntimeError:
                asyncio.run(self._notify_session_start())
            atexit.register(self._sync_session_end)

    IN_FLIGHT = sys.argv[2] == "slow"
    if sys.argv[1] == "asyncio_run":
        Host().start()
    else:
        async def main():
            Host().start()
            await asyncio.sleep(0)
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("path", ["asyncio_run", "running_loop"])
@pytest.mark.parametrize("speed", ["fast", "slow"])
def test_oneiric_style_host_gets_exactly_one_end_at_exit(tmp_path: Path, path: str, speed: str) -> None:
    """Whatever the order of the two atexit hooks, the session ends once, and nothing is printed.

    "slow": the daemon thread's end takes 0.3 s; without the emitter's wait the interpreter would
    kill that thread at shutdown and the end would be lost.
    """
    env = child_env(tmp_path, ONEIRIC_SESSION_TEST_END_DELAY="0.3" if speed == "slow" else "0")
    done = subprocess.run(
        [sys.executable, "-c", ONEIRIC_HOST, path, speed], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    (session,) = sessions(env["ONEIRIC_SESSION_TEST_RECORD"])
    (end,) = session["ends"]
    assert (session["component_name"], session["shell_type"]) == ("demo", "DemoShell")
    assert end["exit_reason"] == "user_exit"
    assert isinstance(end["duration_seconds"], float)
    if speed == "slow" and path == "asyncio_run":
        assert end["daemon"] is True  # the host's own end, which the emitter waited for
    assert read_records(env["ONEIRIC_SESSION_TEST_RECORD"])[-1]["op"] == "close"


def test_a_host_that_never_ends_gets_its_session_ended_at_exit(tmp_path: Path) -> None:
    env = child_env(tmp_path)
    script = textwrap.dedent(
        """
        import asyncio
        from tests.support.file_tracker import install
        install()
        from oneiric_session import SessionEventEmitter
        emitter = SessionEventEmitter("demo")
        asyncio.run(emitter.emit_session_start("DemoShell"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    (session,) = sessions(env["ONEIRIC_SESSION_TEST_RECORD"])
    assert [e["exit_reason"] for e in session["ends"]] == ["user_exit"]


def test_a_forked_child_leaving_ends_nothing_of_its_parents(tmp_path: Path) -> None:
    """A helper forked inside a tracked shell (a daemonising library, a subprocess made with fork)
    leaves the normal way: atexit runs in it too. It ended the shell's session while the shell ran
    on, and the shell's own end then found it ended."""
    env = child_env(tmp_path)
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from tests.support.file_tracker import install
        install()
        from oneiric_session import SessionEventEmitter
        emitter = SessionEventEmitter("demo")
        handle = asyncio.run(emitter.emit_session_start("DemoShell"))
        child = os.fork()
        if child == 0:
            sys.exit(0)
        os.waitpid(child, 0)
        asyncio.run(emitter.emit_session_end(handle, {"exit_reason": "user_exit"}))
        print(os.getpid())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (session,) = sessions(env["ONEIRIC_SESSION_TEST_RECORD"])
    assert [(e["pid"], e["exit_reason"]) for e in session["ends"]] == [
        (int(done.stdout.split()[-1]), "user_exit")
    ]


DELETED_CWD_HOST = textwrap.dedent(
    """
    import asyncio, os, tempfile
    gone = tempfile.mkdtemp()
    os.chdir(gone)
    os.rmdir(gone)  # a shell left in a directory another terminal removed
    from oneiric_session import SessionEventEmitter
    emitter = SessionEventEmitter(component_name="svc")
    async def main():
        handle = await emitter.emit_session_start("TestShell")
        print(handle, type(emitter._get_tracker()).__name__)
        await emitter.emit_session_end(handle, {"duration_seconds": None})
    asyncio.run(main())
    """
)


def test_a_shell_in_a_deleted_directory_is_tracked(scene: Scene) -> None:
    """./settings (the default settings directory) could not even be named: getcwd() raised, and
    tracking went off with a FileNotFoundError. There is simply no ./settings to read."""
    env = {k: v for k, v in scene.env.items() if k != "ONEIRIC_SESSION_SETTINGS_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", DELETED_CWD_HOST],
        env=env,
        cwd=scene.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "tracking is off" not in done.stderr, done.stderr
    handle, tracker = done.stdout.split()
    assert handle.startswith("local-") and tracker == "SessionBuddyTracker"
    wait_until(lambda: [s for s in scene.sessions() if s["status"] == "ended"], what="the session delivered")


OUTLIVING_HOST = textwrap.dedent(
    """
    import asyncio, glob, os, time
    from pathlib import Path
    from oneiric_session import SessionEventEmitter
    from oneiric_session.wakeup import agent_holds_lock
    emitter = SessionEventEmitter(component_name="svc")
    async def main():
        handle = await emitter.emit_session_start("TestShell")
        assert await emitter.emit_session_end(handle, {"duration_seconds": None})
        await emitter.close()
    asyncio.run(main())
    import threading
    threads = threading.active_count()  # a thread left running would make every fork warn (3.12+)
    spool = Path(os.environ["ONEIRIC_SESSION_SPOOL__PATH"])
    deadline = time.monotonic() + 50
    # The host carries on while the agent starts, then idles out (2 s here); polled (real processes).
    while not agent_holds_lock(spool) and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok
    while agent_holds_lock(spool) and time.monotonic() < deadline:
        time.sleep(0.1)  # sleep-ok
    time.sleep(0.5)  # sleep-ok: the lock goes as the agent exits; a child of ours would be a zombie by now
    children = [p for f in glob.glob("/proc/self/task/*/children") for p in open(f).read().split()]
    print("running" if agent_holds_lock(spool) else "gone", children, threads)
    """
)


def test_a_host_that_outlives_its_session_keeps_no_zombie_agent(scene: Scene) -> None:
    """The agent a shell spawned was its child: once it idled out it stayed a zombie until the host
    spawned again or left (a service, a notebook kernel). A thread waiting for it (review D's fix)
    made every later fork of the host warn on Python 3.12+ (review H): it is started by `sh`."""
    done = subprocess.run(
        [sys.executable, "-c", OUTLIVING_HOST],
        env=scene.env,
        cwd=scene.root,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    # The agent idled out, and the host has no child left, and had no thread of ours meanwhile.
    assert done.stdout.strip() == "gone [] 1"
