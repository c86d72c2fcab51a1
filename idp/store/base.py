"""The store interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from idp.errors import Unavailable

RingJson = dict[str, Any]

# The epoch of request tokens issued before tokens carried one.
LEGACY_EPOCH = "legacy"


class StoreUnavailable(Unavailable):
    """The backend cannot be reached; callers keep serving from what they cached."""


class Store(Protocol):
    name: str
    # Whether the backend can lose everything at once (a Redis without persistence that
    # restarts): then a process that finds no ring waits for replicas to restore one before
    # it creates a new ring.
    volatile: bool

    def read_ring(self) -> RingJson | None:
        """The ring document as last written, or None when there is none yet.

        Raises RingRefused when something is stored but is not a JSON object.
        """
        ...

    def update_ring(self, change: Callable[[RingJson | None], RingJson | None]) -> bool:
        """Apply `change` to the ring document atomically, one replica at a time.

        `change` gets the stored document and returns the new one, or None for no change.
        Returns False when another replica holds the write lock (it is doing the work).
        """
        ...

    def replace_ring(self, new: RingJson) -> bool:
        """Write `new` over whatever is stored, readable or not (`idp keys repair` only).
        False when another replica holds the write lock."""
        ...

    def close_build(self, build_id: str, expires_at: int) -> None:
        """Mark a build closed until `expires_at` (when its last request token has expired)."""
        ...

    def is_build_closed(self, build_id: str) -> bool: ...

    @property
    def epoch(self) -> str:
        """The store's current life; request tokens carry the one they were issued in."""
        ...

    def check_build_state(self, epoch: str) -> None:
        """Raise unless it is known which builds of request tokens issued in `epoch` are
        closed: Unavailable while that is being restored, InvalidToken when it is lost."""
        ...

    def sync(self) -> None:
        """Refresh whatever the backend mirrors in memory (run by the background refresher)."""
        ...

    def describe_ring(self) -> str:
        """Where exactly the ring document is (Redis key, file), for error messages."""
        ...

    def describe(self) -> str:
        """Where the state lives, for logs and `idp keys list`."""
        ...
