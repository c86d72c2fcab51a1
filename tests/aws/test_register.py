"""`idp aws register` against a moto server: create, repeat, add an audience, refuse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.aws.test_thumbprint import assert_one_line_error, run
from tests.aws.tls import ConnectProxy, HttpsServer, Pki, write_bundle

ISSUER = "https://idp.example.test/_services/token"
ARN = "arn:aws:iam::123456789012:oidc-provider/idp.example.test/_services/token"
THUMB_A = "a" * 40
THUMB_B = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def iam(aws_env: str) -> Any:
    return boto3.client("iam")


def provider(iam: Any) -> dict[str, Any]:
    return dict(iam.get_open_id_connect_provider(OpenIDConnectProviderArn=ARN))


def test_create_then_repeat(capsys: pytest.CaptureFixture[str], iam: Any) -> None:
    code, out, err = run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A)
    assert code == 0, err
    assert out == ARN + "\n"
    assert f"created {ARN}" in err
    created = provider(iam)
    assert created["Url"] == "idp.example.test/_services/token"
    assert created["ClientIDList"] == ["sts.amazonaws.com"]  # the default audience
    assert created["ThumbprintList"] == [THUMB_A]

    code, out, err = run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A)
    assert code == 0, err
    assert out == ARN + "\n"
    assert "up to date" in err
    assert [
        p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]
    ] == [ARN]


def test_add_an_audience_and_keep_the_others(capsys: pytest.CaptureFixture[str], iam: Any) -> None:
    run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A)
    code, out, err = run(
        capsys,
        "aws",
        "register",
        ISSUER,
        "--thumbprint",
        THUMB_A,
        "--audience",
        "sts.amazonaws.com",
        "--audience",
        "deploy.example.com",
    )
    assert code == 0, err
    assert out == ARN + "\n"
    assert "added audience deploy.example.com" in err
    assert provider(iam)["ClientIDList"] == ["sts.amazonaws.com", "deploy.example.com"]

    # Asking for fewer audiences never removes one a role may rely on.
    code, out, err = run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A)
    assert code == 0, err
    assert "kept audiences not asked for: deploy.example.com" in err
    assert provider(iam)["ClientIDList"] == ["sts.amazonaws.com", "deploy.example.com"]


def test_thumbprints_and_tags_are_brought_up_to_date(
    capsys: pytest.CaptureFixture[str], iam: Any
) -> None:
    run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A, "--tag", "team=ci")
    assert provider(iam)["Tags"] == [{"Key": "team", "Value": "ci"}]

    # Colons and upper case, as other tools print thumbprints, are accepted.
    spaced = ":".join(THUMB_B[i : i + 2] for i in range(0, 40, 2)).upper()
    code, out, err = run(
        capsys, "aws", "register", ISSUER, "--thumbprint", spaced, "--tag", "team=platform"
    )
    assert code == 0, err
    assert out == ARN + "\n"
    assert f"replaced thumbprints (were {THUMB_A})" in err
    assert "set tag team" in err
    current = provider(iam)
    assert current["ThumbprintList"] == [THUMB_B]
    assert current["Tags"] == [{"Key": "team", "Value": "platform"}]


def test_settings_from_the_environment(
    capsys: pytest.CaptureFixture[str], iam: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDP_ISSUER", ISSUER)
    monkeypatch.setenv("IDP_AWS_THUMBPRINT", f"{THUMB_A} {THUMB_B}")
    monkeypatch.setenv("IDP_AWS_AUDIENCE", "sts.amazonaws.com other")
    code, out, err = run(capsys, "aws", "register")
    assert code == 0, err
    assert out == ARN + "\n"
    assert provider(iam)["ThumbprintList"] == [THUMB_A, THUMB_B]
    assert provider(iam)["ClientIDList"] == ["sts.amazonaws.com", "other"]


@pytest.mark.parametrize(
    ("url", "extra", "fragments"),
    [
        ("http://idp.example.test/_services/token", [], ["not https", "https://"]),
        ("https://idp.example.test:8443/_services/token", [], ["has a port", "443"]),
        ("https://idp.example.test/_services/token?x=1", [], ["query"]),
        ("https://idp.example.test/_services/token#x", [], ["fragment"]),
        ("https://idp.example.test/_services/token/", [], ["ends with '/'", "drop"]),
        ("https://user:pw@idp.example.test/t", [], ["credentials"]),
        ("https://idp.example.test/" + "p" * 260, [], ["255"]),
        (ISSUER, ["--thumbprint", "not-hex"], ["not 40 hex"]),
        (ISSUER, ["--tag", "aws:reserved=x"], ["tag key"]),
        (ISSUER, [f for i in range(6) for f in ("--thumbprint", f"{i:040x}")], ["1 to 5"]),
    ],
    ids=[
        "http",
        "port",
        "query",
        "fragment",
        "slash",
        "userinfo",
        "long",
        "bad-thumb",
        "tag-key",
        "six-thumbs",
    ],
)
def test_refused_inputs(
    capsys: pytest.CaptureFixture[str], iam: Any, url: str, extra: list[str], fragments: list[str]
) -> None:
    thumbprint = [] if "--thumbprint" in extra else ["--thumbprint", THUMB_A]
    code, _, err = run(capsys, "aws", "register", url, *thumbprint, *extra)
    assert_one_line_error(code, err, *fragments)
    assert iam.list_open_id_connect_providers()["OpenIDConnectProviderList"] == []


def test_a_bad_tag_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str], iam: Any) -> None:
    code, _, err = run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A, "--tag", "x")
    assert code == 2
    assert "KEY=VALUE" in err


def test_no_credentials(
    capsys: pytest.CaptureFixture[str], aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    code, _, err = run(capsys, "aws", "register", ISSUER, "--thumbprint", THUMB_A)
    assert_one_line_error(code, err, "no AWS credentials", "AWS_PROFILE")


# --- thumbprints computed from the issuer (reached through a proxy on port 443) ---------


@pytest.fixture
def published_issuer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[HttpsServer, Pki, str]]:
    """The issuer as AWS sees it, https://idp.example.test on 443, behind HTTPS_PROXY."""
    pki = Pki.create("idp.example.test")
    with (
        HttpsServer(pki.server_pem(tmp_path)) as server,
        ConnectProxy({("idp.example.test", 443): ("127.0.0.1", server.port)}) as proxy,
    ):
        server.serve_discovery(ISSUER, f"{ISSUER}/.well-known/jwks")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        yield server, pki, str(write_bundle(tmp_path / "ca.pem", pki.root_pem))


