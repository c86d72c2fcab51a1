"""What relying parties read: OIDC discovery and the JWKS.

Both bodies are computed once per key-ring change and served from memory with a strong ETag, so
AWS and verifiers polling them cost a hash comparison, not a serialization, and no store access.

They are the most requested and the cheapest answers, so the ordinary answer (200 or 304)
is given by a WSGI layer in front of Flask (`PublishedDocuments`): Flask's request context,
routing and `Response` cost more than the answer itself (bench/README.md, issue 17: the
documents must reach 90 % of a constant-JSON Flask route). Anything else falls through to the
Flask views below, which build the same answer with the same function (`conditional`), and
whose error handlers answer what the fast layer does not: a ring not loaded yet (503), a
spent budget (429), another method (405).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, request

from idp.config import Settings
from idp.keys.keyring import KeyRing, Published
from idp.ratelimit import RateLimits
from idp.tokens.vocabulary import ClaimPolicy

# The claims the issuer sets itself, before the context's.
ISSUER_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "token_type")


def id_token_claims_of(policy: ClaimPolicy) -> tuple[str, ...]:
    """`claims_supported`: the issuer's claims and every claim the policy's contexts give."""
    return (*ISSUER_CLAIMS, *policy.claim_names)


def conditional(
    body: Published, max_age: int, if_none_match: str | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a published document: 304 when the client holds it."""
    headers = [
        ("Cache-Control", f"public, max-age={max_age}"),
        ("ETag", body.etag),
        ("Content-Type", "application/json"),
    ]
    if if_none_match:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        if body.etag in tags or "*" in tags:
            return 304, headers, b""
    headers.append(("Content-Length", str(len(body.body))))
    return 200, headers, body.body


def _published(body: Published, max_age: int) -> Response:
    status, headers, content = conditional(body, max_age, request.headers.get("If-None-Match"))
    return Response(content, status=status, headers=headers)


class _Discovery:
    """The discovery document depends only on the settings and the algs in the JWKS."""

    def __init__(self, settings: Settings, keyring: KeyRing) -> None:
        self.settings = settings
        self.keyring = keyring
        self._algs: tuple[str, ...] | None = None
        self._value: Published | None = None

    def get(self) -> Published:
        algs = self.keyring.algorithms()
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


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_STATUS = {200: "200 OK", 304: "304 Not Modified"}


class PublishedDocuments:
    """WSGI layer in front of Flask answering GET and HEAD of discovery and the JWKS when
    the answer is the ordinary one; everything else goes on to Flask (see the docstring)."""

    def __init__(
        self,
        app: WSGIApp,
        documents: dict[str, tuple[str, Callable[[], Published]]],
        max_age: int,
        limits: RateLimits,
    ) -> None:
        self.app = app
        self.documents = documents
        self.max_age = max_age
        self.limits = limits

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        found = self.documents.get(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD")
        if found is None or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        scope, document = found
        # The same per-address budget as the Flask view's, in this worker's memory. A spent
        # budget (or a ring not loaded yet) is Flask's to answer, with its JSON error: the
        # request is counted once more there, which changes nothing for a budget already spent.
        address = environ.get("REMOTE_ADDR") or "unknown"
        items = self.limits.client_items
        if items and any(
            self.limits.memory.hit([i.budget(scope, address) for i in items], time.time())
        ):
            return self.app(environ, start_response)
        try:
            published = document()
        except Exception:  # noqa: BLE001 - whatever it is, Flask's handlers answer it
            return self.app(environ, start_response)
        status, headers, body = conditional(
            published, self.max_age, environ.get("HTTP_IF_NONE_MATCH")
        )
        start_response(_STATUS[status], headers)
        return [b"" if method == "HEAD" else body]


def init_app(app: Flask, settings: Settings) -> None:
    bp = Blueprint("oidc", __name__, url_prefix=settings.issuer_path or None)
    keyring: KeyRing = app.extensions["idp.keyring"]
    discovery_doc = _Discovery(settings, keyring)
    limits: RateLimits = app.extensions["idp.ratelimits"]

    @bp.get("/.well-known/openid-configuration")
    @limits.document
    def discovery() -> Response:
        return _published(discovery_doc.get(), settings.jwks_max_age)

    @bp.get("/.well-known/jwks")
    @limits.document
    def jwks() -> Response:
        return _published(keyring.jwks(), settings.jwks_max_age)

    app.register_blueprint(bp)
    # Flask's own WSGI callable, before any other layer wraps it (app.py orders them), so the
    # client address is the one ProxyFix settled on and the security headers are added after.
    # Each path counts against its view's budget (`limits.document` names it by the view).
    app.wsgi_app = PublishedDocuments(  # type: ignore[method-assign]
        app.wsgi_app,
        {
            f"{settings.issuer_path}/.well-known/openid-configuration": (
                discovery.__name__,
                discovery_doc.get,
            ),
            f"{settings.issuer_path}/.well-known/jwks": (jwks.__name__, keyring.jwks),
        },
        settings.jwks_max_age,
        limits,
    )
