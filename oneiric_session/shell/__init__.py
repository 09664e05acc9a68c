"""The shell's process: the admin shell, the drop-in emitter, exit signals, Oneiric's own shells.

Everything here runs inside an admin shell and is standard library only: a shell pays for each
module it imports before its prompt. By job: `admin` (`AdminShell`, the session lifecycle around
a REPL), `emitter` (`SessionEventEmitter`, the drop-in for Oneiric's), `exit_signals` (SIGTERM
and SIGHUP), `oneiric_shells` (our tracker in Oneiric's `AdminShell` and its subclasses, by
configuration or one call). What a session is and where it goes is `tracking/`.
"""

from __future__ import annotations

from oneiric_session.shell.admin import AdminShell, run_shell

__all__ = ["AdminShell", "run_shell"]
