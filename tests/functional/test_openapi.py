"""The OpenAPI description (`idp/openapi.json`) against the code it describes.

The document cannot drift: it must be valid OpenAPI 3.1, describe exactly the routes Flask
serves (no more, no fewer), be served rebased on the issuer's own origin and path, and its
build-context, audience and lifetime schemas must accept exactly what `parse_context`,
`validate_audiences` and `requested_lifetime` accept (probed value by value with both; the
lifetime's maximum is the configured IDP_TOKEN_MAX_TTL, so it is probed under two settings).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from flask import Flask
from openapi_spec_validator import validate

from idp.app import create_app
from idp.config import MIN_LIFETIME, Settings
from idp.errors import InvalidAudience, InvalidRequest
from idp.store import Store, create_store
from idp.tokens.claims import validate_audiences
from idp.tokens.context import FIELDS, MAX_TTL, parse_context
from idp.tokens.lifetime import requested_lifetime
from idp.views.openapi import OUTSIDE_ISSUER_PATH, document_for, load_document
from tests.unit.test_claims import CONTEXT
from tests.unit.test_claims_file import OCTOPUS, OCTOPUS_CONTEXT

MakeSettings = Callable[..., Settings]
VELA_PATH = "/api/v1/repos/{org}/{repo}/builds/{build_number}/id_token"
# Flask answers these itself for every route; the document describes what the views do.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


class WatchedStore:
    """A real store that counts the calls made once `watching` is set."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.watching = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if callable(value) and self.watching:
            self.calls.append(name)
        return value


def _app(settings: Settings, store: Store | None = None) -> Iterator[Flask]:
    app = create_app(settings, store=store, start_refresh=False)
    app.config["TESTING"] = True
    yield app
    app.extensions["idp.keyring"].stop()


@pytest.fixture
def custom_settings(make_settings: MakeSettings) -> Settings:
    return make_settings(IDP_ISSUER="https://ci.example.com/oidc")


@pytest.fixture
def custom_app(custom_settings: Settings) -> Iterator[Flask]:
    yield from _app(custom_settings)


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    }


def _routes(app: Flask) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        # <build_id>, <int:n>, <path:p> -> {build_id}, {n}, {p}
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            routes.add((method, path))
    return routes


def test_the_packaged_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_the_served_document_is_valid_openapi_3_1(custom_settings: Settings) -> None:
    validate(document_for(custom_settings))


@pytest.mark.parametrize("issuer", [None, "https://ci.example.com/oidc", "https://ci.example.com"])
def test_every_route_is_described_and_every_description_is_a_route(
    make_settings: MakeSettings, issuer: str | None
) -> None:
    settings = make_settings(**({"IDP_ISSUER": issuer} if issuer else {}))
    for app in _app(settings):
        described = _operations(document_for(settings))
        served = _routes(app)
        assert served - described == set(), "routes missing from idp/openapi.json"
        assert described - served == set(), "idp/openapi.json describes routes nobody serves"


def test_every_operation_documents_its_errors_and_rate_limit() -> None:
    document = load_document()
    for method, path in _operations(document):
        operation = document["paths"][path][method.lower()]
        responses = operation["responses"]
        where = f"{method} {path}"
        assert "429" in responses, where
        assert {"400", "414", "431"} <= set(responses), where
        if operation.get("security"):
            assert "401" in responses, where
        if "{" in path:
            assert "404" in responses, where
    for name, response in document["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    retry_after = document["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"]
    assert retry_after == {"$ref": "#/components/headers/RetryAfter"}
    www = document["components"]["responses"]["Unauthorized"]["headers"]["WWW-Authenticate"]
    assert www == {"$ref": "#/components/headers/WWWAuthenticate"}
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "error_description"]
    assert error["additionalProperties"] is False


def test_paths_are_rebased_on_the_issuer(custom_settings: Settings) -> None:
    document = document_for(custom_settings)
    assert document["servers"][0]["url"] == "https://ci.example.com"
    packaged = load_document()["paths"]
    for path, item in packaged.items():
        expected = path if item.get(OUTSIDE_ISSUER_PATH) else "/oidc" + path
        assert expected in document["paths"]
    assert VELA_PATH in document["paths"]
    assert "/oidc/.well-known/jwks" in document["paths"]
    assert not any(path.startswith("/_services/token") for path in document["paths"])


