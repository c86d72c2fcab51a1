"""Real parts for the runner's commands: an issuer process, moto for STS, a step's env.

The step environment comes from the issuer's own `POST /request-tokens` answer, exactly what a
CI server injects; STS is the session's moto server (tests/conftest.py), reached over HTTP by boto3.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from idp.runner import client, credentials
from tests.support import CI_SECRET, IssuerProcess
from tests.unit.test_claims import CONTEXT

REQUEST_VARIABLES = (
    "VELA_ID_TOKEN_REQUEST_URL",
    "VELA_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
)
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def clean_step_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No request variables, plugin parameters or proxies from the machine; no real folders."""
    import os

    for name in list(os.environ):
        if name.startswith(("PARAMETER_", "AWS_CREDENTIALS_")) or name in REQUEST_VARIABLES:
            monkeypatch.delenv(name)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # Never read /vela on this machine.
    monkeypatch.setenv("IDP_PARAMETER_DIRS", f"{tmp_path / 'parameters'}:{tmp_path / 'secrets'}")
    # Retries without waiting: the count of attempts is what the tests check.
    monkeypatch.setattr(client, "BACKOFF_BASE", 0.0)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    keys = tmp_path_factory.mktemp("runner-keys")
    with IssuerProcess({"IDP_KEYS_DIR": str(keys), "IDP_AWS_SESSION_TAGS": "repo,image"}) as proc:
        yield proc


def open_request_token(issuer: IssuerProcess, **overrides: Any) -> dict[str, str]:
    response = requests.post(
        f"{issuer.issuer}/request-tokens",
        json={**CONTEXT, **overrides},
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    env: dict[str, str] = response.json()["env"]
    return env


@pytest.fixture
def step_env(issuer: IssuerProcess, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A step with `id_request: yes`: the four variables the CI server injects."""
    env = open_request_token(issuer)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """boto3 pointed at moto; the step itself holds no AWS credentials (the call is unsigned)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The serialized body of every AssumeRoleWithWebIdentity call: what went over the wire."""
    calls: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params["body"]))

    monkeypatch.setattr(
        credentials, "EVENT_HOOKS", [("before-call.sts.AssumeRoleWithWebIdentity", capture)]
    )
    return calls
