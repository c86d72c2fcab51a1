"""`idp aws credentials`: parameters from every source, STS through moto, formats, masking."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from idp.cli import main
from idp.runner import ParameterError, credentials
from idp.runner.credentials import (
    NAMES,
    Credentials,
    render_credential_file,
    render_shell,
    resolve,
)
from tests.support import ROOT

GOLDEN = Path(__file__).parent / "golden"
ROLE = "arn:aws:iam::123456789012:role/deploy"
SUB = "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# --- parameters --------------------------------------------------------------------------

# A distinct valid value per source, for every parameter of the plugin's table.
VALUES: dict[str, list[str]] = {
    "role": [f"arn:aws:iam::12345678901{i}:role/r{i}" for i in range(5)],
    "region": [f"eu-west-{i}" for i in range(5)],
    "role_duration_seconds": [str(1000 + i) for i in range(5)],
    "role_session_name": [f"session-{i}" for i in range(5)],
    "log_level": ["trace", "debug", "warn", "error", "info"],
    "audience": [f"aud-{i}" for i in range(5)],
    "verify": ["true", "false", "yes", "no", "1"],
    "script_path": [f"/p/{i}" for i in range(5)],
    "script_write": ["true", "false", "yes", "no", "1"],
    "script_format": ["shell", "credential_file", "web_identity", "shell", "credential_file"],
    "inline_session_policy": [f'{{"Version": "2012-10-17", "Id": "{i}"}}' for i in range(5)],
    "managed_session_policies": [
        f"arn:aws:iam::123456789012:policy/p{i}, arn:aws:iam::aws:policy/q{i}" for i in range(5)
    ],
}
SOURCES = ["flag", "parameters file", "secrets file", "PARAMETER_", "AWS_CREDENTIALS_"]


def test_the_table_covers_every_parameter() -> None:
    assert set(VALUES) == set(NAMES)


def place(
    name: str,
    value: str,
    source: str,
    tmp_path: Path,
    flags: dict[str, str | None],
    env: dict[str, str],
) -> None:
    if source == "flag":
        flags[name] = value
    elif source.endswith("file"):
        folder = tmp_path / ("parameters" if source.startswith("parameters") else "secrets")
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(f"  {value}\n")  # trimmed, as files usually end in a newline
    else:
        env[f"{source}{name.upper()}"] = value


def value_of(settings: credentials.Settings, name: str) -> Any:
    return {
        "role_duration_seconds": settings.duration,
        "role_session_name": settings.session_name,
        "managed_session_policies": settings.managed_session_policies,
        "script_path": str(settings.script_path),
    }.get(name, getattr(settings, name, None))


def expected(name: str, raw: str) -> Any:
    if name == "role_duration_seconds":
        return int(raw)
    if name in ("verify", "script_write"):
        return raw in ("true", "yes", "1")
    if name == "managed_session_policies":
        return tuple(a.strip() for a in raw.split(","))
    return raw


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("winner", range(len(SOURCES)), ids=SOURCES)
def test_precedence_flag_then_files_then_environment(
    name: str, winner: int, tmp_path: Path
) -> None:
    flags: dict[str, str | None] = {}
    env = {"IDP_PARAMETER_DIRS": f"{tmp_path / 'parameters'}:{tmp_path / 'secrets'}"}
    if name != "role":
        flags["role"] = ROLE
    # The winner and every lower source are set, each with its own value.
    for index in range(winner, len(SOURCES)):
        place(name, VALUES[name][index], SOURCES[index], tmp_path, flags, env)
    settings = resolve(flags, env)
    assert value_of(settings, name) == expected(name, VALUES[name][winner])
    source = settings.sources[name]
    assert {
        "flag": source == f"--{name.replace('_', '-')}",
        "parameters file": source == str(tmp_path / "parameters" / name),
        "secrets file": source == str(tmp_path / "secrets" / name),
        "PARAMETER_": source == f"PARAMETER_{name.upper()}",
        "AWS_CREDENTIALS_": source == f"AWS_CREDENTIALS_{name.upper()}",
    }[SOURCES[winner]]


def test_defaults() -> None:
    settings = resolve({"role": ROLE}, {"IDP_PARAMETER_DIRS": ""})
    assert (settings.region, settings.duration, settings.session_name) == (
        "us-east-1",
        3600,
        "vela",
    )
    assert (settings.log_level, settings.audience) == ("info", "sts.amazonaws.com")
    assert (settings.verify, settings.script_write, settings.script_format) == (
        False,
        False,
        "shell",
    )
    assert settings.script_path == Path("/vela/secrets/aws/setup.sh")
    assert settings.inline_session_policy is None and settings.managed_session_policies == ()
    as_file = resolve({"role": ROLE, "script_format": "credential_file"}, {})
    assert as_file.script_path == Path("/vela/secrets/aws/creds")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"role": ""}, "no role given"),
        ({"role": "deploy"}, "not a role ARN"),
        ({"role_duration_seconds": "899"}, "from 900 to 43200"),
        ({"role_duration_seconds": "43201"}, "from 900 to 43200"),
        ({"role_duration_seconds": "1h"}, "from 900 to 43200"),
        ({"role_session_name": "a"}, "2 to 64"),
        ({"role_session_name": "has space"}, "2 to 64"),
        ({"role_session_name": "x" * 65}, "2 to 64"),
        ({"log_level": "loud"}, "use trace, debug, info, warn or error"),
        ({"script_format": "yaml"}, "use shell, credential_file, web_identity"),
        ({"verify": "maybe"}, "use true or false"),
        ({"script_write": "sure"}, "use true or false"),
        ({"inline_session_policy": "{"}, "not valid JSON"),
        ({"managed_session_policies": "ReadOnly"}, "not a policy ARN"),
    ],
)
def test_bad_parameters_are_usage_errors_naming_the_fix(
    flags: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["aws", "credentials"]
    for name, value in {"role": ROLE, **flags}.items():
        argv += [f"--{name.replace('_', '-')}", value]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("idp: error: ") and err.count("\n") == 1
    assert message in err


def test_a_bad_value_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ParameterError, match="from PARAMETER_ROLE_DURATION_SECONDS"):
        resolve({"role": ROLE}, {"PARAMETER_ROLE_DURATION_SECONDS": "60"})


# --- formats -----------------------------------------------------------------------------

FIXED = Credentials(
    access_key_id="ASIAEXAMPLEKEYID0001",
    secret_access_key="example/secret+access/key0000000000000000",
    session_token="ExampleSessionToken//+==",
    expiration="2030-01-01T00:00:00+00:00",
)


def test_golden_shell() -> None:
    assert render_shell(FIXED, "eu-west-1") == (GOLDEN / "shell.txt").read_text()


def test_golden_credential_file() -> None:
    assert render_credential_file(FIXED) == (GOLDEN / "credential_file.txt").read_text()


def test_golden_web_identity() -> None:
    settings = resolve({"role": ROLE, "script_format": "web_identity", "region": "eu-west-1"}, {})
    lines = [f"export {k}={v}" for k, v in credentials.web_identity_environment(settings)]
    assert "\n".join(lines) + "\n" == (GOLDEN / "web_identity.txt").read_text()


def shape(text: str) -> str:
    """The file with its values blanked, to compare a real run with the golden file's shape."""
    return re.sub(r"=.*", "=", text)


