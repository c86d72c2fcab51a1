"""The shared store: one Redis for every replica (`IDP_REDIS_URL`), or the master a set of
sentinels names (`IDP_REDIS_SENTINELS`, `IDP_REDIS_SENTINEL_MASTER`).

Layout (all keys under `idp:`):
- `idp:ring`               the ring document (JSON; private keys sealed with the KEK)
- `idp:ring:lock`          the write lock (SET NX PX): one replica changes the ring at a time
- `idp:build:closed:<id>`  a closed build, expiring when its last request token would have
- `idp:builds:closed`      the same closures in a sorted set by expiry time, which every
                           replica mirrors in memory so that revocation holds while Redis is
                           briefly unreachable
- `idp:epoch`              this Redis's life: an id drawn by the first replica that finds none
- `idp:epochs:restored`    the earlier epochs whose closures a replica has written back
- `idp:limits:<budget>`    a rate-limit budget's sliding-window counts (hash: w, c, p), kept
                           by a Lua script of this module (`_COUNT`, the rule of
                           `idp.store.counters.decide`)

Changes to the ring are one WATCH/MULTI transaction under the lock, so even a lock that
expired mid-write cannot interleave two writers. Every Redis failure becomes StoreUnavailable;
the callers keep serving what they cached.

Closed builds are durable state, kept as carefully as the ring. A Redis without persistence
that restarts comes back empty; its new epoch tells every replica so at its next sync, and each
writes back every closure it mirrors (as it writes back the ring). Request tokens carry the
epoch they were issued in, and a token of an earlier epoch is accepted only once that epoch's
closures were written back by a replica that lived through it; until then, for as long as
replicas need to notice the reset and write back (`settle`), the build state is unknown, and
unknown is answered 503 (retry), never "not closed"; new request tokens wait the same way. If
Redis and every replica lose their memory together, no one can say which builds were closed:
the older request tokens are refused for good (README "Redis persistence"). A closure made in
the last refresh interval before a reset reaches the other replicas when the replica that
made it writes back, within one more refresh interval.

A failover (Sentinel promoting a replica) keeps `idp:epoch`, so no reset is seen; but writes
the old master took just before it died may not have reached the replica. A closure is the
one write whose loss would break a promise made to the CI server, so when the master has
replicas (`connected_slaves`, read at every sync, and any seen in the last
REPLICAS_EXPECTED_FOR seconds: a replica whose link just broke is the case that matters),
closing a build also waits (`WAIT 1`, at most CLOSE_WAIT_MS) for one replica to hold it, and
answers 503 ("not confirmed, close again") when none does: a closure answered 200 survives
the failover of its master. Only an unconfirmed closure can be lost, and even that is written
back as follows. For the ring, the replicas' merge by content restores lost keys (keyring.py).
For closures, a sync reads them all, compares them with its mirror and writes back the ones
Redis lacks ("reconciles") when:
- the server answering is another one (its `run_id`, read in the same round trip, changed):
  a failover, or a restart that loaded an older copy. A count alone cannot say this: the
  closures the dead master lost and the ones this replica has not mirrored yet (another
  replica's, written late after an outage with their older expiry) can be equally many, and
  then the loss would go unseen (the Sentinel test caught exactly that);
- how many unexpired closures Redis holds (`ZCOUNT`) differs from how many are mirrored;
- and at the latest every FULL_RECONCILE seconds, which bounds any case the two above miss.
Each sync also re-reads the last LOOKBACK seconds of expiry times, not only what is newer than
the newest it has seen: closures land out of order (expiry times are whole seconds, taken
before the write travels), and those would otherwise wait for the next full reconcile.

Following a failover: both clients connect through redis-py's SentinelConnectionPool, which
asks the sentinels for the master on every new connection and drops idle connections when
the answer changes. A failed request leaves its connection closed; the background client
retries once on a new connection (which asks the sentinels again), and the request path,
after a failure, answers from memory for BACKOFF seconds and then connects anew: neither
keeps talking to a dead master. While the sentinels still name the dead master, connecting
to it fails fast and the answer is the same "unreachable".
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, WatchError
from redis.retry import Retry
from redis.sentinel import Sentinel

from idp.config import SentinelSettings, Settings
from idp.errors import ConfigError, InvalidToken, RingRefused, Unavailable
from idp.store.base import LEGACY_EPOCH, Budget, Counted, RingJson, StoreUnavailable
from idp.store.counters import MemoryCounters

log = logging.getLogger(__name__)

RING = "idp:ring"
LOCK = "idp:ring:lock"
CLOSED = "idp:build:closed:"
CLOSED_SET = "idp:builds:closed"
EPOCH = "idp:epoch"
RESTORED = "idp:epochs:restored"
LIMITS = "idp:limits:"
# Only spares the others duplicate key generation: the WATCH transaction keeps writes
# atomic even if the lock expires, so it can be short.
LOCK_MS = 5_000
# After a failure, the hot path skips Redis for this long instead of waiting on a timeout.
BACKOFF = 2.0

# Timeouts of the background client (may wait on a slow Redis) and of the request path (gives
# up fast and answers from memory), in seconds: (reply, connect).
BACKGROUND_TIMEOUTS = (5.0, 2.0)
HOT_TIMEOUTS = (0.5, 0.5)
# Mirroring closures (see the module's docstring): how far back in expiry times each sync
# re-reads, and how often at the latest it compares every closure with Redis.
LOOKBACK = 10.0
FULL_RECONCILE = 30.0
# How long closing a build waits for a replica of the master to hold the closure.
CLOSE_WAIT_MS = 1000
# Replicas seen this recently are expected: their link dropping is exactly when a closure must
# not be confirmed on the master alone. Without any for this long, the master is alone by
# design (no failover can lose what only it holds) and closures are confirmed without them.
REPLICAS_EXPECTED_FOR = 60.0

# Delete the lock only if it is still ours (it may have expired and been taken by another).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# Whether a build is closed, and one hit against each budget: the exchange's one command (a
# pipeline of EXISTS and EVALSHA cost redis-py twice the work). KEYS: the closed-build key
# when ARGV[2] is "1", then each budget's hash; ARGV: now, that flag, then each budget's limit
# and window. Returns {closed (0/1), then per budget 0 (counted) or whole seconds to wait}.
# The same rule as idp.store.counters.decide and retry_after, which
# tests/functional/test_rate_limits.py checks.
_COUNT = """
local now = tonumber(ARGV[1])
local first = 1
local out = {0}
if ARGV[2] == '1' then
  out[1] = redis.call('EXISTS', KEYS[1])
  first = 2
