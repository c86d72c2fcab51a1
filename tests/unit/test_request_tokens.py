"""Request tokens name the secret that signed them, so secrets can rotate under live tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from idp.config import Settings
from idp.errors import InvalidToken
from idp.keys.ring import LEGACY_SECRET_ID
from idp.tokens import request_tokens
from idp.tokens.claims import id_token_claims
from idp.tokens.claims_file import load_claims_file
from idp.tokens.context import parse_context
from tests.unit.test_claims import CONTEXT
from tests.unit.test_claims_file import OCTOPUS, OCTOPUS_CONTEXT

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


@pytest.mark.parametrize(
    "kind_and_value", [("bool", True), ("bool", False), ("id", 42), ("text", "a")]
)
def test_every_kind_of_declared_claim_survives_the_request_token(
    tmp_path: Path, kind_and_value: tuple[str, object]
) -> None:
    # The request token carries the parsed context; the exchange parses it again under the
    # same policy, so what a context may hold must read back from the token (a declared bool
    # once travelled as the string "true" and was refused at the exchange).
    kind, value = kind_and_value
    text = OCTOPUS.replace("  runbook:     {kind: text}\n", f"  runbook:     {{kind: {kind}}}\n")
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    policy = load_claims_file(str(tmp_path / "c.yaml"))
    context = parse_context({**OCTOPUS_CONTEXT, "runbook": value}, policy)
    token = request_tokens.issue(context, ("r1", OLD), ISSUER, NOW, 600).token
    opened = request_tokens.verify(token, {"r1": OLD}, ISSUER, NOW + 1, policy)
    assert opened.context == context
    claims = id_token_claims(opened.context, ["a"], Settings(claim_policy=policy), NOW)
    expected = {True: "true", False: "false"}.get(value, str(value))  # type: ignore[call-overload]
    assert claims["runbook"] == expected


def _signed(header: dict[str, object], payload: bytes, key: OctKey = OLD) -> str:
    # A compact JWS signed with a secret the issuer holds, whatever its header or payload.
    from joserfc import jws
    from joserfc.jws import JWSRegistry

    registry = JWSRegistry(algorithms=[str(header["alg"])], strict_check_header=False)
    return jws.serialize_compact(header, payload, key, registry=registry)


def _claims() -> dict[str, object]:
    decoded: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(issue("r1", OLD).split(".")[1] + "==")
    )
    return decoded


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


REQUEST_HEADER = {"alg": "HS256", "typ": "idp-request+jwt", "kid": "r1"}


@pytest.mark.parametrize(
    ("name", "make", "says"),
    [
        ("three dots", lambda: "a.b.c.d", "malformed"),
        (
            "a header that is not base64url JSON",
            lambda: "e30x!." + issue("r1", OLD).split(".", 1)[1],
            "bad signature or encoding",
        ),
        (
            "a header without alg",
            lambda: _b64(b'{"kid":"r1"}') + "." + issue("r1", OLD).split(".", 1)[1],
            "bad signature or encoding",
        ),
        (
            "alg none",
            lambda: (
                _b64(b'{"alg":"none","kid":"r1","typ":"idp-request+jwt"}')
                + "."
                + issue("r1", OLD).split(".")[1]
                + "."
            ),
            "bad signature or encoding",
        ),
        ("signed with another secret", lambda: issue("r1", NEW), "bad signature or encoding"),
        ("a signature cut short", lambda: issue("r1", OLD)[:-4], "bad signature or encoding"),
        (
            "a payload that is not JSON",
            lambda: _signed(REQUEST_HEADER, b"not json"),
            "bad signature or encoding",
        ),
        (
            "a payload that is a JSON list",
            lambda: _signed(REQUEST_HEADER, b"[1, 2]"),
            "bad signature or encoding",
        ),
        (
            "no typ",
            lambda: _signed({"alg": "HS256", "kid": "r1"}, json.dumps(_claims()).encode()),
            "not a request token",
        ),
        (
            "an ID token's typ",
            lambda: _signed({**REQUEST_HEADER, "typ": "JWT"}, json.dumps(_claims()).encode()),
            "not a request token",
        ),
        (
            "another issuer",
            lambda: _signed(
                REQUEST_HEADER, json.dumps({**_claims(), "iss": "https://evil.example"}).encode()
            ),
            "not issued for this issuer",
        ),
        (
            "no context",
            lambda: _signed(
                REQUEST_HEADER,
                json.dumps({k: v for k, v in _claims().items() if k != "ctx"}).encode(),
            ),
            "no valid build context",
        ),
    ],
)
def test_a_forged_or_broken_request_token_is_refused_saying_why(
    name: str, make: Callable[[], str], says: str
) -> None:
    with pytest.raises(InvalidToken) as refused:
        request_tokens.verify(make(), {"r1": OLD}, ISSUER, NOW + 1)
    assert says in refused.value.description, name
