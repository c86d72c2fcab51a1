"""Schemathesis against a real `idp serve` (Redis store): the code answers as the document says.

Every operation of `idp/openapi.json` is fuzzed (schemathesis' examples, coverage and fuzzing
phases, valid and invalid inputs) against one issuer process, and every answer must be no 5xx,
a documented status with the documented content type, headers and body, and invalid input must
be refused. Operations that need credentials run three times: without any, with wrong ones
(forged, tampered, swapped between the two schemes, ...), and with valid ones (the CI secret
for the CI server's API, a real request token for the exchanges), so the checks reach past
the 401s into the views; without valid credentials nothing may get past the 401.

Bounded and deterministic: a few dozen examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from joserfc import jwt
from joserfc.jwk import OctKey
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from idp.config import Settings
from idp.tokens.claims_file import parse_claims_document
from idp.views.openapi import document_for
from tests.functional.test_openapi import OCTOPUS_ALL_KINDS
from tests.support import CI_SECRET, NO_RATE_LIMITS, IssuerProcess
from tests.unit.test_claims import CONTEXT

pytestmark = pytest.mark.redis

ISSUER_PATH = "/_services/token"
# The request token's build: no id schemathesis would pick for DELETE /builds/{build_id}.
TOKEN_CONTEXT = {**CONTEXT, "build_id": 31415926535897932384, "build_number": 42}
MAX_EXAMPLES = 60
CI_OPERATIONS = ["openRequestToken", "closeBuild"]
STEP_OPERATIONS = ["exchangeGithub", "exchangeVela"]
# What may answer a request without valid credentials: the 401, or a refusal of the request's
# form that comes before authentication (a query with too many parameters, no route for a
# mangled path, a request line or headers over the limits); never a 2xx, a 403 or a 5xx.
BEFORE_AUTH = {400, 404, 414, 431}

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "deterministic": True,
            "database": "none",
            "max-examples": MAX_EXAMPLES,
            # Credentials are the test's own three cases (none, wrong, valid), not generated.
            "with-security-parameters": False,
            # Unknown query parameters are ignored, as HTTP APIs do (GitHub's client adds
            # api-version); the document cannot say "no others", so none are invented.
            "allow-extra-parameters": False,
        },
        "checks": {
            "negative_data_rejection": {
                # A request line or headers over gunicorn's limits are refused too (414, 431).
                "expected-statuses": ["400", "401", "403", "404", "413", "414", "431"],
            }
        },
    }
)
# The document as served with the default issuer path. Where the issuer listens is known only
# once it runs, so each call gets its origin as base_url; the served copy is compared below.
schema = schemathesis.openapi.from_dict(
    document_for(Settings(issuer=f"http://127.0.0.1:8080{ISSUER_PATH}")), config=CONFIG
)
public = schema.exclude(operation_id=CI_OPERATIONS + STEP_OPERATIONS)
secured = schema.include(operation_id=CI_OPERATIONS + STEP_OPERATIONS)

HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,  # a real server over HTTP: timings vary with the machine
    # Generation for the build context's patterns is slow and filters a lot; that is expected.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def issuer(module_redis_url: str) -> Iterator[IssuerProcess]:
    """One issuer on the session's private Redis, emptied first; rate limits out of reach."""
    env = {
        "IDP_REDIS_URL": module_redis_url,
        "IDP_KEY_ENCRYPTION_KEY": "schemathesis-key-encryption-key-0123456789",
        **NO_RATE_LIMITS,
    }
    # The default issuer path, on the process' own port.
    with IssuerProcess(env) as proc:
        yield proc