# --- end to end: issuer, request token, STS ------------------------------------------------


@pytest.mark.parametrize("script_format", ["shell", "credential_file"])
def test_assumes_the_role_and_writes_the_format(
    script_format: str,
    step_env: dict[str, str],
    aws: str,
    sent: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "secrets-aws" / "out"
    policy = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
    )
    code, out, err = run(
        [
            "aws",
            "credentials",
            "--role",
            ROLE,
            "--script-write",
            "true",
            "--script-format",
            script_format,
            "--script-path",
            str(target),
            "--verify",
            "true",
            "--region",
            "eu-west-1",
            "--role-session-name",
            "build-42",
            "--role-duration-seconds",
            "1800",
            "--inline-session-policy",
            policy,
            "--managed-session-policies",
            "arn:aws:iam::123456789012:policy/a, arn:aws:iam::aws:policy/ReadOnlyAccess",
        ],
        capsys,
    )
    assert code == 0, err
    # What went to STS.
    [body] = sent
    assert body["Action"] == "AssumeRoleWithWebIdentity"
    assert body["RoleArn"] == ROLE
    assert body["RoleSessionName"] == "build-42"
    assert str(body["DurationSeconds"]) == "1800"
    assert body["Policy"] == policy
    assert body["PolicyArns.member.1.arn"] == "arn:aws:iam::123456789012:policy/a"
    assert body["PolicyArns.member.2.arn"] == "arn:aws:iam::aws:policy/ReadOnlyAccess"
    token = claims(body["WebIdentityToken"])
    assert token["aud"] == "sts.amazonaws.com"
    assert token["sub"] == SUB
    assert token["repo"] == "octo-org/octo-repo" and token["commands"] == "false"
    # What was written.
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    written = target.read_text()
    assert shape(written) == shape((GOLDEN / f"{script_format}.txt").read_text())
    if script_format == "shell":
        assert "export AWS_DEFAULT_REGION=eu-west-1\n" in written
    # verify: GetCallerIdentity with the new credentials answers the assumed role.
    assert re.search(r"arn:aws:sts::123456789012:assumed-role/deploy/build-42", out + err)
    # Never a secret on the terminal.
    for secret in re.findall(r"=(\S+)", written)[:3]:
        assert secret not in out + err


