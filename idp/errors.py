"""The project's exceptions.

Small and flat, as in warehouse's OIDC code: each carries a stable `code` and the HTTP status it
maps to; only the view layer turns them into JSON, and only the CLI turns them into exit codes.
`description` is written for the person who has to fix things: what is wrong, then what to do.
"""

from __future__ import annotations


class IdpError(Exception):
    code = "server_error"
    status = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class ConfigError(IdpError):
    """A setting is missing or malformed; raised at start-up, naming the variable."""

    code = "invalid_configuration"


class InvalidRequest(IdpError):
    code = "invalid_request"
    status = 400


class InvalidToken(IdpError):
    """The bearer token is missing, malformed, expired, revoked or not ours."""

    code = "invalid_token"
    status = 401


class Forbidden(IdpError):
    code = "access_denied"
    status = 403


class InvalidAudience(IdpError):
    code = "invalid_audience"
    status = 400


class Unavailable(IdpError):
    """The issuer cannot safely answer now (no signing key inside its window, store down)."""

    code = "temporarily_unavailable"
    status = 503


class KeyDecryptionError(ConfigError):
    """The configured key-encryption key does not open the stored private keys."""


class RingRefused(Unavailable):
    """The stored key ring cannot be used: unreadable, of the wrong shape, or not authentic.

    A replica that has a good ring keeps serving it (and says so in its log and metrics); a
    process that has none stops with this message. Never answered by writing a new ring over
    it: that would drop the keys of live tokens (README "Key ring repair").
    """

    code = "key_ring_refused"
