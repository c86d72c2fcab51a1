"""Rate limits, with flask-limiter, shared by every replica through the issuer's Redis.

Three budgets (README "Security"), each a `limits` string or off:
- `IDP_RATE_LIMIT_CI`     per CI secret, on `POST /request-tokens` and `DELETE /builds/<id>`;
- `IDP_RATE_LIMIT_STEP`   per request token, on both exchanges (GitHub's and Vela's route);
- `IDP_RATE_LIMIT_CLIENT` per client address, on everything else.

A request that does not present a valid credential is counted against its client address
instead, so guessing secrets or spraying forged tokens is bounded per address, and a wrong
credential never gets a fresh bucket of its own.

Discovery, JWKS and the OpenAPI document are limited per address by each worker in memory, not
in Redis: they are served from memory at framework speed, a shared counter would cost more than
the answer, and AWS must always be able to fetch them (see bench/README.md).

Counters use the sliding-window-counter strategy: one Redis script call per request, no burst
of twice the limit at a window edge. If Redis is unreachable, each worker falls back to its own
in-memory counters until Redis answers again: limits stay on, per worker, rather than failing
open or refusing every token while the key ring itself keeps serving. Without Redis (the
embedded file store) every worker counts in its own memory: a budget then holds per worker.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from typing import TypeVar, cast

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit

from idp.config import Settings
from idp.errors import IdpError
from idp.observability import metrics

F = TypeVar("F", bound=Callable[..., Response])

# Redis keys of the counters, beside the rest of the issuer's keys.
KEY_PREFIX = "idp:limits"
# One script call per request, and no burst of twice the limit at a window's edge.
STRATEGY = "sliding-window-counter"


def client_address() -> str:
    # request.remote_addr is the peer, or the client named by X-Forwarded-For when
    # IDP_TRUSTED_PROXIES tells how many proxies to believe (werkzeug's ProxyFix).
    return f"addr:{request.remote_addr or 'unknown'}"


def _bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _ci_identity(settings: Settings) -> tuple[str, str]:
    """(counter key, budget) for a call to the CI server's API.

    Each configured secret has its own budget, named by a digest (never the secret itself,
    which would then sit in Redis key names). A wrong or missing secret is counted against
    the client address with the per-address budget, so guessing is bounded per address.
    """
    cached: tuple[str, str] | None = g.get("idp_limit_ci")
    if cached is None:
        presented = (_bearer() or "").encode()
        found = None
        for secret in settings.ci_secrets:  # every one, in constant time
            if hmac.compare_digest(presented, secret.encode()):
                found = hashlib.sha256(secret.encode()).hexdigest()[:16]
        assert settings.rate_limit_ci is not None
        if found:
            cached = (f"ci:{found}", settings.rate_limit_ci)
        else:
            cached = (client_address(), settings.rate_limit_client or settings.rate_limit_ci)
        g.idp_limit_ci = cached
    return cached


def _step_identity(settings: Settings) -> tuple[str, str]:
    """(counter key, budget) for a token exchange.

    A request token that verifies is its own budget, keyed by its jti; the opened token is
    kept for the view, which then does not verify it twice. One that does not verify is
    refused by the view anyway, and counts against the client address.
    """
    cached: tuple[str, str] | None = g.get("idp_limit_step")
    if cached is None:
        from idp.tokens import request_tokens
        from idp.views import keyring

        assert settings.rate_limit_step is not None
        cached = (client_address(), settings.rate_limit_client or settings.rate_limit_step)
        token = _bearer()
        if token is not None:
            try:
                opened = request_tokens.verify(
                    token, keyring().request_key, settings.issuer, int(time.time())
                )
            except IdpError:
                pass
            else:
                g.idp_request_token = opened
                cached = (f"step:{opened.jti}", settings.rate_limit_step)
        g.idp_limit_step = cached
    return cached


def _too_many(limit: RequestLimit) -> Response:
    from idp.views.errors import error_response

    # reset_at is rounded up to a whole second past the window; never ask for longer than
    # the window itself.
    window = limit.limit.get_expiry()
    retry_after = min(window, max(1, math.ceil(limit.reset_at - time.time())))
    metrics().rate_limited.labels(_scope_label(limit)).inc()
    response = error_response(
        "rate_limited",
        f"too many requests: this issuer allows {limit.limit}; retry after {retry_after} s, "
        "or ask its operator to raise IDP_RATE_LIMIT_*",
        429,
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def _scope_label(limit: RequestLimit) -> str:
    # RequestLimit.key is "<prefix>/<key>/<scope>/..."; the key says which budget it was.
    text = str(limit.key)
    for scope in ("ci", "step", "addr"):
        if f"/{scope}:" in text or text.startswith(f"{scope}:"):
            return {"addr": "client"}.get(scope, scope)
    return "client"


def _storage_uri(redis_url: str) -> str:
    # limits spells a Unix socket URL redis+unix://; the rest it takes as redis-py does.
    return (
        "redis+unix://" + redis_url[len("unix://") :]
        if redis_url.startswith("unix://")
        else redis_url
    )


class RateLimits:
    """The issuer's limits; views decorate their routes with `ci`, `step` and `document`."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        defaults = [settings.rate_limit_client] if settings.rate_limit_client else []
        if settings.redis_url:
            storage_uri = _storage_uri(settings.redis_url)
            # The request path gives up on a slow Redis fast and counts in memory meanwhile.
            options: dict[str, str | int] = {
                "socket_timeout": 1,
                "socket_connect_timeout": 1,
                "key_prefix": KEY_PREFIX,
            }
        else:
            storage_uri, options = "memory://", {}
        self.shared = Limiter(
            client_address,
            app=app,
            default_limits=list(defaults),
            storage_uri=storage_uri,
            storage_options=options,
            in_memory_fallback_enabled=bool(settings.redis_url),
            headers_enabled=False,  # X-RateLimit-* headers would cost a Redis call each
            strategy=STRATEGY,
            on_breach=_too_many,
        )
        self.local = Limiter(
            client_address,
            app=app,
            storage_uri="memory://",
            headers_enabled=False,
            strategy=STRATEGY,
            on_breach=_too_many,
        )

    def ci(self, view: F) -> F:
        """Per CI secret (per address for a wrong one)."""
        settings = self.settings
        if settings.rate_limit_ci is None:
            return view
        limited = self.shared.shared_limit(
            lambda: _ci_identity(settings)[1],
            scope="ci",
            key_func=lambda: _ci_identity(settings)[0],
        )
        return limited(view)  # type: ignore[return-value]

    def step(self, view: F) -> F:
        """Per request token (per address for one that does not verify); one budget for both
        exchange routes."""
        settings = self.settings
        if settings.rate_limit_step is None:
            return view
        limited = self.shared.shared_limit(
            lambda: _step_identity(settings)[1],
            scope="step",
            key_func=lambda: _step_identity(settings)[0],
        )
        return limited(view)  # type: ignore[return-value]

    def document(self, view: F) -> F:
        """Public documents: per address, per worker, in memory; never a Redis call."""
        exempted = cast(F, self.shared.exempt(view))
        budget = self.settings.rate_limit_client
        if budget is None:
            return exempted
        return self.local.limit(budget)(exempted)  # type: ignore[return-value]


def init_app(app: Flask, settings: Settings) -> RateLimits:
    limits = RateLimits(app, settings)
    app.extensions["idp.ratelimits"] = limits
    return limits


def rate_limits() -> RateLimits:
    value = current_app.extensions["idp.ratelimits"]
    assert isinstance(value, RateLimits)
    return value
