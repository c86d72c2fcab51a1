"""IDP_CLAIMS_FILE end to end: `idp serve` with a claims file, over HTTP, every token checked by
PyJWT against the served JWKS, every trust policy judged by `idp.aws.policy_eval` (the model of
STS that `idp aws explain` uses).

The Octopus Deploy case is seed 000's: subject `space:default:project:aws-oidc-testing:
environment:dev`, and a role whose `StringLike` on `...:environment:*` admits every environment
of that project and nothing of another project or space. The GitHub case is the most used AWS
condition, `repo:org/repo:environment:prod`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from idp.aws.policy_eval import policy_checks
from idp.cli import main
from tests.support import CI_SECRET, NO_RATE_LIMITS, IssuerProcess
from tests.unit.test_claims import CONTEXT
from tests.unit.test_claims_file import GITHUB_ENVIRONMENTS, OCTOPUS, OCTOPUS_CONTEXT

ISSUER = "https://idp.example.test/_services/token"
URL = "idp.example.test/_services/token"
PROVIDER = f"arn:aws:iam::123456789012:oidc-provider/{URL}"
CI = {"Authorization": f"Bearer {CI_SECRET}"}
# The seed's condition, verbatim.
SEED_PATTERN = "space:default:project:aws-oidc-testing:environment:*"


def _serve(tmp: Path, claims_file: str) -> IssuerProcess:
    path = tmp / "claims.yaml"
    path.write_text(claims_file, encoding="utf-8")
    env = {
        "IDP_KEYS_DIR": str(tmp / "keys"),
        "IDP_ISSUER": ISSUER,
        "IDP_CLAIMS_FILE": str(path),
        **NO_RATE_LIMITS,
    }
    return IssuerProcess(env)


@pytest.fixture(scope="module")
def octopus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    with _serve(tmp_path_factory.mktemp("octopus"), OCTOPUS) as proc:
        yield proc


@pytest.fixture(scope="module")
def github(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    with _serve(tmp_path_factory.mktemp("github"), GITHUB_ENVIRONMENTS) as proc:
        yield proc


def open_request_token(issuer: IssuerProcess, context: dict[str, Any]) -> requests.Response:
    return requests.post(f"{issuer.issuer}/request-tokens", json=context, headers=CI, timeout=10)


def mint(issuer: IssuerProcess, context: dict[str, Any]) -> dict[str, Any]:
    """Open a request token for `context`, exchange it GitHub's way, verify with PyJWT."""
    opened = open_request_token(issuer, context)
    assert opened.status_code == 200, opened.text
    answer = requests.get(
        f"{issuer.issuer}/id-token",
        params={"audience": "sts.amazonaws.com"},
        headers={"Authorization": f"Bearer {opened.json()['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()["value"]
    discovery = requests.get(f"{issuer.issuer}/.well-known/openid-configuration", timeout=10).json()
    jwks = requests.get(f"{issuer.issuer}/.well-known/jwks", timeout=10).json()
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == header["kid"]))
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience="sts.amazonaws.com",
        issuer=ISSUER,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    return claims


def aws_allows(policy: dict[str, Any], claims: dict[str, Any]) -> bool:
    _, result, _ = policy_checks(policy, claims, PROVIDER, ["sts.amazonaws.com"], URL, None)
    return result is True


