"""The wake-up datagram: what a shell sends the agent and how the agent reads it (standard library only).

Run by both sides: a shell encodes (`waker.wake`), the agent decodes (`listener.WakeupListener`).
A plain wake-up is an empty datagram; one that carries tokens (destination key -> token), the
secret server.env values, or asks the agent to step aside for `spool replay` is a small JSON
object. A malformed datagram is read as a plain wake-up, never as an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

from oneiric_session.common.record import Record

__all__ = ["MAX_DATAGRAM_BYTES", "Wakeup", "carried", "decode_wakeup", "encode_wakeup"]

# A wake-up with tokens is small; anything larger is not ours.
MAX_DATAGRAM_BYTES = 65536


class Wakeup(Record):
    """What the datagrams read at once asked for: the newest token per destination key, and
    whether a foreground `spool replay` wants this agent to step aside.

    A Record (common/record.py): every shell imports this module.
    """

    datagrams: int = 0  # not `count`: that would hide tuple.count
    tokens: Mapping[str, str] = MappingProxyType({})
    handover: bool = False
    # Secret server.env values per destination key (never on disk: see destination.SECRET_REFERENCE).
    secrets: Mapping[str, Mapping[str, str]] = MappingProxyType({})

    def __repr__(self) -> str:  # the tokens are secrets: only their keys are shown
        return (
            f"Wakeup(datagrams={self.datagrams}, token_keys={sorted(self.tokens)}, handover={self.handover}, "
            f"secret_keys={sorted(self.secrets)})"
        )


def encode_wakeup(
    tokens: Mapping[str, str] | None = None,
    *,
    handover: bool = False,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    """The datagram: empty for a plain wake-up, else JSON {"tokens": {key: token}, "handover": bool}
    (and "secrets": {key: {name: value}} when there are secret server.env values)."""
    if not tokens and not handover and not secrets:
        return b""
    value: dict[str, object] = {"tokens": dict(tokens or {}), "handover": handover}
    if secrets:
        value["secrets"] = {k: dict(v) for k, v in secrets.items()}
    return json.dumps(value).encode()


def _secret_values(value: object) -> dict[str, dict[str, str]]:
    """{key: {name: value}} with anything else dropped (a wake-up's, or a spawned agent's hand-off)."""
    if not isinstance(value, dict):
        return {}
    return {
        k: {n: x for n, x in v.items() if isinstance(n, str) and isinstance(x, str)}
        for k, v in value.items()
        if isinstance(k, str) and isinstance(v, dict)
    }


def decode_wakeup(data: bytes) -> Wakeup:
    """One datagram read (a plain or malformed one is a plain wake-up)."""
    try:
        value = json.loads(data) if data else {}
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep to read
        value = {}
    if not isinstance(value, dict):
        value = {}
    tokens = value.get("tokens")
    tokens = tokens if isinstance(tokens, dict) else {}
    return Wakeup(
        datagrams=1,
        tokens={k: v for k, v in tokens.items() if isinstance(k, str) and isinstance(v, str) and v},
        handover=value.get("handover") is True,
        secrets=_secret_values(value.get("secrets")),
    )


# Whether this process said that its tokens and secret values are too large to hand over.
_oversize_said: list[bool] = []


def carried(message: bytes, *, handover: bool) -> bytes:
    """`message`, or a plain one (the handover kept) when it is more than the agent reads at once:
    cut short, its tokens and secret values would be lost without a word. Said once a process."""
    if len(message) <= MAX_DATAGRAM_BYTES:
        return message
    if not _oversize_said:
        _oversize_said.append(True)
        import logging  # (rare: no shell pays for it otherwise)

        logging.getLogger("oneiric_session").warning(
            "oneiric-session: the token and secret server.env values take %d bytes, more than the "
            "delivery agent takes at once (%d): it is woken without them, and the events of a "
            "server that needs them wait for them",
            len(message),
            MAX_DATAGRAM_BYTES,
        )
    return encode_wakeup(None, handover=handover)
