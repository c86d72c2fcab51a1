"""The OpenAPI 3.1 description of the HTTP API, served at `<issuer>/openapi.json`.

The package file `idp/openapi.json` writes its paths relative to the issuer's path, because the
routes hang below whatever path `IDP_ISSUER` has (`/_services/token` by default); only Vela's
`id_token` route, marked `x-idp-outside-issuer-path`, is written from the host's root. This
module rebases the document once at start onto this issuer (its origin in `servers`, its path in
front of the issuer paths), so clients and generators (schemathesis, codegen) reach the real
URLs. The one bound that is configuration, not code, is filled in too: the `lifetime`
parameter's maximum is this issuer's IDP_TOKEN_MAX_TTL, so generated clients and schemathesis
ask for what this issuer grants. Like discovery it depends on the settings alone: it never
touches the store.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, request

from idp.config import Settings

# A path item with this extension is absolute (from the host's root), not below the issuer.
OUTSIDE_ISSUER_PATH = "x-idp-outside-issuer-path"

# The document changes only with a new release; an hour of caching costs nothing.
MAX_AGE = 3600


def load_document() -> dict[str, Any]:
    """The document as packaged: issuer-relative paths, a placeholder server."""
    text = resources.files("idp").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def document_for(settings: Settings) -> dict[str, Any]:
    """The document as this issuer serves it: its origin in `servers`, its paths absolute."""
    document = load_document()
    document["servers"] = [{"url": settings.origin, "description": "this issuer's origin"}]
    prefix = settings.issuer_path
    document["paths"] = {
        (path if item.get(OUTSIDE_ISSUER_PATH) else prefix + path): item
        for path, item in document["paths"].items()
    }
    lifetime = document["components"]["parameters"]["Lifetime"]["schema"]
    lifetime["maximum"] = settings.token_max_ttl
    lifetime["examples"] = [
        min(example, settings.token_max_ttl) for example in lifetime["examples"]
    ]
    return document


def init_app(app: Flask, settings: Settings) -> None:
    """Serve the rebased document from memory with a strong ETag (304 on `If-None-Match`)."""
    body = json.dumps(document_for(settings), separators=(",", ":")).encode()
    headers = {
        "Cache-Control": f"public, max-age={MAX_AGE}",
        "ETag": '"' + hashlib.sha256(body).hexdigest()[:40] + '"',
        "Content-Type": "application/json",
    }
    bp = Blueprint("openapi", __name__, url_prefix=settings.issuer_path or None)
    limits = app.extensions["idp.ratelimits"]

    @bp.get("/openapi.json")
    @limits.document
    def openapi() -> Response:
        tags = {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}
        if headers["ETag"] in tags or "*" in tags:
            return Response(status=304, headers=headers)
        return Response(body, status=200, headers=headers)

    app.register_blueprint(bp)
