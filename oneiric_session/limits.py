"""Sanitization limits applied to every event before it is spooled or sent (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps that keep hostile input from breaking a call or bloating the spool."""

    max_string_chars: int = 1024
    max_metadata_bytes: int = 16384
    max_metadata_depth: int = 8
    max_component_chars: int = 64
