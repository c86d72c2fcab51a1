"""Sealing and authenticating the ring document, and checking stored keys."""

from __future__ import annotations

import pytest
from joserfc.jwk import ECKey, RSAKey

from idp.errors import KeyDecryptionError, RingRefused
from idp.keys import material

KEK = "unit-test-key-encryption-key-0123456789"
NEW_KEK = "unit-test-new-key-encryption-key-98765"


def document() -> dict:
    sealer = material.Sealer((KEK,))
    return {"version": 3, "keys": [{"private": sealer.seal({"k": "v"})}], "ring_id": "r"}


def test_a_signed_document_opens_to_itself() -> None:
    sealer = material.Sealer((KEK,))
    signed = sealer.sign_document(document())
    assert "mac" in signed
    assert sealer.open_document(signed) == document() | {"keys": signed["keys"]}


@pytest.mark.parametrize(
    ("name", "tamper"),
    [
        ("version raised", lambda d: d.update(version=4)),
        ("a value swapped", lambda d: d["keys"].append(d["keys"][0])),
        ("a field added", lambda d: d.update(extra=1)),
        ("MAC removed", lambda d: d.pop("mac")),
        ("MAC not an object", lambda d: d.update(mac="x")),
        ("MAC bytes changed", lambda d: d["mac"].update(hmac=d["mac"]["hmac"][::-1])),
    ],
)
def test_any_change_without_the_kek_is_refused(name: str, tamper) -> None:  # type: ignore[no-untyped-def]
    sealer = material.Sealer((KEK,))
    signed = sealer.sign_document(document())
    tamper(signed)
    with pytest.raises(RingRefused):
        sealer.open_document(signed)


def test_a_mac_under_an_unknown_kek_is_a_configuration_error() -> None:
    signed = material.Sealer((KEK,)).sign_document(document())
    with pytest.raises(KeyDecryptionError, match="IDP_KEY_ENCRYPTION_KEY does not decrypt"):
        material.Sealer((NEW_KEK,)).open_document(signed)


def test_a_rotated_kek_opens_the_old_mac_and_asks_for_a_new_one() -> None:
    signed = material.Sealer((KEK,)).sign_document(document())
    rotated = material.Sealer((NEW_KEK, KEK))
    rotated.open_document(signed)
    assert rotated.document_needs_resign(signed)
    assert not rotated.document_needs_resign(rotated.sign_document(document()))


def test_with_a_kek_a_plain_value_is_never_opened() -> None:
    sealer = material.Sealer((KEK,))
    with pytest.raises(RingRefused, match="unencrypted"):
        sealer.open({"plain": {"k": "v"}}, "request-token secret")
    assert sealer.open({"plain": {"k": "v"}}, "x", allow_plain=True) == {"k": "v"}


def test_without_a_kek_documents_are_plain_and_unsigned() -> None:
    sealer = material.Sealer(())
    assert sealer.sign_document({"version": 1}) == {"version": 1}
    assert sealer.open_document({"version": 1}) == {"version": 1}
    assert sealer.open({"plain": {"k": "v"}}, "x") == {"k": "v"}


@pytest.mark.parametrize(
    ("alg", "key", "kid", "problem"),
    [
        ("RS256", "rsa2048", None, None),
        ("ES256", "p256", None, None),
        ("RS384", "rsa2048", None, "3072"),
        ("ES384", "p256", None, "P-384"),
        ("ES256", "rsa2048", None, "EC"),
        ("RS256", "rsa2048", "someone-elses-kid", "thumbprint"),
        ("HS256", "rsa2048", None, "does not accept"),
        ("RS256", "rsa2048-public", None, "private"),
    ],
)
def test_a_stored_key_must_be_what_its_record_says(
    alg: str, key: str, kid: str | None, problem: str | None
) -> None:
    keys = {
        "rsa2048": RSAKey.generate_key(2048, private=True),
        "p256": ECKey.generate_key("P-256", private=True),
    }
    base = keys[key.removesuffix("-public")]
    made = base if not key.endswith("-public") else RSAKey.import_key(base.as_dict(private=False))
    kid = kid or base.thumbprint()
    if problem is None:
        material.check_signing_key(made, kid, alg)
    else:
        with pytest.raises(RingRefused, match=problem):
            material.check_signing_key(made, kid, alg)