def test_thumbprint_auto(
    capsys: pytest.CaptureFixture[str], iam: Any, published_issuer: tuple[HttpsServer, Pki, str]
) -> None:
    _, pki, cafile = published_issuer
    code, out, err = run(capsys, "aws", "register", ISSUER, "--cafile", cafile)
    assert code == 0, err
    assert out == ARN + "\n"
    assert provider(iam)["ThumbprintList"] == [pki.intermediate_thumbprint]


def test_the_url_must_be_the_issuers_iss(
    capsys: pytest.CaptureFixture[str], iam: Any, published_issuer: tuple[HttpsServer, Pki, str]
) -> None:
    server, _, cafile = published_issuer
    code, _, err = run(capsys, "aws", "register", ISSUER + "/", "--cafile", cafile)
    assert_one_line_error(code, err, "ends with '/'", "drop the trailing '/'")
    # Before the network: a host that does not resolve still gets the same answer.
    code, _, err = run(capsys, "aws", "register", "https://nowhere.invalid/_services/token/")
    assert_one_line_error(code, err, "ends with '/'", "drop the trailing '/'")

    server.serve_discovery(
        "https://other.example.test/_services/token", f"{ISSUER}/.well-known/jwks"
    )
    code, _, err = run(capsys, "aws", "register", ISSUER, "--cafile", cafile)
    assert_one_line_error(code, err, "other.example.test", "exactly")
    assert iam.list_open_id_connect_providers()["OpenIDConnectProviderList"] == []
