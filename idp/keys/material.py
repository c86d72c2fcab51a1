"""Key material: generating signing keys, and sealing private keys at rest.

All JOSE work is joserfc's: key generation, JWK import/export, RFC 7638 thumbprints as `kid`.
Sealing uses AES-256-GCM from `cryptography`; each sealed value records the id of the
key-encryption key (KEK) that sealed it, so that the KEK itself can be rotated: configure
`IDP_KEY_ENCRYPTION_KEY=new,old`, the new one seals, either one opens, and the ring is re-sealed
with the new one at its next maintenance.
"""

from __future__ import annotations

import base64
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
from idp.errors import KeyDecryptionError

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


def _derive(secret: str) -> _Kek:
    # HKDF turns an operator's passphrase-like secret into a uniform AES key; a second
    # derivation gives a public id that says which secret sealed a value without revealing it.
    material = secret.encode()
    key = HKDF(hashes.SHA256(), 32, salt=None, info=b"idp kek v1").derive(material)
    kid = HKDF(hashes.SHA256(), 8, salt=None, info=b"idp kek id v1").derive(material).hex()
    return _Kek(kid=kid, aead=AESGCM(key))


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

    def open(self, sealed: dict[str, Any], what: str) -> dict[str, Any]:
        if "plain" in sealed:
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
