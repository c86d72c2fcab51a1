"""The store interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from idp.errors import Unavailable

RingJson = dict[str, Any]

# The epoch of request tokens issued before tokens carried one.
LEGACY_EPOCH = "legacy"


class StoreUnavailable(Unavailable):
    """The backend cannot be reached; callers keep serving from what they cached."""


@dataclass(frozen=True)
class Budget:
    """One rate-limit budget of one caller: at most `limit` hits per `window` seconds.

    `name` identifies the counter (scope, the caller's digest or address, the limit and the
    window, ending in "/<window>"); it never holds a secret, for it becomes a Redis key.
    """

    name: str
    limit: int
    window: int

    @classmethod
    def of(cls, scope: str, key: str, limit: int, window: int) -> Budget:
        return cls(f"{scope}/{key}/{limit}/{window}", limit, window)


@dataclass(frozen=True)
class Counted:
    """What `Store.count_and_check` found."""

    closed: bool  # the build is closed (False when no build was asked about)
    retry_after: tuple[int, ...]  # per budget: 0 when the hit fitted, else seconds to wait
    shared: bool  # counted where every replica counts (False: in this worker's memory)


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

    def count_and_check(self, budgets: Sequence[Budget], build_id: str | None = None) -> Counted:
        """Count one hit against each budget and say whether `build_id` is closed, in one
        round trip to the backend at most (the token exchange's only one).

        Never raises for an unreachable backend: it then counts in this worker's memory and
        answers the build check from what it mirrors (`shared` is False).
        """
        ...

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
