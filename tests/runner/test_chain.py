"""`idp aws credentials --source`: the Octopus worker's chain, with botocore's own providers.

STS is the session's moto server; the web identity token comes from the running issuer; the
instance metadata service is a small IMDSv2 server on loopback (botocore reaches it through
AWS_EC2_METADATA_SERVICE_ENDPOINT, as on any machine that overrides it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from idp.runner import client, credentials
from tests.runner.conftest import open_request_token
from tests.runner.test_credentials import ROLE, run, sts_answers
from tests.support import IssuerProcess

IMDS_TOKEN = "imds-session-token"  # noqa: S105 - a fake
INSTANCE_ROLE = "worker-role"


class Imds(BaseHTTPRequestHandler):
    """IMDSv2: a PUT for a session token, then GETs that must carry it."""

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._answer(200, IMDS_TOKEN)
        else:
            self._answer(400, "")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
            self._answer(401, "")  # IMDSv1 is off, as Octopus expects
            return
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == base:
            self._answer(200, INSTANCE_ROLE)
        elif self.path == base + INSTANCE_ROLE:
            self._answer(
                200,
                json.dumps(
                    {
                        "Code": "Success",
                        "AccessKeyId": "ASIAINSTANCEEXAMPLE1",
                        "SecretAccessKey": "instance-secret-key-example",
                        "Token": "instance-session-token",
                        "Expiration": "2099-01-01T00:00:00Z",
                    }
                ),
            )
        else:
            self._answer(404, "")


@pytest.fixture
def imds(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """IMDSv2 on loopback; after `aws`, which turns the metadata service off."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint)
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def token_file(issuer: IssuerProcess, tmp_path: Path) -> Path:
    """A token as a platform would mount it, minted by the issuer."""
    path = tmp_path / "web-identity-token"
    path.write_text(client.fetch_id_token("sts.amazonaws.com", open_request_token(issuer)))
    return path


def test_sts_refusals_name_the_explain_command(
    step_env: dict[str, str],
    aws: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for code in ("AccessDenied", "InvalidIdentityToken"):
        monkeypatch.setattr(
            credentials,
            "EVENT_HOOKS",
            [("before-call.sts.AssumeRoleWithWebIdentity", sts_answers(code, "refused"))],
        )
        result, _, err = run(["aws", "credentials", "--role", ROLE], capsys)
        [line] = [x for x in err.splitlines() if x.startswith("idp: error: ")]
        assert result == 1
        assert f"idp aws explain --token token.jwt --role-arn {ROLE}" in line
        assert "idp token --audience sts.amazonaws.com --output token.jwt" in line


def test_the_default_source_is_the_request_token(
    step_env: dict[str, str],
    aws: str,
    sent: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["aws", "credentials", "--role", ROLE], capsys)
    assert code == 0, err
    assert len(sent) == 1 and "credentials from" not in err


def test_auto_prefers_the_request_token(
    step_env: dict[str, str],
    token_file: Path,
    aws: str,
    sent: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    code, _, err = run(["aws", "credentials", "--role", ROLE, "--source", "auto"], capsys)
    assert code == 0, err
    assert "credentials from the step's request token (idp)" in err
    assert len(sent) == 1  # through our STS call, not botocore's provider


@pytest.mark.parametrize("source", ["auto", "web-identity"])
def test_the_web_identity_token_file(
    source: str,
    token_file: Path,
    aws: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    target = tmp_path / "creds"
    code, out, err = run(
        [
            "aws",
            "credentials",
            "--source",
            source,
            "--role-session-name",
            "eks-pod",
            "--verify",
            "true",
            "--script-write",
            "true",
            "--script-format",
            "credential_file",
            "--script-path",
            str(target),
        ],
        capsys,
    )
    assert code == 0, err
    assert "credentials from the web identity token file ($AWS_WEB_IDENTITY_TOKEN_FILE)" in err
    assert "assumed-role/deploy/eks-pod" in out
    assert target.read_text().startswith("[default]\naws_access_key_id=")


def test_web_identity_format_writes_the_mounted_token(
    token_file: Path,
    aws: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    target = tmp_path / "copy"
    code, out, err = run(
        [
            "aws",
            "credentials",
            "--source",
            "web-identity",
            "--role",
            ROLE,
            "--script-format",
            "web_identity",
            "--script-path",
            str(target),
        ],
        capsys,
    )
    assert code == 0, err
    assert target.read_text() == token_file.read_text().strip()
    assert f"export AWS_ROLE_ARN={ROLE}" in out


def test_web_identity_without_a_role(
    token_file: Path, aws: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("AWS_ROLE_ARN", raising=False)
    code, _, err = run(["aws", "credentials", "--source", "web-identity"], capsys)
    assert code == 2 and "AWS_ROLE_ARN" in err and err.count("idp: error:") == 1


@pytest.mark.parametrize("source", ["auto", "instance"])
def test_the_instance_role(
    source: str, imds: str, aws: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["aws", "credentials", "--source", source, "--verify", "true"], capsys)
    assert code == 0, err
    assert "credentials from the instance's role (IMDSv2)" in err
    assert out.strip().startswith("arn:aws:")


def test_the_instance_role_chains_into_the_step_s_role(
    imds: str, aws: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        [
            "aws",
            "credentials",
            "--source",
            "instance",
            "--role",
            ROLE,
            "--role-session-name",
            "worker",
            "--verify",
            "true",
        ],
        capsys,
    )
    assert code == 0, err
    assert "assumed-role/deploy/worker" in out


def test_instance_credentials_cannot_write_a_token(
    imds: str, aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        [
            "aws",
            "credentials",
            "--source",
            "instance",
            "--script-format",
            "web_identity",
            "--script-path",
            str(tmp_path / "t"),
        ],
        capsys,
    )
    assert code == 2 and "web_identity" in err and err.count("\n") == 1


def test_auto_with_nothing_at_all(aws: str, capsys: pytest.CaptureFixture[str]) -> None:
    # `aws` disables the metadata service, as on a machine that is no EC2 instance.
    code, _, err = run(["aws", "credentials", "--source", "auto"], capsys)
    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("idp: error: ")]
    assert "id_request: yes" in line and "AWS_WEB_IDENTITY_TOKEN_FILE" in line
