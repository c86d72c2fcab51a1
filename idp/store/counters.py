"""Sliding-window counters: how rate-limit budgets are counted, in memory and (the same rule,
in Lua) in Redis.

A budget of `limit` hits per `window` seconds keeps two counts: the current fixed window's and
the previous one's. A hit is allowed when `previous * (1 - elapsed / window) + current` stays
within the limit (the previous window's hits are assumed spread evenly), so no client gets
twice the limit across a window's edge, at the cost of two integers per budget. This is the
"sliding window counter" of Cloudflare's write-up and of `limits`' strategy of that name.
"""

from __future__ import annotations

import math
import threading

from idp.store.base import Budget

# Entries whose windows are over are dropped when the table grows past this (no timer thread).
PRUNE_AT = 10_000


def retry_after(limit: int, window: int, elapsed: float, current: int, previous: int) -> int:
    """Whole seconds until one more hit fits the budget (at least 1, at most `window`)."""
    if current + 1 > limit:
        # Wait for the next window; then the current count becomes the decaying previous one.
        wait = (window - elapsed) + max(0.0, window * (1 - (limit - 1) / current))
    else:
        wait = (window - elapsed) - window * (limit - current - 1) / previous
    return min(window, max(1, math.ceil(wait)))


def decide(
    limit: int, window: int, now: float, stored: tuple[int, int, int] | None
) -> tuple[int, tuple[int, int, int]]:
    """(0 or seconds to retry, the counts to keep) for one hit; `stored` is (window index,
    current, previous) as last kept. The Lua script in `redis_store` is this function."""
    index = int(now // window)
    current = previous = 0
    if stored is not None:
        kept_index, kept_current, kept_previous = stored
        if kept_index == index:
            current, previous = kept_current, kept_previous
        elif kept_index == index - 1:
            previous = kept_current
        elif kept_index > index:
            # Another clock ran ahead and opened a later window: count in it.
            index, current, previous = kept_index, kept_current, kept_previous
    elapsed = min(window, max(0.0, now - index * window))
    weighted = previous * (window - elapsed) / window + current
    if weighted + 1 > limit:
        return retry_after(limit, window, elapsed, current, previous), (index, current, previous)
    return 0, (index, current + 1, previous)


class MemoryCounters:
    """Budgets counted in this process only (per gunicorn worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int, int]] = {}

    def hit(self, budgets: tuple[Budget, ...] | list[Budget], now: float) -> tuple[int, ...]:
        """Count one hit against each budget; per budget 0 (counted) or seconds to retry."""
        results = []
        with self._lock:
            counts = self._counts
            for budget in budgets:
                wait, kept = decide(budget.limit, budget.window, now, counts.get(budget.name))
                counts[budget.name] = kept
                results.append(wait)
            if len(counts) > PRUNE_AT:
                self._prune(now)
        return tuple(results)

    def _prune(self, now: float) -> None:
        # A name ends in "/<window>"; an entry two windows old counts nothing any more.
        for name, (index, _, _) in list(self._counts.items()):
            window = int(name.rsplit("/", 1)[1])
            if index < now // window - 1:
                del self._counts[name]
