"""Fault injection: every fault of issue 6, on the server's side and on ours, end to end.

Each test breaks one thing with real processes, checks the shells never waited or raised
and every event is delivered, spooled or a dead letter with its reason (or counted as not
kept), clears the fault, and checks every kept session arrives exactly once. Each records
its outcome; the last test renders docs/reliability.md from them and compares
(`python scripts/gen_reliability.py` rewrites the file).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest

from oneiric_session import wakeup
from tests.faults.harness import (
    CROWDED_BLOCKED_BOUND_SECONDS,
    SHELL_CALL_BOUND_SECONDS,
    FaultScene,
    account,
    check_shells,
    delivered_once,
)
from tests.support.delivery import WAIT_SECONDS, process_gone, wait_until

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen_reliability.py"
DOC = ROOT / "docs" / "reliability.md"

Heal = Literal["agent", "replay", "replay --dead", "agent command", "none"]
HEALED_BY: dict[Heal, str] = {
    "agent": "the running agent's next retry delivered",
    "replay": "`oneiric-session spool replay`",
    "replay --dead": "`oneiric-session spool replay --dead`",
    "agent command": "`oneiric-session agent` started a new agent",
    "none": "nothing to clear: delivered during the fault",
}
FIXED = "server fixed in place; "


@dataclass
class Outcome:
    """One row of docs/reliability.md, plus what the shells measured (kept in the results file only)."""

    id: str = ""
    order: int = 0
    side: str = ""
    fault: str = ""
    happened: str = ""
    during: dict[str, int] = field(default_factory=dict)
    cleared_by: str = ""
    after: dict[str, Any] = field(default_factory=dict)
    shell: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # what backs the text (results file only)
    result: str = "fail"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reliability", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(generator: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Outcome]]:
    """Every test's outcome; written at the end to $ONEIRIC_SESSION_FAULT_RESULTS (else a tmp file)."""
    outcomes: list[Outcome] = []
    yield outcomes
    target = os.environ.get(generator.RESULTS_ENV) or tmp_path_factory.getbasetemp() / "fault-results.json"
    data = {
        "bound_seconds": SHELL_CALL_BOUND_SECONDS,
        "crowded_bound_seconds": CROWDED_BLOCKED_BOUND_SECONDS,
        "outcomes": [asdict(o) for o in outcomes],
    }
    Path(target).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


@pytest.fixture
def outcome(request: pytest.FixtureRequest, results: list[Outcome]) -> Iterator[Outcome]:
    """The test fills it in; its result is whether the test passed."""
    failed_before = request.session.testsfailed
    record = Outcome()
    yield record
    # The call phase's report is counted before fixtures are torn down.
    record.result = "pass" if request.session.testsfailed == failed_before else "fail"
    if record.id:
        results.append(record)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[FaultScene]:
    scene = FaultScene(tmp_path)
    yield scene
    scene.cleanup()


def _heal(scene: FaultScene, how: Heal, events: int) -> None:
    scene.heal()
    if how in ("replay", "replay --dead"):
        result = scene.run("spool", "replay", *how.split()[1:], "--json")
        assert result.returncode == 0, result.stderr  # nothing left waiting, no new dead letter
        delivered = json.loads(result.stdout)["delivered"]
        if how == "replay --dead":
            assert delivered == events  # only the replay revives dead letters
        else:
            # Rows waiting out a back-off: the background agent's next attempt may reach the healed
            # server before the replay takes the lock (seen once under load). delivered_once() then
            # checks that each session arrived exactly once, whoever sent it.
            assert delivered <= events
    elif how == "agent command":
        result = scene.run("agent")
        assert result.returncode == 0, result.stderr


def _no_server_left(scene: FaultScene) -> None:
    assert scene.servers_left() == [], "a server process outlived its agent"


# -- the server misbehaves ----------------------------------------------------


@dataclass(frozen=True)
class ServerFault:
    id: str
    fault: str
    mode: str
    settles: Literal["waiting", "delivered", "dead"]
    heal: Heal
    happened: str
    words: str = ""  # in the agent's last error, or in the dead letter's reason
    dead_category: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)


