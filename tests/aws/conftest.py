"""Fixtures for the AWS commands: boto3 pointed at the session's moto server
(`moto_server`, tests/conftest.py) with fake credentials for one test, the fake account emptied
afterwards, and a clean environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """boto3 pointed at the moto server with fake credentials; the account is reset after."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # Never read the machine's ~/.aws.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield moto_server
    requests.post(f"{moto_server}/moto-api/reset", timeout=10).close()


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's proxy settings must not route the tests' loopback connections."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_issuer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment without IDP_* settings, as on an operator's laptop."""
    import os

    for name in list(os.environ):
        if name.startswith("IDP_"):
            monkeypatch.delenv(name)
