"""Metadata made safe to send: JSON-safe, within `Limits`, whatever the caller passed.

Runs inside the shell's process, so standard library only and cheap: hostile input (huge
strings, control bytes, odd objects, deep nesting, a mapping whose `items()` never ends, a
`__repr__` that sleeps) is cut before any expensive work, and reading a caller's own objects
is bounded in time as well as in size.
"""

import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from oneiric_session.common.safetext import sanitize_text
from oneiric_session.tracking.limits import Limits

__all__ = ["is_finite", "sanitize_metadata"]

_ELLIPSIS = "…"
_TRUNCATED_KEY = "_truncated"
_DEPTH_MARKER = "<nested too deep>"
# Room each container keeps for its truncation marker (`, "_truncated": true`).
_MARKER_BYTES = 20
_NO_ROOM = object()
# What reading a caller's own objects may cost one event in all (their __repr__, items(), __iter__
# run in a helper thread, abandoned once this is spent): a hostile object delays a start, never blocks it.
_FOREIGN_SECONDS = 0.2
# Types read directly: their iteration and text run no caller code.
_PLAIN_MAPPINGS = (dict,)
_PLAIN_SEQUENCES = (list, tuple, set, frozenset)
_FAILED = object()


def _call_bounded(fn: Callable[[], Any], deadline: float) -> Any:
    """fn() run in a daemon thread until `deadline`; `_FAILED` if it raised or is still running."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return _FAILED
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException:  # anything the caller's object raises
            box.append(_FAILED)

    worker = threading.Thread(target=run, name="oneiric-session-sanitize", daemon=True)
    worker.start()
    worker.join(remaining)
    return box[0] if box else _FAILED


def is_finite(value: float) -> bool:
    return value - value == 0.0  # inf - inf and nan - nan are nan (`math` costs the shell an import)


class _Budget:
    """Makes metadata JSON-safe while counting its serialized size, so no value is ever dumped whole.

    Sizes are counted conservatively (every separator is counted), and each
    container keeps room for its own truncation marker, so the result never
    exceeds `max_metadata_bytes`.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.remaining = limits.max_metadata_bytes
        self.deadline = time.monotonic() + _FOREIGN_SECONDS
        # No container can hold more entries than this within the byte budget (each costs >= 2 bytes).
        self.max_entries = max(limits.max_metadata_bytes // 2, 1)

    def foreign_items(self, value: Any, items: bool) -> tuple[list[Any], bool]:
        """The entries of a caller's own container (its items() or iteration) read within the count
        and time bounds, and whether that was all of them (False: it raised, ran long or went on)."""
        got: list[Any] = []

        def read() -> bool:
            for entry in itertools.islice(value.items() if items else value, self.max_entries + 1):
                got.append(entry)
            return True

        complete = _call_bounded(read, self.deadline) is True
        entries = got[: self.max_entries]  # a copy: an abandoned reader may still be appending
        return entries, complete and len(entries) == len(got) and len(got) <= self.max_entries

    @staticmethod
    def _size(value: Any) -> int:
        # Scalars only, already capped: cheap to measure exactly.
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))

    def scalar(self, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            # Huge ints: str() refuses past 4300 digits, and peers choke past 64 bits.
            return int(value) if value.bit_length() <= 63 else f"<int of {value.bit_length()} bits>"
        if isinstance(value, float):
            if is_finite(value):
                return float(value)
            return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        cap = self.limits.max_string_chars
        if isinstance(value, str):
            return sanitize_text(value, cap)
        if isinstance(value, bytes | bytearray | memoryview):
            return sanitize_text(bytes(value[: cap * 4]).decode("utf-8", "replace"), cap)
        dates = sys.modules.get("datetime")  # not loaded: no value can be one of its types
        if dates is not None and isinstance(value, dates.datetime | dates.date | dates.time):
            return value.isoformat()
        if isinstance(value, os.PathLike) or _is_uuid(value):
            return sanitize_text(str(value), cap)
        # A hostile __repr__ (raising, sleeping, huge) must not break nor block the event.
        text = _call_bounded(lambda: repr(value), self.deadline)
        if not isinstance(text, str):
            text = f"<{type(value).__name__} object>"
        return sanitize_text(text, cap)

    def value(self, value: Any, depth: int) -> Any:
        is_container = isinstance(value, Mapping | list | tuple | set | frozenset)
        if not is_container:
            return self.scalar(value)
        if depth >= self.limits.max_metadata_depth or self.remaining < 2 + _MARKER_BYTES:
            return _DEPTH_MARKER if depth >= self.limits.max_metadata_depth else _ELLIPSIS
        if isinstance(value, Mapping):
            if type(value) in _PLAIN_MAPPINGS:
                return self.mapping(value.items(), depth)
            pairs, complete = self.foreign_items(value, items=True)
            mapping = self.mapping(pairs, depth)
            if not complete:
                mapping[_TRUNCATED_KEY] = True
            return mapping
        if type(value) in _PLAIN_SEQUENCES:
            return self.sequence(value, depth)
        entries, complete = self.foreign_items(value, items=False)
        sequence = self.sequence(entries, depth)
        if not complete and sequence[-1:] != [_ELLIPSIS]:
            sequence.append(_ELLIPSIS)
        return sequence

    def _entry(self, item: Any, depth: int, overhead: int) -> Any:
        """Convert one entry and charge it, or return `_NO_ROOM` (charging this container's marker)."""
        before = self.remaining
        if before - overhead < _MARKER_BYTES:
            self.remaining = before - _MARKER_BYTES
            return _NO_ROOM
        # A nested container charges itself as it is built, inside what is left
        # after this entry's overhead and this container's own marker.
        self.remaining = before - overhead - _MARKER_BYTES
        converted = self.value(item, depth + 1)
        self.remaining += _MARKER_BYTES
        if not isinstance(converted, dict | list):
            self.remaining -= self._size(converted)
        if self.remaining < _MARKER_BYTES:
            self.remaining = before - _MARKER_BYTES
            return _NO_ROOM
        return converted

    def mapping(self, pairs: Iterable[tuple[Any, Any]], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.remaining -= 2  # {}
        try:
            for key, item in pairs:
                name = self.scalar(key)
                name = name if isinstance(name, str) else json.dumps(name)
                if name in out:  # two keys that sanitize alike: keep the first
                    continue
                converted = self._entry(item, depth, self._size(name) + 4)
                if converted is _NO_ROOM:
                    out[_TRUNCATED_KEY] = True
                    break
                out[name] = converted
        except Exception:  # a mapping whose iteration raises: keep what was read
            self.remaining -= _MARKER_BYTES
            out[_TRUNCATED_KEY] = True
        return out

    def sequence(self, items: Iterable[Any], depth: int) -> list[Any]:
        out: list[Any] = []
        self.remaining -= 2  # []
        try:
            for item in items:
                converted = self._entry(item, depth, 2)
                if converted is _NO_ROOM:
                    out.append(_ELLIPSIS)
                    break
                out.append(converted)
        except Exception:
            self.remaining -= _MARKER_BYTES
            out.append(_ELLIPSIS)
        return out


def sanitize_metadata(
    metadata: Any, limits: Limits, *, first: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON-safe dict within the depth and size limits (a non-mapping is wrapped as `{"value": ...}`).

    `first` holds the library's own keys: they come first (so truncation never
    drops them) and win over caller keys of the same name.
    """
    ours = dict(first or {})
    budget = _Budget(limits)
    truncated = False
    if metadata is None:
        theirs: Iterable[tuple[Any, Any]] = ()
    elif type(metadata) in _PLAIN_MAPPINGS:
        theirs = metadata.items()
    elif isinstance(metadata, Mapping):
        # A caller's own mapping: its items() may raise, never end, or sleep; what was read is kept.
        read, complete = budget.foreign_items(metadata, items=True)
        theirs, truncated = read, not complete
    else:
        theirs = (("value", metadata),)
    pairs = itertools.chain(ours.items(), ((k, v) for k, v in theirs if k not in ours))
    result = budget.mapping(pairs, 0)
    if truncated:
        result[_TRUNCATED_KEY] = True
    # The accounting is conservative by construction; this guard keeps the promise if it ever is not.
    if len(json.dumps(result, ensure_ascii=False).encode("utf-8")) > limits.max_metadata_bytes:
        return {_TRUNCATED_KEY: True}
    return result


def _is_uuid(value: Any) -> bool:
    # A UUID exists only once its module is loaded: the shell does not import it (~2 ms) to ask.
    uuid = sys.modules.get("uuid")
    return uuid is not None and isinstance(value, uuid.UUID)
