"""Headers every response carries, whatever answered it (a view, an error, the rate limiter).

The issuer serves JSON to machines, never a page: nothing it returns should be rendered, framed,
sniffed into another type, or cached unless the view says so (discovery, JWKS and the OpenAPI
document do).

They are added at the WSGI edge, to the header list the response is about to send, instead of
through Flask's `Headers`: werkzeug validates every header it is given, and seven of them per
request cost more than the JWKS view itself (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from idp.config import Settings

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "cross-origin",
}

# Two years, as browsers' preload lists ask; only meaningful (and only sent) over https.
HSTS = "max-age=63072000; includeSubDomains"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SecureHeaders:
    """WSGI middleware: adds each header the response does not set itself."""

    def __init__(self, app: WSGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(name.lower(), name, value) for name, value in headers.items()]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            headers.extend((name, value) for key, name, value in self.headers if key not in present)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def init_app(app: Flask, settings: Settings) -> None:
    headers = dict(SECURITY_HEADERS)
    if settings.issuer.startswith("https://"):
        headers["Strict-Transport-Security"] = HSTS
    # Views that may be cached say so (discovery, JWKS, the OpenAPI document); anything else,
    # tokens and errors above all, must not be kept by any cache.
    headers["Cache-Control"] = "no-store"
    app.wsgi_app = SecureHeaders(app.wsgi_app, headers)  # type: ignore[method-assign]
