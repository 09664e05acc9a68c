"""Sanitization limits applied to every event before it is spooled or sent (standard library only)."""

from __future__ import annotations

from oneiric_session.common.record import Record

# The longest shell type or host name an event carries, whatever `max_string_chars` allows: the
# bundled server refuses longer names (server/models.py), and no real one comes near.
MAX_NAME_CHARS = 4096


# A Record (common/record.py): every shell imports this.
class Limits(Record):
    """Caps that keep hostile input from breaking a call or bloating the spool."""

    max_string_chars: int = 1024
    max_metadata_bytes: int = 16384
    max_metadata_depth: int = 8
    max_component_chars: int = 64
