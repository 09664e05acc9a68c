"""SIGTERM and SIGHUP for the shell: a handler in the main thread that runs promptly, and restoring.

A Python signal handler runs when the main thread next executes bytecode. The
standard library's console waits for a key inside readline's select(), which a
signal interrupts only if it lands while select() already waits: one landing just
before (while the prompt is being written) would be noticed at the next key press.
So the C-level handler also writes the signal's number to a wake-up socket
(`signal.set_wakeup_fd`), and a small thread sends the signal again to the main
thread until its Python handler has run. (IPython's prompt waits in an asyncio
loop that has its own wake-up socket, so there the first delivery is enough.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

# Signals that end a session, and the exit_reason each one reports.
REASONS: dict[int, str] = {signal.SIGTERM: "sigterm", signal.SIGHUP: "sighup"}
# How long the main thread gets to notice a signal by itself before it is sent again.
NUDGE_INTERVAL_SECONDS = 0.05
NUDGE_ATTEMPTS = 100


class ExitSignals:
    """Installs `handler(signum)` for SIGTERM/SIGHUP (it may raise to unwind); `restore()` undoes it all."""

    def __init__(self, handler: Callable[[int], None]) -> None:
        self._handler = handler
        self._saved: dict[int, Any] = {}
        self._lock = threading.Lock()  # orders re-sending against restore()
        self._active = False
        self._handled = False
        self._writer: int | None = None  # the pipe the C-level handler writes signal numbers to
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        self._handled = False  # the instance may be installed again (a second shell on one object)
        for signum in REASONS:
            try:
                previous = signal.getsignal(signum)
                # Respect an ignored signal (nohup) and a handler installed outside Python.
                if previous is signal.SIG_IGN or previous is None:
                    continue
                signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: signals stay as they are
                return
            self._saved[signum] = previous
        if self._saved:
            self._start_watcher()

    def restore(self) -> None:
        with self._lock:
            self._active = False
            while self._saved:
                signum, previous = self._saved.popitem()
                signal.signal(signum, previous)
        writer, self._writer = self._writer, None
        if writer is not None:
            current = signal.set_wakeup_fd(self._previous_wakeup_fd)
            if current != writer:  # someone replaced ours meanwhile (asyncio): keep theirs
                signal.set_wakeup_fd(current)
            os.close(writer)  # the watcher reads end-of-file and stops

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._handled = True
        self._handler(signum)

    def _start_watcher(self) -> None:
        reader, writer = os.pipe()
        try:
            os.set_blocking(writer, False)
            self._previous_wakeup_fd = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        except (OSError, ValueError):  # the handlers still work, only the race stays open
            os.close(reader)
            os.close(writer)
            return
        self._writer = writer
        self._active = True
        main = threading.main_thread().ident
        watcher = threading.Thread(
            target=self._watch, args=(reader, main, frozenset(self._saved)), name="oneiric-session-signals"
        )
        watcher.daemon = True
        watcher.start()

    def _watch(self, reader: int, main: int | None, watched: frozenset[int]) -> None:
        try:
            while data := os.read(reader, 64):
                signum = next((s for s in data if s in watched), None)
                if signum is not None and main is not None:
                    self._nudge(main, signum)
        except OSError:
            pass
        finally:
            os.close(reader)

    def _nudge(self, main: int, signum: int) -> None:
        for _ in range(NUDGE_ATTEMPTS):
            time.sleep(NUDGE_INTERVAL_SECONDS)  # the main thread usually handles it meanwhile
            with self._lock:
                if self._handled or not self._active:
                    return
                with contextlib.suppress(OSError):
                    signal.pthread_kill(main, signum)
