"""Session-Buddy session tracking for Oneiric admin shells.

Public names are re-exported lazily so that importing the package costs
nothing until a name is used (a shell with tracking off pays nothing).
"""

from __future__ import annotations

from oneiric_session.common.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "oneiric_session.errors",
    "SessionEventEmitter": "oneiric_session.shell.emitter",
    "Tracker": "oneiric_session.tracking.tracker",
    "activate_oneiric": "oneiric_session.shell.oneiric_shells",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


__getattr__ = lazy_exports(__name__, _EXPORTS)
