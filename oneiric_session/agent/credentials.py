"""The agent's credentials: tokens and secret server.env values, in memory only, each keyed by
the destination it was given for (from the spawning shell's environment, then each wake-up).

A destination with no token gets none: never another destination's, never a default. A
token the server refused is remembered by digest only (never the token itself), so a shell
still holding an old token cannot undo the new one a later shell brought.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from oneiric_session.common.digest import token_digest

__all__ = ["Credentials"]


class Credentials:
    def __init__(
        self,
        tokens: Mapping[str, str] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._tokens: dict[str, str] = {}
        self._refused: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        # Secret server.env values per destination key (destination.SECRET_REFERENCE).
        self._secrets: dict[str, dict[str, str]] = {k: dict(v) for k, v in (secrets or {}).items()}
        self.initial_tokens = dict(tokens or {})  # taken when delivery starts (`take_tokens`)

    def token(self, key: str) -> str | None:
        """The token given for destination `key`, or None."""
        return self._tokens.get(key)

    def secrets(self, key: str) -> dict[str, str] | None:
        return self._secrets.get(key)

    def take_tokens(self, tokens: Mapping[str, str]) -> list[str]:
        """Take new tokens, except ones already refused; the keys whose token changed."""
        fresh = {
            key: token
            for key, token in tokens.items()
            if token and self._tokens.get(key) != token and token_digest(token) not in self._refused[key]
        }
        self._tokens.update(fresh)
        return list(fresh)

    def take_secrets(self, secrets: Mapping[str, Mapping[str, str]]) -> list[str]:
        """Take secret server.env values; the keys whose values changed."""
        changed = [
            key for key, values in secrets.items() if values and self._secrets.get(key) != dict(values)
        ]
        for key in changed:
            self._secrets[key] = dict(secrets[key])
        return changed

    def current(self, key: str) -> str:
        """The digest of `key`'s token ("" for none)."""
        return token_digest(self._tokens.get(key))

    def refuse(self, key: str, digest: str | None = None) -> bool:
        """The server refused the token of this digest sent to `key` (None: the current token; "":
        no token at all, never a token's digest): True the first time."""
        digest = self.current(key) if digest is None else digest
        first = digest not in self._refused[key]
        self._refused[key].add(digest)
        return first
