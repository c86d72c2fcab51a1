"""`idp aws create-role` against a moto server: the same policy `trust-policy` prints."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tests.aws.test_thumbprint import assert_one_line_error, run

PROVIDER = "arn:aws:iam::123456789012:oidc-provider/idp.example.test/_services/token"
POLICY_FLAGS = [
    "--provider-arn",
    PROVIDER,
    "--repo",
    "octo-org/octo-repo",
    "--image",
    "golang",
    "--commands",
    "false",
    "--subject-claims",
    "repo,ref,event,image_name,commands",
    "--session-tags",
    "",
]


@pytest.fixture
def iam(aws_env: str) -> Any:
    return boto3.client("iam")


def printed_policy(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    code, out, err = run(capsys, "aws", "trust-policy", *flags)
    assert code == 0, err
    return dict(json.loads(out))


def test_create_then_update(capsys: pytest.CaptureFixture[str], iam: Any) -> None:
    expected = printed_policy(capsys, *POLICY_FLAGS)
    code, out, err = run(
        capsys, "aws", "create-role", "ci-deploy", *POLICY_FLAGS, "--description", "CI deploys"
    )
    assert code == 0, err
    assert out == "arn:aws:iam::123456789012:role/ci-deploy\n"
    assert "created" in err
    role = iam.get_role(RoleName="ci-deploy")["Role"]
    assert role["AssumeRolePolicyDocument"] == expected
    assert role["Description"] == "CI deploys"

    # Again with another image: the trust policy is replaced, the role kept.
    flags = [*POLICY_FLAGS]
    flags[flags.index("golang")] = "python"
    expected = printed_policy(capsys, *flags)
    code, out, err = run(capsys, "aws", "create-role", "ci-deploy", *flags)
    assert code == 0, err
    assert out == "arn:aws:iam::123456789012:role/ci-deploy\n"
    assert "updated the trust policy" in err
    assert iam.get_role(RoleName="ci-deploy")["Role"]["AssumeRolePolicyDocument"] == expected
    assert "image_name:python" in json.dumps(expected)


def test_session_tag_policy_and_attached_permissions(
    capsys: pytest.CaptureFixture[str], iam: Any
) -> None:
    permissions = iam.create_policy(
        PolicyName="read-bucket",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )["Policy"]["Arn"]
    flags = [
        "--provider-arn",
        PROVIDER,
        "--repo",
        "octo-org/octo-repo",
        "--image",
        "golang",
        "--commands",
        "false",
        "--subject-claims",
        "repo,ref,event",
        "--session-tags",
        "image_name,commands",
    ]
    expected = printed_policy(capsys, *flags)
    assert expected["Statement"][0]["Action"] == ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]
    code, out, err = run(
        capsys, "aws", "create-role", "ci-tags", *flags, "--policy-arn", permissions
    )
    assert code == 0, err
    assert f"attached {permissions}" in err
    assert iam.get_role(RoleName="ci-tags")["Role"]["AssumeRolePolicyDocument"] == expected
    attached = iam.list_attached_role_policies(RoleName="ci-tags")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [permissions]


def test_a_policy_aws_cannot_evaluate_creates_nothing(
    capsys: pytest.CaptureFixture[str], iam: Any
) -> None:
    flags = [
        "--provider-arn",
        PROVIDER,
        "--repo",
        "octo-org/octo-repo",
        "--image",
        "golang",
        "--subject-claims",
        "repo,ref,event",
        "--session-tags",
        "",
    ]
    code, _, err = run(capsys, "aws", "create-role", "ci-deploy", *flags)
    assert_one_line_error(code, err, "IDP_SUBJECT_CLAIMS", "IDP_AWS_SESSION_TAGS")
    assert iam.list_roles()["Roles"] == []


def test_bad_role_name(capsys: pytest.CaptureFixture[str], iam: Any) -> None:
    code, _, err = run(capsys, "aws", "create-role", "bad name!", *POLICY_FLAGS)
    assert_one_line_error(code, err, "role name")


def test_a_policy_that_does_not_exist_says_the_role_was_created(
    capsys: pytest.CaptureFixture[str], iam: Any
) -> None:
    missing = "arn:aws:iam::123456789012:policy/does-not-exist"
    code, out, err = run(
        capsys, "aws", "create-role", "ci-missing-policy", *POLICY_FLAGS, "--policy-arn", missing
    )
    assert_one_line_error(
        code, err, "the role arn:aws:iam::123456789012:role/ci-missing-policy was", missing
    )
    assert iam.get_role(RoleName="ci-missing-policy")["Role"]["RoleName"] == "ci-missing-policy"


def test_an_answer_botocore_cannot_parse_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, aws_env: str
) -> None:
    # A real HTTP server on loopback that answers IAM with an HTML page, as a proxy or an
    # outage page would.
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        code, _, err = run(capsys, "aws", "create-role", "ci-html", *POLICY_FLAGS)
    finally:
        server.shutdown()
        server.server_close()
    assert_one_line_error(code, err, "not an AWS reply")
