"""The key ring service: what the views use to sign and to publish keys.

It keeps the ring in the process and never touches the store on the hot path. A background
thread re-reads the store every `IDP_REFRESH_INTERVAL` seconds (the documented bound within
which every replica serves the same JWKS after a change) and, when the rules in `ring` call for
it, writes the next state under the store's lock. When the store is unreachable it keeps
serving the last good copy; signing then follows the schedule of keys already published and
stops (503) when no known key is inside its signing window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.jwk import OctKey

from idp.config import Settings
from idp.errors import KeyDecryptionError, RingRefused, Unavailable
from idp.keys import material
from idp.keys.ring import (
    KeyRecord,
    Malformed,
    Policy,
    RingDoc,
    current_key,
    maintain,
    merge,
    needs_maintenance,
    next_event,
    published_keys,
    rotate,
    signing_secret,
)
from idp.observability import metrics
from idp.store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """A response body computed once per ring change and served as is."""

    body: bytes
    etag: str  # strong validator: the body's hash


@dataclass(frozen=True)
class _View:
    version: int
    valid_until: float  # next moment a key changes state
    signing: KeyRecord | None
    jwks: Published
    algs: tuple[str, ...]


class KeyRing:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.policy = Policy.from_settings(settings)
        # What a key must stay published for after its token's `exp`: clock skew, a verifier's
        # cached JWKS and the replicas' refresh (the rest of `retire_keep`).
        self._keep_after_exp = settings.retire_keep - settings.token_max_ttl
        self.sealer = material.Sealer(settings.key_encryption_keys)
        self._lock = threading.Lock()
        self._doc: RingDoc | None = None
        self._digest: str | None = None  # content of the installed ring
        self._keys: dict[str, material.SigningKey] = {}
        self._request_keys: dict[str, OctKey] = {}
        self._view: _View | None = None
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._refused: str | None = None  # why the stored ring is refused, while it is
        self._stored_needs_resign = False
        # A store that can forget everything may be empty because it just lost the ring that
        # live replicas still hold; give them this long to write it back before creating one.
        self.creation_grace = 2 * settings.refresh_interval + 1 if store.volatile else 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: list[Callable[[], None]] = []

    # --- loading and maintenance ----------------------------------------------------------

    def refresh(self) -> bool:
        """One cycle: read the store, apply maintenance if due. False when the store failed
        or its ring was refused (then the last good ring keeps serving).

        A process with no ring yet raises instead: RingRefused when the stored ring is
        damaged or not authentic, KeyDecryptionError when the configured KEK cannot open it.
        Neither is ever answered by writing a new ring over the stored one.
        """
        try:
            self.store.sync()
            stored = self._read()
            doc = self._restore_or_create() if stored is None else self._reconcile(stored)
            if doc is not None and self._due(doc, int(self.clock())):
                self.store.update_ring(self._maintain_json)
                stored = self._read()
                doc = self._reconcile(stored) if stored is not None else doc
        except StoreUnavailable as exc:
            self._note_failure(str(exc))
            return False
        except (RingRefused, KeyDecryptionError) as exc:
            if self._doc is None:
                if isinstance(exc, KeyDecryptionError):
                    raise
                raise RingRefused(self._refusal(exc)) from None
            self._note_refusal(exc)
            return False
        if doc is not None:
            self._install(doc)
        self._last_ok = self.clock()
        if self._refused is not None:
            log.warning("the key store's ring is usable again (%s)", self.store.describe())
            self._refused = None
        if self._last_error is not None:
            log.warning("key store reachable again (%s)", self.store.describe())
            self._last_error = None
        return doc is not None

    def _refusal(self, exc: Exception) -> str:
        what = exc.description if isinstance(exc, RingRefused) else str(exc)
        return (
            f"the key ring in {self.store.describe_ring()} is refused: {what}. Nothing was "
            "overwritten; run `idp keys repair` to see how to restore it (from a backup or a "
            "replica) or adopt it"
        )

    def _note_refusal(self, exc: Exception) -> None:
        # The last good ring keeps serving: signing follows its schedule, and readiness
        # turns false only when no key of it is inside its signing window.
        metrics().ring_refused.inc()
        self._last_ok = self.clock()
        message = self._refusal(exc)
        if self._refused != message:
            log.error("%s; serving the last good ring meanwhile", message)
        self._refused = message

    def _note_failure(self, message: str) -> None:
        metrics().store_errors.inc()
        if self._last_error is None:
            where = self.store.describe()  # the address, for the operator's log only
            if self._doc is not None:
                log.error("%s (%s); serving the cached key ring", message, where)
            else:
                log.error(
                    "%s (%s) and no key ring is loaded yet: nothing can be signed or "
                    "published until it answers; retrying every %ss",
                    message,
                    where,
                    self.settings.refresh_interval,
                )
        self._last_error = message

    def _read(self) -> RingDoc | None:
        raw = self.store.read_ring()
        if raw is None:
            return None
        doc = self._open(raw)
        self._stored_needs_resign = self.sealer.document_needs_resign(raw)
        return doc

    def _open(self, raw: dict[str, Any], authenticated: bool = True) -> RingDoc:
        """A stored document, authenticated (with a KEK) and checked field by field."""
        document = self.sealer.open_document(raw) if authenticated else raw
        try:
            return RingDoc.from_json({k: v for k, v in document.items() if k != "mac"})
        except Malformed as exc:
            raise RingRefused(str(exc)) from None

    def _signed_json(self, doc: RingDoc) -> dict[str, Any]:
        return self.sealer.sign_document(self._reseal(doc).to_json())

    def _restore_or_create(self) -> RingDoc | None:
        if self._doc is not None:
            # The store lost the ring (a Redis restarted without persistence). Our copy is
            # the last good one: put it back rather than start a new ring, which would sign
            # with unpublished keys and drop keys of live tokens.
            log.warning("the key store lost the key ring; restoring it from this replica")
            cached = self._signed_json(self._doc)
            self.store.update_ring(lambda current: None if current is not None else cached)
        else:
            deadline = time.monotonic() + self.creation_grace
            while time.monotonic() < deadline:
                # Replicas that hold the ring restore it within a refresh interval.
                if self.store.read_ring() is not None:
                    break
                time.sleep(min(0.2, self.creation_grace))
            else:
                self.store.update_ring(self._maintain_json)
        stored = self._read()
        return self._reconcile(stored) if stored is not None else None

    def _reconcile(self, stored: RingDoc) -> RingDoc:
        """The ring to serve, given the stored one: converge on content, never on version.

        Normally the stored ring is the same as ours or its successor. When it lacks a key
        or secret that ours has and a live token may need (see `ring.merge`), it is a second
        ring: merge ours into it in the store, and serve the merge meanwhile.
        """
        ours = self._doc
        if ours is None or material.digest(stored.to_json()) == self._digest:
            return stored
        now = int(self.clock())
        merged = merge(stored, ours, now, self.policy)
        same_version = stored.version == ours.version
        if merged is None:
            if same_version:
                metrics().ring_conflicts.inc()
                log.warning(
                    "the stored key ring has this replica's version %d with other content; "
                    "it has every key this replica needs, so it is taken as is",
                    stored.version,
                )
            return stored
        metrics().ring_conflicts.inc()
        log.warning(
            "the stored key ring (%s v%d) lacks keys or request-token secrets of this "
            "replica's ring (%s v%d) that live tokens may need; merging them into it",
            stored.ring_id,
            stored.version,
            ours.ring_id,
            ours.version,
        )
        target = material.digest(stored.to_json())

        def change(raw: dict[str, Any] | None) -> dict[str, Any] | None:
            if raw is None or material.digest(self._open(raw).to_json()) != target:
                return None  # changed meanwhile: the next cycle decides again
            return self._signed_json(merged)

        self.store.update_ring(change)
        after = self._read()
        if after is not None and merge(after, ours, now, self.policy) is None:
            return after
        return merged

    def _due(self, doc: RingDoc, now: int) -> bool:
        if needs_maintenance(doc, now, self.policy):
            return True
        # Re-seal under a new key-encryption key once the operator has rotated it.
        return self.sealer.encrypts and (
            self._stored_needs_resign
            or any(self.sealer.needs_reseal(s) for s in self._sealed_values(doc))
        )

    @staticmethod
    def _sealed_values(doc: RingDoc) -> list[dict[str, Any]]:
        return [*(s.sealed for s in doc.secrets), *(k.private for k in doc.keys)]

    def _new_key(self, alg: str) -> tuple[str, dict[str, Any]]:
        key = material.generate_signing_key(alg)
        assert key.kid is not None
        return key.kid, self.sealer.seal(key.as_dict(private=True))

    def _new_secret(self) -> dict[str, Any]:
        return self.sealer.seal(material.new_hmac_secret().as_dict(private=True))

    def _maintain_json(self, raw: dict[str, Any] | None) -> dict[str, Any] | None:
        doc = self._open(raw) if raw is not None else None
        now = int(self.clock())
        if doc is not None:
            # Refuse to touch a ring this process cannot open: it would mix keys sealed
            # under two secrets.
            self._materialize(doc)
        new = maintain(doc, now, self.policy, self._new_key, self._new_secret)
        if new is None and doc is not None and raw is not None and self.sealer.encrypts:
            stale = self.sealer.document_needs_resign(raw) or any(
                self.sealer.needs_reseal(s) for s in self._sealed_values(doc)
            )
            new = dataclasses.replace(doc, version=doc.version + 1) if stale else None
        if new is None:
            return None
        return self._signed_json(new)

    def _reseal(self, doc: RingDoc, allow_plain: bool = False) -> RingDoc:
        if not self.sealer.encrypts:
            return doc

        def again(sealed: dict[str, Any], what: str) -> dict[str, Any]:
            if not self.sealer.needs_reseal(sealed):
                return sealed
            return self.sealer.seal(self.sealer.open(sealed, what, allow_plain))

        keys = tuple(
            dataclasses.replace(k, private=again(k.private, f"private key {k.kid}"))
            for k in doc.keys
        )
        secrets = tuple(
            dataclasses.replace(s, sealed=again(s.sealed, f"request-token secret {s.id}"))
            for s in doc.secrets
        )
        return dataclasses.replace(doc, keys=keys, secrets=secrets)

    def _materialize(
        self, doc: RingDoc, allow_plain: bool = False
    ) -> tuple[dict[str, material.SigningKey], dict[str, OctKey]]:
        """Open every key and secret of `doc`, checking each key against its record."""
        keys: dict[str, material.SigningKey] = {}
        for record in doc.keys:
            known = self._keys.get(record.kid)
            if known is None:
                jwk = self.sealer.open(record.private, f"private key {record.kid}", allow_plain)
                try:
                    known = material.import_signing_key(jwk)
                except (ValueError, TypeError, KeyError, KeyDecryptionError) as exc:
                    raise RingRefused(f"key {record.kid[:64]!r} does not import ({exc})") from None
                material.check_signing_key(known, record.kid, record.alg)
            keys[record.kid] = known
        request_keys: dict[str, OctKey] = {}
        for secret in doc.secrets:
            value = self.sealer.open(
                secret.sealed, f"request-token secret {secret.id}", allow_plain
            )
            try:
                request_keys[secret.id] = OctKey.import_key(value)
            except (ValueError, TypeError, KeyError) as exc:
                raise RingRefused(f"request-token secret {secret.id!r} does not import") from exc
            if len(request_keys[secret.id].raw_value) < 32:
                raise RingRefused(f"request-token secret {secret.id!r} is shorter than 256 bits")
        return keys, request_keys

    def _install(self, doc: RingDoc) -> None:
        digest = material.digest(doc.to_json())
        if digest == self._digest:
            return
        keys, request_keys = self._materialize(doc)
        with self._lock:
            self._doc = doc
            self._digest = digest
            self._keys = keys
            self._request_keys = request_keys
            self._view = None
        for callback in self.on_change:
            callback()

    def rotate_now(self) -> str:
        """Force the next step of the key life now (still publish-before-use)."""
        message = ""

        def change(raw: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal message
            doc = self._open(raw) if raw is not None else None
            if doc is None:
                message = "the ring was empty; created its first keys"
                return self._maintain_json(None)
            self._materialize(doc)
            new, message = rotate(doc, int(self.clock()), self.policy, self._new_key)
            return self._signed_json(new) if new else None

        if not self.store.update_ring(change):
            return "another replica is changing the key ring right now; try again in a moment"
        self.refresh()
        return message

    # --- repair (`idp keys repair`) -------------------------------------------------------

    def diagnose(self) -> tuple[bool, str]:
        """(sound, a sentence) about the stored ring, without changing anything."""
        try:
            doc = self._read()
            if doc is None:
                return True, f"no key ring is stored in {self.store.describe_ring()} yet"
            self._materialize(doc)
        except (RingRefused, KeyDecryptionError) as exc:
            return False, self._refusal(exc)
        return True, (
            f"the key ring in {self.store.describe_ring()} is sound: version {doc.version}, "
            f"{len(doc.keys)} keys, {len(doc.secrets)} request-token secrets"
        )

    def repair(
        self, *, backup: dict[str, Any] | None = None, adopt: bool = False, new: bool = False
    ) -> str:
        """Replace the stored ring, on the operator's explicit word; returns what was done.

        - `backup`: write this document (a copy of the ring taken earlier) instead;
        - `adopt`: take the stored ring (or `backup`) although it is not authenticated under
          the configured KEK (written without a KEK, or before rings carried a MAC): its keys
          are checked, then sealed and authenticated under the KEK;
        - `new`: start a new ring. Tokens signed by the old keys stop verifying, except at
          replicas that still hold them: those merge them back as retired keys.

        The version written is above any stored one, so running replicas take it, and merge
        into it whatever keys of live tokens they hold that it lacks.
        """
        try:
            stored = self.store.read_ring()
        except RingRefused:
            stored = None
        try:
            prior = RingDoc.from_json({k: v for k, v in (stored or {}).items() if k != "mac"})
            version = prior.version
        except Malformed:
            version = 0
        now = int(self.clock())
        if new:
            fresh = maintain(None, now, self.policy, self._new_key, self._new_secret)
            assert fresh is not None
            doc = dataclasses.replace(fresh, version=version + 1)
            done = (
                f"started a new key ring (version {doc.version}, key {doc.keys[0].kid}); tokens "
                "signed by the old keys no longer verify where no replica still holds them"
            )
        else:
            source = backup if backup is not None else stored
            if source is None:
                raise RingRefused(
                    f"nothing readable is stored in {self.store.describe_ring()} and no backup "
                    "was given: pass --from FILE with a copy of the ring, or --new"
                )
            doc = self._open(source, authenticated=not adopt)
            self._materialize(doc, allow_plain=adopt)
            doc = self._reseal(doc, allow_plain=adopt)
            doc = dataclasses.replace(doc, version=max(version, doc.version) + 1)
            done = (
                f"wrote {'the backup' if backup is not None else 'the stored ring'} as version "
                f"{doc.version} ({len(doc.keys)} keys)"
                + (", sealed and authenticated under IDP_KEY_ENCRYPTION_KEY" if adopt else "")
            )
        if not self.store.replace_ring(self._signed_json(doc)):
            raise Unavailable(
                "another replica is changing the key ring right now; run the repair again"
            )
        return f"{done} in {self.store.describe_ring()}"

    # --- background refresh ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="idp-keyring", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.refresh_interval):
            try:
                self.refresh()
            except Exception:  # keep the loop alive whatever happens; the cause is logged
                log.exception("key ring refresh failed")

    # --- what the views use ---------------------------------------------------------------

    def _current_view(self) -> _View:
        now = self.clock()
        view = self._view
        if view is not None and now < view.valid_until:
            return view
        with self._lock:
            doc = self._doc
            if doc is None:
                raise Unavailable(
                    f"the key ring is not loaded yet ({self._last_error or 'store not read'}); "
                    "check that the key store is reachable"
                )
            published = published_keys(doc.keys, now)
            entries = [material.public_jwk(self._keys[k.kid], k.alg) for k in published]
            body = json.dumps({"keys": entries}, separators=(",", ":")).encode()
            view = _View(
                version=doc.version,
                valid_until=next_event(doc.keys, now),
                signing=current_key(doc.keys, now),
                jwks=Published(body, '"' + hashlib.sha256(body).hexdigest()[:40] + '"'),
                algs=tuple(sorted({k.alg for k in published})),
            )
            self._view = view
            return view

    def jwks(self) -> Published:
        return self._current_view().jwks

    def algorithms(self) -> tuple[str, ...]:
        return self._current_view().algs

    @property
    def version(self) -> int:
        return self._current_view().version

    def sign(self, claims: dict[str, Any]) -> tuple[str, str]:
        """Sign an ID token with the current key; returns (token, kid)."""
        signing = self._current_view().signing
        if signing is None:
            raise Unavailable(
                "no signing key is inside its signing window (the key store has been "
                "unreachable too long to know a published key); retry when it is back"
            )
        exp = claims.get("exp")
        if isinstance(exp, int) and exp + self._keep_after_exp > signing.remove_at:
            # The ring was written under a shorter IDP_TOKEN_MAX_TTL (a replica of another
            # configuration, or this one's before the next maintenance extends the key): this
            # token would outlive its key in the JWKS and fail at every verifier.
            raise Unavailable(
                f"the signing key is published only until {signing.remove_at}, before this "
                f"token would expire ({exp}): the key ring is being extended for the longest "
                "lifetime; retry in a few seconds or ask for a shorter lifetime"
            )
        header = {"alg": signing.alg, "kid": signing.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._keys[signing.kid]), signing.kid

    def request_signing_key(self) -> tuple[str, OctKey]:
        """(id, key) of the secret new request tokens are signed with."""
        with self._lock:  # the document and its opened secrets, from the same install
            doc, keys = self._doc, self._request_keys
        if doc is None:
            raise Unavailable(
                "the key ring is not loaded yet; check that the key store is reachable"
            )
        record = signing_secret(doc.secrets, int(self.clock()), self.policy)
        return record.id, keys[record.id]

    @property
    def request_keys(self) -> dict[str, OctKey]:
        """Every secret a live request token may be signed with, by id."""
        if self._doc is None:
            raise Unavailable(
                "the key ring is not loaded yet; check that the key store is reachable"
            )
        return self._request_keys

    def readiness(self) -> tuple[bool, str]:
        now = self.clock()
        if self._doc is None:
            return False, f"key ring not loaded ({self._last_error or 'not read yet'})"
        if self._current_view().signing is None:
            return False, "no key is inside its signing window"
        if self._last_ok is None or now - self._last_ok > self.settings.ready_stale_after:
            return False, (
                f"key store unreachable for over {self.settings.ready_stale_after}s "
                f"({self._last_error})"
            )
        if self._refused is not None:
            # Still ready: the last good ring signs until its window ends (then not ready).
            return True, f"ok, serving the last good key ring: {self._refused}"
        return True, "ok"

    def describe(self) -> list[dict[str, Any]]:
        """Each key with its state and times, for `idp keys list`."""
        now = self.clock()
        doc = self._doc
        if doc is None:
            return []
        return [
            {
                "kid": k.kid,
                "alg": k.alg,
                "state": k.state(now),
                "created_at": k.created_at,
                "sign_from": k.sign_from,
                "sign_until": k.sign_until,
                "remove_at": k.remove_at,
            }
            for k in doc.keys
        ]