@pytest.fixture(scope="module")
def request_token(issuer: IssuerProcess) -> str:
    """A real request token, opened once, for a build no test closes."""
    response = requests.post(
        f"{issuer.issuer}/request-tokens",
        json=TOKEN_CONTEXT,
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def _forged(key: bytes, *, alg: str = "HS256", issuer: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": f"{issuer}/id-token",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": "forged",
        "ctx": TOKEN_CONTEXT,
    }
    return jwt.encode({"alg": alg, "typ": "idp-request+jwt"}, claims, OctKey.import_key(key))


@pytest.fixture(scope="module")
def wrong_credentials(issuer: IssuerProcess, request_token: str) -> dict[str, Iterator[str]]:
    """Authorization values that must all be refused, taken in turn (deterministically)."""
    id_token = requests.get(
        f"{issuer.issuer}/id-token",
        params={"audience": "sts.amazonaws.com"},
        headers={"Authorization": f"Bearer {request_token}"},
        timeout=10,
    ).json()["value"]
    header, payload, _ = request_token.split(".")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"idp-request+jwt"}').rstrip(b"=")
    common = ["Bearer", "Bearer  ", "Bearer a.b.c", "Token x", "Bearer " + "x" * 9000]
    ci = [
        f"Bearer {CI_SECRET}x",
        f"Bearer {CI_SECRET.upper()}",
        f"Bearer {CI_SECRET[:-1]}",
        CI_SECRET,
        "Basic " + base64.b64encode(f"ci:{CI_SECRET}".encode()).decode(),
        f"Bearer {request_token}",  # a step's token is not the CI server's secret
    ]
    step = [
        f"Bearer {CI_SECRET}",  # the CI server's secret is not a request token
        f"Bearer {id_token}",  # nor is an ID token
        f"Bearer {header}.{payload}.{'A' * 43}",  # tampered signature
        f"Bearer {unsigned.decode()}.{payload}.",  # alg: none
        f"Bearer {_forged(b'k' * 32, issuer=issuer.issuer)}",  # signed with another secret
        request_token,  # no scheme
    ]
    return {"ci": itertools.cycle(ci + common), "step": itertools.cycle(step + common)}


def test_the_served_document_is_the_one_under_test(issuer: IssuerProcess) -> None:
    served = requests.get(f"{issuer.issuer}/openapi.json", timeout=10).json()
    assert served == document_for(Settings(issuer=issuer.issuer))
    assert served["servers"][0]["url"] == issuer.base
    assert set(served["paths"]) == set(schema.raw_schema["paths"])


@public.parametrize()
@HYPOTHESIS
def test_public_operations(case: schemathesis.Case, issuer: IssuerProcess) -> None:
    case.call_and_validate(base_url=issuer.base, checks=CHECKS)


@secured.parametrize()
@pytest.mark.parametrize("credentials", ["none", "wrong", "valid"])
@HYPOTHESIS
def test_secured_operations(
    case: schemathesis.Case,
    credentials: str,
    issuer: IssuerProcess,
    request_token: str,
    wrong_credentials: dict[str, Iterator[str]],
) -> None:
    kind = "ci" if case.operation.definition.raw["operationId"] in CI_OPERATIONS else "step"
    case.headers.pop("Authorization", None)
    explicit = {}
    if credentials == "wrong":
        case.headers["Authorization"] = next(wrong_credentials[kind])
    elif credentials == "valid":
        # Given to the call, not generated into the case: schemathesis then knows it is the
        # real credential, and `ignored_auth` re-sends without it and with a wrong one.
        explicit["Authorization"] = f"Bearer {CI_SECRET if kind == 'ci' else request_token}"
    response = case.call_and_validate(base_url=issuer.base, headers=explicit, checks=CHECKS)
    if credentials != "valid" and case.method.upper() == case.operation.method.upper():
        assert response.status_code in {401, *BEFORE_AUTH}, response.text


# --- with a claims file: the declared claims are fuzzed as the served document describes them --

CLAIMS_POLICY = parse_claims_document(yaml.safe_load(OCTOPUS_ALL_KINDS))
claims_schema = schemathesis.openapi.from_dict(
    document_for(
        Settings(issuer=f"http://127.0.0.1:8080{ISSUER_PATH}", claim_policy=CLAIMS_POLICY)
    ),
    config=CONFIG,
).include(operation_id=["openRequestToken"])


@pytest.fixture(scope="module")
def claims_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    """An issuer with the Octopus claims file (plus a claim of each kind), file store."""
    folder = tmp_path_factory.mktemp("schemathesis-claims")
    path = folder / "claims.yaml"
    path.write_text(OCTOPUS_ALL_KINDS, encoding="utf-8")
    env = {"IDP_KEYS_DIR": str(folder / "keys"), "IDP_CLAIMS_FILE": str(path), **NO_RATE_LIMITS}
    with IssuerProcess(env) as proc:
        yield proc


def test_the_served_document_with_a_claims_file_is_the_one_under_test(
    claims_issuer: IssuerProcess,
) -> None:
    served = requests.get(f"{claims_issuer.issuer}/openapi.json", timeout=10).json()
    assert served == document_for(Settings(issuer=claims_issuer.issuer, claim_policy=CLAIMS_POLICY))


@claims_schema.parametrize()
@HYPOTHESIS
def test_declared_claims_are_fuzzed(case: schemathesis.Case, claims_issuer: IssuerProcess) -> None:
    case.headers.pop("Authorization", None)
    case.call_and_validate(
        base_url=claims_issuer.base,
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        checks=CHECKS,
    )