end
for i = first, #KEYS do
  local n = i - first + 1
  local key = KEYS[i]
  local limit = tonumber(ARGV[1 + 2 * n])
  local window = tonumber(ARGV[2 + 2 * n])
  local index = math.floor(now / window)
  local current, previous = 0, 0
  local kept = redis.call('HMGET', key, 'w', 'c', 'p')
  local kept_index = tonumber(kept[1])
  if kept_index ~= nil then
    if kept_index == index then
      current, previous = tonumber(kept[2]) or 0, tonumber(kept[3]) or 0
    elseif kept_index == index - 1 then
      previous = tonumber(kept[2]) or 0
    elseif kept_index > index then
      index, current, previous = kept_index, tonumber(kept[2]) or 0, tonumber(kept[3]) or 0
    end
  end
  local elapsed = math.min(window, math.max(0, now - index * window))
  local weighted = previous * (window - elapsed) / window + current
  if weighted + 1 > limit then
    local wait
    if current + 1 > limit then
      wait = (window - elapsed) + math.max(0, window * (1 - (limit - 1) / current))
    else
      wait = (window - elapsed) - window * (limit - current - 1) / previous
    end
    out[n + 1] = math.min(window, math.max(1, math.ceil(wait)))
  else
    redis.call('HSET', key, 'w', index, 'c', current + 1, 'p', previous)
    redis.call('EXPIRE', key, 2 * window + 1)
    out[n + 1] = 0
  end
