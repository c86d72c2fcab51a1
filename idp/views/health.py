"""Liveness and readiness for the platform."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from idp.config import Settings
from idp.observability import metrics as registry
from idp.observability import render_metrics
from idp.ratelimit import rate_limits
from idp.views import keyring


def init_app(app: Flask, settings: Settings) -> None:
    bp = Blueprint("health", __name__, url_prefix=settings.issuer_path or None)

    @bp.get("/healthz")
    def healthz() -> Response:
        rate_limits().client("healthz")
        # Alive means the process answers; readiness says whether it can do its job.
        return jsonify(status="ok")

    @bp.get("/readyz")
    def readyz() -> Response:
        rate_limits().client("readyz")
        ready, reason = keyring().readiness()
        response = jsonify(ready=ready, reason=reason)
        response.status_code = 200 if ready else 503
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/metrics")
    def metrics() -> Response:
        rate_limits().client("metrics")
        ring = keyring()
        status = ring.describe()
        published = [k for k in status if k["state"] != "gone"]
        registry().keys_published.set(len(published))
        current = [k for k in status if k["state"] == "current"]
        if current:
            registry().last_rotation.set(current[0]["sign_from"])
            registry().current_key_age.set(max(0.0, ring.clock() - current[0]["sign_from"]))
        body, content_type = render_metrics()
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    app.register_blueprint(bp)
