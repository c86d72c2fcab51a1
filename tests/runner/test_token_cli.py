"""`idp token` against a running issuer, both protocols, and against a flaky fake for retries."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from idp.cli import main
from idp.runner.client import TokenRequest
from tests.support import ROOT, IssuerProcess


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def only(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the step with one protocol's request variables: VELA or ACTIONS."""
    other = "ACTIONS" if protocol == "VELA" else "VELA"
    monkeypatch.delenv(f"{other}_ID_TOKEN_REQUEST_URL")
    monkeypatch.delenv(f"{other}_ID_TOKEN_REQUEST_TOKEN")


@pytest.mark.parametrize("protocol", ["VELA", "ACTIONS"])
def test_token_through_either_protocol(
    protocol: str,
    step_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    only(protocol, monkeypatch)
    code, out, err = run(["token", "--audience", "sts.amazonaws.com"], capsys)
    assert code == 0, err
    token = out.strip()
    assert claims(token)["aud"] == "sts.amazonaws.com"
    assert claims(token)["sub"] == "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"
    assert step_env[f"{protocol}_ID_TOKEN_REQUEST_TOKEN"] not in out + err


def test_output_file_is_private(
    step_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "id-token"
    code, out, err = run(["token", "--audience", "my-app", "--output", str(target)], capsys)
    assert code == 0, err
    assert out == ""
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert claims(target.read_text())["aud"] == "my-app"


@pytest.mark.parametrize("protocol", ["VELA", "ACTIONS"])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_lifetime_is_asked_for_and_honoured(
    protocol: str,
    how: str,
    step_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    only(protocol, monkeypatch)
    argv = ["token", "--audience", "sts.amazonaws.com"]
    if how == "flag":
        argv += ["--lifetime", "900"]
    else:
        monkeypatch.setenv("IDP_TOKEN_LIFETIME", "900")
    code, out, err = run(argv, capsys)
    assert code == 0, err
    token = claims(out.strip())
    assert token["exp"] - token["iat"] == 900


def test_without_lifetime_the_issuer_default_applies(
    step_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["token", "--audience", "sts.amazonaws.com"], capsys)
    assert code == 0, err
    token = claims(out.strip())
    assert token["exp"] - token["iat"] == 300  # IDP_TOKEN_TTL's default


def test_a_lifetime_over_the_issuers_maximum_is_refused_with_the_range(
    step_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["token", "--audience", "a", "--lifetime", "3601"], capsys)
    assert code == 1 and out == ""
    assert "refused the ID token request with 400 invalid_request" in err
    assert "lifetime=3601 is out of range" in err and "60 to 3600" in err
    assert "retry" not in err


@pytest.mark.parametrize("value", ["59", "0", "-5", "ten", "1.5"])
def test_a_lifetime_no_issuer_grants_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["token", "--audience", "a", "--lifetime", value], capsys)
    assert code == 2 and "--lifetime" in err


def test_lifetime_is_appended_to_either_url() -> None:
    github = TokenRequest("github", "https://ci/_services/token/id-token?api-version=2.0", "t")
    assert github.url_for("sts.amazonaws.com", 900).endswith(
        "/id-token?api-version=2.0&audience=sts.amazonaws.com&lifetime=900"
    )
    vela = TokenRequest("vela", "https://ci/api/v1/repos/o/r/builds/1/id_token", "t")
    assert vela.url_for("a", 60).endswith("/id_token?audience=a&lifetime=60")
    assert "lifetime" not in vela.url_for("a")


def test_no_request_variables_says_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["token", "--audience", "sts.amazonaws.com"], capsys)
    assert code == 1
    assert err.startswith("idp: error: ") and err.count("\n") == 1
    assert "set `id_request: yes` on the step" in err


def test_half_set_variables_name_the_missing_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VELA_ID_TOKEN_REQUEST_URL", "http://127.0.0.1:1/x")
    code, _, err = run(["token", "--audience", "a"], capsys)
    assert code == 1 and "VELA_ID_TOKEN_REQUEST_TOKEN is empty or unset" in err


def test_missing_audience_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["token"], capsys)
    assert code == 2 and "--audience" in err and err.count("\n") == 1


def test_a_refused_request_token_is_not_retried(
    step_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VELA_ID_TOKEN_REQUEST_TOKEN", "not-a-request-token")
    code, _, err = run(["token", "--audience", "sts.amazonaws.com"], capsys)
    assert code == 1
    assert "refused the ID token request with 401" in err
    assert "retry" not in err


class Flaky:
    """A fake issuer on plain http and an odd port: answers `statuses` in turn, then a token."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.location = ""  # where a 3xx answer points
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.paths.append(self.path)
                outer.auth.append(self.headers.get("Authorization"))
                status = outer.statuses.pop(0) if outer.statuses else 200
                body = (
                    {"token": "aaa.bbb.ccc"}
                    if status == 200
                    else {"error": "nope", "error_description": "fix it"}
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v1/repos/o/r/builds/1/id_token"

    def __enter__(self) -> Flaky:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def make(statuses: list[int]) -> Flaky:
        fake = Flaky(statuses)
        monkeypatch.setenv("VELA_ID_TOKEN_REQUEST_URL", fake.url)
        monkeypatch.setenv("VELA_ID_TOKEN_REQUEST_TOKEN", "request-token")
        return fake

    yield make


@pytest.mark.parametrize(
    ("statuses", "code", "attempts"),
    [
        ([503, 502, 429], 0, 4),  # transient: retried until it works
        ([500, 500, 500, 500, 500], 1, 5),  # gives up after five attempts
        ([400], 1, 1),  # an answer, not a failure: never retried
        ([403], 1, 1),
    ],
)
def test_transient_failures_are_retried_and_4xx_are_not(
    flaky: Any,
    statuses: list[int],
    code: int,
    attempts: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with flaky(statuses) as fake:
        result, out, err = run(["token", "--audience", "sts.amazonaws.com"], capsys)
    assert result == code, err
    assert len(fake.paths) == attempts
    if code == 0:
        assert out == "aaa.bbb.ccc\n"
    # The URL is used as given: plain http, its port, its path; `?audience=` appended.
    assert fake.paths[0] == "/api/v1/repos/o/r/builds/1/id_token?audience=sts.amazonaws.com"
    assert fake.auth[0] == "Bearer request-token"
    assert "request-token" not in out + err


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_request_token_stays_home(
    flaky: Any, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # urllib would resend Authorization to wherever the redirect points.
    with Flaky([]) as elsewhere, flaky([status]) as fake:
        fake.location = elsewhere.url
        code, out, err = run(["token", "--audience", "sts.amazonaws.com"], capsys)
    assert code == 1
    assert len(fake.paths) == 1, "a redirect is an answer, not retried"
    assert elsewhere.paths == [] and elsewhere.auth == []
    assert f"HTTP {status}, a redirect to {elsewhere.url}" in err.splitlines()[-1]
    assert "request-token" not in out + err


def test_connection_errors_are_retried(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support import free_port

    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://127.0.0.1:{free_port()}/x?a=1")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token")
    code, _, err = run(["token", "--audience", "a"], capsys)
    assert code == 1
    assert "could not be reached after 5 attempts" in err.splitlines()[-1]


def test_as_a_process(issuer: IssuerProcess, step_env: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **step_env}
    done = subprocess.run(
        [sys.executable, "-m", "idp", "token", "--audience", "sts.amazonaws.com"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert claims(done.stdout.strip())["aud"] == "sts.amazonaws.com"
