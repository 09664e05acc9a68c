"""Settings: layered sources (`sources`, standard library), each file read bounded (`files`, PyYAML
only when a YAML file is parsed), the pydantic models (`models`) and the loader that validates and
keeps each value's source (`loader`).

Names are re-exported lazily: the shell reads its provider selection through
`oneiric_session.config.sources` without importing pydantic.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoadedConfig": "oneiric_session.config.loader",
    "load_config": "oneiric_session.config.loader",
    "SessionBuddySettings": "oneiric_session.config.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oneiric_session.config' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