SERVER_FAULTS = [
    ServerFault(
        "refuse_start",
        "The server refuses to start",
        "refuse_start",
        "waiting",
        "agent",
        "each launch exits at once; the agent keeps the error for `status` and retries with back-off; "
        "the events wait in the spool",
        words="exited",
    ),
    ServerFault(
        "exit_after",
        "The server exits after N calls (N = 2)",
        "exit_after",
        "delivered",
        "none",
        "the call the server died on fails; the agent starts a new server and resends it; no call "
        "answered twice",
        variables={"FAULT_EXIT_AFTER": "2"},
    ),
    ServerFault(
        "hang_initialize",
        "The server hangs on `initialize`",
        "hang_initialize",
        "waiting",
        "replay",
        "the connect times out after `timeouts.connect_seconds`, the server is killed, the events wait",
        words="no MCP handshake within 2 s",
        settings={"timeouts__connect_seconds": "2"},
    ),
    ServerFault(
        "hang_call",
        "The server hangs on a call",
        "hang_call",
        "waiting",
        "agent",
        "the call times out after `timeouts.call_seconds`, the server is killed, the events wait",
        words="no answer within 2 s",
        settings={"timeouts__call_seconds": "2"},
    ),
    ServerFault(
        "slow",
        "The server answers slowly (0.3 s a call)",
        "slow",
        "delivered",
        "none",
        "the shells never wait for it; the agent delivers everything during the fault",
        variables={"FAULT_DELAY": "0.3"},
    ),
    ServerFault(
        "garbage",
        "The server writes garbage to stdout",
        "garbage",
        "delivered",
        "none",
        "the client skips the line that is not JSON-RPC; everything is delivered during the fault",
    ),
    ServerFault(
        "status_error",
        'The server answers `status: "error"`',
        "status_error",
        "dead",
        "replay --dead",
        'each start is a dead letter ("rejected") with the server\'s reason, its end follows it '
        '("start refused"); nothing is retried on its own',
        words="Path does not exist",
        dead_category="rejected",
    ),
    ServerFault(
        "auth",
        "The server answers an authentication failure",
        "auth_emoji",
        "dead",
        "replay --dead",
        'each start is a dead letter ("auth", requeued by itself when a new token arrives), its end '
        'follows it ("start refused")',
        words="Authentication failed",
        dead_category="auth",
    ),
    ServerFault(
        "drop_mid_answer",
        "The server drops the connection mid-answer",
        "drop_mid_answer",
        "waiting",
        "replay",
        "half an answer, then the server exits: a transient failure, the events wait and are resent",
        words="the server closed the connection",
    ),
]


def _settled(scene: FaultScene, case: ServerFault, events: int) -> bool:
    ledger = scene.ledger()
    if case.settles == "waiting":
        return len(ledger.pending) == events and scene.last_error() is not None
    if case.settles == "dead":
        return len(ledger.dead) == events
    return not ledger.pending and len(ledger.delivered()) == events


@pytest.mark.parametrize("case", SERVER_FAULTS, ids=[c.id for c in SERVER_FAULTS])
def test_server_fault(scene: FaultScene, outcome: Outcome, case: ServerFault) -> None:
    """Two sessions while the server misbehaves; then it is fixed in place: each session once."""
    outcome.id, outcome.side, outcome.fault = f"server/{case.id}", "server", case.fault
    outcome.order = SERVER_FAULTS.index(case)
    scene.configure(**case.settings)
    scene.break_server(case.mode, **case.variables)

    runs = scene.shells(1, sessions=2, prefix="s")
    outcome.shell = check_shells(runs)
    wait_until(lambda: _settled(scene, case, 4), what=f"the {case.settles} state")
    during = account(scene, runs)
    expected = {"waiting": (0, 4, 0), "delivered": (4, 0, 0), "dead": (0, 0, 4)}[case.settles]
    assert (during["delivered"], during["spooled"], during["dead"]) == expected
    if case.settles == "waiting":
        outcome.details["last_error"] = scene.last_error()
        assert case.words in outcome.details["last_error"]
    if case.settles == "dead":
        dead = {kind: (category, reason) for kind, _, category, reason in scene.ledger().dead}
        outcome.details["dead_letters"] = dead
        assert dead["start"][0] == case.dead_category and case.words in dead["start"][1]
        assert dead["end"][0] == "start refused"
    if case.mode == "exit_after":
        assert sum(1 for launch in scene.launches() if launch["fault"]) >= 2, "the server never exited"

    _heal(scene, case.heal, during["spooled"] + during["dead"])
    outcome.after = delivered_once(scene, runs)
    _no_server_left(scene)
    cleared_by = HEALED_BY[case.heal] if case.heal == "none" else FIXED + HEALED_BY[case.heal]
    outcome.happened, outcome.during, outcome.cleared_by = case.happened, during, cleared_by


