"""The project's own exception tree; foreign errors are mapped into it at each boundary."""

from __future__ import annotations


class OneiricSessionError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(OneiricSessionError):
    """The configuration cannot be used; the message names the file or variable and the setting.

    The message is made safe for a terminal here, once: it quotes settings files' keys, file names
    and variables, and a shell prints it as its one warning line through whatever handler it has.
    """

    def __init__(self, message: str) -> None:
        from oneiric_session.common.safetext import terminal_safe  # only when there is an error

        super().__init__(terminal_safe(message, MAX_CONFIG_ERROR_CHARS))


# The longest configuration error shown (several invalid settings are reported in one message).
MAX_CONFIG_ERROR_CHARS = 2000


class DeliveryError(OneiricSessionError):
    """An event did not reach the server. `permanent` says whether sending it again can help."""

    permanent: bool = False


class TransientDeliveryError(DeliveryError):
    """The server could not be reached or did not answer in time: retry later."""


class ServerUnavailableError(TransientDeliveryError):
    """The server process could not be started, died, or the connection failed."""


class DeliveryTimeoutError(TransientDeliveryError):
    """Connecting or a call took longer than its timeout."""


class CircuitOpenError(TransientDeliveryError):
    """The circuit breaker is open: the call was not attempted."""


class RejectedError(DeliveryError):
    """The server refused this event (status "error" or a validation error): never retried."""

    permanent = True


class AuthenticationError(RejectedError):
    """The server refused the token: permanent until the token changes.

    `token_digest` is the SHA-256 of the token the refused call carried ("" for none; None when
    not known), never the token: a token the agent took while the call was on its way is not the
    one refused.
    """

    def __init__(self, message: str, *, token_digest: str | None = None) -> None:
        super().__init__(message)
        self.token_digest = token_digest


class SpoolError(OneiricSessionError):
    """The spool cannot be used (after recovery was attempted)."""


class UnsafeSpoolError(SpoolError):
    """The spool (or its directory) is another user's or writable by another user: refused."""
