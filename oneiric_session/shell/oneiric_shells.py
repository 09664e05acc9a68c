"""Our tracker in Oneiric's own `AdminShell` and every subclass of it, by configuration or one call.

`activate_oneiric()` is what Oneiric's plugin loader triggers when it loads our
`oneiric.adapters` entry point (`plugins: {entry_points: [oneiric.adapters]}` or
`ONEIRIC_PLUGINS__AUTO_LOAD=true`), and what a host that builds its shells without
Oneiric's CLI calls itself. When our settings (which see Oneiric's own selection)
choose a tracking provider, it replaces one method of Oneiric's base class,
`AdminShell._notify_session_start_async`, the one `start()` calls before the
prompt. Ours puts our `SessionEventEmitter` in `session_tracker` (when the shell
has none, or Oneiric's own) and runs the shell's own `_notify_session_start()` to
the end before returning, also when `start()` runs inside a running event loop,
where Oneiric's version only schedules it (`oneiric shell` does that: the start
would run after the REPL, at exit). The coroutine then runs on a private loop in a
helper thread, joined: our emitter answers at once, it only writes the spool.
Oneiric's end path (its atexit hook, its daemon thread) is left as it is; the
emitter's own exit hook waits for that end.

`oneiric.shell.core` imports IPython, which Oneiric's other commands never need:
when it is not imported yet, a finder on `sys.meta_path` patches the class the
moment Oneiric imports it. With the provider `noop`, a configuration error, or no
Oneiric, nothing is patched and Oneiric runs as it does without us. Nothing here
raises into Oneiric. Standard library only (plus our settings reader): no mcp.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["activate_oneiric", "is_active"]

logger = logging.getLogger("oneiric_session")

SHELL_MODULE = "oneiric.shell.core"
PATCHED_METHOD = "_notify_session_start_async"
# Module of Oneiric's own emitter: an instance of it in `session_tracker` is replaced by ours.
ONEIRIC_EMITTER_MODULE = "oneiric.shell.session_tracker"
# Bound on the start when `start()` runs inside a running loop. Our emitter answers in
# milliseconds; this only matters for a subclass whose own `_notify_session_start` hangs.
START_WAIT_SECONDS = 5.0
_MARK = "_oneiric_session_original"

_lock = threading.RLock()
_settings_dir: str | os.PathLike[str] | None = None
_finder: _PatchOnImport | None = None


def activate_oneiric(settings_dir: str | os.PathLike[str] | None = None) -> bool:
    """Make Oneiric's `AdminShell` (and its subclasses) report sessions through our tracker.

    True when our tracker will be used: the configured provider tracks (is not `noop`)
    and Oneiric's shell is patched, or will be as soon as Oneiric imports it. False,
    with Oneiric left untouched, otherwise. Idempotent; never raises.
    """
    global _settings_dir
    try:
        with _lock:
            if not _tracking_selected(settings_dir):
                return False
            _settings_dir = settings_dir
            module = sys.modules.get(SHELL_MODULE)
            if module is not None:
                return _patch(module)
            if not _oneiric_installed():
                return False
            _install_finder()
            return True
    except Exception as exc:  # never into Oneiric
        logger.warning(
            "oneiric-session: tracking in Oneiric's shells is off: %s: %s", type(exc).__name__, exc
        )
        return False


def is_active() -> bool:
    """True once Oneiric's `AdminShell` has been patched, or will be when Oneiric imports it."""
    with _lock:
        if _finder is not None and _finder in sys.meta_path:
            return True
        module = sys.modules.get(SHELL_MODULE)
        shell = getattr(module, "AdminShell", None)
        return hasattr(getattr(shell, PATCHED_METHOD, None), _MARK)


