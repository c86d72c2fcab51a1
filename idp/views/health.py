"""Liveness and readiness for the platform."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from idp.config import Settings
from idp.views import keyring


def init_app(app: Flask, settings: Settings) -> None:
    bp = Blueprint("health", __name__, url_prefix=settings.issuer_path or None)

    @bp.get("/healthz")
    def healthz() -> Response:
        # Alive means the process answers; readiness says whether it can do its job.
        return jsonify(status="ok")

    @bp.get("/readyz")
    def readyz() -> Response:
        ready, reason = keyring().readiness()
        response = jsonify(ready=ready, reason=reason)
        response.status_code = 200 if ready else 503
        response.headers["Cache-Control"] = "no-store"
        return response

    app.register_blueprint(bp)