# -- our side fails -------------------------------------------------------------

OURS_ORDER = 100


def test_a_shell_killed_with_sigkill(scene: FaultScene, outcome: Outcome) -> None:
    """A shell dies by SIGKILL while the server is down: the agent spools its end as "abnormal"."""
    outcome.id, outcome.side, outcome.order = "ours/shell_sigkill", "ours", OURS_ORDER
    outcome.fault = "A shell is killed with SIGKILL (server down)"
    scene.break_server("refuse_start")
    holder, killed = scene.held_shell("k")
    killed.killed = True
    runs = [killed, *scene.shells(1, prefix="n")]
    outcome.shell = check_shells(runs)
    holder.kill()
    holder.wait(timeout=WAIT_SECONDS)
    wait_until(
        lambda: len(scene.ledger().pending) == 4 and scene.status()["open_sessions"] == 0,
        what="the agent to spool the killed shell's end",
    )
    during = account(scene, runs)
    assert (during["delivered"], during["spooled"], during["dead"]) == (0, 4, 0)

    _heal(scene, "agent", 4)
    outcome.after = delivered_once(scene, runs, reasons={"kx0": "abnormal"})
    (killed_session,) = [s for s in scene.sessions() if s["component_name"] == "kx0"]
    outcome.details["abnormal_duration_seconds"] = killed_session["duration_seconds"]
    assert 0.0 <= killed_session["duration_seconds"] < WAIT_SECONDS
    _no_server_left(scene)
    outcome.happened = (
        'the agent sees the pid gone and spools an end with exit_reason "abnormal" and the duration it '
        "was seen alive; it waits with the other events"
    )
    outcome.during, outcome.cleared_by = during, FIXED + HEALED_BY["agent"]


@dataclass(frozen=True)
class AgentKill:
    id: str
    fault: str
    happened: str
    during: tuple[int, int]  # delivered, spooled
    heal: Heal
    mode: str = ""  # the server's fault that holds the agent at that step
    wait_for: str = ""  # the request the server must have received before the kill
    kill_after: str = ""  # the agent kills itself after this kind's answer
    settings: dict[str, str] = field(default_factory=dict)


AGENT_KILLS = [
    AgentKill(
        "before_call",
        "The agent is killed with SIGKILL before its call (while connecting)",
        "nothing was sent; the server dies with the agent; the events stay spooled",
        (0, 2),
        "agent command",
        mode="hang_initialize",
        wait_for="initialize",
        settings={"timeouts__connect_seconds": "60"},
    ),
    AgentKill(
        "in_call",
        "The agent is killed with SIGKILL during a call (sent, not answered)",
        "the server dies with the agent; the unanswered start stays spooled and is resent",
        (0, 2),
        "replay",
        mode="hang_call",
        wait_for="tools/call",
        settings={"timeouts__call_seconds": "60"},
    ),
    AgentKill(
        "after_start_answer",
        "The agent is killed with SIGKILL after the start's answer, before its acknowledgement",
        "the server has the session, the spool still has its start: resent, and the server's "
        "idempotency on `event_id` keeps it one session",
        (1, 2),
        "replay",
        kill_after="start",
    ),
    AgentKill(
        "after_end_answer",
        "The agent is killed with SIGKILL after the end's answer, before its acknowledgement",
        "the server has the end, the spool still has it: resent, the session stays ended once",
        (2, 1),
        "agent command",
        kill_after="end",
    ),
]


