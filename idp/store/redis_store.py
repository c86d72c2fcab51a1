"""The shared store: one Redis for every replica (`IDP_REDIS_URL`).

Layout (all keys under `idp:`):
- `idp:ring`               the ring document (JSON; private keys sealed with the KEK)
- `idp:ring:lock`          the write lock (SET NX PX): one replica changes the ring at a time
- `idp:build:closed:<id>`  a closed build, expiring when its last request token would have
- `idp:builds:closed`      the same closures in a sorted set by closing time, which every
                           replica mirrors in memory so that revocation holds while Redis is
                           briefly unreachable

Changes to the ring are one WATCH/MULTI transaction under the lock, so even a lock that
expired mid-write cannot interleave two writers. Every Redis failure becomes StoreUnavailable;
the callers keep serving what they cached.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError, RedisError, WatchError

from idp.config import Settings
from idp.errors import ConfigError
from idp.store.base import RingJson, StoreUnavailable

log = logging.getLogger(__name__)

RING = "idp:ring"
LOCK = "idp:ring:lock"
CLOSED = "idp:build:closed:"
CLOSED_SET = "idp:builds:closed"
# Only spares the others duplicate key generation: the WATCH transaction keeps writes
# atomic even if the lock expires, so it can be short.
LOCK_MS = 5_000
# After a failure, the hot path skips Redis for this long instead of waiting on a timeout.
BACKOFF = 2.0

# Delete the lock only if it is still ours (it may have expired and been taken by another).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisStore:
    name = "redis"

    def __init__(self, client: redis.Redis, hot: redis.Redis, url: str) -> None:
        # Two clients: the background refresher may wait a few seconds on a slow Redis;
        # the request path (is this build closed?) gives up fast and uses the mirror.
        self.client = client
        self.hot = hot
        self.url = url
        self._release = client.register_script(_RELEASE)
        self._closed: dict[str, float] = {}  # build id -> closing time, mirrored
        self._closed_seen = 0.0
        self._mirror_lock = threading.Lock()
        self._down_until = 0.0

    @classmethod
    def create(cls, settings: Settings) -> RedisStore:
        assert settings.redis_url is not None
        if not settings.key_encryption_keys and not settings.is_local_development:
            raise ConfigError(
                "IDP_REDIS_URL is set but IDP_KEY_ENCRYPTION_KEY is not: private signing keys "
                "would sit in Redis in the clear; set IDP_KEY_ENCRYPTION_KEY to a random secret "
                "of 32+ characters (only a plain-http loopback issuer may skip it, for development)"
            )
        if not settings.key_encryption_keys:
            log.warning(
                "development mode: private keys are stored in Redis unencrypted "
                "(set IDP_KEY_ENCRYPTION_KEY before using this issuer for real)"
            )
        try:
            client = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=5.0,
                socket_connect_timeout=2.0,
                health_check_interval=10,
            )
            hot = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                health_check_interval=10,
            )
        except ValueError as exc:
            raise ConfigError(f"IDP_REDIS_URL is not a usable Redis URL ({exc})") from None
        return cls(client, hot, settings.redis_url)

    def describe(self) -> str:
        # Never echo a password that may be in the URL.
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"redis {parts.hostname or parts.path}:{parts.port or 6379}"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        self._down_until = time.monotonic() + BACKOFF
        return StoreUnavailable(f"Redis at {self.describe()} is unreachable ({exc})")

    # --- ring -----------------------------------------------------------------------------

    def read_ring(self) -> RingJson | None:
        try:
            # redis-py types replies as "maybe awaitable"; this client is the synchronous one.
            raw = cast(bytes | None, self.client.get(RING))
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if raw is None:
            return None
        doc = json.loads(raw)
        assert isinstance(doc, dict)
        return doc

    def update_ring(self, change: Callable[[RingJson | None], RingJson | None]) -> bool:
        token = secrets.token_hex(16)
        try:
            if not self.client.set(LOCK, token, nx=True, px=LOCK_MS):
                return False
            try:
                with self.client.pipeline() as pipe:
                    while True:
                        try:
                            pipe.watch(RING)
                            raw = cast(bytes | None, pipe.get(RING))
                            new = change(json.loads(raw) if raw else None)
                            if new is None:
                                pipe.unwatch()
                                return True
                            pipe.multi()
                            pipe.set(RING, json.dumps(new, separators=(",", ":")))
                            pipe.execute()
                            return True
                        except WatchError:
                            continue
            finally:
                self._release(keys=[LOCK], args=[token])
        except RedisError as exc:
            raise self._unavailable(exc) from None

    # --- build state ----------------------------------------------------------------------

    def close_build(self, build_id: str, expires_at: int) -> None:
        now = time.time()
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(f"{CLOSED}{build_id}", "1", exat=expires_at)
                pipe.zadd(CLOSED_SET, {build_id: now})
                pipe.zremrangebyscore(CLOSED_SET, "-inf", now - (expires_at - now))
                pipe.execute()
        except RedisError as exc:
            raise self._unavailable(exc) from None
        with self._mirror_lock:
            self._closed[build_id] = now

    def is_build_closed(self, build_id: str) -> bool:
        # The mirror also covers closures a Redis restarted without persistence forgot.
        with self._mirror_lock:
            if build_id in self._closed:
                return True
        if time.monotonic() < self._down_until:
            return False
        try:
            return bool(self.hot.exists(f"{CLOSED}{build_id}"))
        except RedisError as exc:
            self._unavailable(exc)
            log.warning("Redis unreachable; checking closed builds against the local mirror")
            return False

    def is_build_closed_with(
        self, build_id: str, queue: Callable[[Any], None]
    ) -> tuple[bool, list[Any] | None]:
        """`is_build_closed`, with more commands (`queue` adds them to the pipeline) sent in
        the same round trip; their replies follow, or None if Redis could not be asked."""
        with self._mirror_lock:
            mirrored = build_id in self._closed
        if time.monotonic() < self._down_until:
            return mirrored, None
        try:
            with self.hot.pipeline(transaction=False) as pipe:
                pipe.exists(f"{CLOSED}{build_id}")
                queue(pipe)
                exists, *replies = pipe.execute()
        except NoScriptError:
            raise  # the caller's script is not loaded: the caller loads it and asks again
        except RedisError as exc:
            self._unavailable(exc)
            log.warning("Redis unreachable; checking closed builds against the local mirror")
            return mirrored, None
        return mirrored or bool(exists), replies

    def sync(self) -> None:
        """Mirror the closures made since the last sync (called by the background refresher)."""
        try:
            rows = self.client.zrangebyscore(CLOSED_SET, self._closed_seen, "+inf", withscores=True)
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if not rows:
            return
        # redis-py types the reply loosely; with withscores it is (bytes, float) pairs.
        pairs: list[tuple[bytes, float]] = list(rows)  # type: ignore[arg-type]
        closures = [(member.decode(), float(score)) for member, score in pairs]
        with self._mirror_lock:
            for build_id, closed_at in closures:
                self._closed[build_id] = closed_at
            self._closed_seen = max(closed_at for _, closed_at in closures)
            horizon = time.time() - 86400 - 60
            self._closed = {k: v for k, v in self._closed.items() if v >= horizon}