def trust_policy(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    with pytest.raises(SystemExit) as exit_info:
        main(["aws", "trust-policy", "--provider-arn", PROVIDER, *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def seed_policy(pattern: str | list[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": PROVIDER},
                "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
                "Condition": {
                    "StringEquals": {f"{URL}:aud": "sts.amazonaws.com"},
                    "StringLike": {f"{URL}:sub": pattern},
                },
            }
        ],
    }


# --- Octopus Deploy: a deployment identity -----------------------------------------------------


def test_the_seeds_context_gets_exactly_the_seeds_subject(octopus: IssuerProcess) -> None:
    claims = mint(octopus, {**OCTOPUS_CONTEXT, "build_id": 101})
    assert claims["sub"] == "space:default:project:aws-oidc-testing:environment:dev"
    assert {k: claims[k] for k in ("space", "project", "environment", "build_id")} == {
        "space": "default",
        "project": "aws-oidc-testing",
        "environment": "dev",
        "build_id": "101",
    }
    # Built-ins this CI does not have are no claims at all (not empty strings).
    for absent in ("repo", "ref", "image", "image_name", "commands", "tenant", "runbook"):
        assert absent not in claims
    assert claims["https://aws.amazon.com/tags"] == {
        "principal_tags": {"project": ["aws-oidc-testing"], "environment": ["dev"]}
    }


def test_without_repo_the_step_environment_has_no_vela_variables(octopus: IssuerProcess) -> None:
    opened = open_request_token(octopus, {**OCTOPUS_CONTEXT, "build_id": 102})
    assert opened.status_code == 200, opened.text
    env = opened.json()["env"]
    assert set(env) == {"ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"}
    vela = requests.get(
        f"{octopus.base}/api/v1/repos/o/r/builds/1/id_token",
        params={"audience": "sts.amazonaws.com"},
        headers={"Authorization": f"Bearer {env['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}"},
        timeout=10,
    )
    assert vela.status_code == 403
    assert "ACTIONS_ID_TOKEN_REQUEST_URL" in vela.json()["error_description"]


@pytest.mark.parametrize("source", ["seed", "idp aws trust-policy"])
def test_the_seeds_pattern_admits_every_environment_of_the_project_only(
    octopus: IssuerProcess, capsys: pytest.CaptureFixture[str], source: str, tmp_path: Path
) -> None:
    if source == "seed":
        policy = seed_policy(SEED_PATTERN)
    else:
        path = tmp_path / "claims.yaml"
        path.write_text(OCTOPUS, encoding="utf-8")
        policy = trust_policy(
            capsys,
            "--claims-file",
            str(path),
            "--match",
            "space=default",
            "--match",
            "project=aws-oidc-testing",
            "--match",
            "environment=*",
        )
        condition = policy["Statement"][0]["Condition"]
        assert condition["StringLike"] == {f"{URL}:sub": SEED_PATTERN}
        assert condition["StringEquals"] == {f"{URL}:aud": "sts.amazonaws.com"}
    cases = [
        ({}, True),
        ({"environment": "prod"}, True),
        ({"environment": "test", "tenant": "acme"}, True),
        ({"project": "aws-other"}, False),
        ({"project": "aws-oidc-testing-2"}, False),
        ({"space": "ops"}, False),
        ({"space": "ops", "project": "aws-oidc-testing"}, False),
        # No environment: sub has no environment key, so `environment:*` cannot match.
        ({"environment": None}, False),
    ]
    for build, (change, allowed) in enumerate(cases, start=200):
        context = {**OCTOPUS_CONTEXT, **change, "build_id": build}
        context = {k: v for k, v in context.items() if v is not None}
        claims = mint(octopus, context)
        assert aws_allows(policy, claims) is allowed, (change, claims["sub"])


@pytest.mark.parametrize(
    ("change", "claim", "words"),
    [
        ({"space": None}, "space", "is missing"),
        ({"colour": "red"}, "colour", "unknown build context field"),
        ({"environment": "staging"}, "environment", "not one of dev, test, prod"),
        ({"project": "AWS-Oidc"}, "project", "does not match"),
        ({"tenant": "acme:eu"}, "tenant", "contains ':'"),
        ({"tenant": "t" * 65}, "tenant", "over 64 characters"),
        ({"runbook": "a\nb"}, "runbook", "control character"),
        ({"repo": "not-a-repo"}, "repo", "must be 'org/name'"),
    ],
)
def test_bad_contexts_are_a_400_naming_the_claim(
    octopus: IssuerProcess, change: dict[str, Any], claim: str, words: str
) -> None:
    context = {k: v for k, v in {**OCTOPUS_CONTEXT, **change}.items() if v is not None}
    response = open_request_token(octopus, context)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert f"'{claim}'" in body["error_description"] and words in body["error_description"]


def test_discovery_and_openapi_know_the_declared_claims(octopus: IssuerProcess) -> None:
    discovery = requests.get(f"{octopus.issuer}/.well-known/openid-configuration", timeout=10)
    supported = discovery.json()["claims_supported"]
    for claim in ("space", "project", "tenant", "runbook", "environment", "sub", "repo"):
        assert claim in supported
    document = requests.get(f"{octopus.issuer}/openapi.json", timeout=10).json()
    schema = document["components"]["schemas"]["BuildContext"]
    assert schema["required"] == ["build_id", "space", "project"]
    assert schema["properties"]["environment"]["allOf"] == [{"enum": ["dev", "test", "prod"]}]
    assert schema["properties"]["tenant"]["maxLength"] == 64
    env = document["components"]["schemas"]["RequestTokenOpened"]["properties"]["env"]
    assert env["required"] == ["ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"]


# --- GitHub style: repo:org/repo:environment:prod ----------------------------------------------


def test_a_github_style_environment_role(
    github: IssuerProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(GITHUB_ENVIRONMENTS, encoding="utf-8")
    policy = trust_policy(
        capsys,
        "--claims-file",
        str(path),
        "--repo",
        "octo-org/octo-repo",
        "--match",
        "environment=prod",
        "--match",
        "event=push",
    )
    condition = policy["Statement"][0]["Condition"]
    assert condition["StringEquals"][f"{URL}:sub"] == "repo:octo-org/octo-repo:environment:prod"

    prod = mint(github, {**CONTEXT, "environment": "prod", "build_id": 300})
    assert prod["sub"] == "repo:octo-org/octo-repo:environment:prod"
    assert set(open_request_token(github, {**CONTEXT, "build_id": 301}).json()["env"]) == {
        "VELA_ID_TOKEN_REQUEST_URL",
        "VELA_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    }
    assert aws_allows(policy, prod)
    for build, change in enumerate(
        [
            {"environment": "staging"},
            {"repo": "octo-org/other"},
            {"environment": None},
            # Another event falls back to IDP_SUBJECT_CLAIMS: no environment in sub at all.
            {"event": "pull_request"},
        ],
        start=302,
    ):
        context = {k: v for k, v in {**CONTEXT, "environment": "prod", **change}.items()}
        context = {k: v for k, v in context.items() if v is not None}
        claims = mint(github, {**context, "build_id": build})
        assert not aws_allows(policy, claims), (change, claims["sub"])

    bad = open_request_token(github, {**CONTEXT, "environment": "dev", "build_id": 310})
    assert bad.status_code == 400 and "'environment'" in bad.json()["error_description"]


def test_a_bad_claims_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "claims:\n  sub: {}\n")
    proc.start(wait=False)
    assert proc.proc is not None
    code = proc.proc.wait(timeout=60)
    proc.stop()
    assert code != 0
    lines = [line for line in proc.log.decode().splitlines() if "IDP_CLAIMS_FILE" in line]
    assert len(lines) == 1 and "claims.sub" in lines[0] and "Traceback" not in proc.log.decode()


def test_explain_knows_a_declared_claim_is_a_claim(octopus: IssuerProcess) -> None:
    """A condition on `<provider>:project` (a declared claim) is never evaluated by AWS: the
    fix says how to make it reach AWS, as for a built-in, not that the token has no such claim."""
    claims = mint(octopus, {**OCTOPUS_CONTEXT, "build_id": 400})
    policy = seed_policy(SEED_PATTERN)
    policy["Statement"][0]["Condition"]["StringEquals"][f"{URL}:project"] = "aws-oidc-testing"
    checks, _, _ = policy_checks(policy, claims, PROVIDER, ["sts.amazonaws.com"], URL, None)
    fixes = " ".join(check.fix for check in checks if "project" in check.detail)
    assert "IDP_AWS_SESSION_TAGS=project" in fixes
    assert "AWS never sees" not in fixes