@pytest.mark.parametrize("case", AGENT_KILLS, ids=[c.id for c in AGENT_KILLS])
def test_the_agent_killed_with_sigkill(scene: FaultScene, outcome: Outcome, case: AgentKill) -> None:
    """SIGKILL at each step of one delivery; a new agent or a replay finishes it, once."""
    outcome.id, outcome.side, outcome.fault = f"ours/agent_sigkill_{case.id}", "ours", case.fault
    outcome.order = OURS_ORDER + 1 + AGENT_KILLS.index(case)
    scene.configure(**case.settings)
    if case.mode:
        scene.break_server(case.mode)
    agent = scene.agent_by_hand(kill_after=case.kill_after or None)
    runs = scene.shells(1, prefix="a")
    outcome.shell = check_shells(runs)
    if case.wait_for:
        wait_until(
            lambda: any(r.get("method") == case.wait_for for r in scene.records()),
            what=f"the server to receive {case.wait_for}",
        )
        agent.kill()
    assert agent.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
    launched = [launch["pid"] for launch in scene.launches()]
    assert launched
    wait_until(lambda: all(process_gone(pid) for pid in launched), timeout=10, what="the server to die")
    during = account(scene, runs)
    assert (during["delivered"], during["spooled"], during["dead"]) == (*case.during, 0)

    _heal(scene, case.heal, during["spooled"])
    outcome.after = delivered_once(scene, runs)
    _no_server_left(scene)
    cleared_by = (FIXED if case.mode else "") + HEALED_BY[case.heal]
    outcome.happened, outcome.during, outcome.cleared_by = case.happened, during, cleared_by


def test_the_spool_file_corrupted(scene: FaultScene, outcome: Outcome) -> None:
    """Garbage over the spool's first page: the next agent moves it aside, starts afresh, says so once."""
    outcome.id, outcome.side, outcome.order = "ours/spool_corrupted", "ours", OURS_ORDER + 10
    outcome.fault = "The spool file is corrupted (its first page overwritten)"
    scene.break_server("refuse_start")
    before = scene.shells(1, sessions=2, prefix="b")
    wait_until(lambda: scene.last_error() is not None, what="the agent to fail")
    scene.stop_agents()
    with open(scene.spool_path, "r+b") as file:
        file.write(b"\x00not a spool\xff" * 315)
    corrupt = scene.spool_path.read_bytes()

    after_runs = scene.shells(1, sessions=2, prefix="c")
    runs = before + after_runs
    outcome.shell = check_shells(runs)
    # The shells wrote only their outbox: the agent they woke finds the corrupt file and says so.
    aside = Path(wait_until(lambda: scene.status().get("moved_aside"), what="the corrupt spool moved aside"))
    log = wakeup.agent_log_path(scene.spool_path).read_text()
    notices = [line for line in log.splitlines() if "moved it aside" in line]
    assert len(notices) == 1, log
    assert not [line for run in after_runs for line in run.stderr.splitlines() if "moved it aside" in line]
    assert aside.read_bytes() == corrupt, "the corrupt file must be kept as it was"
    wait_until(lambda: scene.last_error() is not None, what="the new agent to fail")
    during = account(scene, runs, moved_aside=4)
    assert (during["delivered"], during["spooled"], during["dead"]) == (0, 4, 0)

    _heal(scene, "agent", 4)
    outcome.after = delivered_once(scene, runs, skip=[c for run in before for c in run.components])
    _no_server_left(scene)
    outcome.happened = (
        "the agent moves it aside when it next takes the shells' records in (one line in its log; "
        "`status` names the file), starts a fresh spool and carries on; the shells never notice (they "
        "write only their outbox); the events in the corrupt file are kept there, not delivered"
    )
    outcome.during, outcome.cleared_by = during, FIXED + HEALED_BY["agent"]


def test_the_spool_directory_cannot_be_created(scene: FaultScene, outcome: Outcome) -> None:
    """A file where the spool's directory should be: each start is a counted loss and one log line."""
    outcome.id, outcome.side, outcome.order = "ours/spool_dir_impossible", "ours", OURS_ORDER + 11
    outcome.fault = "The spool's directory cannot be created"
    blocker = scene.root / "blocker"
    blocker.write_text("a file where the spool's directory should be\n")
    scene.spool_path = blocker / "spool" / "spool.sqlite3"
    scene.configure(spool__path=str(scene.spool_path))

    lost = scene.shells(1, sessions=2, prefix="u")
    for run in lost:
        assert run.handles == [None, None]
        assert run.losses == {"spool_error": 2}
        lines = run.stderr.splitlines()
        assert len(lines) == 2 and all("session start not recorded" in line for line in lines), lines
    during = account(scene, lost)
    assert (during["delivered"], during["spooled"], during["dead"], during["lost"]) == (0, 0, 0, 2)

    blocker.unlink()
    healed = scene.shells(1, sessions=2, prefix="h")
    runs = lost + healed
    outcome.shell = check_shells(runs)
    outcome.after = delivered_once(scene, runs)
    _no_server_left(scene)
    outcome.happened = (
        "`start()` returns no handle: the tracker counts the loss (`losses['spool_error']`) and logs one "
        "line; the host carries on; later shells spool again once the directory can be made"
    )
    outcome.during = during
    outcome.cleared_by = "the file in the way removed; the next shells spooled and their agent delivered"


