"""The key ring service: what the views use to sign and to publish keys.

It keeps the ring in the process and never touches the store on the hot path. A background
thread re-reads the store every `IDP_REFRESH_INTERVAL` seconds (the documented bound within
which every replica serves the same JWKS after a change) and, when the rules in `ring` call for
it, writes the next state under the store's lock. When the store is unreachable it keeps
serving the last good copy; signing then follows the schedule of keys already published and
stops (503) when no known key is inside its signing window.
"""

from __future__ import annotations

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
from idp.errors import KeyDecryptionError, Unavailable
from idp.keys import material
from idp.keys.ring import (
    KeyRecord,
    Policy,
    RingDoc,
    SecretRecord,
    current_key,
    maintain,
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
        self.sealer = material.Sealer(settings.key_encryption_keys)
        self._lock = threading.Lock()
        self._doc: RingDoc | None = None
        self._keys: dict[str, material.SigningKey] = {}
        self._request_keys: dict[str, OctKey] = {}
        self._view: _View | None = None
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: list[Callable[[], None]] = []

    # --- loading and maintenance ----------------------------------------------------------

    def refresh(self) -> bool:
        """One cycle: read the store, apply maintenance if due. False when the store failed.

        A key the configured KEK cannot open raises KeyDecryptionError: that is a
        configuration error, never something to serve around.
        """
        try:
            self.store.sync()
            raw = self.store.read_ring()
            if raw is None and self._doc is not None:
                # The store lost the ring (a Redis restarted without persistence). Our copy
                # is the last good one: put it back rather than start a new ring, which
                # would sign with unpublished keys and drop keys of live tokens.
                log.warning("the key store lost the key ring; restoring it from this replica")
                cached = self._doc.to_json()
                self.store.update_ring(lambda current: None if current else cached)
                raw = self.store.read_ring()
            doc = RingDoc.from_json(raw) if raw else None
            now = int(self.clock())
            if doc is None or self._due(doc, now):
                self.store.update_ring(self._maintain_json)
                raw = self.store.read_ring()
                doc = RingDoc.from_json(raw) if raw else None
        except StoreUnavailable as exc:
            self._note_failure(str(exc))
            return False
        if doc is not None:
            self._install(doc)
        self._last_ok = self.clock()
        if self._last_error is not None:
            log.warning("key store reachable again (%s)", self.store.describe())
            self._last_error = None
        return doc is not None

    def _note_failure(self, message: str) -> None:
        metrics().store_errors.inc()
        if self._last_error is None:
            log.error("key store unreachable, serving the cached key ring: %s", message)
        self._last_error = message

    def _due(self, doc: RingDoc, now: int) -> bool:
        if needs_maintenance(doc, now, self.policy):
            return True
        # Re-seal under a new key-encryption key once the operator has rotated it.
        return self.sealer.encrypts and any(
            self.sealer.needs_reseal(s) for s in self._sealed_values(doc)
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
        doc = RingDoc.from_json(raw) if raw else None
        now = int(self.clock())
        if doc is not None:
            # Refuse to touch a ring this process cannot open: it would mix keys sealed
            # under two secrets.
            for sealed in self._sealed_values(doc):
                self.sealer.open(sealed, "key ring")
        new = maintain(doc, now, self.policy, self._new_key, self._new_secret)
        if new is None and doc is not None and self.sealer.encrypts:
            new = (
                doc if any(self.sealer.needs_reseal(s) for s in self._sealed_values(doc)) else None
            )
            if new is not None:
                new = RingDoc(version=doc.version + 1, keys=doc.keys, secrets=doc.secrets)
        if new is None:
            return None
        return self._reseal(new).to_json()

    def _reseal(self, doc: RingDoc) -> RingDoc:
        if not self.sealer.encrypts:
            return doc

        def again(sealed: dict[str, Any], what: str) -> dict[str, Any]:
            if not self.sealer.needs_reseal(sealed):
                return sealed
            return self.sealer.seal(self.sealer.open(sealed, what))

        keys = tuple(
            KeyRecord(**{**k.to_json(), "private": again(k.private, f"private key {k.kid}")})
            for k in doc.keys
        )
        secrets = tuple(
            SecretRecord(s.id, s.created_at, again(s.sealed, f"request-token secret {s.id}"))
            for s in doc.secrets
        )
        return RingDoc(doc.version, keys, secrets)

    def _install(self, doc: RingDoc) -> None:
        if self._doc is not None and self._doc.version == doc.version:
            return
        keys: dict[str, material.SigningKey] = {}
        for record in doc.keys:
            known = self._keys.get(record.kid)
            if known is None:
                jwk = self.sealer.open(record.private, f"private key {record.kid}")
                known = material.import_signing_key(jwk)
                if known.kid != record.kid:
                    raise KeyDecryptionError(
                        f"stored key {record.kid} does not match its own thumbprint: the key "
                        "store was altered; remove it to start a new ring"
                    )
            keys[record.kid] = known
        request_keys = {
            s.id: OctKey.import_key(self.sealer.open(s.sealed, f"request-token secret {s.id}"))
            for s in doc.secrets
        }
        with self._lock:
            self._doc = doc
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
            doc = RingDoc.from_json(raw) if raw else None
            if doc is None:
                message = "the ring was empty; created its first keys"
                return self._maintain_json(None)
            new, message = rotate(doc, int(self.clock()), self.policy, self._new_key)
            return self._reseal(new).to_json() if new else None

        if not self.store.update_ring(change):
            return "another replica is changing the key ring right now; try again in a moment"
        self.refresh()
        return message

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
        header = {"alg": signing.alg, "kid": signing.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._keys[signing.kid]), signing.kid

    def request_signing_key(self) -> tuple[str, OctKey]:
        """(id, key) of the secret new request tokens are signed with."""
        doc = self._doc
        if doc is None:
            raise Unavailable(
                "the key ring is not loaded yet; check that the key store is reachable"
            )
        record = signing_secret(doc.secrets, int(self.clock()), self.policy)
        return record.id, self._request_keys[record.id]

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
