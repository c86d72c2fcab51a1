"""Fixtures for the AWS commands: a real moto server process-thread, and a clean environment.

`moto_server` is session-scoped and yields the endpoint URL, so any suite that talks to AWS
(the runner's `idp aws credentials` too) shares one server; `aws_env` points boto3 at it with
fake credentials for one test and empties the fake account afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import free_port

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")


def _teach_moto_add_client_id() -> None:
    """moto 5.2 lacks AddClientIDToOpenIDConnectProvider, which AWS has (and documents as
    idempotent); add it to the fake so `idp aws register` can be tested against a server.
    Skipped as soon as moto ships its own."""
    from moto.core.responses import EmptyResult
    from moto.iam.models import IAMBackend
    from moto.iam.responses import IamResponse

    if hasattr(IamResponse, "add_client_id_to_open_id_connect_provider"):
        return

    def backend_add(self: IAMBackend, arn: str, client_id: str) -> None:
        provider = self.get_open_id_connect_provider(arn)
        if client_id not in provider.client_id_list:
            provider.client_id_list.append(client_id)

    def response_add(self: IamResponse) -> EmptyResult:
        self.backend.add_client_id_to_open_id_connect_provider(  # type: ignore[attr-defined]
            self._get_param("OpenIDConnectProviderArn"), self._get_param("ClientID")
        )
        return EmptyResult()

    IAMBackend.add_client_id_to_open_id_connect_provider = backend_add  # type: ignore[attr-defined]
    IamResponse.add_client_id_to_open_id_connect_provider = response_add  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    _teach_moto_add_client_id()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


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
