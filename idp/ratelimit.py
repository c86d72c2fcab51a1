"""Rate limits, counted by the key store (in Redis, shared by every replica), never around it.

Three budgets (README "Security"), each a `limits` string or off:
- `IDP_RATE_LIMIT_CI`     per CI secret, on `POST /request-tokens` and `DELETE /builds/<id>`;
- `IDP_RATE_LIMIT_STEP`   per request token, on both exchanges (GitHub's and Vela's route);
- `IDP_RATE_LIMIT_CLIENT` per client address, on everything else.

A request that does not present a valid credential is counted against its client address
instead, so guessing secrets or spraying forged tokens is bounded per address, and a wrong
credential never gets a fresh budget of its own.

The views call these checks where they know who is asking (after the CI secret or the request
token is checked), so the budget follows the credential and nothing runs on requests that no
budget covers. Every count goes through `Store.count_and_check`, which for the exchange also
answers whether its build is closed: one round trip per minted token.

Counters are sliding-window counters (`idp.store.counters`; in Redis the store's own Lua script):
no burst of twice the limit at a window's edge. If Redis is unreachable, the store counts in this
worker's memory until Redis answers again: limits stay on, per worker, rather than failing open
or refusing every token while the key ring keeps serving. Without Redis (the embedded file store)
every worker counts in its own memory: a budget then holds per worker. `limits` only reads the
`COUNT/PERIOD` notation of the settings.

Discovery, JWKS and the OpenAPI document are limited per address by each worker in memory, never
in Redis: they are served from memory, a shared counter would cost more than the answer, and AWS
must always be able to fetch them (bench/README.md).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, current_app, request
from limits import RateLimitItem, parse_many

from idp.config import Settings
from idp.errors import IdpError
from idp.observability import metrics
from idp.store import Budget, Store
from idp.store.counters import MemoryCounters

# Where the store keeps the counters (`idp:limits:<budget>` in Redis), beside its other keys.
KEY_PREFIX = "idp:limits"
# HKDF's label for the key that names CI secrets' budgets (no other key is derived with it).
NAME_KEY_INFO = b"idp rate-limit budget names v1"


class RateLimited(IdpError):
    code = "rate_limited"
    status = 429

    def __init__(self, limit: Limit, retry_after: int, shared: bool = True) -> None:
        # Counted in one worker's memory (the file store, Redis unreachable, the public
        # documents), a budget holds per worker process: say so, or "30 per 1 minute" reads
        # as a lie when twice that passed across two workers.
        where = "" if shared else " per worker process (counted in each worker's memory)"
        super().__init__(
            f"too many requests: this issuer allows {limit.text}{where}; retry after "
            f"{retry_after} s, or ask its operator to raise IDP_RATE_LIMIT_*"
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


@dataclass(frozen=True)
class Limit:
    """One configured limit: `amount` hits per `window` seconds."""

    amount: int
    window: int
    text: str  # as `limits` writes it, for the 429's description: "30 per 1 minute"

    def budget(self, scope: str, key: str) -> Budget:
        return Budget.of(scope, key, self.amount, self.window)


def _limits(spec: str | None) -> tuple[Limit, ...]:
    items: list[RateLimitItem] = parse_many(spec) if spec else []
    return tuple(Limit(item.amount, item.get_expiry(), str(item)) for item in items)


class RateLimits:
    """The issuer's budgets and where they are counted."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.name_key = name_key(settings)
        self.ci_items = _limits(settings.rate_limit_ci)
        self.step_items = _limits(settings.rate_limit_step)
        self.client_items = _limits(settings.rate_limit_client)
        # The public documents' budget, always in this worker's memory.
        self.memory = MemoryCounters()
        # The prometheus child per budget, looked up once (labels() takes a lock each time);
        # filled on first use, after `idp serve` has chosen the metrics' storage.
        self._refusals: dict[str, Any] = {}

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
        is closed: one call to the store, one round trip with Redis."""
        budgets = [item.budget("step", jti) for item in self.step_items]
        counted = store.count_and_check(budgets, build_id)
        self._check(self.step_items, counted.retry_after, "step", counted.shared)
        return counted.closed

    def client(self, scope: str) -> None:
        """Count a request on a route with no credential, against the address, in Redis."""
        self._hit(self.client_items, scope, client_address(), "client")

    def document(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate the view of a public document: the per-address budget, counted in this
        worker's memory, never in Redis."""
        if not self.client_items:
            return view
        scope = view.__name__
        items = self.client_items

        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            address = client_address()
            waits = self.memory.hit([i.budget(scope, address) for i in items], time.time())
            self._check(items, waits, "client", shared=False)
            return view(*args, **kwargs)

        return limited

    # --- counting -------------------------------------------------------------------------

    def _hit(self, items: tuple[Limit, ...], scope: str, key: str, budget: str) -> None:
        if not items:
            return
        counted = self.store.count_and_check([item.budget(scope, key) for item in items])
        self._check(items, counted.retry_after, budget, counted.shared)

    def _check(
        self, items: tuple[Limit, ...], waits: tuple[int, ...], budget: str, shared: bool
    ) -> None:
        for item, wait in zip(items, waits, strict=True):
            if wait:
                counter = self._refusals.get(budget)
                if counter is None:
                    counter = self._refusals[budget] = metrics().rate_limited.labels(budget)
                counter.inc()
                raise RateLimited(item, wait, shared)


def init_app(app: Flask, settings: Settings, store: Store) -> RateLimits:
    limits = RateLimits(settings, store)
    app.extensions["idp.ratelimits"] = limits
    return limits


def rate_limits() -> RateLimits:
    value = current_app.extensions["idp.ratelimits"]
    assert isinstance(value, RateLimits)
    return value
