"""HTTP views, one module per audience: relying parties (`oidc`), the CI server and steps
(`tokens`), the platform (`health`); `errors` turns exceptions into the JSON error shape."""

from __future__ import annotations

from flask import current_app

from idp.config import Settings
from idp.keys.keyring import KeyRing
from idp.store import Store


def settings() -> Settings:
    value = current_app.config["IDP_SETTINGS"]
    assert isinstance(value, Settings)
    return value


def keyring() -> KeyRing:
    value = current_app.extensions["idp.keyring"]
    assert isinstance(value, KeyRing)
    return value


def store() -> Store:
    value: Store = current_app.extensions["idp.store"]
    return value
