"""Token checking for the bundled server, as Session-Buddy 0.23.0 does it (JWT, HS256).

The token is never logged, echoed or stored: failures are logged by reason only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from oneiric_session.errors import ConfigError

SECRET_ENV_VARS = ("SESSION_BUDDY_SECRET", "BODAI_SHARED_SECRET")
MIN_SECRET_CHARS = 32
# Values the real server refuses as obviously unsafe, whatever their length.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "secret", "test", "test-secret", "change-me", "placeholder", "example", "none", "null"}
)
AUDIENCE = "session-buddy"
ALLOWED_ISSUERS = frozenset({"mahavishnu", "session-buddy", "akosha", "dhara", "crackerjack"})
# Hosts in a fleet drift by a few seconds; without leeway a fresh token can look issued in
# the future. The real server uses none; ten seconds costs nothing in safety.
CLOCK_LEEWAY_SECONDS = 10

# The real server's own answers (mcp/auth.py in session-buddy 0.23.0).
TOKEN_REQUIRED = "❌ Authentication failed: Token required (SESSION_BUDDY_SECRET is set)"
TOKEN_INVALID = "❌ Authentication failed: invalid or expired token"

logger = logging.getLogger(__name__)


def secret_from_env(environ: Mapping[str, str]) -> str | None:
    """The shared secret, or None when authentication is off. A weak secret is a ConfigError."""
    for name in SECRET_ENV_VARS:
        value = environ.get(name)
        if value:
            break
    else:
        return None
    if value.lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(
            f"{name} is a placeholder value; generate a real secret, e.g. `openssl rand -hex 32`"
        )
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"{name} is too short ({len(value)} characters); at least {MIN_SECRET_CHARS} are required"
        )
    return value


class TokenVerifier:
    """Checks the `token` argument of each tool call against the shared secret."""

    def __init__(self, secret: str) -> None:
        try:
            import jwt
        except ImportError as exc:
            raise ConfigError(
                "SESSION_BUDDY_SECRET is set, so the server must check tokens, but PyJWT is not "
                "installed: pip install 'oneiric-session[jwt]'"
            ) from exc
        self._jwt = jwt
        self._secret = secret

    def failure(self, token: str | None) -> str | None:
        """The real server's failure message for this token, or None when it is accepted."""
        if not token:
            return TOKEN_REQUIRED
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except self._jwt.InvalidTokenError as exc:
            # The exception's type names the failed check; its text is not logged (it may quote input).
            logger.warning("token refused: %s", type(exc).__name__)
            return TOKEN_INVALID
        if claims.get("iss") not in ALLOWED_ISSUERS:
            logger.warning("token refused: issuer %r is not allowed", claims.get("iss"))
            return TOKEN_INVALID
        return None
