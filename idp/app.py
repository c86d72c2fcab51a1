"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from idp.config import Settings, load_settings
from idp.keys.keyring import KeyRing
from idp.store import Store, create_store

log = logging.getLogger(__name__)

# Request bodies are small JSON build contexts; anything larger is refused before parsing.
MAX_BODY = 64 * 1024


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    start_refresh: bool = True,
) -> Flask:
    """Build the issuer. Settings come from the environment unless given (tests give them)."""
    settings = settings or load_settings()
    store = store or create_store(settings)

    # No static folder: the issuer serves JSON only, and Flask would add a /static route.
    app = Flask(__name__, static_folder=None)
    # No redirects, ever: werkzeug answers `//x` (merge_slashes) and a missing trailing slash
    # (strict_slashes, on rules ending in '/') with a 308 whose Location is built from the
    # client's Host header, as an HTML page that bypasses the JSON error handlers. Set before
    # any rule is added, since each rule takes the map's settings when it is bound. Such paths
    # are a JSON 404 instead.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = True
    app.url_map.redirect_defaults = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    # No automatic OPTIONS answers (an empty text/html 200): the issuer serves no browser and
    # sends no CORS headers, so OPTIONS is a JSON 405 naming the methods, like any other.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["IDP_SETTINGS"] = settings

    keyring = KeyRing(settings, store)
    # Load (and on an empty store, create) the ring now: a wrong encryption key stops the
    # start here, with its message, instead of surfacing as errors on every request.
    keyring.refresh()
    if start_refresh:
        keyring.start()
    app.extensions["idp.keyring"] = keyring
    app.extensions["idp.store"] = store

    from idp import ratelimit
    from idp.views import errors, headers, health, oidc, openapi, tokens

    ratelimit.init_app(app, settings, store)
    errors.init_app(app)
    # oidc puts its WSGI layer for the public documents right on Flask's callable...
    oidc.init_app(app, settings)
    tokens.init_app(app, settings)
    health.init_app(app, settings)
    openapi.init_app(app, settings)

    # ...and these wrap everything, that layer included, in this order.
    if settings.trusted_proxies:
        # Believe X-Forwarded-For only as far as the operator's own proxies append to it:
        # the client address keys rate limits and goes into the audit log. Nothing else is
        # taken from forwarded headers (every URL the issuer writes comes from IDP_ISSUER).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0, x_host=0
        )
    headers.init_app(app, settings)
    return app
