"""ExitSignals: handlers installed and restored, and a signal the main thread missed is sent again."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from oneiric_session.shell.exit_signals import ExitSignals


class Unwound(Exception):
    pass


@pytest.fixture(autouse=True)
def _keep_signal_state() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    signal.set_wakeup_fd(wakeup)


def test_install_then_restore_puts_everything_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    wakeup_before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_before)
    signals = ExitSignals(lambda signum: None)
    signals.install()
    assert signal.getsignal(signal.SIGTERM) != before
    signals.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.set_wakeup_fd(wakeup_before) == wakeup_before


def test_a_signal_whose_handler_did_not_run_is_sent_again() -> None:
    """What readline's select() does to a signal landing just before it: the C handler wrote the
    wake-up byte, but nothing runs the Python handler. Here the byte is written by hand."""
    seen: list[int] = []

    def handler(signum: int) -> None:
        seen.append(signum)
        raise Unwound

    signals = ExitSignals(handler)
    signals.install()
    try:
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup)
        os.write(wakeup, bytes([signal.SIGTERM]))
        with pytest.raises(Unwound):
            threading.Event().wait(10)  # interrupted by the re-sent signal
    finally:
        signals.restore()
    assert seen == [signal.SIGTERM]


def test_an_ignored_signal_is_left_alone() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signals = ExitSignals(lambda signum: None)
    signals.install()
    try:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
