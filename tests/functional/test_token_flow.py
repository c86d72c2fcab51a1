"""The token flow end to end over HTTP against `idp serve`, every token checked by PyJWT.

The GitHub-protocol client is the real `id` package; the verifier is PyJWT's PyJWKClient
reading the served `jwks_uri`, an implementation independent of ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support import CI_SECRET, IssuerProcess
from tests.unit.test_claims import CONTEXT

CI = {"Authorization": f"Bearer {CI_SECRET}"}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    keys = tmp_path_factory.mktemp("flow-keys")
    with IssuerProcess({"IDP_KEYS_DIR": str(keys), "IDP_TOKEN_TTL": "300"}, workers=2) as proc:
        yield proc


def open_request_token(issuer: IssuerProcess, **overrides: Any) -> dict[str, Any]:
    response = requests.post(
        f"{issuer.issuer}/request-tokens", json={**CONTEXT, **overrides}, headers=CI, timeout=10
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def verify(issuer: IssuerProcess, token: str, audience: str | list[str]) -> dict[str, Any]:
    """Verify with PyJWT against the served JWKS, the way any relying party would."""
    discovery = requests.get(f"{issuer.issuer}/.well-known/openid-configuration", timeout=10).json()
    client = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=discovery["issuer"],
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    return claims


def test_request_token_answer_carries_the_step_environment(issuer: IssuerProcess) -> None:
    body = open_request_token(issuer)
    env = body["env"]
    assert set(env) == {
        "VELA_ID_TOKEN_REQUEST_URL",
        "VELA_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    }
    assert (
        env["VELA_ID_TOKEN_REQUEST_TOKEN"] == env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] == body["token"]
    )
    assert env["VELA_ID_TOKEN_REQUEST_URL"] == (
        f"{issuer.base}/api/v1/repos/octo-org/octo-repo/builds/42/id_token"
    )
    assert env["ACTIONS_ID_TOKEN_REQUEST_URL"].startswith(f"{issuer.issuer}/id-token?")
    assert isinstance(body["expires_at"], int)


def test_github_protocol_with_the_real_id_client(
    issuer: IssuerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import id as id_client

    env = open_request_token(issuer)["env"]
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", env["ACTIONS_ID_TOKEN_REQUEST_URL"])
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"])
    token = id_client.detect_credential("sts.amazonaws.com")
    assert token is not None
    claims = verify(issuer, token, "sts.amazonaws.com")
    assert claims["sub"] == "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"
    assert claims["aud"] == "sts.amazonaws.com"
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"]
    assert claims["image_name"] == "registry:5000/team/app" and claims["image_tag"] == "1.2"
    assert claims["commands"] == "false" and claims["build_id"] == "1234"
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "JWT" and header["alg"] == "RS256" and header["kid"]


def test_vela_protocol_with_several_audiences(issuer: IssuerProcess) -> None:
    env = open_request_token(issuer)["env"]
    response = requests.get(
        env["VELA_ID_TOKEN_REQUEST_URL"],
        params=[("audience", "sts.amazonaws.com"), ("audience", "other")],
        headers={"Authorization": f"Bearer {env['VELA_ID_TOKEN_REQUEST_TOKEN']}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    claims = verify(issuer, response.json()["token"], "other")
    assert claims["aud"] == ["sts.amazonaws.com", "other"]


def test_every_token_gets_a_fresh_jti(issuer: IssuerProcess) -> None:
    env = open_request_token(issuer)["env"]
    url = env["ACTIONS_ID_TOKEN_REQUEST_URL"] + "&audience=a"
    headers = {"Authorization": f"Bearer {env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}"}
    jtis = {
        verify(issuer, requests.get(url, headers=headers, timeout=10).json()["value"], "a")["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/api/v1/repos/octo-org/other-repo/builds/42/id_token", "another repo"),
        ("/api/v1/repos/octo-org/octo-repo/builds/43/id_token", "another build"),
    ],
)
def test_vela_protocol_refuses_a_token_of_another_repo_or_build(
    issuer: IssuerProcess, path: str, why: str
) -> None:
    token = open_request_token(issuer)["token"]
    response = requests.get(
        f"{issuer.base}{path}?audience=sts.amazonaws.com",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 403, why
    assert response.json()["error"] == "access_denied"
    assert "token" not in response.json()


def test_closing_a_build_stops_its_request_tokens_at_once(issuer: IssuerProcess) -> None:
    env = open_request_token(issuer, build_id=777001)["env"]
    url = env["ACTIONS_ID_TOKEN_REQUEST_URL"] + "&audience=sts.amazonaws.com"
    headers = {"Authorization": f"Bearer {env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}"}
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    closed = requests.delete(f"{issuer.issuer}/builds/777001", headers=CI, timeout=10)
    assert closed.status_code == 200 and closed.json()["closed"] is True
    for _ in range(4):  # every worker sees it
        refused = requests.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401
        assert "closed" in refused.json()["error_description"]
    vela = requests.get(
        env["VELA_ID_TOKEN_REQUEST_URL"] + "?audience=x", headers=headers, timeout=10
    )
    assert vela.status_code == 401
    again = requests.post(
        f"{issuer.issuer}/request-tokens",
        json={**CONTEXT, "build_id": 777001},
        headers=CI,
        timeout=10,
    )
    assert again.status_code == 400


def test_a_request_token_never_verifies_against_the_jwks(issuer: IssuerProcess) -> None:
    token = open_request_token(issuer)["token"]
    jwks = requests.get(f"{issuer.issuer}/.well-known/jwks", timeout=10).json()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    for entry in jwks["keys"]:
        key = jwt.PyJWK(entry)
        with pytest.raises(jwt.exceptions.PyJWTError):
            jwt.decode(token, key.key, algorithms=[entry["alg"]], options={"verify_aud": False})


# --- bad input: a clear 4xx JSON error, never a token, never a 5xx ------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_tokens(issuer: IssuerProcess) -> dict[str, str]:
    """Request tokens an attacker could craft, each of which must be refused."""
    good = open_request_token(issuer)["token"]
    header_b64, payload_b64, _ = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    jwks = requests.get(f"{issuer.issuer}/.well-known/jwks", timeout=10).json()
    public_pem = jwt.PyJWK(jwks["keys"][0]).key.public_bytes(
        encoding=Encoding.PEM, format=PublicFormat.SubjectPublicKeyInfo
    )
    # The classic confusion attack, signed by hand (JOSE libraries rightly refuse to).
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'idp-request+jwt'})}.{payload_b64}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs_over_public = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    id_token = requests.get(
        open_request_token(issuer)["env"]["ACTIONS_ID_TOKEN_REQUEST_URL"] + "&audience=a",
        headers={"Authorization": f"Bearer {good}"},
        timeout=10,
    ).json()["value"]
    expired = {**payload, "exp": 1000, "iat": 900, "nbf": 900}
    tampered = {**payload, "ctx": {**payload["ctx"], "repo": "evil/repo"}}
    signature = good.split(".")[2]
    return {
        "malformed": "not-a-token",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'idp-request+jwt'})}.{payload_b64}.",
        "HS256 over the public key": hs_over_public,
        "an ID token as request token": id_token,
        "tampered payload": f"{header_b64}.{_b64(tampered)}.{signature}",
        "expired (tampered exp)": f"{header_b64}.{_b64(expired)}.{signature}",
        "oversized": "a" * 9000,
    }


def test_forged_request_tokens_are_refused(issuer: IssuerProcess) -> None:
    for name, token in forged_tokens(issuer).items():
        for url in (
            f"{issuer.issuer}/id-token?api-version=2.0&audience=a",
            f"{issuer.base}/api/v1/repos/octo-org/octo-repo/builds/42/id_token?audience=a",
        ):
            response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert response.status_code in (401, 431), (name, response.status_code, response.text)
            if response.status_code == 401:
                assert response.json()["error"] == "invalid_token", name
                assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
            if response.headers.get("Content-Type") == "application/json":
                assert set(response.json()) == {"error", "error_description"}, name


@pytest.mark.parametrize(
    ("name", "headers", "body", "status", "code"),
    [
        ("no CI secret", {}, CONTEXT, 401, "invalid_token"),
        ("wrong CI secret", {"Authorization": "Bearer wrong"}, CONTEXT, 401, "invalid_token"),
        ("basic scheme", {"Authorization": f"Basic {CI_SECRET}"}, CONTEXT, 401, "invalid_token"),
        ("lowercase bearer", {"Authorization": f"bearer {CI_SECRET}"}, CONTEXT, 200, None),
        (
            "missing field",
            CI,
            {k: v for k, v in CONTEXT.items() if k != "image"},
            400,
            "invalid_request",
        ),
        ("wrong type", CI, {**CONTEXT, "commands": "no"}, 400, "invalid_request"),
        ("repo not org/name", CI, {**CONTEXT, "repo": "justone"}, 400, "invalid_request"),
        ("colon in ref", CI, {**CONTEXT, "ref": "refs/heads/a:event:tag"}, 400, "invalid_request"),
        ("control char", CI, {**CONTEXT, "step": "a\r\nX-Evil: 1"}, 400, "invalid_request"),
        ("not an object", CI, [1, 2], 400, "invalid_request"),
        ("over 64 KiB", CI, {**CONTEXT, "pad": "x" * 70000}, 413, "request_too_large"),
    ],
)
def test_bad_request_token_requests(
    issuer: IssuerProcess,
    name: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: str | None,
) -> None:
    response = requests.post(
        f"{issuer.issuer}/request-tokens", json=body, headers=headers, timeout=10
    )
    assert response.status_code == status, (name, response.text)
    if code is not None:
        assert response.json()["error"] == code
        assert response.json()["error_description"]
        assert "token" not in response.json()


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    [
        ("not JSON", b"{not json", "application/json"),
        ("not UTF-8", b'{"repo": "\xff\xfe"}', "application/json"),
        ("form instead of JSON", b"repo=a/b", "application/x-www-form-urlencoded"),
    ],
)
def test_bodies_that_are_not_json(
    issuer: IssuerProcess, name: str, body: bytes, content_type: str
) -> None:
    response = requests.post(
        f"{issuer.issuer}/request-tokens",
        data=body,
        headers={**CI, "Content-Type": content_type},
        timeout=10,
    )
    assert response.status_code == 400, name
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("missing audience", "api-version=2.0"),
        ("empty audience", "api-version=2.0&audience="),
        ("smuggled empty second audience", "audience=a&audience="),
        ("url-encoded comma", "audience=a%2Cb"),
        ("oversized audience", "audience=" + "x" * 300),
        ("control character", "audience=a%0Ab"),
        ("too many audiences", "&".join(f"audience=a{i}" for i in range(11))),
    ],
)
def test_bad_audiences_get_no_token(issuer: IssuerProcess, name: str, query: str) -> None:
    token = open_request_token(issuer)["token"]
    response = requests.get(
        f"{issuer.issuer}/id-token?{query}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 400, name
    assert response.json()["error"] == "invalid_audience"
    assert "value" not in response.json()


def test_the_request_token_api_is_closed_without_a_ci_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path), "IDP_CI_SECRET": ""}) as closed:
        response = requests.post(
            f"{closed.issuer}/request-tokens", json=CONTEXT, headers=CI, timeout=10
        )
        assert response.status_code == 403
        assert "IDP_CI_SECRET" in response.json()["error_description"]


def test_a_disallowed_audience_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"IDP_KEYS_DIR": str(tmp_path), "IDP_AUDIENCES": "sts.amazonaws.com"}
    with IssuerProcess(env) as proc:
        token = open_request_token(proc)["token"]
        url = f"{proc.issuer}/id-token?audience="
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(url + "evil", headers=auth, timeout=10).status_code == 400
        good = requests.get(url + "sts.amazonaws.com", headers=auth, timeout=10)
        assert verify(proc, good.json()["value"], "sts.amazonaws.com")["aud"] == "sts.amazonaws.com"
