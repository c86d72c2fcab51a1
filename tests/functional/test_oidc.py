"""Discovery, JWKS and health, in-process."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from idp.app import create_app
from idp.config import Settings

BASE = "/_services/token"


def test_discovery_follows_the_interface(client: FlaskClient, settings: Settings) -> None:
    response = client.get(f"{BASE}/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["issuer"] == settings.issuer
    assert doc["jwks_uri"] == f"{settings.issuer}/.well-known/jwks"
    assert doc["response_types_supported"] == ["id_token"]
    assert doc["subject_types_supported"] == ["public"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["scopes_supported"] == ["openid"]
    for claim in ("sub", "aud", "repo", "image", "image_name", "image_tag", "commands"):
        assert claim in doc["claims_supported"]


def test_jwks_keys_carry_thumbprint_kids_alg_and_use(client: FlaskClient) -> None:
    from joserfc.jwk import JWKRegistry

    response = client.get(f"{BASE}/.well-known/jwks")
    keys = response.get_json()["keys"]
    assert keys, "the JWKS is never empty"
    for entry in keys:
        assert entry["alg"] == "RS256" and entry["use"] == "sig" and entry["kty"] == "RSA"
        assert "d" not in entry and "p" not in entry
        # kid is the RFC 7638 thumbprint, computed independently of the stored value.
        assert JWKRegistry.import_key(entry).thumbprint() == entry["kid"]


def test_jwks_caching_headers_and_conditional_requests(client: FlaskClient) -> None:
    first = client.get(f"{BASE}/.well-known/jwks")
    assert first.headers["Cache-Control"] == "public, max-age=300"
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    again = client.get(f"{BASE}/.well-known/jwks", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag
    other = client.get(f"{BASE}/.well-known/jwks", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200 and other.data == first.data


def test_the_jwks_body_is_computed_once_per_ring_change(client: FlaskClient, app) -> None:  # type: ignore[no-untyped-def]
    ring = app.extensions["idp.keyring"]
    assert ring.jwks() is ring.jwks()  # the same object: not rebuilt per request


@pytest.mark.parametrize(
    ("issuer", "path"),
    [
        ("https://ci.example.com/_services/token", "/_services/token"),
        ("https://ci.example.com/deep/issuer/path", "/deep/issuer/path"),
        ("https://ci.example.com", ""),
    ],
)
def test_routes_hang_below_the_issuer_path(make_settings, issuer: str, path: str) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(IDP_ISSUER=issuer), start_refresh=False)
    client = app.test_client()
    doc = client.get(f"{path}/.well-known/openid-configuration").get_json()
    assert doc["issuer"] == issuer
    assert client.get(f"{path}/.well-known/jwks").status_code == 200
    assert client.get(f"{path}/healthz").status_code == 200


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS384", "RS512"])
def test_other_algs_aws_accepts(make_settings, alg: str) -> None:  # type: ignore[no-untyped-def]
    client = create_app(make_settings(IDP_SIGNING_ALG=alg), start_refresh=False).test_client()
    doc = client.get(f"{BASE}/.well-known/openid-configuration").get_json()
    assert doc["id_token_signing_alg_values_supported"] == [alg]
    keys = client.get(f"{BASE}/.well-known/jwks").get_json()["keys"]
    assert {k["alg"] for k in keys} == {alg}


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get(f"{BASE}/healthz").get_json() == {"status": "ok"}
    ready = client.get(f"{BASE}/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", f"{BASE}/.well-known/jwks", 405, "method_not_allowed"),
        ("GET", f"{BASE}/request-tokens", 405, "method_not_allowed"),
    ],
)
def test_errors_are_json(
    client: FlaskClient, method: str, path: str, status: int, code: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    body = json.loads(response.data)
    assert body["error"] == code and body["error_description"]


def test_the_key_file_is_private(settings: Settings, app) -> None:  # type: ignore[no-untyped-def]
    ring_file = settings.keys_dir / "ring.json"
    assert ring_file.stat().st_mode & 0o777 == 0o600
    assert settings.keys_dir.stat().st_mode & 0o077 == 0
