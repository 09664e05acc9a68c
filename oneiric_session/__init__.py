"""Session-Buddy session tracking for Oneiric admin shells.

Public names are re-exported lazily so that importing the package costs
nothing until a name is used (a shell with tracking off pays nothing).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "oneiric_session.errors",
    "SessionEventEmitter": "oneiric_session.shell.emitter",
    "Tracker": "oneiric_session.tracking.tracker",
    "activate_oneiric": "oneiric_session.shell.oneiric_shells",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oneiric_session' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
