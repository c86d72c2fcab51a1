"""The rules of a key's life, as pure functions of (ring document, now, policy).

A key goes next → current → retired → gone, and every time that decides its state is written
in the shared ring document when the key is created, so every replica derives the same state
from the same document and the same clock, with no coordination on the hot path:

- published: from `created_at`, as soon as it is in the document;
- next:      `now < sign_from`; `sign_from >= created_at + publish_lead` (max-age of cached
             JWKS + replica refresh bound + clock skew), so no verifier meets an unknown `kid`;
- current:   `sign_from <= now < sign_until`; windows are contiguous (next.sign_from ==
             current.sign_until), so a replica that lost the store can follow the schedule
             with keys it already knows were published;
- retired:   `sign_until <= now < remove_at`; `remove_at` covers the life of the longest
             token the key can sign (IDP_TOKEN_MAX_TTL, not the default IDP_TOKEN_TTL), clock
             skew and JWKS max-age, and only ever moves later, never earlier, so a shortened
             window (a forced rotation) cannot drop a key a stale replica signed with, and a
             raised IDP_TOKEN_MAX_TTL extends the keys that still sign (`maintain`);
- gone:      `now >= remove_at`, dropped from the document by the next maintenance.

SPIRE and Kubernetes pre-publish the same way; Vela instead adds a key per replica and restart
and deletes keys that signed live tokens, which is what these rules rule out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from idp.config import Settings
from idp.tokens.context import MAX_TTL

State = Literal["next", "current", "retired", "gone"]


class Malformed(ValueError):
    """The ring document is not of the shape below; the message names the part."""


def _int(data: dict[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise Malformed(f"{where} has no whole-number {name!r}")
    return value


def _str(data: dict[str, Any], name: str, where: str, limit: int = 256) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise Malformed(f"{where} has no {name!r} string")
    return value


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{where} is not a JSON object")
    return value


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    alg: str
    created_at: int
    sign_from: int
    sign_until: int
    remove_at: int
    private: dict[str, Any]  # sealed private JWK (see material.Sealer)

    def state(self, now: float) -> State:
        if now >= self.remove_at:
            return "gone"
        if now < self.sign_from:
            return "next"
        if now < self.sign_until:
            return "current"
        return "retired"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "a key") -> KeyRecord:
        data = _obj(data, where)
        record = cls(
            kid=_str(data, "kid", where),
            alg=_str(data, "alg", where),
            created_at=_int(data, "created_at", where),
            sign_from=_int(data, "sign_from", where),
            sign_until=_int(data, "sign_until", where),
            remove_at=_int(data, "remove_at", where),
            private=_obj(data.get("private"), f"{where}'s private key"),
        )
        if not record.sign_from <= record.sign_until <= record.remove_at:
            raise Malformed(f"{where} has times out of order (sign_from, sign_until, remove_at)")
        return record


@dataclass(frozen=True)
class SecretRecord:
    """An HMAC secret for request tokens; request tokens name it in their `kid`."""

    id: str
    created_at: int
    sealed: dict[str, Any]  # sealed oct JWK (see material.Sealer)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "a request-token secret") -> SecretRecord:
        data = _obj(data, where)
        return cls(
            _str(data, "id", where, 64),
            _int(data, "created_at", where),
            _obj(data.get("sealed"), f"{where}'s value"),
        )


# The id of the one secret rings written before secrets rotated had (tokens without a `kid`).
LEGACY_SECRET_ID = "legacy"  # noqa: S105 - an id, not a secret
# The lineage of rings written before rings carried one.
LEGACY_RING_ID = "legacy"


@dataclass(frozen=True)
class RingDoc:
    """The one shared state document; `version` grows by one with every write.

    `ring_id` names the lineage: it is drawn when a ring is created and kept by every later
    version, so a replica can tell a newer version of its ring from a different ring (one
    created while the store had lost the first) and merge instead of switching (`merge`).
    """

    version: int
    keys: tuple[KeyRecord, ...]
    secrets: tuple[SecretRecord, ...]  # request-token secrets, oldest first
    ring_id: str = LEGACY_RING_ID

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "ring_id": self.ring_id,
            "keys": [k.to_json() for k in self.keys],
            "request_secrets": [s.to_json() for s in self.secrets],
        }

    @classmethod
    def from_json(cls, data: object) -> RingDoc:
        """Parse a stored ring, or raise Malformed naming what is wrong: every field is
        checked, so a damaged document is refused here and never half-used."""
        data = _obj(data, "the ring document")
        keys = data.get("keys")
        if not isinstance(keys, list) or not keys:
            raise Malformed("the ring document has no keys")
        records = tuple(KeyRecord.from_json(k, f"key #{i + 1}") for i, k in enumerate(keys))
        if len({k.kid for k in records}) != len(records):
            raise Malformed("the ring document lists a key twice")
        if "request_secrets" in data:
            raw = data["request_secrets"]
            if not isinstance(raw, list) or not raw:
                raise Malformed("the ring document has no request-token secrets")
            secrets = tuple(
                SecretRecord.from_json(s, f"request-token secret #{i + 1}")
                for i, s in enumerate(raw)
            )
        else:
            # A ring from before secrets rotated: its one secret, due for rotation at once.
            secret = _obj(data.get("request_secret"), "the ring's request-token secret")
            secrets = (SecretRecord(LEGACY_SECRET_ID, 0, secret),)
        if len({s.id for s in secrets}) != len(secrets):
            raise Malformed("the ring document lists a request-token secret twice")
        ring_id = data.get("ring_id", LEGACY_RING_ID)
        if not isinstance(ring_id, str) or not 0 < len(ring_id) <= 64:
            raise Malformed("the ring document's ring_id is not a short string")
        version = _int(data, "version", "the ring document")
        if version < 1:
            raise Malformed("the ring document's version is not a positive number")
        return cls(version=version, keys=records, secrets=secrets, ring_id=ring_id)


# Request-token secrets rotate at most this often: each stays until the longest-lived request
# token it signed (a day) has expired, so a faster rotation would only pile them up.
MIN_SECRET_PERIOD = 6 * 3600


@dataclass(frozen=True)
class Policy:
    alg: str
    rotation_period: int
    publish_lead: int
    retire_keep: int
    # Request-token secrets: a new one every `secret_period`; it signs only once every replica
    # has read it (`secret_lead`), and the one before stays for `secret_keep` after that.
    secret_period: int = MIN_SECRET_PERIOD
    secret_lead: int = 3
    secret_keep: int = MAX_TTL + 60
    # How far replicas' clocks may differ (IDP_CLOCK_SKEW).
    skew: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            alg=settings.signing_alg,
            rotation_period=settings.rotation_period,
            publish_lead=settings.publish_lead,
            retire_keep=settings.retire_keep,
            secret_period=max(settings.rotation_period, MIN_SECRET_PERIOD),
            secret_lead=math.ceil(settings.refresh_interval) + settings.clock_skew + 1,
            secret_keep=MAX_TTL + settings.clock_skew,
            skew=settings.clock_skew,
        )


# A factory for new keys: given the alg, returns (kid, sealed private JWK).
NewKey = Callable[[str], tuple[str, dict[str, Any]]]


def current_key(keys: Iterable[KeyRecord], now: float) -> KeyRecord | None:
    signing = [k for k in keys if k.state(now) == "current"]
    return max(signing, key=lambda k: k.sign_from, default=None)


def published_keys(keys: Iterable[KeyRecord], now: float) -> list[KeyRecord]:
    """Keys in the JWKS at `now`. Never none: when a replica cut off from the store outlives
    every key it knows, it keeps publishing the last one (a verifier with an empty JWKS can
    verify nothing, and that key is what the ring resumes with)."""
    keys = list(keys)
    live = sorted((k for k in keys if k.state(now) != "gone"), key=lambda k: k.sign_from)
    if not live and keys:
        live = [max(keys, key=lambda k: k.sign_until)]
    return live


def next_event(keys: Iterable[KeyRecord], now: float) -> float:
    """The next moment any key changes state; views derived from the ring hold until then."""
    times = [t for k in keys for t in (k.sign_from, k.sign_until, k.remove_at) if t > now]
    return min(times, default=float("inf"))


def _kept_too_briefly(key: KeyRecord, now: float, policy: Policy) -> bool:
    """A key that may still sign but would be dropped before its longest token expires."""
    return now < key.sign_until and key.remove_at < key.sign_until + policy.retire_keep


def _extend(key: KeyRecord, sign_until: int, policy: Policy) -> KeyRecord:
    return dataclasses.replace(
        key,
        sign_until=sign_until,
        remove_at=max(key.remove_at, sign_until + policy.retire_keep),
    )


def _new(
    kid_and_sealed: tuple[str, dict[str, Any]], alg: str, now: int, start: int, policy: Policy
) -> KeyRecord:
    kid, sealed = kid_and_sealed
    until = start + policy.rotation_period
    return KeyRecord(
        kid=kid,
        alg=alg,
        created_at=now,
        sign_from=start,
        sign_until=until,
        remove_at=until + policy.retire_keep,
        private=sealed,
    )


def prepare_at(current: KeyRecord, policy: Policy) -> int:
    """When the successor of `current` is created: half-way through its window (as SPIRE
    prepares at half-life), and never later than two publish leads before the switch."""
    lead_point = current.sign_until - 2 * policy.publish_lead
    half_life = current.sign_from + (current.sign_until - current.sign_from) // 2
    return max(current.sign_from, min(lead_point, half_life))


# --- request-token secrets ----------------------------------------------------------------


def signing_secret(secrets: Sequence[SecretRecord], now: int, policy: Policy) -> SecretRecord:
    """The secret new request tokens are signed with: the newest every replica has had time to
    read (a replica that has not would refuse the token), or the first of a new ring."""
    ready = [s for s in secrets if s.created_at + policy.secret_lead <= now]
    return ready[-1] if ready else secrets[0]


def _secrets_due(secrets: Sequence[SecretRecord], now: int, policy: Policy) -> bool:
    if not secrets or secrets[-1].created_at + policy.secret_period <= now:
        return True
    return len(_live_secrets(secrets, now, policy)) != len(secrets)


def _live_secrets(secrets: Sequence[SecretRecord], now: int, policy: Policy) -> list[SecretRecord]:
    # A secret stops signing when its successor starts; it is kept until the last request
    # token it can have signed has expired.
    live = []
    for index, record in enumerate(secrets):
        successor = secrets[index + 1] if index + 1 < len(secrets) else None
        if (
            successor is None
            or successor.created_at + policy.secret_lead + policy.secret_keep > now
        ):
            live.append(record)
    return live


def maintain_secrets(
    secrets: Sequence[SecretRecord],
    now: int,
    policy: Policy,
    new_secret: Callable[[], dict[str, Any]],
) -> tuple[SecretRecord, ...]:
    live = _live_secrets(secrets, now, policy)
    if not live or live[-1].created_at + policy.secret_period <= now:
        sealed = new_secret()
        # Unique across rings too (two rings created in one second must not share an id).
        tag = hashlib.sha256(json.dumps(sealed, sort_keys=True).encode()).hexdigest()[:8]
        live.append(SecretRecord(f"r{now}-{tag}", now, sealed))
    return tuple(live)


def needs_maintenance(doc: RingDoc | None, now: int, policy: Policy) -> bool:
    """Whether `maintain` would change the ring; cheap, so every replica can ask it often."""
    if doc is None:
        return True
    if _secrets_due(doc.secrets, now, policy):
        return True
    if any(k.state(now) == "gone" for k in doc.keys):
        return True
    if any(_kept_too_briefly(k, now, policy) for k in doc.keys):
        return True
    current = current_key(doc.keys, now)
    if current is None:
        return True
    has_next = any(k.state(now) == "next" for k in doc.keys)
    return not has_next and now >= prepare_at(current, policy)


def maintain(
    doc: RingDoc | None,
    now: int,
    policy: Policy,
    new_key: NewKey,
    new_secret: Callable[[], dict[str, Any]],
) -> RingDoc | None:
    """The ring as it should be at `now`, or None when nothing needs to change.

    Run by whichever replica holds the store's write lock; idempotent, so a replica that
    races another and loses simply finds nothing left to do.
    """
    if not needs_maintenance(doc, now, policy):
        return None
    keys = published_keys(doc.keys, now) if doc else []
    # Keys that may still sign are kept for the longest token of this policy, should the ring
    # have been written under a shorter one (IDP_TOKEN_MAX_TTL raised, or a replica of an
    # older release): `_extend` only ever moves `remove_at` later.
    keys = [
        _extend(k, k.sign_until, policy) if _kept_too_briefly(k, now, policy) else k for k in keys
    ]
    secrets = maintain_secrets(doc.secrets if doc else (), now, policy, new_secret)

    current = current_key(keys, now)
    if current is None:
        current, keys = _restore_current(keys, now, policy, new_key)

    if not any(k.state(now) == "next" for k in keys) and now >= prepare_at(current, policy):
        start = max(current.sign_until, now + policy.publish_lead)
        if start > current.sign_until:
            # A period shorter than the publish lead: the current key signs on until its
            # successor has been published long enough.
            extended = _extend(current, start, policy)
            keys = [extended if k.kid == current.kid else k for k in keys]
        keys.append(_new(new_key(policy.alg), policy.alg, now, start, policy))

    version = doc.version + 1 if doc else 1
    keys.sort(key=lambda k: k.sign_from)
    # A new ring's lineage is named after its first key: unique, and no other input needed.
    ring_id = doc.ring_id if doc else f"{now}-{keys[0].kid[:16]}"
    return RingDoc(version=version, keys=tuple(keys), secrets=secrets, ring_id=ring_id)


def _restore_current(
    keys: list[KeyRecord], now: int, policy: Policy, new_key: NewKey
) -> tuple[KeyRecord, list[KeyRecord]]:
    """No key signs at `now` (the ring is new, or maintenance stopped for a whole window)."""
    waiting = sorted((k for k in keys if k.state(now) == "next"), key=lambda k: k.sign_from)
    ready = [k for k in waiting if now - k.created_at >= policy.publish_lead]
    if ready:
        # A next key published long enough ago may start now, ahead of its schedule.
        promoted = dataclasses.replace(ready[0], sign_from=now)
        return promoted, [promoted if k.kid == promoted.kid else k for k in keys]
    retired = [k for k in keys if k.state(now) in ("retired", "gone")]
    if retired:
        # Still published (a key past its removal time is here only as the last published
        # one): let the latest sign again until the next one may start.
        last = max(retired, key=lambda k: k.sign_until)
        until = waiting[0].sign_from if waiting else now + policy.rotation_period
        extended = _extend(
            dataclasses.replace(last, sign_from=min(last.sign_from, now)), until, policy
        )
        return extended, [extended if k.kid == last.kid else k for k in keys]
    # A new ring: nothing was ever published, so no verifier can hold a stale JWKS.
    fresh = _new(new_key(policy.alg), policy.alg, now, now, policy)
    if waiting:
        fresh = _extend(dataclasses.replace(fresh, sign_until=now), waiting[0].sign_from, policy)
    return fresh, [*keys, fresh]


def rotate(doc: RingDoc, now: int, policy: Policy, new_key: NewKey) -> tuple[RingDoc | None, str]:
    """Force the next step now: the next key starts signing if it was published long enough.

    Returns the new document (None when the rotation must wait) and a sentence for the operator.
    """
    current = current_key(doc.keys, now)
    waiting = sorted((k for k in doc.keys if k.state(now) == "next"), key=lambda k: k.sign_from)
    if not waiting:
        # Publish a successor now; it may sign once every cached JWKS can hold it.
        start = now + policy.publish_lead
        fresh = _new(new_key(policy.alg), policy.alg, now, start, policy)
        keys = list(doc.keys)
        if current is not None and current.sign_until != start:
            moved = _extend(current, start, policy)
            keys = [moved if k.kid == current.kid else k for k in keys]
        keys.append(fresh)
        keys.sort(key=lambda k: k.sign_from)
        return dataclasses.replace(doc, version=doc.version + 1, keys=tuple(keys)), (
            f"published new key {fresh.kid}; to keep every verifier's cached JWKS valid it "
            f"starts signing at {iso(start)} (in {policy.publish_lead}s); run rotate again "
            "then or let the schedule take over"
        )
    nxt = waiting[0]
    ready_at = nxt.created_at + policy.publish_lead
    if now < ready_at:
        return None, (
            f"key {nxt.kid} was published {now - nxt.created_at}s ago; to keep every verifier's "
            f"cached JWKS valid it may only sign from {iso(ready_at)} (in {ready_at - now}s), and "
            f"it will take over at {iso(nxt.sign_from)} as scheduled"
        )
    keys = list(doc.keys)
    promoted = dataclasses.replace(
        nxt,
        sign_from=now,
        sign_until=now + policy.rotation_period,
        remove_at=max(nxt.remove_at, now + policy.rotation_period + policy.retire_keep),
    )
    keys = [promoted if k.kid == nxt.kid else k for k in keys]
    if current is not None:
        # Shortening a window keeps its remove_at (it only ever grows), so a replica that
        # has not seen this change yet and signs on with the old key stays verifiable.
        ended = dataclasses.replace(current, sign_until=now)
        keys = [ended if k.kid == current.kid else k for k in keys]
    # Later next keys keep contiguous windows after the promoted one.
    start = promoted.sign_until
    for other in waiting[1:]:
        moved = dataclasses.replace(other, sign_from=max(other.sign_from, start))
        moved = _extend(
            moved, max(moved.sign_until, moved.sign_from + policy.rotation_period), policy
        )
        keys = [moved if k.kid == other.kid else k for k in keys]
        start = moved.sign_until
    interim = dataclasses.replace(doc, keys=tuple(keys))
    # Keys only: secrets keep their own schedule, applied by the next maintenance.
    keys_only = dataclasses.replace(policy, secret_period=2**62, secret_keep=2**62)
    after = maintain(interim, now, keys_only, new_key, _never) or interim
    final = dataclasses.replace(doc, version=doc.version + 1, keys=after.keys)
    return (
        final,
        f"key {promoted.kid} signs from now; the previous key stays published until its "
        "tokens expire",
    )


def iso(ts: int) -> str:
    """A ring time as `idp keys list` prints it (UTC, ISO 8601)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _never() -> dict[str, Any]:
    raise AssertionError("a rotation of keys never creates a request-token secret")


