"""The store interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from idp.errors import Unavailable

RingJson = dict[str, Any]


class StoreUnavailable(Unavailable):
    """The backend cannot be reached; callers keep serving from what they cached."""


class Store(Protocol):
    name: str

    def read_ring(self) -> RingJson | None:
        """The ring document as last written, or None when there is none yet."""
        ...

    def update_ring(self, change: Callable[[RingJson | None], RingJson | None]) -> bool:
        """Apply `change` to the ring document atomically, one replica at a time.

        `change` gets the stored document and returns the new one, or None for no change.
        Returns False when another replica holds the write lock (it is doing the work).
        """
        ...

    def close_build(self, build_id: str, expires_at: int) -> None:
        """Mark a build closed until `expires_at` (when its last request token has expired)."""
        ...

    def is_build_closed(self, build_id: str) -> bool: ...

    def sync(self) -> None:
        """Refresh whatever the backend mirrors in memory (run by the background refresher)."""
        ...

    def describe(self) -> str:
        """Where the state lives, for logs and `idp keys list`."""
        ...