def test_web_identity_writes_the_token_and_prints_the_sdk_variables(
    step_env: dict[str, str],
    aws: str,
    sent: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "aws" / "token"
    code, out, err = run(
        [
            "aws",
            "credentials",
            "--role",
            ROLE,
            "--script-format",
            "web_identity",
            "--script-path",
            str(target),
            "--audience",
            "my-aud",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.splitlines() == [
        f"export AWS_ROLE_ARN={ROLE}",
        f"export AWS_WEB_IDENTITY_TOKEN_FILE={target}",
        "export AWS_ROLE_SESSION_NAME=vela",
        "export AWS_DEFAULT_REGION=us-east-1",
    ]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert claims(target.read_text())["aud"] == "my-aud"
    assert target.read_text() not in out + err


def test_parameters_from_files_and_environment_reach_sts(
    step_env: dict[str, str],
    aws: str,
    sent: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "role").write_text(ROLE + "\n")
    monkeypatch.setenv("PARAMETER_ROLE", "arn:aws:iam::999999999999:role/loser")
    monkeypatch.setenv("AWS_CREDENTIALS_ROLE_SESSION_NAME", "from-env")
    code, _, err = run(["aws", "credentials"], capsys)
    assert code == 0, err
    assert sent[0]["RoleArn"] == ROLE
    assert sent[0]["RoleSessionName"] == "from-env"
    assert str(sent[0]["DurationSeconds"]) == "3600"
    assert "Policy" not in sent[0] and "PolicyArns.member.1.arn" not in sent[0]


def test_nothing_secret_is_logged_even_at_trace(
    step_env: dict[str, str],
    aws: str,
    sent: list[dict[str, Any]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "aws" / "setup.sh"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "aws",
                "credentials",
                "--role",
                ROLE,
                "--log-level",
                "trace",
                "--verify",
                "true",
                "--script-write",
                "true",
                "--script-path",
                str(target),
            ]
        )
    out, err = capfd.readouterr()
    assert exit_info.value.code == 0, err
    logged = out + err
    assert "TRACE" in logged and "botocore" in logged  # trace really is verbose
    token = sent[0]["WebIdentityToken"]
    values = dict(re.findall(r"export (\w+)=(\S+)", target.read_text()))
    secrets = {
        "token": token,
        "token signature": token.split(".")[2],
        "request token": step_env["VELA_ID_TOKEN_REQUEST_TOKEN"],
        "access key id": values["AWS_ACCESS_KEY_ID"],
        "secret key": values["AWS_SECRET_ACCESS_KEY"],
        "session token": values["AWS_SESSION_TOKEN"],
    }
    leaked = [what for what, secret in secrets.items() if secret in logged]
    assert leaked == []


def sts_answers(code: str, message: str) -> Any:
    """A hook standing in for STS's refusal: moto accepts any token, AWS does not."""

    def answer(**_: Any) -> Any:
        return SimpleNamespace(status_code=403, headers={}), {
            "Error": {"Code": code, "Message": message, "Type": "Sender"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    return answer


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
            [
                ROLE,
                repr(SUB),
                "aud='sts.amazonaws.com'",
                '"repo": ["octo-org/octo-repo"]',
                "trust policy",
            ],
        ),
        (
            "InvalidIdentityToken",
            "No OpenIDConnect provider found",
            ["idp aws register", repr(SUB)],
        ),
        ("ExpiredTokenException", "Token expired", ["rerun the step"]),
        (
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration",
            ["role_duration_seconds=3600", "maximum session duration"],
        ),
    ],
)
def test_sts_refusals_say_what_to_fix(
    code: str,
    message: str,
    expected: list[str],
    step_env: dict[str, str],
    aws: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        credentials,
        "EVENT_HOOKS",
        [("before-call.sts.AssumeRoleWithWebIdentity", sts_answers(code, message))],
    )
    result, _, err = run(["aws", "credentials", "--role", ROLE], capsys)
    assert result == 1
    line = [x for x in err.splitlines() if x.startswith("idp: error: ")]
    assert len(line) == 1
    for fragment in expected:
        assert fragment in line[0]


def test_without_a_request_token(aws: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["aws", "credentials", "--role", ROLE], capsys)
    assert code == 1
    assert "set `id_request: yes` on the step" in err


def test_as_a_process(step_env: dict[str, str], aws: str, tmp_path: Path) -> None:
    target = tmp_path / "creds"
    env = {
        **os.environ,
        "PARAMETER_ROLE": ROLE,
        "PARAMETER_SCRIPT_WRITE": "true",
        "PARAMETER_SCRIPT_FORMAT": "credential_file",
        "PARAMETER_SCRIPT_PATH": str(target),
    }
    done = subprocess.run(
        [sys.executable, "-m", "idp", "aws", "credentials"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_text().startswith("[default]\naws_access_key_id=")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "line",
    [
        "params: {'WebIdentityToken': 'opaque-token-value', 'RoleArn': 'x'}",
        "<SecretAccessKey>abc/def+ghi</SecretAccessKey>",
        "<SessionToken>FwoGZXIvYXdzE</SessionToken>",
        "aws_secret_access_key=abc/def+ghi",
        "x-amz-security-token:FwoGZXIvYXdzE",
        "key ASIAABCDEFGHIJKLMNOP in a header",
        "a token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl inline",
    ],
)
def test_masker_patterns_catch_secrets_not_yet_known(line: str) -> None:
    masked = credentials.Masker().mask(line)
    for secret in (
        "opaque-token-value",
        "abc/def+ghi",
        "FwoGZXIvYXdzE",
        "ASIAABCDEFGHIJKLMNOP",
        "c2lnbmF0dXJl",
    ):
        assert secret not in masked


def test_known_secrets_are_masked_anywhere() -> None:
    masker = credentials.Masker()
    masker.add("plain-secret-value")
    assert masker.mask("see plain-secret-value here") == "see **** here"


def test_credentials_joins_the_aws_group(capsys: pytest.CaptureFixture[str]) -> None:
    from idp.cli import cli

    aws = cli.commands["aws"]
    assert "credentials" in aws.commands  # type: ignore[attr-defined]
    code, out, _ = run(["aws", "credentials", "--help"], capsys)
    assert code == 0 and "--role-duration-seconds" in out and "PARAMETER_ROLE" in out