def test_the_document_is_served_below_a_non_default_issuer_path(custom_app: Flask) -> None:
    client = custom_app.test_client()
    response = client.get("/oidc/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert re.fullmatch(r"public, max-age=\d+", response.headers["Cache-Control"])
    document = response.get_json()
    assert document["servers"] == [
        {"url": "https://ci.example.com", "description": "this issuer's origin"}
    ]
    assert "/oidc/request-tokens" in document["paths"]
    assert VELA_PATH in document["paths"]
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/_services/token/openapi.json").status_code == 404

    etag = response.headers["ETag"]
    cached = client.get("/oidc/openapi.json", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.headers["ETag"] == etag
    assert client.get("/oidc/openapi.json", headers={"If-None-Match": '"other"'}).status_code == 200


def test_serving_the_document_never_touches_the_store(custom_settings: Settings) -> None:
    store = WatchedStore(create_store(custom_settings))
    for app in _app(custom_settings, store=store):
        store.watching = True
        client = app.test_client()
        assert client.get("/oidc/openapi.json").status_code == 200
        assert client.get("/oidc/openapi.json", headers={"If-None-Match": "*"}).status_code == 304
        assert store.calls == []


# --- the schemas accept exactly what the code accepts ------------------------------------------


def _component(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = load_document()["components"]["schemas"][name]
    return schema


def _valid(name: str, instance: object) -> bool:
    # jsonschema-rs, as schemathesis uses: ECMA-262 regexes, as JSON Schema says (Python's `re`
    # would let `$` match before a final newline).
    return bool(jsonschema_rs.validator_for(_component(name)).is_valid(instance))


def test_the_build_context_schema_follows_fields() -> None:
    schema = _component("BuildContext")
    assert schema["additionalProperties"] is False
    assert schema["required"] == [name for name, spec in FIELDS.items() if spec.required]
    assert set(schema["properties"]) == {*FIELDS, "ttl"}
    for name, spec in FIELDS.items():
        prop = schema["properties"][name]
        if spec.kind == "bool":
            assert prop["type"] == "boolean", name
        elif spec.kind == "id":
            integer, digits = prop["anyOf"]
            assert integer == {"type": "integer", "minimum": 0, "maximum": 10**20 - 1}, name
            empty = "|" if spec.allow_empty else ""
            canonical = f"^(?:{empty}0|[1-9][0-9]{{0,19}})$"
            assert digits == {"type": "string", "pattern": canonical}, name
        else:
            assert prop["type"] == "string", name
            assert prop["maxLength"] == spec.max_length, name
            assert prop.get("minLength", 0) == (0 if spec.allow_empty else prop["minLength"]), name
            assert spec.allow_empty or prop["minLength"] >= 1, name
    assert schema["properties"]["ttl"]["anyOf"][0]["maximum"] == MAX_TTL


TEXT_PROBES = [
    "x",
    "",
    " x",
    "x ",
    "x\n",
    "\tx",
    "x\u00a0",
    "\u3000x",
    "x\u2003",
    "a b",
    "a\tb",
    "a\x00b",
    "a\x1fb",
    "a\x7fb",
    "a\x85b",
    "a\u2028b",
    "a\u00a0b",
    "a:b",
    "ünïcödé ✓",
    "😀",
    "\ufeffx",
]
ID_PROBES: list[object] = [0, 1234, "1234", "007", "05003", "00", "0", "", -1, 10**20 - 1, 10**20]
ID_PROBES += ["1" * 20, "1" * 21, "0" + "1" * 19]
ID_PROBES += [True, 1.5, None, "12a", "\u0663", "²", " 1", [1], {"n": 1}]


def _context_probes() -> Iterator[tuple[str, object]]:
    for name, spec in FIELDS.items():
        if spec.kind == "text":
            for text in TEXT_PROBES:
                yield name, text
            yield name, "x" * spec.max_length
            yield name, "x" * (spec.max_length + 1)
        elif spec.kind == "id":
            for ident in ID_PROBES:
                yield name, ident
        for other in (True, False, None, 1, "true"):
            yield name, other
    for repo in ["a/b", "a/.", "a/..", "a/...", "./a", "../a", ".../a", "./..", "../.", ".a/a."]:
        yield "repo", repo
    for repo in ["a", "a/b/c", "a b/c", "A_.-/z-_.", "x/.hidden", "..x/y"]:
        yield "repo", repo
    for image in [
        "golang",
        "golang:1.22",
        "golang\n",
        "registry:5000/team/app:1.2@sha256:" + "a" * 64,
        "app@sha256:" + "A" * 64,
        "app@sha256:" + "a" * 63,
        "app@sha384:" + "0" * 96,
        "app@sha512:" + "0" * 128,
        "app@md5:" + "0" * 32,
        "a" * 64,
        "a" * 63,
        "a" * 65,
        "r.io/" + "a" * 64,
        "[::1]:5000/app",
        "localhost/app",
        "Golang",
        "Registry.example.com/app",
        "team/App",
        "app:",
        "app:-tag",
        "app@sha256:abc",
        "a__b",
        "a___b",
        "a--b",
        "app:" + "t" * 129,
        "a" * 247,
        "a" * 248,
        "a" * 247 + ":tag",
        "a" * 248 + ":tag",
        "docker.io/" + "a" * 247,
        "docker.io/" + "a" * 248,
        "index.docker.io/" + "a" * 248,
        "docker.io/team/" + "a" * 250,
        "docker.io/team/" + "a" * 251,
        "team/" + "a" * 250,
        "team/" + "a" * 251,
        "team/" + "a" * 251 + ":1@sha256:" + "0" * 64,
        "localhost/" + "a" * 255,
        "localhost/" + "a" * 256,
        "localhost:5000/" + "a" * 256,
        "Reg/" + "a" * 255,
        "Reg/" + "a" * 256,
        "a" * 255,
        "a" * 256,
        "a" * 255 + ":tag",
        "a" * 256 + ":tag",
        "a" * 255 + "@sha256:" + "0" * 64,
        "a" * 256 + "@sha256:" + "0" * 64,
        "r.io:5000/" + "a" * 245 + ":1.2@sha256:" + "0" * 64,
        "r.io:5000/" + "a" * 246 + ":1.2@sha256:" + "0" * 64,
        "r.io:5000/" + "a" * 245,
        "r.io:5000/" + "a" * 246,
        "[::1]:5000/" + "a" * 244,
        "[::1]:5000/" + "a" * 245,
    ]:
        yield "image", image
    for ttl in [1, MAX_TTL, 0, MAX_TTL + 1, -1, True, 1.5, "60", None]:
        yield "ttl", ttl


@pytest.mark.parametrize(("field", "value"), list(_context_probes()))
def test_the_build_context_schema_accepts_what_the_code_accepts(field: str, value: object) -> None:
    context = {**CONTEXT, field: value}
    by_schema = _valid("BuildContext", context)
    try:
        parse_context(context)
    except InvalidRequest:
        by_code = False
    else:
        by_code = True
    assert by_schema == by_code, f"{field}={value!r}: schema {by_schema}, code {by_code}"


@pytest.mark.parametrize("change", ["unknown", "missing"])
def test_the_build_context_schema_refuses_unknown_and_missing_fields(change: str) -> None:
    context = dict(CONTEXT)
    if change == "unknown":
        context["extra"] = "x"
    else:
        del context["step"]
    assert not _valid("BuildContext", context)
    with pytest.raises(InvalidRequest):
        parse_context(context)


AUDIENCE_PROBES = [
    "sts.amazonaws.com",
    "https://vault.example.com",
    "a",
    "",
    " a",
    "a ",
    "a b",
    "a,b",
    "é",
    "a\tb",
    "a\x7f",
    "~!\"#$%&'()*+-./:;<=>?@[\\]^_`{|}",
    "a" * 256,
    "a" * 257,
]


@pytest.mark.parametrize("audience", AUDIENCE_PROBES)
def test_the_audience_schema_accepts_what_the_code_accepts(
    audience: str, settings: Settings
) -> None:
    by_schema = _valid("Audience", audience)
    try:
        validate_audiences([audience], settings)
    except InvalidAudience:
        by_code = False
    else:
        by_code = True
    assert by_schema == by_code, f"{audience!r}: schema {by_schema}, code {by_code}"


# --- with a claims file: the served schema is generated from the same table ---------------------


# The issue's Octopus file, plus one declared claim of each other kind.
OCTOPUS_ALL_KINDS = OCTOPUS.replace(
    "  runbook:     {kind: text}\n",
    "  runbook:     {kind: text}\n"
    "  approved:    {kind: bool}\n"
    "  ticket:      {kind: id}\n"
    "  build_kind:  {kind: id, values: ['1', '2']}\n",
)


def _octopus_settings(make_settings: MakeSettings, tmp_path: Path) -> Settings:
    path = tmp_path / "claims.yaml"
    path.write_text(OCTOPUS_ALL_KINDS, encoding="utf-8")
    return make_settings(IDP_CLAIMS_FILE=str(path))


def _served_component(settings: Settings, name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document_for(settings)["components"]["schemas"][name]
    return schema


def test_the_served_document_with_a_claims_file_is_valid_openapi_3_1(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = _octopus_settings(make_settings, tmp_path)
    validate(document_for(settings))
    schema = _served_component(settings, "BuildContext")
    policy = settings.claim_policy
    assert schema["required"] == [name for name, spec in policy.fields.items() if spec.required]
    assert set(schema["properties"]) == {*policy.fields, "ttl"}


def _declared_probes() -> Iterator[tuple[str, object]]:
    for name in ("space", "project", "tenant", "runbook", "environment"):
        for text in TEXT_PROBES:
            yield name, text
        for text in ["dev", "prod", "staging", "aws-x", "AWS", "a" * 64, "a" * 65, "a" * 257]:
            yield name, text
        yield name, None
        yield name, 1
    for ident in ID_PROBES:
        yield "ticket", ident
    for value in [1, 2, 3, "1", "2", "3", "01", True]:
        yield "build_kind", value
    for value in [True, False, "true", 1, None]:
        yield "approved", value
    for name in ("repo", "image", "space"):
        yield name, "<absent>"


@pytest.mark.parametrize(("field", "value"), list(_declared_probes()))
def test_the_generated_schema_accepts_what_the_code_accepts(
    make_settings: MakeSettings, tmp_path: Path, field: str, value: object
) -> None:
    settings = _octopus_settings(make_settings, tmp_path)
    context: dict[str, Any] = {**OCTOPUS_CONTEXT, field: value}
    if value == "<absent>":
        context.pop(field, None)
    schema = _served_component(settings, "BuildContext")
    by_schema = bool(jsonschema_rs.validator_for(schema).is_valid(context))
    try:
        parse_context(context, settings.claim_policy)
    except InvalidRequest:
        by_code = False
    else:
        by_code = True
    assert by_schema == by_code, f"{field}={value!r}: schema {by_schema}, code {by_code}"


# --- lifetime: the bounds are the configuration's -------------------------------------------


def test_both_exchanges_take_the_optional_lifetime_parameter() -> None:
    document = load_document()
    for path in ("/id-token", VELA_PATH):
        parameters = document["paths"][path]["get"]["parameters"]
        assert {"$ref": "#/components/parameters/Lifetime"} in parameters, path
    parameter = document["components"]["parameters"]["Lifetime"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == (
        "lifetime",
        "query",
        False,
    )
    assert parameter["schema"]["minimum"] == MIN_LIFETIME
    assert parameter["schema"]["maximum"] == Settings.token_max_ttl


@pytest.mark.parametrize("max_ttl", ["60", "900", "3600", "7200"])
def test_the_served_document_states_the_configured_maximum(
    make_settings: MakeSettings, max_ttl: str
) -> None:
    settings = make_settings(IDP_TOKEN_MAX_TTL=max_ttl, IDP_TOKEN_TTL="60")
    for app in _app(settings):
        document = app.test_client().get("/_services/token/openapi.json").get_json()
        schema = document["components"]["parameters"]["Lifetime"]["schema"]
        assert schema["maximum"] == settings.token_max_ttl
        assert all(MIN_LIFETIME <= e <= settings.token_max_ttl for e in schema["examples"])
        validate(document)


LIFETIME_PROBES = [
    "60",
    "61",
    "59",
    "1",
    "0",
    "900",
    "3599",
    "3600",
    "3601",
    "7200",
    "7201",
    "-60",
    "+60",
    "060",
    "0060",
    "60.0",
    "6e1",
    "60s",
    " 60",
    "60 ",
    "",
    "abc",
    "\u0666\u0660",  # Arabic-Indic 60: int() reads it, a client never writes it
    "6\u00b2",
    "9" * 11,
    "1" + "0" * 30,
]


def _schema_accepts_query_value(schema: dict[str, Any], raw: str) -> bool:
    # A form-style integer is written as its decimal (RFC 6570): any other spelling of the
    # number ("060", "+60", " 60") is not a value of this schema.
    try:
        value = int(raw)
    except ValueError:
        return False
    return str(value) == raw and bool(jsonschema_rs.validator_for(schema).is_valid(value))


@pytest.mark.parametrize("max_ttl", ["3600", "7200"])
@pytest.mark.parametrize("raw", LIFETIME_PROBES)
def test_the_lifetime_schema_accepts_what_the_code_accepts(
    make_settings: MakeSettings, max_ttl: str, raw: str
) -> None:
    settings = make_settings(IDP_TOKEN_MAX_TTL=max_ttl)
    schema = document_for(settings)["components"]["parameters"]["Lifetime"]["schema"]
    by_schema = _schema_accepts_query_value(schema, raw)
    try:
        requested_lifetime([raw], settings)
    except InvalidRequest:
        by_code = False
    else:
        by_code = True
    assert by_schema == by_code, f"lifetime={raw!r}: schema {by_schema}, code {by_code}"
