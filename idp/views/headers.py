"""Headers every response carries, whatever answered it (a view, an error, the rate limiter).

The issuer serves JSON to machines, never a page: nothing it returns should be rendered, framed,
sniffed into another type, or cached unless the view says so (discovery and JWKS do).
"""

from __future__ import annotations

from flask import Flask, Response

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


def init_app(app: Flask, settings: Settings) -> None:
    headers = dict(SECURITY_HEADERS)
    if settings.issuer.startswith("https://"):
        headers["Strict-Transport-Security"] = HSTS

    @app.after_request
    def secure(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        # Views that may be cached say so (discovery, JWKS, the OpenAPI document); anything
        # else, tokens and errors above all, must not be kept by any cache.
        response.headers.setdefault("Cache-Control", "no-store")
        return response
