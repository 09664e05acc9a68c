"""SHA-256 for the shell's path (standard library only).

`hashlib` loads OpenSSL on import (~2.5 ms, half the shell's start-up budget);
the interpreter's own SHA-256 module gives the same digest for ~0.15 ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the private modules have no stubs; hashlib's sha256 has their interface
    from hashlib import sha256
else:
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:  # pragma: no cover - depends on the Python version
        try:
            from _sha2 import sha256  # Python 3.12+
        except ImportError:  # a build without the built-in module
            from hashlib import sha256

__all__ = ["sha256_hex", "token_digest"]


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of `data` (equal to hashlib.sha256(data).hexdigest())."""
    return sha256(data).hexdigest()


def token_digest(token: str | None) -> str:
    """What stands for a token in memory where the token itself must not: "" for no token."""
    return sha256_hex(token.encode()) if token else ""
