"""Key material: generating signing keys, and sealing private keys at rest.

All JOSE work is joserfc's: key generation, JWK import/export, RFC 7638 thumbprints as `kid`.
Sealing uses AES-256-GCM from `cryptography`; each sealed value records the id of the
key-encryption key (KEK) that sealed it, so that the KEK itself can be rotated: configure
`IDP_KEY_ENCRYPTION_KEY=new,old`, the new one seals, either one opens, and the ring is re-sealed
with the new one at its next maintenance.

With a KEK the ring document is also authenticated as a whole: an HMAC-SHA256, under a key
derived from the KEK, over the canonical JSON of the document (its version included). Sealing
each value alone would let someone who can write the store drop, replay or re-time sealed
values, or add a value of their own; with the MAC, any change not made by a holder of the KEK
is refused. Without a KEK there is nothing secret to authenticate with: values are plain and the
store's own protection (the file mode of `keys/`, Redis ACLs in development) is all there is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, JWKRegistry, OctKey, RSAKey

from idp.config import SIGNING_ALGS
from idp.errors import KeyDecryptionError, RingRefused

SigningKey = RSAKey | ECKey

# Bound to every ciphertext so a sealed value cannot be replayed into another context.
_AAD = b"idp key ring v1"


def generate_signing_key(alg: str) -> SigningKey:
    """A fresh private key for `alg`, its `kid` the RFC 7638 thumbprint."""
    kty, size = SIGNING_ALGS[alg]
    key: SigningKey
    if kty == "RSA":
        assert isinstance(size, int)
        key = RSAKey.generate_key(size, private=True, auto_kid=True)
    else:
        assert isinstance(size, str)
        key = ECKey.generate_key(size, private=True, auto_kid=True)
    return key


def import_signing_key(jwk: dict[str, Any]) -> SigningKey:
    key = JWKRegistry.import_key(jwk)
    if not isinstance(key, RSAKey | ECKey):
        raise KeyDecryptionError(f"stored key {jwk.get('kid')!r} is not an RSA or EC key")
    return key


def check_signing_key(key: SigningKey, kid: str, alg: str) -> None:
    """Refuse a stored key that is not what its record says: its `kid` must be its RFC 7638
    thumbprint (so the JWKS names each key by what it is) and its type and size those of its
    `alg` (so a record cannot pass off a weak or foreign key as an RS256 one)."""
    if alg not in SIGNING_ALGS:
        raise RingRefused(f"key {kid[:64]!r} has alg {alg[:16]!r}, which AWS does not accept")
    if key.thumbprint() != kid:
        raise RingRefused(f"key {kid[:64]!r} is not what its kid names (RFC 7638 thumbprint)")
    kty, size = SIGNING_ALGS[alg]
    if key.key_type != kty or not key.is_private:
        raise RingRefused(f"key {kid[:64]!r} is not a private {kty} key as its alg {alg} needs")
    if isinstance(key, RSAKey):
        assert isinstance(size, int)
        bits = key.private_key.key_size if key.private_key is not None else 0
        if bits < size:
            raise RingRefused(f"key {kid[:64]!r} is a {bits}-bit RSA key; {alg} needs {size}")
    elif key.as_dict(private=False).get("crv") != size:
        raise RingRefused(f"key {kid[:64]!r} is not on curve {size}, which {alg} needs")


def public_jwk(key: SigningKey, alg: str) -> dict[str, Any]:
    """The JWKS entry: public parameters, `kid`, and the `alg`/`use` AWS and verifiers expect."""
    entry = key.as_dict(private=False)
    entry["alg"] = alg
    entry["use"] = "sig"
    return entry


def new_hmac_secret() -> OctKey:
    return OctKey.import_key(os.urandom(32))


@dataclass(frozen=True)
class _Kek:
    kid: str
    aead: AESGCM
    mac_key: bytes


def _derive(secret: str) -> _Kek:
    # HKDF turns an operator's passphrase-like secret into a uniform AES key; a second
    # derivation gives a public id that says which secret sealed a value without revealing it.
    material = secret.encode()
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"idp kek v1").derive(material)
    kid = HKDF(hashes.SHA256(), 8, salt=None, info=b"idp kek id v1").derive(material).hex()
    mac_key = HKDF(hashes.SHA256(), 32, salt=None, info=b"idp ring mac v1").derive(material)
    return _Kek(kid=kid, aead=AESGCM(key), mac_key=mac_key)


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value: what the ring MAC and content comparisons cover."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


class Sealer:
    """Seals private key material with the first configured KEK; opens with any of them.

    With no KEK, values are stored as plain JSON (the file store's default on a single host,
    where the file mode protects them; the Redis store refuses this outside development).
    """

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._keks = [_derive(s) for s in secrets]

    @property
    def encrypts(self) -> bool:
        return bool(self._keks)

    @property
    def sealing_kid(self) -> str | None:
        return self._keks[0].kid if self._keks else None

    def seal(self, value: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(value, separators=(",", ":")).encode()
        if not self._keks:
            return {"plain": value}
        kek = self._keks[0]
        nonce = os.urandom(12)
        ct = kek.aead.encrypt(nonce, data, _AAD)
        return {
            "kek": kek.kid,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def needs_reseal(self, sealed: dict[str, Any]) -> bool:
        return sealed.get("kek") != self.sealing_kid

    # --- the whole document -------------------------------------------------------------

    def _mac(self, kek: _Kek, document: dict[str, Any]) -> str:
        tag = hmac.new(kek.mac_key, _AAD + b"\0" + canonical_json(document), hashlib.sha256)
        return base64.b64encode(tag.digest()).decode()

    def sign_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with its MAC under the sealing KEK (unchanged when there is no KEK)."""
        if not self._keks:
            return document
        kek = self._keks[0]
        return {**document, "mac": {"kek": kek.kid, "hmac": self._mac(kek, document)}}

    def open_document(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The document without its MAC, after checking it; raise RingRefused if it fails.

        With a KEK a document without a valid MAC is refused whatever it holds: a value
        written by someone without the KEK (a plain key, a foreign key, an old value
        replayed) is exactly what this stops.
        """
        document = {k: v for k, v in stored.items() if k != "mac"}
        if not self._keks:
            return document
        mac = stored.get("mac")
        if not isinstance(mac, dict) or not isinstance(mac.get("hmac"), str):
            raise RingRefused(
                "it carries no MAC, although IDP_KEY_ENCRYPTION_KEY is set: it was written "
                "without the key-encryption key (by hand, by an attacker, or by a version of "
                "idp before rings were authenticated)"
            )
        for kek in self._keks:
            if kek.kid == mac.get("kek"):
                if hmac.compare_digest(self._mac(kek, document), mac["hmac"]):
                    return document
                raise RingRefused(
                    "its MAC does not verify: the document was changed by someone without "
                    "IDP_KEY_ENCRYPTION_KEY"
                )
        raise KeyDecryptionError(
            f"IDP_KEY_ENCRYPTION_KEY does not decrypt the key ring (it was sealed with key id "
            f"{str(mac.get('kek'))[:32]}; the configured keys have ids "
            f"{', '.join(k.kid for k in self._keks)}): set the secret the key ring was written "
            "with, or list it after the new one to rotate it"
        )

    def document_needs_resign(self, stored: dict[str, Any]) -> bool:
        mac = stored.get("mac")
        return bool(self._keks) and (
            not isinstance(mac, dict) or mac.get("kek") != self.sealing_kid
        )

    # --- single values --------------------------------------------------------------------

    def open(self, sealed: dict[str, Any], what: str, allow_plain: bool = False) -> dict[str, Any]:
        """Open one sealed value. `allow_plain` is for `idp keys repair --adopt` only: the
        operator's explicit word that an unencrypted ring is theirs."""
        if "plain" in sealed:
            if self._keks and not allow_plain:
                # A KEK is configured: every value is sealed, so a plain one was written by
                # someone who does not hold the KEK. Never use it.
                raise RingRefused(
                    f"the {what} is stored unencrypted although IDP_KEY_ENCRYPTION_KEY is set"
                )
            value = sealed["plain"]
            if not isinstance(value, dict):
                raise KeyDecryptionError(f"stored {what} is malformed: recreate the key store")
            return value
        kid = sealed.get("kek")
        for kek in self._keks:
            if kek.kid == kid:
                try:
                    nonce = base64.b64decode(sealed["nonce"])
                    data = kek.aead.decrypt(nonce, base64.b64decode(sealed["ct"]), _AAD)
                except (InvalidTag, KeyError, ValueError):
                    break
                value = json.loads(data)
                assert isinstance(value, dict)
                return value
        if not self._keks:
            raise KeyDecryptionError(
                f"the {what} is encrypted (key-encryption key id {kid}) but "
                "IDP_KEY_ENCRYPTION_KEY is not set: set it to the secret the key ring was "
                "written with"
            )
        raise KeyDecryptionError(
            f"IDP_KEY_ENCRYPTION_KEY does not decrypt the {what} (it was sealed with key id "
            f"{kid}; the configured keys have ids {', '.join(k.kid for k in self._keks)}): set the "
            "secret the key ring was written with, or list it after the new one to rotate it"
        )