end
return out
"""


class RedisStore:
    name = "redis"
    # A Redis without persistence that restarts has forgotten everything.
    volatile = True

    def __init__(
        self, client: redis.Redis, hot: redis.Redis, where: str, settle: float = 5.0
    ) -> None:
        # Two clients: the background refresher may wait a few seconds on a slow Redis;
        # the request path (is this build closed?) gives up fast and uses the mirror.
        self.client = client
        self.hot = hot
        self.where = where  # for logs: never a password
        self.clock = time.time
        # How long after a new epoch appears every live replica has written back its state.
        self.settle = settle
        self._release = client.register_script(_RELEASE)
        self._closed: dict[str, float] = {}  # build id -> expiry time, mirrored
        self._closed_seen = 0.0
        self._mirror_lock = threading.Lock()
        self._down_until = 0.0
        self._epoch: tuple[str, float] | None = None  # (id, created_at) as last synced
        self._restored: frozenset[str] = frozenset()
        self._pending: dict[str, float] = {}  # closures made while Redis failed
        self._server: str | None = None  # the run_id of the Redis server last synced with
        self._replicas_until = 0.0  # monotonic time until which replicas are expected
        self._reconciled_at = 0.0  # monotonic time of the last full comparison
        # Budgets counted while Redis cannot be: in this worker, until it answers again.
        self._counters = MemoryCounters()
        self._count = hot.register_script(_COUNT)

    @classmethod
    def create(cls, settings: Settings) -> RedisStore:
        sentinel = settings.redis_sentinel
        variable = "IDP_REDIS_SENTINELS" if sentinel is not None else "IDP_REDIS_URL"
        if not settings.key_encryption_keys and not settings.is_local_development:
            raise ConfigError(
                f"{variable} is set but IDP_KEY_ENCRYPTION_KEY is not: private signing keys "
                "would sit in Redis in the clear; set IDP_KEY_ENCRYPTION_KEY to a random secret "
                "of 32+ characters (only a plain-http loopback issuer may skip it, for development)"
            )
        if not settings.key_encryption_keys:
            log.warning(
                "development mode: private keys are stored in Redis unencrypted "
                "(set IDP_KEY_ENCRYPTION_KEY before using this issuer for real)"
            )
        # A Redis that restarted (or a master that was replaced) leaves pooled connections
        # dead: both clients retry once, at once, on a new connection, which through Sentinel
        # asks the sentinels for the master again. Never redis-py's default of three retries
        # with backoff of seconds: the request path must answer from memory instead.
        background: dict[str, Any] = {
            "socket_timeout": BACKGROUND_TIMEOUTS[0],
            "socket_connect_timeout": BACKGROUND_TIMEOUTS[1],
            "health_check_interval": 10,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        hot: dict[str, Any] = {
            **background,
            "socket_timeout": HOT_TIMEOUTS[0],
            "socket_connect_timeout": HOT_TIMEOUTS[1],
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        # A replica syncs every refresh interval; one more for its write-back to land.
        settle = 2 * settings.refresh_interval + 1
        if sentinel is not None:
            manager = sentinel_manager(sentinel)
            return cls(
                manager.master_for(sentinel.master, **background),
                manager.master_for(sentinel.master, **hot),
                sentinel.describe(),
                settle=settle,
            )
        assert settings.redis_url is not None
        try:
            client = redis.Redis.from_url(settings.redis_url, **background)
            hot_client = redis.Redis.from_url(settings.redis_url, **hot)
        except ValueError as exc:
            raise ConfigError(f"IDP_REDIS_URL is not a usable Redis URL ({exc})") from None
        return cls(client, hot_client, _describe_url(settings.redis_url), settle=settle)

    def describe(self) -> str:
        return self.where

    def describe_ring(self) -> str:
        # No address: this reaches readiness reasons, which are public.
        return f"Redis key {RING}"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        self._down_until = time.monotonic() + BACKOFF
        # The address and redis-py's text go to the log only: error bodies and readiness
        # reasons are public, and need not map the operator's network.
        log.debug("Redis at %s: %s", self.where, exc)
        return StoreUnavailable(f"the key store is unreachable ({type(exc).__name__})")

    # --- ring -----------------------------------------------------------------------------

    def read_ring(self) -> RingJson | None:
        try:
            # redis-py types replies as "maybe awaitable"; this client is the synchronous one.
            raw = cast(bytes | None, self.client.get(RING))
        except RedisError as exc:
            raise self._unavailable(exc) from None
        return self._parse_ring(raw)

    def _parse_ring(self, raw: bytes | None) -> RingJson | None:
        # Absent is "no ring yet"; present but not a JSON object is a damaged ring, never
        # "no ring" (which would have a new ring written over the keys of live tokens).
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict):
            raise RingRefused("the stored value is not a JSON object (damaged or truncated)")
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
                            new = change(self._parse_ring(raw))
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

    def replace_ring(self, new: RingJson) -> bool:
        token = secrets.token_hex(16)
        try:
            if not self.client.set(LOCK, token, nx=True, px=LOCK_MS):
                return False
            try:
                self.client.set(RING, json.dumps(new, separators=(",", ":")))
            finally:
                self._release(keys=[LOCK], args=[token])
        except RedisError as exc:
            raise self._unavailable(exc) from None
        return True

    # --- build state ----------------------------------------------------------------------

    def close_build(self, build_id: str, expires_at: int) -> None:
        # Remembered here first: even if Redis fails now, this replica refuses the build and
        # writes the closure to Redis at its next sync (the caller still hears 503: the
        # other replicas do not know yet).
        with self._mirror_lock:
            self._closed[build_id] = expires_at
            self._pending[build_id] = expires_at
        try:
            with self.client.pipeline(transaction=True) as pipe:
                self._queue_closure(pipe, build_id, expires_at)
                pipe.zremrangebyscore(CLOSED_SET, "-inf", time.time())
                pipe.execute()
            expected = time.monotonic() < self._replicas_until
            held = self.client.wait(1, CLOSE_WAIT_MS) if expected else None
        except RedisError as exc:
            raise self._unavailable(exc) from None
        if held is not None and held < 1:
            # On the master only: a failover now would lose it. It stays pending here (written
            # again at the next sync) and the CI server hears that it must close again.
            log.warning(
                "closing build %s: no replica of the key store's master confirmed it within "
                "%d ms (replication broken or lagging); asked the CI server to close again",
                build_id,
                CLOSE_WAIT_MS,
            )
            raise Unavailable(
                f"build {build_id} is closed on this replica, but the key store could not "
                "confirm it durably (no Redis replica acknowledged it); close it again"
            )
        with self._mirror_lock:
            self._pending.pop(build_id, None)

    @staticmethod
    def _queue_closure(pipe: Any, build_id: str, expires_at: float) -> None:
        pipe.set(f"{CLOSED}{build_id}", "1", exat=int(expires_at))
        pipe.zadd(CLOSED_SET, {build_id: expires_at})

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

    def count_and_check(self, budgets: Sequence[Budget], build_id: str | None = None) -> Counted:
        """Count the budgets in Redis and check the build, in one pipelined round trip; with
        Redis unreachable, count in this worker's memory and check the mirror."""
        now = self.clock()
        mirrored = False
        if build_id is not None:
            with self._mirror_lock:
                mirrored = build_id in self._closed
        if time.monotonic() < self._down_until:
            return self._locally(budgets, mirrored, now)
        try:
            try:
                exists, waits = self._send_count(budgets, build_id, now)
            except NoScriptError:
                # A Redis that restarted, or a replica just promoted, has no scripts: load
                # it (once per Redis life) and send again.
                self.hot.script_load(_COUNT)
                exists, waits = self._send_count(budgets, build_id, now)
        except RedisError as exc:
            self._unavailable(exc)
            log.warning(
                "Redis unreachable: counting rate limits in this worker's memory and checking "
                "closed builds against the local mirror"
            )
            return self._locally(budgets, mirrored, now)
        return Counted(closed=mirrored or exists, retry_after=waits, shared=True)

    def _send_count(
        self, budgets: Sequence[Budget], build_id: str | None, now: float
    ) -> tuple[bool, tuple[int, ...]]:
        if build_id is None and not budgets:
            return False, ()
        keys = [f"{CLOSED}{build_id}"] if build_id is not None else []
        keys += [f"{LIMITS}{budget.name}" for budget in budgets]
        args: list[Any] = [repr(now), "1" if build_id is not None else "0"]
        for budget in budgets:
            args += [budget.limit, budget.window]
        # EVALSHA by hand: a NOSCRIPT reply is handled by the caller (redis-py's Script would
        # first send the script's text on every NOSCRIPT, or ask SCRIPT EXISTS in a pipeline).
        replies = self.hot.evalsha(self._count.sha, len(keys), *keys, *args)
        return bool(replies[0]), tuple(int(w) for w in replies[1:])

    def _locally(self, budgets: Sequence[Budget], mirrored: bool, now: float) -> Counted:
        waits = self._counters.hit(list(budgets), now) if budgets else ()
        return Counted(closed=mirrored, retry_after=waits, shared=False)

    # --- epochs ---------------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch[0] if self._epoch else LEGACY_EPOCH

    def check_build_state(self, epoch: str) -> None:
        """Raise unless the closures of builds whose request tokens were issued in `epoch`
        are known here (see the module's docstring). From memory: no round trip."""
        current = self._epoch
        if current is None:
            raise Unavailable(
                "the build state has not been read from the key store yet; retry in a moment"
            )
        current_id, created_at = current
        restored = self._restored
        if epoch in restored:
            # A replica that lived through that epoch wrote back the closures it mirrored.
            return
        age = time.time() - created_at
        settled = age >= self.settle
        if epoch == current_id and (settled or restored):
            # Issued in this epoch, which has either settled or been written back into.
            return
        if not settled:
            # The store came back empty moments ago (or is brand new): replicas that remember
            # which builds are closed write them back within a refresh interval. Unknown
            # until then, so: retry.
            retry = max(1, int(self.settle - age) + 1)
            unknown = Unavailable(
                "the key store was reset moments ago and replicas are restoring which builds "
                f"are closed; retry in {retry} s"
            )
            unknown.retry_after = retry  # type: ignore[attr-defined]
            raise unknown
        raise InvalidToken(
            "this request token was issued before the key store lost its build state (Redis "
            "restarted without persistence and no replica remembered which builds were "
            "closed), so whether its build is closed is unknown: ask the CI server for a new "
            "request token"
        )

    def sync(self) -> None:
        """Mirror the closures made since the last sync, learn the epoch, and after a reset
        write back what this replica remembers (called by the background refresher)."""
        try:
            self._sync()
        except RedisError as exc:
            raise self._unavailable(exc) from None

    def _read_state(
        self, since: float, now: float
    ) -> tuple[Any, set[str], list[tuple[str, float]], int, str | None]:
        # One snapshot (MULTI): the count must describe the same set the rows come from, and
        # the server's identity the server they were read from.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.get(EPOCH)
            pipe.smembers(RESTORED)
            pipe.zrangebyscore(CLOSED_SET, since, "+inf", withscores=True)
            pipe.zcount(CLOSED_SET, now, "+inf")
            pipe.info("server", "replication")
            raw, restored, rows, stored, info = pipe.execute()
        members = {m.decode() for m in restored}
        closures = [(member.decode(), float(score)) for member, score in rows]
        info = info if isinstance(info, dict) else {}
        server = info.get("run_id")
        replicas = info.get("connected_slaves", 0)
        if isinstance(replicas, int) and replicas > 0:
            self._replicas_until = time.monotonic() + REPLICAS_EXPECTED_FOR
        return raw, members, closures, int(stored), None if server is None else str(server)

    def _sync(self) -> None:
        now = time.time()
        with self._mirror_lock:
            pending = list(self._pending.items())
        if pending:
            with self.client.pipeline(transaction=False) as pipe:
                for build_id, expires_at in pending:
                    self._queue_closure(pipe, build_id, expires_at)
                pipe.execute()
            with self._mirror_lock:
                for build_id, _ in pending:
                    self._pending.pop(build_id, None)
        settling = self._epoch is None or now - self._epoch[1] < self.settle
        # While an epoch settles, read every closure: others are writing back old ones.
        since = 0 if settling else self._closed_seen - LOOKBACK
        raw, restored, rows, stored, server = self._read_state(since, now)
        current = self._parse_epoch(raw)
        if current is None:
            if raw is not None:  # damaged by hand: as good as lost
                self.client.delete(EPOCH)
            self._new_epoch(now)
            raw, restored, rows, stored, server = self._read_state(0, now)
            current = self._parse_epoch(raw)
            if current is None:
                raise RedisError("the epoch just written cannot be read back")
        previous = self._epoch
        reset = previous is not None and previous[0] != current[0]
        if reset:
            assert previous is not None
            self._write_back(previous[0], now)
            raw, restored, rows, stored, server = self._read_state(0, now)
        # Another server with the same epoch: a failover (or an older copy loaded).
        moved = self._server is not None and server != self._server
        with self._mirror_lock:
            for build_id, expires_at in rows:
                self._closed[build_id] = expires_at
            if rows:
                self._closed_seen = max(self._closed_seen, *(e for _, e in rows))
            self._closed = {k: v for k, v in self._closed.items() if v >= now}
            mirrored = len(self._closed)
            self._restored = frozenset(restored) | self._restored
            self._epoch = current
        due = time.monotonic() - self._reconciled_at >= FULL_RECONCILE
        if previous is None or reset:
            self._reconciled_at = time.monotonic()
        elif moved or mirrored != stored or due:
            # Same epoch, maybe other closures: Redis lost some (a failover to a replica that
            # had not received them) or holds some this replica never read.
            self._reconcile_closures(now, moved)
        # Only once reconciled: a sync that failed half-way compares again next time.
        self._server = server

    def _reconcile_closures(self, now: float, moved: bool = False) -> None:
        self._reconciled_at = time.monotonic()
        rows = cast(
            list[tuple[bytes, float]],
            self.client.zrangebyscore(CLOSED_SET, now, "+inf", withscores=True),
        )
        stored = {member.decode(): float(score) for member, score in rows}
        with self._mirror_lock:
            for build_id, expires_at in stored.items():
                self._closed[build_id] = max(expires_at, self._closed.get(build_id, 0.0))
            missing = [(k, v) for k, v in self._closed.items() if k not in stored and v >= now]
        if not missing:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for build_id, expires_at in missing:
                self._queue_closure(pipe, build_id, expires_at)
            pipe.execute()
        log.warning(
            "the key store lacked %d closed builds this replica remembers (%s): wrote them back",
            len(missing),
            "another Redis server answers now: a failover, or a restart from an older copy"
            if moved
            else "a failover to a replica that had not received them, or an older copy restored",
        )

    def _new_epoch(self, now: float) -> None:
        epoch = json.dumps({"id": secrets.token_hex(8), "created_at": now})
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(EPOCH, epoch, nx=True)
            pipe.exists(RING)
            created, ring_exists = pipe.execute()
        if created and ring_exists:
            # The ring outlived the missing epoch: an upgrade from a version without
            # epochs, not a reset. Its closures are all here, so tokens of before stand.
            self.client.sadd(RESTORED, LEGACY_EPOCH)
        if created:
            log.warning(
                "the key store has a new epoch%s",
                ""
                if ring_exists
                else " (it was empty: new, or a Redis restarted without "
                "persistence); replicas write back what they remember",
            )

    @staticmethod
    def _parse_epoch(raw: bytes | None) -> tuple[str, float] | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return str(data["id"]), float(data["created_at"])
        except (ValueError, TypeError, KeyError):
            return None

    def _write_back(self, previous: str, now: float) -> None:
        with self._mirror_lock:
            closures = [(k, v) for k, v in self._closed.items() if v > now]
            epochs = {previous, *self._restored}
        with self.client.pipeline(transaction=False) as pipe:
            for build_id, expires_at in closures:
                self._queue_closure(pipe, build_id, expires_at)
            pipe.sadd(RESTORED, *epochs)
            pipe.execute()
        log.warning(
            "the key store was reset (new epoch): wrote back %d closed builds this replica "
            "remembered",
            len(closures),
        )


def _describe_url(url: str) -> str:
    # Never echo a password that may be in the URL.
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"redis {parts.hostname or parts.path}:{parts.port or 6379}"


def sentinel_manager(sentinel: SentinelSettings) -> Sentinel:
    """redis-py's Sentinel for these settings: what to ask the sentinels, and how to reach
    the master they name."""
    tls: dict[str, Any] = {}
    if sentinel.tls:
        tls = {"ssl": True, "ssl_cert_reqs": "required"}
        if sentinel.tls_ca_file is not None:
            tls["ssl_ca_certs"] = str(sentinel.tls_ca_file)
    return Sentinel(
        list(sentinel.sentinels),
        # The sentinels are asked on every new connection, the request path's included: a
        # dead sentinel must cost a short timeout, then the next one is asked, never a
        # retry with backoff.
        sentinel_kwargs={
            "socket_timeout": HOT_TIMEOUTS[0],
            "socket_connect_timeout": HOT_TIMEOUTS[1],
            "retry": Retry(NoBackoff(), 0),
            "username": sentinel.sentinel_username,
            "password": sentinel.sentinel_password,
            **tls,
        },
        username=sentinel.username,
        password=sentinel.password,
        **tls,
    )
