"""The command line as a newcomer meets it: a question gets an answer, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import ROOT, IssuerProcess, RedisServer, free_port, wait_for


def idp(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idp", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("idp: error: ") and result.stderr.count("\n") == 1, result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("group", [(), ("keys",), ("aws",), ("ci",)])
def test_a_group_alone_shows_its_help_and_succeeds(group: tuple[str, ...]) -> None:
    result = idp(*group)
    assert result.returncode == 0, result
    assert result.stdout.startswith("Usage: idp") and result.stderr == ""


def test_health_of_a_ready_issuer(live_issuer: IssuerProcess) -> None:
    result = idp("health", "--issuer", live_issuer.issuer)
    assert (result.returncode, result.stdout) == (0, "ready: ok\n"), result


def test_health_of_an_issuer_that_lost_its_store_says_why(
    redis_url: str, redis_server: RedisServer
) -> None:
    settings = {
        "IDP_REDIS_URL": redis_url,
        "IDP_KEY_ENCRYPTION_KEY": "cli-test-key-encryption-key-0123456789",
        "IDP_REFRESH_INTERVAL": "0.2",
        "IDP_READY_STALE_AFTER": "1",
    }
    with IssuerProcess(settings) as issuer:
        redis_server.stop()
        try:
            wait_for(lambda: idp("health", "--issuer", issuer.issuer).returncode == 1, timeout=10)
            result = idp("health", "--issuer", issuer.issuer)
            assert result.stdout.startswith("not ready: key store unreachable"), result
            assert str(redis_server.port) not in result.stdout  # no address in public text
        finally:
            redis_server.start()


def test_health_with_nothing_listening_is_one_line() -> None:
    one_line_error(
        idp("health", "--issuer", f"http://127.0.0.1:{free_port()}/_services/token"),
        "no answer",
        "idp serve",
    )


TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJyZXBvOm8vcjpyZWY6cmVmcy9oZWFkcy9tYWluIn0.c2ln"
)


def test_token_decode_prints_header_and_claims() -> None:
    result = idp("token", "--decode", "-", stdin=TOKEN + "\n")
    assert result.returncode == 0, result
    assert (
        '"kid": "k"' in result.stdout and '"sub": "repo:o/r:ref:refs/heads/main"' in result.stdout
    )


def test_token_decode_of_something_else_is_one_line() -> None:
    one_line_error(idp("token", "--decode", "-", stdin="not a token"), "not a JWT")


def test_rotate_prints_times_as_keys_list_does(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = idp("keys", "rotate", IDP_KEYS_DIR=str(tmp_path / "keys"))
    assert result.returncode == 0, result
    result = idp("keys", "rotate", IDP_KEYS_DIR=str(tmp_path / "keys"))
    assert result.returncode == 0, result
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result.stdout), result.stdout
    assert not re.search(r"\b1\d{9}\b", result.stdout), result.stdout


def test_a_port_in_use_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = idp("serve", "--port", port, IDP_KEYS_DIR=str(tmp_path / "keys"))
    one_line_error(result, f"port {port} on 127.0.0.1 is already in use", "--port")