# --- two rings where there should be one ----------------------------------------------------


def merge(stored: RingDoc, ours: RingDoc, now: int, policy: Policy) -> RingDoc | None:
    """`stored` plus whatever of `ours` a live token may still need, or None if it has all.

    Two replicas can hold different rings: the store lost its ring and a process that had
    none created another before a replica restored the first, or a replica restored an older
    version than another had. Switching to the stored ring would drop keys that signed live
    tokens (and secrets of live request tokens); keeping ours would split the replicas' JWKS.
    So the stored ring wins, and every key of ours that may have signed a token still alive
    is added to it as retired (it signs no more, and stays published until its tokens are
    over), as is every request-token secret of ours that may have signed a live request token.
    Keys ours only had as `next` never signed and are left out. `skew` keeps a key that
    another replica's clock already counts as gone from being added back and removed in turn.
    """
    have = {k.kid for k in stored.keys}
    missing = [
        # remove_at stays: it is already past the original sign_until + retire_keep.
        dataclasses.replace(k, sign_until=min(k.sign_until, now))
        for k in ours.keys
        if k.kid not in have and k.sign_from <= now and k.remove_at > now + policy.skew
    ]
    known = {s.id for s in stored.secrets}
    live = {s.id for s in _live_secrets(ours.secrets, now + policy.skew, policy)}
    secrets = [s for s in ours.secrets if s.id not in known and s.id in live]
    if not missing and not secrets:
        return None
    return RingDoc(
        version=max(stored.version, ours.version) + 1,
        keys=tuple(sorted((*stored.keys, *missing), key=lambda k: k.sign_from)),
        secrets=tuple(sorted((*stored.secrets, *secrets), key=lambda s: s.created_at)),
        ring_id=stored.ring_id,
    )
