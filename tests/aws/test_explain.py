"""`idp aws explain --role-arn` against a moto server, with tokens minted by the running issuer.

The role and the provider are created with boto3; the same document given offline with
`--trust-policy` must give the same verdict and the same deciding check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.aws.test_thumbprint import run
from tests.support import CI_SECRET, NO_RATE_LIMITS, IssuerProcess
from tests.unit.test_claims import CONTEXT

ISSUER = "https://idp.example.test/_services/token"
URL = "idp.example.test/_services/token"
ACCOUNT = "123456789012"
PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{URL}"
SUB = "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"
ASSUME = "sts:AssumeRoleWithWebIdentity"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    """The issuer as published at https://idp.example.test, listening on loopback."""
    keys = tmp_path_factory.mktemp("explain-keys")
    env = {"IDP_KEYS_DIR": str(keys), "IDP_ISSUER": ISSUER, **NO_RATE_LIMITS}
    with IssuerProcess(env) as proc:
        yield proc


def mint(issuer: IssuerProcess, audience: str = "sts.amazonaws.com", **context: Any) -> str:
    opened = requests.post(
        f"{issuer.issuer}/request-tokens",
        json={**CONTEXT, **context},
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        timeout=10,
    )
    assert opened.status_code == 200, opened.text
    answer = requests.get(
        f"{issuer.issuer}/id-token",
        params={"audience": audience},
        headers={"Authorization": f"Bearer {opened.json()['token']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["value"])


@pytest.fixture
def jwks_file(issuer: IssuerProcess, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(requests.get(f"{issuer.issuer}/.well-known/jwks", timeout=10).text)
    return path


@pytest.fixture
def iam(aws_env: str) -> Any:
    client = boto3.client("iam")
    client.create_open_id_connect_provider(
        Url=ISSUER, ClientIDList=["sts.amazonaws.com"], ThumbprintList=["a" * 40]
    )
    return client


def statement(condition: dict[str, Any], action: Any = ASSUME) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Principal": {"Federated": PROVIDER},
        "Action": action,
        "Condition": condition,
    }


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


PINNED = {"StringEquals": {f"{URL}:aud": "sts.amazonaws.com"}, "StringLike": {f"{URL}:sub": SUB}}
POLICIES: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "pinned": (document(statement(PINNED)), "allowed", None),
    "vela seed": (
        document(
            statement(
                {
                    "StringLike": {
                        f"{URL}:sub": "repo:octo-org/octo-repo:*",
                        f"{URL}:image": "golang:*",
                    },
                    "StringEquals": {f"{URL}:aud": "sts.amazonaws.com", f"{URL}:commands": False},
                }
            )
        ),
        "refused",
        f"policy.1.condition.StringLike.{URL}:image",
    ),
    "other repository": (
        document(statement({"StringLike": {f"{URL}:sub": "repo:octo-org/other:*"}})),
        "refused",
        f"policy.1.condition.StringLike.{URL}:sub",
    ),
    "explicit deny": (
        document(
            statement(PINNED),
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sts:*",
                "Condition": {"StringLike": {f"{URL}:sub": "repo:octo-org/*"}},
            },
        ),
        "refused",
        "policy.2.deny",
    ),
    "source ip": (
        document(statement({**PINNED, "IpAddress": {"aws:SourceIp": "203.0.113.0/24"}})),
        "undecidable",
        "policy.1.condition.IpAddress.aws:SourceIp",
    ),
}


def explain_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, "aws", "explain", "--format", "json", *args)
    assert "Traceback" not in err, err
    assert out, err
    return code, dict(json.loads(out))


@pytest.mark.parametrize("name", list(POLICIES))
def test_role_arn_agrees_with_trust_policy(
    name: str,
    iam: Any,
    issuer: IssuerProcess,
    jwks_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trust, verdict, deciding = POLICIES[name]
    role = iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=json.dumps(trust))
    token = tmp_path / "token.jwt"
    token.write_text(mint(issuer))
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(trust))
    common = ["--token", str(token), "--jwks", str(jwks_file)]

    online_code, online = explain_json(
        capsys, *common, "--role-arn", role["Role"]["Arn"], "--no-thumbprint"
    )
    offline_code, offline = explain_json(
        capsys, *common, "--trust-policy", str(policy_file), "--account-id", ACCOUNT
    )
    assert (online["verdict"], online["deciding"]) == (verdict, deciding), online
    assert (offline["verdict"], offline["deciding"]) == (verdict, deciding), offline
    assert online_code == offline_code == {"allowed": 0, "refused": 1, "undecidable": 3}[verdict]
    assert online["provider_arn"] == offline["provider_arn"] == PROVIDER
    assert online["role_arn"] == role["Role"]["Arn"]
    # The token really came from the issuer and verifies with its published keys.
    signature = next(c for c in online["checks"] if c["check"] == "token.signature")
    assert signature["status"] == "pass"


def test_the_role_s_maximum_session_duration_is_read(
    iam: Any,
    issuer: IssuerProcess,
    jwks_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    role = iam.create_role(
        RoleName="short",
        AssumeRolePolicyDocument=json.dumps(document(statement(PINNED))),
        MaxSessionDuration=3600,
    )
    token = tmp_path / "token.jwt"
    token.write_text(mint(issuer))
    args = ["--token", str(token), "--jwks", str(jwks_file), "--no-thumbprint"]
    code, answer = explain_json(
        capsys, *args, "--role-arn", role["Role"]["Arn"], "--duration-seconds", "7200"
    )
    assert code == 1 and answer["deciding"] == "session.duration"
    duration = next(c for c in answer["checks"] if c["check"] == "session.duration")
    assert "up to 3600 s" in duration["detail"]


def test_a_wrong_audience_and_an_unregistered_provider(
    aws_env: str,
    issuer: IssuerProcess,
    jwks_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    iam = boto3.client("iam")
    # Registered with a trailing slash: a different provider for STS.
    iam.create_open_id_connect_provider(
        Url=ISSUER + "/", ClientIDList=["sts.amazonaws.com"], ThumbprintList=["a" * 40]
    )
    role = iam.create_role(
        RoleName="deploy", AssumeRolePolicyDocument=json.dumps(document(statement(PINNED)))
    )
    token = tmp_path / "token.jwt"
    token.write_text(mint(issuer, audience="api://other"))
    code, answer = explain_json(
        capsys,
        "--token",
        str(token),
        "--jwks",
        str(jwks_file),
        "--role-arn",
        role["Role"]["Arn"],
        "--no-thumbprint",
    )
    assert code == 1 and answer["deciding"] == "provider.registered"
    registered = next(c for c in answer["checks"] if c["check"] == "provider.registered")
    assert URL + "/" in registered["detail"] and "idp aws register" in registered["fix"]


def test_a_role_that_does_not_exist(
    aws_env: str,
    issuer: IssuerProcess,
    jwks_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = tmp_path / "token.jwt"
    token.write_text(mint(issuer))
    code, out, err = run(
        capsys,
        "aws",
        "explain",
        "--token",
        str(token),
        "--jwks",
        str(jwks_file),
        "--role-arn",
        f"arn:aws:iam::{ACCOUNT}:role/missing",
        "--no-thumbprint",
    )
    assert code == 1 and out == ""
    assert err.startswith("idp: error: ") and err.count("\n") == 1
    assert "no role missing" in err
