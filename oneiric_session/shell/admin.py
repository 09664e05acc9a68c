"""`AdminShell`: the session lifecycle around a REPL, modelled on Oneiric's.

IPython's embedded shell when it is installed, the standard library's
`code.InteractiveConsole` otherwise. The start is reported before the prompt
without waiting for any server; the end is reported on every way out: `exit()`,
Ctrl-D, an uncaught exception, SIGTERM and SIGHUP (a closed terminal). Only the
standard library is imported here; the tracker decides what else is needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from oneiric_session.shell.emitter import SessionEventEmitter
from oneiric_session.shell.exit_signals import REASONS, ExitSignals
from oneiric_session.tracking.tracker import Tracker

logger = logging.getLogger("oneiric_session")

ReplChoice = Literal["auto", "ipython", "stdlib"]
REPL_CHOICES: tuple[ReplChoice, ...] = ("auto", "ipython", "stdlib")
# Forces the REPL when the caller does not choose one (e.g. `stdlib` where IPython misbehaves).
REPL_ENV = "ONEIRIC_SESSION_REPL"
DEFAULT_BANNER = "Oneiric Admin Shell"


class _SignalExit(SystemExit):
    """Unwinds the REPL after SIGTERM/SIGHUP. A SystemExit, so the stdlib console lets it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class AdminShell:
    """An admin shell that reports its session. Subclass it and override the `_get_*` methods."""

    def __init__(
        self,
        app: Any = None,
        *,
        component_name: str | None = None,
        banner: str | None = None,
        repl: ReplChoice | None = None,
        settings_dir: str | Path | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.app = app
        self.banner = banner or DEFAULT_BANNER
        self.repl = repl
        self.settings_dir = settings_dir
        self.shell: Any = None  # the IPython shell, once built (as Oneiric names it)
        self.session_id: str | None = None
        self.exit_reason: str | None = None
        self._component_name = component_name
        self._tracker = tracker
        self._emitter: SessionEventEmitter | None = None
        self._signals = ExitSignals(self._on_signal)
        self._ending = False
        self._signal: int | None = None
        self._build_namespace()

    # -- what a subclass customises (Oneiric's names) -----------------------------

    def _build_namespace(self) -> None:
        self.namespace: dict[str, Any] = {"app": self.app, "logger": logger}

    def _get_component_name(self) -> str | None:
        return self._component_name

    def _get_component_version(self) -> str:
        name = self._get_component_name()
        if not name:
            return "unknown"
        # A component's shell usually runs inside its package: avoid importlib.metadata (~20 ms).
        module = sys.modules.get(name.replace("-", "_"))
        version = getattr(module, "__version__", None)
        if isinstance(version, str):
            return version
        from importlib import metadata

        try:
            return metadata.version(name)
        except (metadata.PackageNotFoundError, ValueError):
            return "unknown"

    def _get_adapters_info(self) -> list[str]:
        return []

    def _get_banner(self) -> str:
        rule = "=" * 60
        return f"\n{self.banner}\n{rule}\nType 'help()' for Python help; exit() or Ctrl-D to leave.\n{rule}\n"

    def add_helper(self, name: str, func: Callable[..., Any]) -> None:
        self.namespace[name] = func

    def add_object(self, name: str, obj: Any) -> None:
        self.namespace[name] = obj

    # -- the lifecycle -----------------------------------------------------------

    def start(self) -> int:
        """Run the shell until the user leaves; return its exit status. The session is ended on every way out.

        After SIGTERM/SIGHUP the previous handler is restored and the signal raised again, so
        the process ends as it would have without tracking, once the end is recorded.
        An exception that escapes the REPL is re-raised after the end is recorded.
        """
        # Each start is a session of its own (a shell object may be started again).
        self.session_id = self.exit_reason = None
        self._ending, self._signal = False, None
        self._emitter = SessionEventEmitter(
            self._get_component_name() or "unknown", tracker=self._tracker, settings_dir=self.settings_dir
        )
        self.session_id = self._emitter.start_session(
            type(self).__name__,
            {"component_version": self._get_component_version(), "adapters": self._get_adapters_info()},
        )
        status = 0
        reason = "user_exit"
        self._signals.install()
        try:
            self._run_repl()
        except SystemExit as exc:  # exit() in the stdlib console, or our signal unwinding
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            reason = "interrupt"
            raise
        except BaseException:
            reason = "exception"
            raise
        finally:
            self._finish(reason)
            self._signals.restore()
            self._emitter.shutdown(wait_seconds=0)
            if self._signal is not None:
                self._reraise_signal(self._signal)
        return status if self._signal is None else 128 + self._signal

    def _finish(self, reason: str) -> None:
        """Record the end once (from the REPL's way out or from a signal handler)."""
        if self._ending:
            return
        self._ending = True
        self.exit_reason = reason
        if self._emitter is not None:
            self._emitter.end_session(self.session_id, exit_reason=reason)

    def _run_repl(self) -> None:
        if self._use_ipython():
            self._run_ipython()
        else:
            self._run_stdlib()

    def _use_ipython(self) -> bool:
        """IPython when asked for or, by default, when installed; else the standard console. A
        choice that cannot be had says so in one line and the shell runs."""
        choice = self.repl or os.environ.get(REPL_ENV) or "auto"
        if choice == "stdlib":
            return False
        from importlib.util import find_spec

        installed = find_spec("IPython") is not None
        if choice == "ipython" and not installed:
            _say("IPython is not installed; the standard console is used")
        elif choice not in ("ipython", "auto"):
            from oneiric_session.common.safetext import terminal_safe

            _say(f"{REPL_ENV}={terminal_safe(choice, 80)!r} is not auto, ipython or stdlib; auto is used")
        return installed

    def _run_ipython(self) -> None:
        from IPython.terminal.embed import InteractiveShellEmbed
        from IPython.terminal.ipapp import load_default_config

        self.shell = InteractiveShellEmbed(
            config=load_default_config(),
            banner1=self._get_banner(),
            user_ns=self.namespace,
            confirm_exit=False,
        )
        self.shell()

    def _run_stdlib(self) -> None:
        import code

        try:
            import readline
            import rlcompleter

            readline.set_completer(rlcompleter.Completer(self.namespace).complete)
            readline.parse_and_bind("tab: complete")
        except ImportError:  # no line editing on this platform: the console still works
            pass
        code.InteractiveConsole(self.namespace).interact(banner=self._get_banner(), exitmsg="")

    # -- signals -------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        """SIGTERM/SIGHUP, in the main thread: record the end, then unwind the REPL."""
        if self._signal is not None or self._ending:
            self._signal = self._signal or signum  # already leaving: leave as planned
            return
        self._signal = signum
        # Record the end first: unwinding a REPL on a closed terminal may fail or be killed.
        self._finish(REASONS[signum])
        if self.shell is not None:
            self.shell.ask_exit()  # IPython swallows SystemExit raised inside running user code
            app = getattr(getattr(self.shell, "pt_app", None), "app", None)
            if app is not None and app.is_running:
                # At IPython's prompt: end it as Ctrl-D does, rather than raise into prompt_toolkit's
                # event loop (its background tasks would log our exception as their own failure).
                app.exit(exception=EOFError())
                return
        raise _SignalExit(signum)

    @staticmethod
    def _reraise_signal(signum: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # the terminal may be gone (SIGHUP)
                stream.flush()
        signal.raise_signal(signum)


def run_shell(
    *,
    component_name: str | None = None,
    repl: ReplChoice | None = None,
    settings_dir: str | Path | None = None,
) -> int:
    """Open the default admin shell (what `oneiric-session shell` runs)."""
    return AdminShell(component_name=component_name, repl=repl, settings_dir=settings_dir).start()


def _say(message: str) -> None:
    print(f"oneiric-session: {message}", file=sys.stderr, flush=True)
