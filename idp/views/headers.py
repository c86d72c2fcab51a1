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
    # Views that may be cached say so (discovery, JWKS, the OpenAPI document); anything else,
    # tokens and errors above all, must not be kept by any cache.
    headers["Cache-Control"] = "no-store"
    wanted = [(name.lower(), name, value) for name, value in headers.items()]

    @app.after_request
    def secure(response: Response) -> Response:
        # One pass over what the view set (werkzeug's setdefault rescans the list per call,
        # which on JWKS cost more than the view itself).
        present = {name.lower() for name in response.headers.keys()}  # noqa: SIM118
        for key, name, value in wanted:
            if key not in present:
                response.headers.add(name, value)
        return response
