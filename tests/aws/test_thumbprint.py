"""`idp thumbprint` against real loopback HTTPS servers with trustme chains.

Expected thumbprints are computed here from the PEM files (SHA-1 of the DER), independently of
the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aws.tls import (
    ConnectProxy,
    HttpsServer,
    Pki,
    Route,
    self_signed,
    sha1_of_pem,
    silent_port,
    write_bundle,
)
from tests.support import ROOT, free_port
from tests.support import run_cli as run

ISSUER_PATH = "/_services/token"


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert err.startswith("idp: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("localhost", "idp.example.test")


@pytest.fixture(scope="module")
def other_pki() -> Pki:
    return Pki.create("127.0.0.1")


@pytest.fixture
def ca_bundle(tmp_path: Path, pki: Pki) -> str:
    return str(write_bundle(tmp_path / "ca.pem", pki.root_pem))


def issuer_server(certfile: Path | None) -> HttpsServer:
    """A server whose discovery document points jwks_uri at itself."""
    server = HttpsServer(certfile).start()
    issuer = server.url()
    server.serve_discovery(issuer, f"{issuer}/.well-known/jwks")
    return server


@pytest.fixture
def chain_server(tmp_path: Path, pki: Pki) -> Iterator[HttpsServer]:
    """Sends leaf + intermediate, as most servers do."""
    server = issuer_server(pki.server_pem(tmp_path))
    yield server
    server.stop()


# --- which certificate -----------------------------------------------------------------


def test_leaf_and_intermediate_gives_the_intermediate(
    capsys: pytest.CaptureFixture[str], pki: Pki, chain_server: HttpsServer, ca_bundle: str
) -> None:
    code, out, err = run(capsys, "thumbprint", chain_server.url(), "--cafile", ca_bundle)
    assert code == 0, err
    assert out == pki.intermediate_thumbprint + "\n"
    assert len(pki.intermediate_thumbprint) == 40
    assert "sent 2 certificate(s)" in err


def test_chain_with_the_root_gives_the_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki, ca_bundle: str
) -> None:
    with issuer_server(pki.server_pem(tmp_path, with_root=True)) as server:
        code, out, err = run(capsys, "thumbprint", server.url(), "--cafile", ca_bundle)
    assert code == 0, err
    assert out == pki.root_thumbprint + "\n"
    assert "sent 3 certificate(s)" in err


def test_jwks_on_another_host_prints_both(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki, other_pki: Pki
) -> None:
    bundle = write_bundle(tmp_path / "both.pem", pki.root_pem, other_pki.root_pem)
    jwks_pem = other_pki.server_pem(tmp_path, with_root=True)
    with HttpsServer(pki.server_pem(tmp_path)) as issuer, HttpsServer(jwks_pem) as jwks:
        jwks_uri = jwks.url(host="127.0.0.1", path="/keys")
        jwks.routes["/keys"] = Route(b'{"keys":[]}')
        issuer.serve_discovery(issuer.url(), jwks_uri)

        code, out, err = run(capsys, "thumbprint", issuer.url(), "--cafile", str(bundle))
        assert code == 0, err
        # The jwks_uri host first (AWS's procedure), then the issuer host.
        assert out.splitlines() == [other_pki.root_thumbprint, pki.intermediate_thumbprint]

        code, out, err = run(
            capsys, "thumbprint", issuer.url(), "--cafile", str(bundle), "--format", "json"
        )
        assert code == 0, err
        document = json.loads(out)
        assert document["jwks_uri"] == jwks_uri
        assert [(e["role"], e["port"], e["thumbprint"]) for e in document["endpoints"]] == [
            ("jwks_uri", jwks.port, other_pki.root_thumbprint),
            ("issuer", issuer.port, pki.intermediate_thumbprint),
        ]

        code, out, err = run(
            capsys, "thumbprint", issuer.url(), "--cafile", str(bundle), "--format", "terraform"
        )
        assert code == 0, err
        assert out == (
            f'thumbprint_list = ["{other_pki.root_thumbprint}", "{pki.intermediate_thumbprint}"]\n'
        )


def test_terraform_format(
    capsys: pytest.CaptureFixture[str], pki: Pki, chain_server: HttpsServer, ca_bundle: str
) -> None:
    code, out, err = run(
        capsys, "thumbprint", chain_server.url(), "--cafile", ca_bundle, "--format", "terraform"
    )
    assert code == 0, err
    assert out == f'thumbprint_list = ["{pki.intermediate_thumbprint}"]\n'


def test_self_signed_certificate_gives_its_own_thumbprint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server_pem, cert_pem = self_signed(tmp_path)
    bundle = write_bundle(tmp_path / "self.pem", cert_pem)
    with issuer_server(server_pem) as server:
        code, out, err = run(capsys, "thumbprint", server.url(), "--cafile", str(bundle))
        assert code == 0, err
        assert out == sha1_of_pem(cert_pem) + "\n"

        code, out, err = run(capsys, "thumbprint", server.url(), "--insecure")
        assert code == 0, err
        assert out == sha1_of_pem(cert_pem) + "\n"
        assert "--insecure" in err


# --- verification ----------------------------------------------------------------------


def test_a_chain_that_does_not_verify_is_refused_unless_insecure(
    capsys: pytest.CaptureFixture[str],
    pki: Pki,
    chain_server: HttpsServer,
    other_pki: Pki,
    tmp_path: Path,
) -> None:
    wrong_ca = write_bundle(tmp_path / "wrong.pem", other_pki.root_pem)
    code, _, err = run(capsys, "thumbprint", chain_server.url(), "--cafile", str(wrong_ca))
    assert_one_line_error(code, err, "does not verify", "--cafile", "--insecure")

    code, out, err = run(capsys, "thumbprint", chain_server.url(), "--insecure")
    assert code == 0, err
    assert out == pki.intermediate_thumbprint + "\n"


def test_the_system_store_does_not_trust_a_private_ca(
    capsys: pytest.CaptureFixture[str], chain_server: HttpsServer
) -> None:
    code, _, err = run(capsys, "thumbprint", chain_server.url())
    assert_one_line_error(code, err, "does not verify", "--cafile")


def test_a_certificate_for_another_name_is_refused(
    capsys: pytest.CaptureFixture[str], chain_server: HttpsServer, ca_bundle: str
) -> None:
    # The leaf names localhost, not 127.0.0.1.
    url = chain_server.url(host="127.0.0.1")
    code, _, err = run(capsys, "thumbprint", url, "--cafile", ca_bundle)
    assert_one_line_error(code, err, "does not verify", "127.0.0.1")


def test_the_jwks_host_is_verified_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki, other_pki: Pki, ca_bundle: str
) -> None:
    with (
        HttpsServer(pki.server_pem(tmp_path)) as issuer,
        HttpsServer(other_pki.server_pem(tmp_path)) as jwks,
    ):
        issuer.serve_discovery(issuer.url(), jwks.url(host="127.0.0.1"))
        # ca_bundle trusts only the issuer's CA.
        code, _, err = run(capsys, "thumbprint", issuer.url(), "--cafile", ca_bundle)
        assert_one_line_error(code, err, "does not verify", f"127.0.0.1:{jwks.port}")


# --- errors ----------------------------------------------------------------------------


def test_not_https(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "thumbprint", "http://ci.example.com/_services/token")
    assert_one_line_error(code, err, "is not https", "IDP_ISSUER")


def test_dns_failure(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "thumbprint", "https://idp.invalid/_services/token")
    assert_one_line_error(code, err, "cannot resolve idp.invalid", "DNS")


def test_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, _, err = run(capsys, "thumbprint", f"https://127.0.0.1:{port}/_services/token")
    assert_one_line_error(code, err, f"127.0.0.1:{port} refused the connection", "port")


def test_handshake_failure_on_plain_http(capsys: pytest.CaptureFixture[str]) -> None:
    with issuer_server(None) as server:
        url = server.url().replace("http://", "https://")
        code, _, err = run(capsys, "thumbprint", url)
    assert_one_line_error(code, err, "TLS handshake", "serves HTTPS")


@pytest.mark.parametrize("insecure", [False, True], ids=["verified", "insecure"])
def test_handshake_failure_on_the_jwks_host(
    capsys: pytest.CaptureFixture[str], chain_server: HttpsServer, ca_bundle: str, insecure: bool
) -> None:
    with issuer_server(None) as plain:
        port = plain.port
        jwks_uri = plain.url().replace("http://", "https://") + "/.well-known/jwks"
        chain_server.serve_discovery(chain_server.url(), jwks_uri)
        args = ["thumbprint", chain_server.url(), "--cafile", ca_bundle]
        code, _, err = run(capsys, *args, *(["--insecure"] if insecure else []))
    assert_one_line_error(code, err, "TLS handshake", f"localhost:{port}")


def test_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with silent_port() as port:
        url = f"https://127.0.0.1:{port}/_services/token"
        code, _, err = run(capsys, "thumbprint", url, "--timeout", "0.3")
    assert_one_line_error(code, err, "did not answer in time", "--timeout")


@pytest.mark.parametrize(
    ("route", "fragments"),
    [
        (
            Route(b"<html>hello</html>", content_type="text/html"),
            ["not a JSON discovery", "text/html"],
        ),
        (Route(b"[1, 2]"), ["not a JSON discovery"]),
        (Route(b'{"issuer": "https://x"}'), ["has no jwks_uri"]),
        (Route(b'{"jwks_uri": "http://localhost/keys"}'), ["jwks_uri", "is not https"]),
        (Route(b"{}", status=404), ["answered HTTP 404", "/_services/token"]),
        (Route(b"oops", status=500, content_type="text/plain"), ["answered HTTP 500"]),
    ],
    ids=["html", "not-an-object", "no-jwks-uri", "http-jwks-uri", "404", "500"],
)
def test_bad_discovery_documents(
    capsys: pytest.CaptureFixture[str],
    chain_server: HttpsServer,
    ca_bundle: str,
    route: Route,
    fragments: list[str],
) -> None:
    chain_server.routes[f"{ISSUER_PATH}/.well-known/openid-configuration"] = route
    code, _, err = run(capsys, "thumbprint", chain_server.url(), "--cafile", ca_bundle)
    assert_one_line_error(code, err, *fragments)


def test_missing_cafile_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "thumbprint", "https://ci.example.com", "--cafile", "/nonexistent")
    assert code == 2
    assert err.startswith("idp: error: ") and err.count("\n") == 1


# --- proxies ---------------------------------------------------------------------------


def test_https_proxy_is_honoured(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pki: Pki,
    tmp_path: Path,
    ca_bundle: str,
) -> None:
    # idp.example.test resolves nowhere: only the proxy can reach it.
    with (
        HttpsServer(pki.server_pem(tmp_path)) as server,
        ConnectProxy({("idp.example.test", 443): ("127.0.0.1", server.port)}) as proxy,
    ):
        issuer = f"https://idp.example.test{ISSUER_PATH}"
        server.serve_discovery(issuer, f"{issuer}/.well-known/jwks")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        code, out, err = run(capsys, "thumbprint", issuer, "--cafile", ca_bundle)
    assert code == 0, err
    assert out == pki.intermediate_thumbprint + "\n"
    # discovery, the verifying handshake and the chain reader all went through the proxy
    assert proxy.seen == ["CONNECT idp.example.test:443"] * 3


def test_no_proxy_bypasses_the_proxy(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pki: Pki,
    chain_server: HttpsServer,
    ca_bundle: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "localhost")
    code, out, err = run(capsys, "thumbprint", chain_server.url(), "--cafile", ca_bundle)
    assert code == 0, err
    assert out == pki.intermediate_thumbprint + "\n"


def test_a_proxy_that_refuses_the_tunnel(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ca_bundle: str
) -> None:
    with ConnectProxy({}) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        code, _, err = run(
            capsys, "thumbprint", f"https://idp.example.test{ISSUER_PATH}", "--cafile", ca_bundle
        )
    assert_one_line_error(code, err, "refused to tunnel", "403", "NO_PROXY")


def test_an_unreachable_proxy(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, ca_bundle: str
) -> None:
    port = free_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    code, _, err = run(
        capsys, "thumbprint", f"https://idp.example.test{ISSUER_PATH}", "--cafile", ca_bundle
    )
    assert_one_line_error(code, err, f"cannot reach the proxy 127.0.0.1:{port}", "HTTPS_PROXY")


# --- the real program ------------------------------------------------------------------


def test_through_the_real_program(pki: Pki, chain_server: HttpsServer, ca_bundle: str) -> None:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    ok = subprocess.run(
        [sys.executable, "-m", "idp", "thumbprint", chain_server.url(), "--cafile", ca_bundle],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == pki.intermediate_thumbprint + "\n"

    failed = subprocess.run(
        [sys.executable, "-m", "idp", "thumbprint", "http://ci.example.com/_services/token"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("idp: error: ") and failed.stderr.count("\n") == 1
    assert failed.stdout == ""
