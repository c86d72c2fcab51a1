"""Request tokens name the secret that signed them, so secrets can rotate under live tokens."""

from __future__ import annotations

import base64
import json

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from idp.errors import InvalidToken
from idp.keys.ring import LEGACY_SECRET_ID
from idp.tokens import request_tokens
from idp.tokens.context import parse_context
from tests.unit.test_claims import CONTEXT

ISSUER = "https://ci.example.com/_services/token"
NOW = 1_800_000_000
OLD, NEW = OctKey.generate_key(256), OctKey.generate_key(256)


def issue(key_id: str, key: OctKey) -> str:
    return request_tokens.issue(parse_context(CONTEXT), (key_id, key), ISSUER, NOW, 600).token


def header(token: str) -> dict[str, str]:
    decoded: dict[str, str] = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return decoded


def test_a_token_names_its_secret_and_verifies_while_that_secret_is_kept() -> None:
    token = issue("r1", OLD)
    assert header(token) == {"alg": "HS256", "typ": "idp-request+jwt", "kid": "r1"}
    opened = request_tokens.verify(token, {"r1": OLD, "r2": NEW}, ISSUER, NOW + 1)
    assert opened.context.repo == CONTEXT["repo"]


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("its secret was dropped", {"r2": NEW}),
        ("another secret under its id", {"r1": NEW}),
        ("no secrets at all", {}),
    ],
)
def test_a_token_whose_secret_is_gone_is_refused(name: str, keys: dict[str, OctKey]) -> None:
    with pytest.raises(InvalidToken):
        request_tokens.verify(issue("r1", OLD), keys, ISSUER, NOW + 1)


def test_a_token_from_before_secrets_rotated_verifies_with_the_legacy_secret() -> None:
    # Tokens issued before this change carry no kid.
    claims = json.loads(base64.urlsafe_b64decode(issue("x", OLD).split(".")[1] + "=="))
    legacy = jwt.encode({"alg": "HS256", "typ": "idp-request+jwt"}, claims, OLD)
    opened = request_tokens.verify(legacy, {LEGACY_SECRET_ID: OLD, "r9": NEW}, ISSUER, NOW + 1)
    assert opened.jti == claims["jti"]
    with pytest.raises(InvalidToken):
        request_tokens.verify(legacy, {"r9": NEW}, ISSUER, NOW + 1)
