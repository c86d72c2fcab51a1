"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask

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

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["IDP_SETTINGS"] = settings

    keyring = KeyRing(settings, store)
    # Load (and on an empty store, create) the ring now: a wrong encryption key stops the
    # start here, with its message, instead of surfacing as errors on every request.
    keyring.refresh()
    if start_refresh:
        keyring.start()
    app.extensions["idp.keyring"] = keyring
    app.extensions["idp.store"] = store

    from idp.views import errors, health, oidc, tokens

    errors.init_app(app)
    oidc.init_app(app, settings)
    tokens.init_app(app, settings)
    health.init_app(app, settings)
    return app
