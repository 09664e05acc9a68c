"""The entry point Oneiric's resolver loads (group `oneiric.adapters`): our providers as its adapters.

`adapters()` is what pyproject.toml declares. Oneiric calls it with no arguments
when a user turns entry points on, and registers the `AdapterMetadata` it returns
(category `session_tracker`: `session-buddy`, `noop`, `memory`). Oneiric's loader
guards only ImportError, OSError, ValueError and TypeError, and anything else
stops its CLI, so `adapters()` lets no exception escape: it logs one line and
returns what it could build. Oneiric is imported only inside it, so this module
costs nothing (and `adapters()` returns []) where Oneiric is absent.

The factories are callables (Oneiric rejects import strings outside `oneiric.`),
module-level so Oneiric names them `oneiric_session.tracking.oneiric_plugin:create_<provider>`.
Each builds our tracker for the provider Oneiric selected, from our settings
(`$ONEIRIC_SESSION_SETTINGS_DIR` or ./settings). A configuration error raises
ConfigError there, inside Oneiric's `LifecycleManager.activate()`, which reports a
failed activation and keeps the previous instance. The trackers already have what
the lifecycle calls: `health()` ("can accept events": for session-buddy, the spool
is writable, not "the server is up") and `close()` on replacement; no `init`.

Loading the entry point is also how a user turns tracking on in Oneiric's own shells by
configuration: `adapters()` calls `oneiric_shells.activate_oneiric()`, which (unless the
provider is `noop`) makes `AdminShell.start()` use our emitter and record the start before
the prompt, also under `oneiric shell`'s running loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneiric_session.tracking.tracker import Tracker

CATEGORY = "session_tracker"

logger = logging.getLogger("oneiric_session")


def _build(provider: str) -> Tracker:
    from oneiric_session.tracking.registry import build_tracker

    return build_tracker(provider=provider)


def create_session_buddy() -> Tracker:
    """Oneiric's factory for `session-buddy`: the spooling tracker configured by our settings."""
    return _build("session-buddy")


def create_noop() -> Tracker:
    """Oneiric's factory for `noop`: tracking off. Reads no settings, so a broken file cannot stop it."""
    from oneiric_session.tracking.providers.noop import create

    return create()


def create_memory() -> Tracker:
    """Oneiric's factory for `memory`: sessions recorded in this process, for tests. Reads no settings."""
    from oneiric_session.tracking.providers.memory import create

    return create()


# provider, factory, stack_level (higher wins when nothing is selected, as in our resolver).
_PROVIDERS = (
    ("session-buddy", create_session_buddy, 10),
    ("noop", create_noop, 0),
    ("memory", create_memory, 0),
)


def adapters() -> list[Any]:
    """Oneiric `AdapterMetadata` for each provider; [] without Oneiric. Never raises."""
    try:
        from oneiric.adapters.metadata import AdapterMetadata
        from oneiric.core.resolution import CandidateSource

        from oneiric_session import __version__
        from oneiric_session.tracking.registry import BUILTINS
    except Exception as exc:  # a broken install must not break the host's boot
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == "oneiric"):  # absent: say nothing
            logger.warning("oneiric-session: no Oneiric adapters offered: %s: %s", type(exc).__name__, exc)
        return []

    descriptions = {candidate.provider: candidate.description for candidate in BUILTINS}
    built: list[Any] = []
    failures: list[str] = []
    for provider, factory, stack_level in _PROVIDERS:
        try:
            built.append(
                AdapterMetadata(
                    category=CATEGORY,
                    provider=provider,
                    factory=factory,
                    version=__version__,
                    description=descriptions.get(provider),
                    stack_level=stack_level,
                    source=CandidateSource.ENTRY_POINT,
                )
            )
        except Exception as exc:  # e.g. an Oneiric whose AdapterMetadata changed shape
            failures.append(f"{provider} ({type(exc).__name__}: {exc})")
    if failures:
        logger.warning("oneiric-session: Oneiric adapters not offered: %s", "; ".join(failures))
    _activate_shells()
    return built


def _activate_shells() -> None:
    try:
        from oneiric_session.shell.oneiric_shells import activate_oneiric

        activate_oneiric()
    except Exception as exc:  # activate_oneiric never raises; an import failure must not either
        logger.warning("oneiric-session: Oneiric's shells are not tracked: %s: %s", type(exc).__name__, exc)
