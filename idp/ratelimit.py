"""Rate limits, counted by the `limits` library in the issuer's Redis, shared by every replica.

Three budgets (README "Security"), each a `limits` string or off:
- `IDP_RATE_LIMIT_CI`     per CI secret, on `POST /request-tokens` and `DELETE /builds/<id>`;
- `IDP_RATE_LIMIT_STEP`   per request token, on both exchanges (GitHub's and Vela's route);
- `IDP_RATE_LIMIT_CLIENT` per client address, on everything else.

A request that does not present a valid credential is counted against its client address
instead, so guessing secrets or spraying forged tokens is bounded per address, and a wrong
credential never gets a fresh budget of its own.

The views call these checks where they know who is asking (after the CI secret or the request
token is checked), so the budget follows the credential and nothing runs on requests that no
budget covers. The exchange's count rides in the same Redis pipeline as its closed-build check:
one round trip per minted token.

Counters use `limits`' sliding-window-counter strategy: one Redis script per hit, no burst of
twice the limit at a window's edge. If Redis is unreachable, each worker counts in its own memory
until Redis answers again: limits stay on, per worker, rather than failing open or refusing every
token while the key ring keeps serving. Without Redis (the embedded file store) every worker
counts in its own memory: a budget then holds per worker.

Discovery, JWKS and the OpenAPI document are limited per address by each worker in memory, never
in Redis: they are served from memory, a shared counter would cost more than the answer, and AWS
must always be able to fetch them (bench/README.md).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import NoScriptError, RedisError

from idp.config import Settings
from idp.errors import IdpError
from idp.observability import metrics
from idp.store import Store
from idp.store.redis_store import RedisStore

log = logging.getLogger(__name__)

# The counters' Redis keys, beside the rest of the issuer's keys.
KEY_PREFIX = "idp:limits"
# HKDF's label for the key that names CI secrets' budgets (no other key is derived with it).
NAME_KEY_INFO = b"idp rate-limit budget names v1"
# After a Redis failure, count in memory for this long before trying Redis again.
BACKOFF = 2.0


class RateLimited(IdpError):
    code = "rate_limited"
    status = 429

    def __init__(self, item: RateLimitItem, retry_after: int) -> None:
        super().__init__(
            f"too many requests: this issuer allows {item}; retry after {retry_after} s, "
            "or ask its operator to raise IDP_RATE_LIMIT_*"
        )
        self.retry_after = retry_after


def client_address() -> str:
    # The peer, or the client X-Forwarded-For names when IDP_TRUSTED_PROXIES says how many
    # proxies to believe (werkzeug's ProxyFix, installed by the app factory).
    return request.remote_addr or "unknown"


def name_key(settings: Settings) -> bytes:
    """The key of the HMAC that names each CI secret's budget in Redis.

    A bare digest of the secret in a key name would let anyone holding a Redis dump test
    guesses offline. The HMAC key is derived (HKDF-SHA256, its own label) from what a dump does
    not hold and every replica shares: IDP_KEY_ENCRYPTION_KEY when set (its first, current
    key; required with Redis outside loopback development), which is independent of the
    secrets it names; otherwise, in development, from the CI secrets themselves. Rotating the
    first key-encryption key, or the CI secrets without one, renames the budgets: each starts
    afresh once.
    """
    if settings.key_encryption_keys:
        material = b"kek:" + settings.key_encryption_keys[0].encode()
    else:
        material = b"ci:" + "\n".join(sorted(settings.ci_secrets)).encode()
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=NAME_KEY_INFO).derive(material)


def secret_name(secret: str, key: bytes) -> str:
    # A CI secret's budget is named by a keyed digest: the secret itself never becomes a
    # Redis key, and neither does anything a guess could be checked against.
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()[:32]


def _items(spec: str | None) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(spec)) if spec else ()


class RateLimits:
    """The issuer's budgets and where they are counted."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.ci_items = _items(settings.rate_limit_ci)
        self.step_items = _items(settings.rate_limit_step)
        self.client_items = _items(settings.rate_limit_client)
        self.name_key = name_key(settings)
        # Per worker, in memory: the public documents always; everything while Redis is down;
        # everything when there is no Redis.
        self.memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self.redis_store = store if isinstance(store, RedisStore) else None
        self.shared: SlidingWindowCounterRateLimiter | None = None
        self.storage: RedisStorage | None = None
        if self.redis_store is not None:
            # The store's fast client's connections: the same short timeouts as the rest of
            # the request path, and no second pool per worker.
            self.storage = RedisStorage(
                "redis://", connection_pool=self.redis_store.hot.connection_pool,
                key_prefix=KEY_PREFIX,
            )  # fmt: skip
            self.shared = SlidingWindowCounterRateLimiter(self.storage)
        self._down_until = 0.0

    # --- the budgets ----------------------------------------------------------------------

    def ci_server(self, secret: str | None) -> None:
        """Count a CI API call: against the matched secret's budget, or the address's."""
        if secret is not None:
            self._hit(self.ci_items, "ci", secret_name(secret, self.name_key), "ci")
        else:
            self._hit(self.client_items or self.ci_items, "ci-refused", client_address(), "client")

    def refused_step(self) -> None:
        """Count an exchange whose request token did not verify, against the address."""
        self._hit(self.client_items or self.step_items, "step-refused", client_address(), "client")

    def step_and_closed(self, jti: str, build_id: str, store: Store) -> bool:
        """Count an exchange against its request token's budget, and say whether its build
        is closed: with Redis, both in one pipelined round trip."""
        if not self.step_items:
            return store.is_build_closed(build_id)
        if self.redis_store is None or not self._redis_up():
            closed = store.is_build_closed(build_id)
            self._hit(self.step_items, "step", jti, "step", shared=False)
            return closed
        try:
            closed, results = self.redis_store.is_build_closed_with(
                build_id, lambda pipe: self._queue_hits(pipe, "step", jti)
            )
        except NoScriptError:
            assert self.storage is not None
            self.storage.lua_acquire_sliding_window.registered_client.script_load(
                self.storage.lua_acquire_sliding_window.script
            )
            closed, results = self.redis_store.is_build_closed_with(
                build_id, lambda pipe: self._queue_hits(pipe, "step", jti)
            )
        if results is None:  # Redis failed: the store answered from its mirror
            self._redis_failed()
            self._hit(self.step_items, "step", jti, "step", shared=False)
            return closed
        counted = list(zip(self.step_items, (bool(r) for r in results), strict=True))
        for item, acquired in counted:
            if not acquired:
                self._refuse(item, ("step", jti), "step", shared=True)
        return closed

    def client(self, scope: str) -> None:
        """Count a request on a route with no credential, against the address, in Redis."""
        self._hit(self.client_items, scope, client_address(), "client")

    def document(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate the view of a public document: the per-address budget, counted in this
        worker's memory, never in Redis."""
        if not self.client_items:
            return view
        scope = view.__name__

        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            self._hit(self.client_items, scope, client_address(), "client", shared=False)
            return view(*args, **kwargs)

        return limited

    # --- counting -------------------------------------------------------------------------

    def _limiter(self, shared: bool) -> SlidingWindowCounterRateLimiter:
        if shared and self.shared is not None and self._redis_up():
            return self.shared
        return self.memory

    def _hit(
        self,
        items: Sequence[RateLimitItem],
        scope: str,
        key: str,
        budget: str,
        shared: bool = True,
    ) -> None:
        for item in items:
            limiter = self._limiter(shared)
            try:
                acquired = limiter.hit(item, scope, key)
            except RedisError:
                self._redis_failed()
                limiter = self.memory
                acquired = limiter.hit(item, scope, key)
            if not acquired:
                self._refuse(item, (scope, key), budget, shared=limiter is not self.memory)

    def _queue_hits(self, pipe: Any, scope: str, key: str) -> None:
        # Exactly what `limits`' RedisStorage.acquire_sliding_window_entry sends, queued on
        # the store's pipeline instead of sent alone (tests/functional/test_rate_limits.py
        # checks that the library reads back what this writes).
        storage = self.storage
        assert storage is not None
        for item in self.step_items:
            name = item.key_for(scope, key)
            keys = [
                storage.prefixed_key(storage._previous_window_key(name)),
                storage.prefixed_key(storage._current_window_key(name)),
            ]
            # EVALSHA by hand: through redis-py's Script, every pipeline would first ask
            # SCRIPT EXISTS, a round trip of its own. A Redis that lost the script (restarted)
            # answers NOSCRIPT; step_and_closed then loads it and sends the pipeline again.
            pipe.evalsha(
                storage.lua_acquire_sliding_window.sha, 2, *keys, item.amount, item.get_expiry(), 1
            )

    def _refuse(
        self, item: RateLimitItem, identifiers: tuple[str, str], budget: str, shared: bool
    ) -> None:
        limiter = self.shared if shared and self.shared is not None else self.memory
        try:
            reset = limiter.get_window_stats(item, *identifiers).reset_time
        except RedisError:
            reset = time.time() + item.get_expiry()
        window = item.get_expiry()
        retry_after = min(window, max(1, math.ceil(reset - time.time())))
        metrics().rate_limited.labels(budget).inc()
        raise RateLimited(item, retry_after)

    def _redis_up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _redis_failed(self) -> None:
        if self._redis_up():
            log.warning("Redis unreachable: counting rate limits in this worker's memory")
        self._down_until = time.monotonic() + BACKOFF


def init_app(app: Flask, settings: Settings, store: Store) -> RateLimits:
    limits = RateLimits(settings, store)
    app.extensions["idp.ratelimits"] = limits
    return limits


def rate_limits() -> RateLimits:
    value = current_app.extensions["idp.ratelimits"]
    assert isinstance(value, RateLimits)
    return value
