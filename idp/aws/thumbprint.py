"""The certificate thumbprint AWS pins for an OIDC provider, by AWS's documented procedure.

AWS ("Obtain the thumbprint for an OpenID Connect identity provider") says: fetch
`<issuer>/.well-known/openid-configuration`, take the host of `jwks_uri`, open TLS to it, and
of the certificates the server sends take the last one (the top intermediate, or the root when
the server sends it); the thumbprint is the SHA-1 of its DER encoding as 40 hex characters.
When the issuer and `jwks_uri` live on different hosts, AWS wants both.

Python 3.11's `ssl` verifies a chain but does not show the certificates the server sent, so
the chain is read with pyOpenSSL. Verification (chain and host name) is done by the standard
library on its own connection, so it follows the same rules as every Python HTTPS client; the
pyOpenSSL connection only reads what the server sends, which is what AWS itself looks at.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import select
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from idp.aws.errors import ThumbprintError

DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DISCOVERY_BYTES = 1 << 20
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class TlsOptions:
    cafile: str | None = None  # a CA bundle to trust instead of the system's
    insecure: bool = False  # take the thumbprint even when the chain does not verify
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class EndpointThumbprint:
    role: str  # "jwks_uri" or "issuer": which URL of the discovery document lives here
    host: str
    port: int
    thumbprint: str
    subject: str  # of the certificate the thumbprint is taken from
    chain_length: int  # certificates the server sent

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ThumbprintResult:
    issuer: str | None  # as the discovery document states it
    jwks_uri: str
    endpoints: tuple[EndpointThumbprint, ...]  # the jwks_uri host first

    @property
    def thumbprints(self) -> tuple[str, ...]:
        """Distinct thumbprints, in the order AWS should get them."""
        return tuple(dict.fromkeys(e.thumbprint for e in self.endpoints))

    def to_json(self) -> str:
        document = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "thumbprints": list(self.thumbprints),
            "endpoints": [asdict(e) for e in self.endpoints],
        }
        return json.dumps(document, indent=2)

    def to_terraform(self) -> str:
        return "thumbprint_list = [" + ", ".join(f'"{t}"' for t in self.thumbprints) + "]"


def sha1_thumbprint(cert: x509.Certificate) -> str:
    # SHA-1 because that is what AWS pins; it identifies a certificate, it protects nothing here.
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303


def issuer_thumbprints(issuer_url: str, options: TlsOptions) -> ThumbprintResult:
    """Every thumbprint AWS needs for the issuer at `issuer_url`."""
    issuer_parts = _https_url(issuer_url, "the issuer URL")
    discovery = fetch_discovery(issuer_url, options)
    jwks_uri = discovery["jwks_uri"]
    jwks_parts = _https_url(jwks_uri, f"the discovery document's jwks_uri {jwks_uri!r}")

    endpoints = [_endpoint_thumbprint("jwks_uri", jwks_parts, options)]
    if _address(issuer_parts) != _address(jwks_parts):
        # The issuer's own TLS was verified when the discovery document was fetched.
        endpoints.append(_endpoint_thumbprint("issuer", issuer_parts, options, verified=True))
    issuer = discovery.get("issuer")
    return ThumbprintResult(
        issuer=issuer if isinstance(issuer, str) else None,
        jwks_uri=jwks_uri,
        endpoints=tuple(endpoints),
    )


# --- discovery -------------------------------------------------------------------------


def discovery_url(issuer_url: str) -> str:
    return issuer_url.rstrip("/") + DISCOVERY_PATH


def fetch_discovery(issuer_url: str, options: TlsOptions) -> dict[str, Any]:
    """The issuer's discovery document, checked for a usable `jwks_uri`."""
    parts = _https_url(issuer_url, "the issuer URL")
    url = discovery_url(issuer_url)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(  # noqa: S310 - the scheme was checked to be https
            request, timeout=options.timeout, context=_verifying_context(options)
        ) as response:
            body = response.read(MAX_DISCOVERY_BYTES + 1)
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ThumbprintError(
            f"{url} answered HTTP {exc.code}: check the issuer URL; it is IDP_ISSUER exactly "
            "(with the default layout it ends in /_services/token)"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, BaseException) else OSError(exc.reason)
        raise _connect_error(reason, parts.hostname or "", _port(parts), "discovery") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _connect_error(exc, parts.hostname or "", _port(parts), "discovery") from None

    try:
        document = json.loads(body) if len(body) <= MAX_DISCOVERY_BYTES else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        start = body[:60].decode("utf-8", "replace").strip()
        raise ThumbprintError(
            f"{url} is not a JSON discovery document (Content-Type {content_type or 'none'}, "
            f"starts {start!r}): check that the URL is the issuer (IDP_ISSUER), not a web page "
            "or a proxy's error page"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise ThumbprintError(
            f"the discovery document at {url} has no jwks_uri: check that the URL is the "
            "issuer (IDP_ISSUER) and not another service's"
        )
    return document


# --- TLS -------------------------------------------------------------------------------


def sent_chain(host: str, port: int, options: TlsOptions) -> list[x509.Certificate]:
    """The certificates the server at host:port sends, leaf first, exactly as sent."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    # Verification is the standard library's job (verify_endpoint); this connection only
    # looks at what the server sends, as AWS does.
    context.set_verify(SSL.VERIFY_NONE)
    deadline = time.monotonic() + options.timeout
    with _connection(host, port, options.timeout) as sock:
        connection = SSL.Connection(context, sock)
        if not _is_ip(host):
            connection.set_tlsext_host_name(_idna(host))  # SNI: pick the right virtual host
        connection.set_connect_state()
        try:
            _handshake(connection, sock, deadline)
        except (SSL.Error, OSError) as exc:
            raise _connect_error(exc, host, port, "jwks_uri") from None
        chain = connection.get_peer_cert_chain(as_cryptography=True)
    if not chain:
        raise ThumbprintError(
            f"{host}:{port} sent no certificate: configure a certificate on its TLS listener"
        )
    return chain


def verify_endpoint(host: str, port: int, options: TlsOptions) -> None:
    """Check host:port's chain and name the way any HTTPS client (and AWS) would."""
    context = _verifying_context(options)
    with _connection(host, port, options.timeout) as sock:
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except (ssl.SSLError, OSError) as exc:
            raise _connect_error(exc, host, port, "jwks_uri") from None


def _endpoint_thumbprint(
    role: str, parts: SplitResult, options: TlsOptions, verified: bool = False
) -> EndpointThumbprint:
    host, port = parts.hostname or "", _port(parts)
    if not verified and not options.insecure:
        verify_endpoint(host, port, options)
    chain = sent_chain(host, port, options)
    last = chain[-1]
    return EndpointThumbprint(
        role=role,
        host=host,
        port=port,
        thumbprint=sha1_thumbprint(last),
        subject=last.subject.rfc4514_string(),
        chain_length=len(chain),
    )


def _verifying_context(options: TlsOptions) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=options.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ThumbprintError(
            f"--cafile {options.cafile} cannot be loaded ({getattr(exc, 'strerror', None) or exc}"
            "): point it at a PEM file of CA certificates"
        ) from None
    if options.insecure:
        # --insecure: the operator asked for the thumbprint of an unverifiable chain.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _handshake(connection: SSL.Connection, sock: socket.socket, deadline: float) -> None:
    # The socket has a timeout, so OpenSSL sees it as non-blocking: wait for it ourselves.
    while True:
        try:
            connection.do_handshake()
            return
        except SSL.WantReadError:
            readable, writable = [sock], []
        except SSL.WantWriteError:
            readable, writable = [], [sock]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
            raise TimeoutError("timed out during the TLS handshake")


@contextlib.contextmanager
def _connection(host: str, port: int, timeout: float) -> Iterator[socket.socket]:
    """A TCP connection to host:port, through the HTTPS_PROXY when one applies."""
    proxy = _proxy_for(host)
    try:
        if proxy is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        else:
            sock = _tunnel(proxy, host, port, timeout)
    except OSError as exc:
        raise _connect_error(exc, host, port, "jwks_uri") from None
    try:
        yield sock
    finally:
        sock.close()


def _proxy_for(host: str) -> SplitResult | None:
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urlsplit(proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise ThumbprintError(
            f"HTTPS_PROXY={proxy!r} is not an http:// proxy URL: use http://HOST:PORT "
            "(the proxy tunnels TLS with CONNECT)"
        )
    return parts


def _quiet_proxy_for(host: str) -> SplitResult | None:
    try:
        return _proxy_for(host)
    except ThumbprintError:
        return None


def _tunnel(proxy: SplitResult, host: str, port: int, timeout: float) -> socket.socket:
    headers = {}
    if proxy.username is not None:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    connection = http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, timeout=timeout)
    connection.set_tunnel(host, port, headers)
    try:
        connection.connect()  # sends CONNECT and raises OSError unless the proxy answers 200
        sock = connection.sock
        connection.sock = None  # the socket is ours now: closing the connection must not close it
        return sock
    finally:
        connection.close()


def _connect_error(exc: BaseException, host: str, port: int, what: str) -> ThumbprintError:
    where = f"{host}:{port}"
    proxy = _quiet_proxy_for(host)
    if proxy is not None:
        proxy_address = f"{proxy.hostname}:{proxy.port or 80}"
        if "Tunnel connection failed" in str(exc):
            return ThumbprintError(
                f"the proxy {proxy_address} (HTTPS_PROXY) refused to tunnel to {where} ({exc}): "
                "check HTTPS_PROXY and its credentials, or add the host to NO_PROXY"
            )
        if isinstance(exc, socket.gaierror | ConnectionRefusedError):
            return ThumbprintError(
                f"cannot reach the proxy {proxy_address} (HTTPS_PROXY) to connect to {where} "
                f"({exc.strerror}): check HTTPS_PROXY, or add the host to NO_PROXY"
            )
    if isinstance(exc, socket.gaierror):
        return ThumbprintError(
            f"cannot resolve {host} (DNS: {exc.strerror}): check the host name in the URL, "
            "this machine's DNS, or set HTTPS_PROXY if only a proxy can reach it"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ThumbprintError(
            f"{where} refused the connection: check that the issuer is running and that the "
            "URL has the port its TLS listener uses"
        )
    if isinstance(exc, TimeoutError):
        return ThumbprintError(
            f"{where} did not answer in time: check firewalls and HTTPS_PROXY/NO_PROXY, or "
            "raise --timeout"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ThumbprintError(
            f"the TLS certificate of {where} does not verify ({exc.verify_message}): pass the "
            "private CA's bundle with --cafile, or --insecure to take the thumbprint anyway"
        )
    if isinstance(exc, ssl.SSLError | SSL.Error):
        return ThumbprintError(
            f"the TLS handshake with {where} failed ({_ssl_reason(exc)}): check that this "
            "port serves HTTPS (not plain HTTP) with a certificate, and that the URL is right"
        )
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return ThumbprintError(
            f"{where} closed the connection during the {what} request ({exc!r}): check that "
            "this port serves HTTPS and that the URL is right"
        )
    return ThumbprintError(f"cannot connect to {where} ({exc}): check the URL and the network")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [entry[-1] for entry in exc.args[0] if entry]
        if reasons:
            return ", ".join(str(r) for r in reasons)
    if isinstance(exc, SSL.SysCallError):
        return "the server closed the connection"
    return str(exc) or type(exc).__name__


# --- URLs ------------------------------------------------------------------------------


def _https_url(url: str, what: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ThumbprintError(
            f"{what} {url!r} is not https: AWS only talks to OIDC providers over https; give "
            "the https URL the issuer is published at (IDP_ISSUER)"
        )
    if not parts.hostname:
        raise ThumbprintError(
            f"{what} {url!r} has no host: give a URL such as https://ci.example.com/_services/token"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ThumbprintError(f"{what} {url!r} has a malformed port") from None
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or 443


def _address(parts: SplitResult) -> tuple[str, int]:
    return ((parts.hostname or "").lower(), _port(parts))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _idna(host: str) -> bytes:
    try:
        return host.encode("idna")
    except UnicodeError:
        return host.encode("ascii", "replace")
