"""Fixtures shared by every test: settings, the app in-process, a private Redis, a live issuer,
one moto server for AWS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from idp.app import create_app
from idp.config import Settings, load_settings
from tests.support import CI_SECRET, IssuerProcess, RedisServer, free_port


@pytest.fixture
def make_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings as the environment would give them: make_settings(IDP_TOKEN_TTL="60")."""

    def make(**env: str) -> Settings:
        base = {"IDP_KEYS_DIR": str(tmp_path / "keys"), "IDP_CI_SECRET": CI_SECRET}
        return load_settings({**base, **env})

    return make


@pytest.fixture
def settings(make_settings) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings, start_refresh=False)
    app.config["TESTING"] = True
    yield app
    app.extensions["idp.keyring"].stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server per test session, on a free port (never the machine's 6379)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, emptied for this test (it is ours alone, so flushing it is safe)."""
    if redis_server.proc is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="module")
def module_redis_url(redis_server: RedisServer) -> str:
    """The private Redis, emptied for a module whose issuer lives as long as the module."""
    if redis_server.proc is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


# --- AWS: one moto server for every suite that talks to AWS ----------------------------------


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
def live_issuer(tmp_path: Path) -> Iterator[IssuerProcess]:
    """`idp serve` on a free loopback port with the file store in a fresh folder."""
    with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path / "live-keys")}) as proc:
        yield proc
