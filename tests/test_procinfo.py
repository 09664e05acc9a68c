"""procinfo: a pid's identity (start time, boot id) tells a live shell from a dead or reused pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from oneiric_session.tracking import procinfo
from tests.support.delivery import wait_until

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _sleeper() -> subprocess.Popen[bytes]:
    # A live child for the test to identify, then kill.
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # sleep-ok


@linux_only
def test_identify_reads_start_time_and_boot_id() -> None:
    """On Linux this process has a start time and the machine a boot id."""
    me = procinfo.identify()
    assert me.pid == os.getpid()
    assert isinstance(me.start_time, int) and me.start_time > 0
    assert me.boot_id and len(me.boot_id) >= 32
    assert procinfo.is_alive(*me)


@linux_only
def test_reused_pid_is_not_the_recorded_process() -> None:
    """The same pid with another start time is another process: the recorded one is gone."""
    me = procinfo.identify()
    assert me.start_time is not None
    assert not procinfo.is_alive(me.pid, me.start_time + 1, me.boot_id)


@linux_only
def test_other_boot_means_gone() -> None:
    """A session recorded before a reboot is over, even if its pid runs again."""
    me = procinfo.identify()
    assert not procinfo.is_alive(me.pid, me.start_time, "00000000-0000-0000-0000-000000000000")


def test_dead_pid_is_not_alive() -> None:
    """A process that exited and was reaped is not alive."""
    child = _sleeper()
    ident = procinfo.identify(child.pid)
    assert procinfo.is_alive(*ident)
    child.kill()
    child.wait()
    assert not procinfo.is_alive(*ident)
    assert procinfo.pid_start_time(child.pid) is None


@linux_only
def test_zombie_is_not_alive() -> None:
    """A killed shell its parent has not reaped yet (a zombie) counts as dead."""
    child = _sleeper()
    ident = procinfo.identify(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
    try:
        assert not procinfo.is_alive(*ident)
    finally:
        child.wait()


def test_unknown_parts_are_not_held_against_a_live_process() -> None:
    """Without a recorded start time or boot id, a live pid is alive."""
    assert procinfo.is_alive(os.getpid(), None, None)
    assert not procinfo.is_alive(0, None, None)
    assert not procinfo.is_alive(-5, None, None)


def test_without_proc_it_degrades_to_the_signal_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where /proc is missing: no start time, no boot id, existence by signal 0 only."""
    monkeypatch.setattr(procinfo, "_PROC", tmp_path / "no-proc")
    monkeypatch.setattr(procinfo, "_BOOT_ID", tmp_path / "no-proc" / "boot_id")
    monkeypatch.setattr(procinfo, "_boot_id", procinfo._UNREAD)  # read once per process: again here
    monkeypatch.setattr(procinfo, "_own", None)
    me = procinfo.identify()
    assert me == (os.getpid(), None, None)
    assert procinfo.is_alive(*me)
    assert procinfo.is_alive(os.getpid(), 12345, "some-boot")  # unknowable here, not held against it
    child = _sleeper()
    child.kill()
    child.wait()
    assert not procinfo.is_alive(child.pid, None, None)


@linux_only
def test_a_shell_whose_name_is_cut_inside_a_character_is_still_known_alive() -> None:
    """/proc/<pid>/stat names the process in its first 15 bytes, which may end inside a UTF-8
    character (a setproctitle'd or non-ASCII name): the file did not decode, the start time read as
    unknown and the live shell as dead, so the agent ended its session as abnormal (review J)."""
    name = "admin-shell-é日本".encode()  # 15 bytes end inside 日
    child = subprocess.Popen(  # sleep-ok: a live process to look at, killed below
        [sys.executable, "-c", f"open('/proc/self/comm', 'wb').write({name!r}); import time; time.sleep(60)"]
    )
    try:
        wait_until(
            lambda: Path(f"/proc/{child.pid}/comm").read_bytes().strip() == name[:15],
            timeout=30,
            poll=0.01,
            what="the child named itself",
        )
        started = procinfo.pid_start_time(child.pid)
        assert isinstance(started, int) and started > 0
        assert procinfo.is_alive(child.pid, started, procinfo.boot_id())
    finally:
        child.kill()
        child.wait()
