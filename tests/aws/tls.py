"""Real TLS for the thumbprint tests: trustme PKIs, loopback HTTPS servers, a CONNECT proxy.

The servers are the standard library's `http.server` behind `ssl`; the chain each one sends is
exactly the PEM file it loads, so a test decides whether the root travels with it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.server
import json
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def sha1_of_pem(pem: bytes) -> str:
    """The thumbprint computed independently of the code under test: SHA-1 of the DER."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


@dataclass
class Pki:
    """root -> intermediate -> leaf, from trustme."""

    root: trustme.CA
    intermediate: trustme.CA
    leaf: trustme.LeafCert

    @classmethod
    def create(cls, *names: str) -> Pki:
        root = trustme.CA()
        intermediate = root.create_child_ca()
        return cls(root, intermediate, intermediate.issue_cert(*names))

    @property
    def root_pem(self) -> bytes:
        return self.root.cert_pem.bytes()

    @property
    def intermediate_pem(self) -> bytes:
        return self.intermediate.cert_pem.bytes()

    @property
    def root_thumbprint(self) -> str:
        return sha1_of_pem(self.root_pem)

    @property
    def intermediate_thumbprint(self) -> str:
        return sha1_of_pem(self.intermediate_pem)

    def server_pem(self, directory: Path, with_root: bool = False) -> Path:
        """Key, leaf and intermediate (and root): what the server loads and sends."""
        leaf_pem, intermediate_pem = (pem.bytes() for pem in self.leaf.cert_chain_pems)
        assert intermediate_pem == self.intermediate_pem
        parts = [self.leaf.private_key_pem.bytes(), leaf_pem, intermediate_pem]
        if with_root:
            parts.append(self.root_pem)
        path = directory / f"server-{id(self)}-{'root' if with_root else 'nor'}.pem"
        path.write_bytes(b"".join(parts))
        return path


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, bytes]:
    """A single self-signed certificate for `name`: (the server's PEM file, the cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / "self-signed.pem"
    path.write_bytes(key_pem + cert_pem)
    return path, cert_pem


def write_bundle(path: Path, *pems: bytes) -> Path:
    path.write_bytes(b"".join(pems))
    return path


@dataclass
class Route:
    body: bytes
    status: int = 200
    content_type: str = "application/json"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = 5  # a client that never sends its request cannot hold the server's shutdown

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            route = Route(b'{"error":"not_found"}', status=404)
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(route.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handlers: no socket outlives a test
    routes: dict[str, Route]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up after the handshake (as the chain reader does) are expected.
        pass


@dataclass
class HttpsServer:
    """An HTTPS (or, with certfile None, plain HTTP) server on a free loopback port."""

    certfile: Path | None
    routes: dict[str, Route] = field(default_factory=dict)
    _server: _HttpServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, host: str = "localhost", path: str = "/_services/token") -> str:
        scheme = "https" if self.certfile is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def serve_discovery(self, issuer: str, jwks_uri: str, path: str = "/_services/token") -> None:
        document = {"issuer": issuer, "jwks_uri": jwks_uri}
        self.routes[f"{path}/.well-known/openid-configuration"] = Route(
            json.dumps(document).encode()
        )
        self.routes[f"{path}/.well-known/jwks"] = Route(b'{"keys":[]}')

    def start(self) -> HttpsServer:
        server = _HttpServer(("127.0.0.1", 0), _Handler)
        server.routes = self.routes
        if self.certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certfile)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> HttpsServer:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        self.server.seen.append(f"{method} {target}")
        host, _, port = target.rpartition(":")
        destination = self.server.routes.get((host, int(port)))
        if method != "CONNECT" or destination is None:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with socket.create_connection(destination) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pipe(self.request, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], 5)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = False
    allow_reuse_address = True
    routes: dict[tuple[str, int], tuple[str, int]]
    seen: list[str]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy that tunnels only to the (host, port)s in `routes`."""

    routes: dict[tuple[str, int], tuple[str, int]]
    seen: list[str] = field(default_factory=list)
    _server: _ProxyServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ConnectProxy:
        server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        server.routes = self.routes
        server.seen = self.seen
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])
