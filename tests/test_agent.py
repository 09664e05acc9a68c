"""The delivery agent as a real process: exactly once across kills, races, abnormal ends, idle exit."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import re
import signal
from pathlib import Path

import pytest

from oneiric_session import wakeup
from oneiric_session.agent.status import delivery_status
from oneiric_session.config.loader import load_config
from tests.support.delivery import WAIT_SECONDS, Scene, process_gone, wait_until


def _log(scene: Scene) -> Path:
    return wakeup.agent_log_path(scene.spool_path)


@pytest.mark.parametrize("kind", ["start", "end"])
def test_agent_killed_between_answer_and_removal_duplicates_nothing(scene: Scene, kind: str) -> None:
    """SIGKILL right after the server answered, before the spool forgot the row: resent, not doubled."""
    agent = scene.start_agent(kill_after=kind)
    scene.run_shell(1)
    assert agent.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    assert scene.depth() == (2 if kind == "start" else 1)  # the answered row is still there
    (session,) = scene.sessions()
    assert session["status"] == ("open" if kind == "start" else "ended")

    scene.start_agent()
    wait_until(lambda: scene.depth() == 0, what="the spool to drain")
    (session,) = scene.sessions()
    assert session["status"] == "ended"
    assert session["exit_reason"] == "user_exit"


def test_a_shell_killed_with_sigkill_is_ended_as_abnormal(scene: Scene) -> None:
    """A shell that dies without an end gets one from the agent, with the duration it was seen alive."""
    shell = scene.shell(1, hold=True)
    assert shell.stdout is not None
    handle = shell.stdout.readline().strip()
    assert handle.startswith("local-")
    wait_until(lambda: [s for s in scene.sessions() if s["status"] == "open"], what="the start")
    shell.kill()
    shell.wait(timeout=WAIT_SECONDS)

    def ended() -> list[dict[str, object]]:
        return [s for s in scene.sessions() if s["status"] == "ended"]

    (session,) = wait_until(ended, what="the abnormal end")
    assert session["exit_reason"] == "abnormal"
    assert isinstance(session["duration_seconds"], float)
    assert 0.0 <= session["duration_seconds"] < WAIT_SECONDS
    with scene.spool() as spool:
        assert spool.open_sessions() == []
        assert spool.stats().depth == 0


def test_writers_and_racing_agents_lose_and_duplicate_nothing(scene: Scene) -> None:
    """Four shells writing five sessions each while three agents start at once: twenty sessions, once each."""
    log = _log(scene)
    agents = [scene.agent("--log-file", str(log)) for _ in range(3)]
    shells = [scene.shell(5, component=f"writer{n}") for n in range(4)]
    for shell in shells:
        _, err = shell.communicate(timeout=WAIT_SECONDS)
        assert shell.returncode == 0, err
    for agent in agents:
        agent.wait(timeout=WAIT_SECONDS)  # all but one exit at once; the one serving exits when idle
    wait_until(lambda: scene.depth() == 0 and not wakeup.agent_holds_lock(scene.spool_path), what="idle")

    sessions = scene.sessions()
    assert len(sessions) == 20
    assert collections.Counter(s["component_name"] for s in sessions) == {f"writer{n}": 5 for n in range(4)}
    assert all(s["status"] == "ended" and s["exit_reason"] == "user_exit" for s in sessions)

    # Each agent that took the lock logged "serving" then "stopped": no two of those spans overlap.
    spans: dict[int, list[dt.datetime]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        found = re.match(r"(\S+ \S+) agent\[(\d+)\] INFO agent \d+ (serving|stopped)", line)
        if found:
            spans[int(found[2])].append(dt.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f"))
    assert spans
    ordered = sorted((times[0], times[-1]) for times in spans.values())
    assert all(len(times) == 2 for times in spans.values())
    for (_, end), (start, _) in itertools.pairwise(ordered):
        assert end <= start


def test_an_idle_agent_exits_and_a_second_one_exits_at_once(scene: Scene) -> None:
    """Nothing to do: the agent leaves after idle_exit_seconds, unbinding its socket and clearing its pid."""
    agent = scene.start_agent()
    second = scene.agent()
    assert second.wait(timeout=WAIT_SECONDS) == 0
    assert agent.poll() is None
    assert wakeup.wake(scene.spool_path) is True
    assert agent.wait(timeout=WAIT_SECONDS) == 0
    assert scene.agent_pid() is None
    assert wakeup.wake(scene.spool_path) is False
    assert not wakeup.agent_holds_lock(scene.spool_path)


def test_status_shows_the_agent_and_why_delivery_fails(scene: Scene) -> None:
    """With the server unable to start: the agent runs, events wait, the last error says why."""
    scene.configure(server__command=str(scene.root / "no-such-server"), server__args=[])
    key = load_config(environ=scene.env).destination().key
    scene.run_shell(1)

    def failing() -> dict[str, object] | None:
        status = delivery_status(scene.spool_path, destination_key=key)
        return status if status["last_error"] else None

    status = wait_until(failing, what="the agent's last error")
    assert status["agent_running"] is True
    assert isinstance(status["agent_pid"], int) and not process_gone(status["agent_pid"])
    assert status["depth"] == 2
    assert "not found" in str(status["last_error"])
    assert status["dead_letters"] == 0
    assert status["oldest_event_age_seconds"] is not None
    assert delivery_status(scene.root / "absent.sqlite3")["depth"] == 0
    assert not (scene.root / "absent.sqlite3").exists()
