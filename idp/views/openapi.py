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

The build-context schema is generated at start from the claim policy (`build_context_schema`),
the table the parser reads, so the fields a claims file declares are described (and fuzzed by
schemathesis) exactly as they are checked. Built-in fields keep their hand-written schemas
(the image grammar is no generic rule), narrowed by whatever the file adds.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, request

from idp.config import Settings
from idp.tokens.vocabulary import BUILTIN_FIELDS, ClaimPolicy, Field

# A path item with this extension is absolute (from the host's root), not below the issuer.
OUTSIDE_ISSUER_PATH = "x-idp-outside-issuer-path"

# The document changes only with a new release; an hour of caching costs nothing.
MAX_AGE = 3600


def load_document() -> dict[str, Any]:
    """The document as packaged: issuer-relative paths, a placeholder server."""
    text = resources.files("idp").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


# What the parser refuses in any text: C0, DEL, C1 and the line separators anywhere, and white
# space (Python's str.strip set, as far as JSON Schema's ECMA regexes can say it) at either end.
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029"
_EDGE = "\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_ID_MAX = 10**20 - 1


def text_pattern(no_colon: bool) -> str:
    """The ECMA regex of a text field: no control character, no white space at the ends."""
    colon = ":" if no_colon else ""
    edge, inner = f"[^{_EDGE}{colon}]", f"[^{_CONTROL}{colon}]"
    return f"^(?:{edge}(?:{inner}*{edge})?)?$"


def field_schema(name: str, spec: Field, described: dict[str, Any] | None) -> dict[str, Any]:
    """One field's schema: the hand-written one of a built-in, or one generated from its
    kind; then the claims file's narrowing (allow-list, pattern, shorter limit)."""
    if described is not None:
        schema = dict(described)
    elif spec.kind == "bool":
        schema = {"type": "boolean"}
    elif spec.kind == "id":
        empty = "|" if spec.allow_empty else ""
        schema = {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": _ID_MAX},
                {"type": "string", "pattern": f"^(?:{empty}0|[1-9][0-9]{{0,19}})$"},
            ]
        }
    else:
        schema = {
            "type": "string",
            "minLength": 0 if spec.allow_empty else 1,
            "maxLength": spec.max_length,
            "pattern": text_pattern(spec.no_colon),
        }
    if described is None:
        schema["description"] = f"`{name}`, declared in IDP_CLAIMS_FILE" + (
            "." if spec.required else "; optional."
        )
    if spec.kind == "text":
        schema["maxLength"] = spec.max_length
    narrowing: list[dict[str, Any]] = []
    if spec.values is not None:
        # Values are strings; an id field's JSON number is accepted as its digits, so an
        # allow-list of an id field also admits those numbers.
        allowed: list[Any] = list(spec.values)
        if spec.kind == "id":
            allowed += [int(value) for value in spec.values if value]
        narrowing.append({"enum": allowed})
    if spec.pattern is not None:
        # re.fullmatch in the parser; in JSON Schema a pattern searches, so anchor it.
        narrowing.append(
            {"anyOf": [{"type": "integer"}, {"pattern": f"^(?:{spec.pattern})$"}]}
            if spec.kind == "id"
            else {"pattern": f"^(?:{spec.pattern})$"}
        )
    if narrowing:
        schema["allOf"] = narrowing
    return schema


def build_context_schema(policy: ClaimPolicy, packaged: dict[str, Any]) -> dict[str, Any]:
    """The BuildContext schema for this policy, from the packaged one's built-in parts."""
    schema = dict(packaged)
    described = packaged["properties"]
    properties: dict[str, Any] = {}
    for name, spec in policy.fields.items():
        builtin = name in BUILTIN_FIELDS
        properties[name] = field_schema(name, spec, described[name] if builtin else None)
    properties["ttl"] = described["ttl"]
    schema["properties"] = properties
    schema["required"] = [name for name, spec in policy.fields.items() if spec.required]
    return schema


def document_for(settings: Settings) -> dict[str, Any]:
    """The document as this issuer serves it: its origin in `servers`, its paths absolute,
    its build context the one the claim policy describes."""
    document = load_document()
    schemas = document["components"]["schemas"]
    policy = settings.claim_policy
    schemas["BuildContext"] = build_context_schema(policy, schemas["BuildContext"])
    if not all(policy.fields[name].required for name in ("repo", "build_number")):
        env = schemas["RequestTokenOpened"]["properties"]["env"]
        env["required"] = [name for name in env["required"] if not name.startswith("VELA_")]
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
