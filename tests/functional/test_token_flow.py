"""The token flow end to end over HTTP against `idp serve`, every token checked by PyJWT.

The GitHub-protocol client is the real `id` package; the verifier is PyJWT's PyJWKClient
reading the served `jwks_uri`, an implementation independent of ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

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


# Forged tokens, bad input and audience smuggling: tests/functional/test_security.py.


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


def test_a_session_tag_value_aws_cannot_carry_verbatim_is_refused_not_folded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`release!1`, `release#1` and `release?1` all became the tag `release_1`, so a role for
    one branch admitted the others. Now such a value is refused (400, naming the claim) on both
    exchanges, and the one value that is its own tag is minted with it verbatim."""
    env = {
        "IDP_KEYS_DIR": str(tmp_path),
        "IDP_AWS_SESSION_TAGS": "ref",
        "IDP_SUBJECT_CLAIMS": "repo",
    }
    with IssuerProcess(env) as proc:
        for ref in ("refs/heads/release!1", "refs/heads/release#1", "refs/heads/release?1"):
            opened = open_request_token(proc, ref=ref, branch=ref[len("refs/heads/") :])
            auth = {"Authorization": f"Bearer {opened['token']}"}
            for url in (
                f"{proc.issuer}/id-token?audience=sts.amazonaws.com",
                f"{opened['env']['VELA_ID_TOKEN_REQUEST_URL']}?audience=sts.amazonaws.com",
            ):
                refused = requests.get(url, headers=auth, timeout=10)
                assert refused.status_code == 400, refused.text
                body = refused.json()
                assert body["error"] == "invalid_request"
                assert "'ref'" in body["error_description"]
                assert "IDP_AWS_SESSION_TAGS" in body["error_description"]
        token = open_request_token(proc, ref="refs/heads/release_1", branch="release_1")["token"]
        minted = requests.get(
            f"{proc.issuer}/id-token?audience=sts.amazonaws.com",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        claims = verify(proc, minted.json()["value"], "sts.amazonaws.com")
        tags = claims["https://aws.amazon.com/tags"]["principal_tags"]
        assert tags == {"ref": ["refs/heads/release_1"]}


def test_head_and_options_never_mint_or_audit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`HEAD /id-token` ran the GET view: it minted and audited a token and dropped it. HEAD
    and OPTIONS on both exchanges are 405 with `Allow: GET`, before any view runs."""
    with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path), "IDP_LOG_FORMAT": "json"}) as proc:
        opened = open_request_token(proc)
        auth = {"Authorization": f"Bearer {opened['token']}"}
        urls = [
            f"{proc.issuer}/id-token?api-version=2.0&audience=sts.amazonaws.com",
            f"{opened['env']['VELA_ID_TOKEN_REQUEST_URL']}?audience=sts.amazonaws.com",
        ]
        for url in urls:
            for method in ("HEAD", "OPTIONS"):
                answer = requests.request(method, url, headers=auth, timeout=10)
                assert answer.status_code == 405, (method, url)
                assert answer.headers["Allow"] == "GET"
                assert answer.headers["Content-Type"].startswith("application/json")
                if method == "OPTIONS":
                    assert answer.json()["error"] == "method_not_allowed"
        metrics = requests.get(f"{proc.issuer}/metrics", timeout=10).text
        assert 'outcome="minted"' not in metrics
        minted = requests.get(urls[0], headers=auth, timeout=10)
        assert minted.status_code == 200
    audits = [line for line in proc.log.decode().splitlines() if '"event":"id_token"' in line]
    assert len(audits) == 1 and '"outcome":"minted"' in audits[0], audits