def test_32_shells_at_once(scene: FaultScene, outcome: Outcome) -> None:
    """Thirty-two shells start at once while the server is down: one agent, one server once it is up."""
    outcome.id, outcome.side, outcome.order = "ours/shells_32", "ours", OURS_ORDER + 12
    outcome.fault = "32 shells at once (server down, then fixed)"
    scene.break_server("refuse_start")
    runs = scene.shells(32, prefix="m")
    outcome.shell = check_shells(runs, crowded=True)
    wait_until(
        lambda: len(scene.ledger().pending) == 64 and scene.last_error() is not None,
        what="64 events spooled",
    )
    during = account(scene, runs)
    assert (during["delivered"], during["spooled"], during["dead"]) == (0, 64, 0)

    _heal(scene, "agent", 64)
    outcome.after = delivered_once(scene, runs)
    assert sum(1 for launch in scene.launches() if launch["fault"] is None) == 1, "one healthy server"
    _no_server_left(scene)
    outcome.happened = (
        "every append lands in the one spool; the agent delivers them all through one server "
        "process once the server starts"
    )
    outcome.during, outcome.cleared_by = during, FIXED + HEALED_BY["agent"]


# -- the page -------------------------------------------------------------------

ALL_IDS = (
    {f"server/{c.id}" for c in SERVER_FAULTS}
    | {f"ours/agent_sigkill_{c.id}" for c in AGENT_KILLS}
    | {"ours/shell_sigkill", "ours/spool_corrupted", "ours/spool_dir_impossible", "ours/shells_32"}
)


def test_the_table_renders_each_outcome_and_says_when_one_failed(generator: ModuleType) -> None:
    """A failed fault shows as FAIL in its row; rows follow the suite's order whatever the results' order."""
    row: dict[str, Any] = {
        "id": "x",
        "side": "server",
        "fault": "A | fault",
        "happened": "it broke",
        "during": {"events": 2, "delivered": 0, "spooled": 2, "dead": 0, "lost": 0, "moved_aside": 0},
        "cleared_by": "fixed",
        "after": {"sessions": 1, "exit_reasons": {"user_exit": 1}},
    }
    first, second = {**row, "order": 1, "result": "pass"}, {**row, "order": 2, "result": "fail", "fault": "B"}
    text = generator.render([second, first], bound_seconds=1.0, crowded_bound_seconds=5.0)
    lines = [line for line in text.splitlines() if line.startswith("| A") or line.startswith("| B")]
    assert lines == [
        "| A \\| fault | it broke | 0 / 2 / 0 / 0 (of 2) | fixed | 1 session(s), each once (1 user_exit) |",
        "| B | it broke | 0 / 2 / 0 / 0 (of 2) | fixed | **FAIL** |",
    ]


def test_docs_reliability_md_is_what_this_suite_observed(
    generator: ModuleType, results: list[Outcome]
) -> None:
    """Runs last: the committed page must equal the one rendered from this run's outcomes."""
    if os.environ.get(generator.RESULTS_ENV):
        pytest.skip("scripts/gen_reliability.py is running the suite and writes the page itself")
    missing = ALL_IDS - {o.id for o in results}
    if missing:
        pytest.skip(f"not every fault ran in this session ({len(missing)} missing): nothing to compare")
    failed = sorted(o.id for o in results if o.result != "pass")
    assert not failed, f"faults that failed: {failed}"
    outcomes = [asdict(o) for o in results]
    expected = generator.render(
        outcomes, bound_seconds=SHELL_CALL_BOUND_SECONDS, crowded_bound_seconds=CROWDED_BLOCKED_BOUND_SECONDS
    )
    current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert generator.fault_part(current) == expected, f"{DOC} is stale: run `{generator.REGENERATE}`"
