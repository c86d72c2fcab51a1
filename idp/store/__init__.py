"""Where the shared state lives: the key ring document and build state.

One small interface (`Store`), two backends chosen by configuration: files in `IDP_KEYS_DIR`
(the embedded default, one host) and Redis (`IDP_REDIS_URL`, or `IDP_REDIS_SENTINELS` through
Sentinel; shared by every replica).
"""

from __future__ import annotations

from idp.config import Settings
from idp.store.base import Budget, Counted, Store, StoreUnavailable


def create_store(settings: Settings) -> Store:
    if settings.uses_redis:
        from idp.store.redis_store import RedisStore

        return RedisStore.create(settings)
    from idp.store.file_store import FileStore

    return FileStore.create(settings)


__all__ = ["Budget", "Counted", "Store", "StoreUnavailable", "create_store"]