def _tracking_selected(settings_dir: str | os.PathLike[str] | None) -> bool:
    """Whether our settings (Oneiric's selection included) choose a provider that tracks."""
    from oneiric_session.config import sources
    from oneiric_session.errors import ConfigError
    from oneiric_session.tracking.registry import BUILTIN_NAMES, default_registry

    try:
        provider, source = sources.read(settings_dir).selection()
        if provider == "noop":
            return False
        if provider not in BUILTIN_NAMES:  # a third-party provider: it must be installed
            default_registry().resolve(provider, selection_source=source)
    except ConfigError as exc:
        logger.warning("oneiric-session: tracking in Oneiric's shells is off: configuration error: %s", exc)
        return False
    return True


def _oneiric_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("oneiric") is not None
    except (ImportError, ValueError):
        return False


def _patch(module: ModuleType) -> bool:
    shell_class = getattr(module, "AdminShell", None)
    original = getattr(shell_class, PATCHED_METHOD, None)
    if shell_class is None or not callable(original):
        logger.warning(
            "oneiric-session: Oneiric's AdminShell has no %s(): its shells are not tracked", PATCHED_METHOD
        )
        return False
    if hasattr(original, _MARK):
        return True

    def _notify_session_start_async(self: Any) -> None:
        _start_now(self, original)

    setattr(_notify_session_start_async, _MARK, original)
    _notify_session_start_async.__doc__ = original.__doc__
    setattr(shell_class, PATCHED_METHOD, _notify_session_start_async)
    return True


def _start_now(shell: Any, original: Any) -> None:
    """Oneiric's start notification, with our emitter, finished before the prompt; never raises."""
    try:
        _adopt(shell)
    except Exception:
        logger.warning("oneiric-session: could not install the tracker; Oneiric's own runs", exc_info=True)
        try:
            original(shell)
        except Exception:
            logger.warning("oneiric-session: Oneiric's session start failed", exc_info=True)
        return
    try:
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(shell._notify_session_start())
            return
        # Inside a running loop (`oneiric shell`): the loop is blocked by the REPL until it
        # ends, so run the coroutine to the end on a private loop in a helper thread.
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(shell._notify_session_start())
            except BaseException as exc:
                failure.append(exc)

        helper = threading.Thread(target=run, name="oneiric-session-start", daemon=True)
        helper.start()
        helper.join(START_WAIT_SECONDS)
        if helper.is_alive():
            logger.warning(
                "oneiric-session: the session start took over %g s; not waiting", START_WAIT_SECONDS
            )
        elif failure:
            raise failure[0]
    except Exception:
        logger.warning("oneiric-session: the session start was not recorded", exc_info=True)


def _adopt(shell: Any) -> None:
    """Put our emitter in `shell.session_tracker` unless it holds one of ours or a host's own."""
    from oneiric_session.shell.emitter import SessionEventEmitter

    current = getattr(shell, "session_tracker", None)
    if isinstance(current, SessionEventEmitter):
        return
    if current is not None and type(current).__module__ != ONEIRIC_EMITTER_MODULE:
        return  # the host chose its own tracker: leave it
    name = getattr(current, "component_name", None) if current is not None else None
    if not isinstance(name, str) or not name:
        try:
            name = shell._get_component_name()
        except Exception:
            name = None
    shell.session_tracker = SessionEventEmitter(
        component_name=name if isinstance(name, str) and name else "unknown", settings_dir=_settings_dir
    )


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it made."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            with _lock:
                _patch(module)
                _remove_finder()
        except Exception:
            logger.warning("oneiric-session: could not patch Oneiric's AdminShell", exc_info=True)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks
        return getattr(self._loader, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds `oneiric.shell.core` with the finders after it and wraps its loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SHELL_MODULE:
            return None
        try:
            spec: importlib.machinery.ModuleSpec | None = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            spec.loader = _PatchingLoader(spec.loader)
            return spec
        except Exception:
            logger.warning("oneiric-session: could not watch for Oneiric's shell", exc_info=True)
            return None


def _install_finder() -> None:
    global _finder
    if _finder is None:
        _finder = _PatchOnImport()
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _remove_finder() -> None:
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
