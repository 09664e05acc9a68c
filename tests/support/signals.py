"""Signals as a terminal delivers them, in a process a test starts.

A suite started with SIGHUP or SIGINT ignored (under nohup, or as a background job without job
control) would pass that on to every process it starts, and a shell rightly keeps an ignored
disposition: the tests of a shell closed by its terminal or stopped by Ctrl-C would see nothing
happen. Their processes get the usual dispositions; the suite itself keeps its own.
"""

from __future__ import annotations

import signal

__all__ = ["as_from_a_terminal"]


def as_from_a_terminal() -> None:
    """In a child before exec (`preexec_fn`, or after fork): SIGHUP, SIGINT and SIGQUIT as usual."""
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
