"""What relying parties read: OIDC discovery and the JWKS.

Both bodies are computed once per key-ring change and served from memory with a strong ETag, so
AWS and verifiers polling them cost a hash comparison, not a serialization, and no store access.
"""

from __future__ import annotations

import hashlib
import json

from flask import Blueprint, Flask, Response, request

from idp.config import Settings
from idp.keys.keyring import Published
from idp.tokens.vocabulary import CONTEXT_CLAIMS, ClaimPolicy
from idp.views import keyring

# The claims the issuer sets itself, before the context's.
ISSUER_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "token_type")
# Without a claims file.
ID_TOKEN_CLAIMS = (*ISSUER_CLAIMS, *CONTEXT_CLAIMS)


def id_token_claims_of(policy: ClaimPolicy) -> tuple[str, ...]:
    """`claims_supported`: the issuer's claims and every claim the policy's contexts give."""
    return (*ISSUER_CLAIMS, *policy.claim_names)


def _published(body: Published, max_age: int) -> Response:
    headers = {
        "Cache-Control": f"public, max-age={max_age}",
        "ETag": body.etag,
        "Content-Type": "application/json",
    }
    tags = {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}
    if body.etag in tags or "*" in tags:
        return Response(status=304, headers=headers)
    return Response(body.body, status=200, headers=headers)


class _Discovery:
    """The discovery document depends only on the settings and the algs in the JWKS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._algs: tuple[str, ...] | None = None
        self._value: Published | None = None

    def get(self) -> Published:
        algs = keyring().algorithms()
        if self._value is not None and self._algs == algs:
            return self._value
        document = {
            "issuer": self.settings.issuer,
            "jwks_uri": f"{self.settings.issuer}/.well-known/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(algs),
            "scopes_supported": ["openid"],
            "claims_supported": list(id_token_claims_of(self.settings.claim_policy)),
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        self._value = Published(body, '"' + hashlib.sha256(body).hexdigest()[:40] + '"')
        self._algs = algs
        return self._value


def init_app(app: Flask, settings: Settings) -> None:
    bp = Blueprint("oidc", __name__, url_prefix=settings.issuer_path or None)
    discovery_doc = _Discovery(settings)
    limits = app.extensions["idp.ratelimits"]

    @bp.get("/.well-known/openid-configuration")
    @limits.document
    def discovery() -> Response:
        return _published(discovery_doc.get(), settings.jwks_max_age)

    @bp.get("/.well-known/jwks")
    @limits.document
    def jwks() -> Response:
        return _published(keyring().jwks(), settings.jwks_max_age)

    app.register_blueprint(bp)
