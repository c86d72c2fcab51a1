"""The key life rules, as pure functions of (document, now, policy)."""

from __future__ import annotations

import itertools

import pytest

from idp.keys.ring import (
    LEGACY_RING_ID,
    LEGACY_SECRET_ID,
    Malformed,
    Policy,
    RingDoc,
    current_key,
    maintain,
    merge,
    needs_maintenance,
    published_keys,
    rotate,
    signing_secret,
)

POLICY = Policy(alg="RS256", rotation_period=1000, publish_lead=100, retire_keep=400)
_ids = itertools.count(1)


def new_key(alg: str) -> tuple[str, dict]:
    return f"k{next(_ids)}", {"plain": {"alg": alg}}


def secret() -> dict:
    return {"plain": {"k": "s"}}


def run(doc: RingDoc | None, now: int, policy: Policy = POLICY) -> RingDoc:
    return maintain(doc, now, policy, new_key, secret) or doc  # type: ignore[return-value]


def states(doc: RingDoc, now: int) -> dict[str, str]:
    return {k.kid: k.state(now) for k in doc.keys}


def test_an_empty_ring_gets_one_key_that_signs_at_once() -> None:
    doc = run(None, 0)
    assert [k.state(0) for k in doc.keys] == ["current"]
    assert doc.version == 1
    assert not needs_maintenance(doc, 0, POLICY)


def test_the_successor_is_prepared_at_half_life_and_published_a_lead_before_it_signs() -> None:
    doc = run(None, 0)
    assert run(doc, 499) is doc  # nothing to do before half-life
    doc = run(doc, 500)
    first, second = doc.keys
    assert (first.state(500), second.state(500)) == ("current", "next")
    assert second.sign_from == first.sign_until == 1000
    assert second.sign_from - second.created_at >= POLICY.publish_lead


def test_every_key_is_published_a_lead_before_it_signs_and_until_its_tokens_expire() -> None:
    doc = run(None, 0)
    seen: dict[str, tuple[int, int, int, int]] = {}
    for now in range(0, 6000, 7):
        doc = run(doc, now)
        signing = current_key(doc.keys, now)
        assert signing is not None, f"no signing key at {now}"
        published = {k.kid for k in published_keys(doc.keys, now)}
        assert signing.kid in published
        assert 1 <= len(published) <= 3
        for k in doc.keys:
            seen[k.kid] = (k.created_at, k.sign_from, k.sign_until, k.remove_at)
    for kid, (created, sign_from, sign_until, remove_at) in seen.items():
        if created == 0:
            continue  # the very first key signs at once: nothing was published before it
        assert sign_from - created >= POLICY.publish_lead, kid
        assert remove_at - sign_until >= POLICY.retire_keep, kid


def test_gone_keys_are_dropped_and_the_ring_never_empties() -> None:
    doc = run(None, 0)
    for now in range(0, 3000, 50):
        doc = run(doc, now)
    assert all(k.state(3000 - 50) != "gone" for k in doc.keys)
    assert len(doc.keys) <= 3


def test_a_period_shorter_than_the_lead_extends_the_current_key() -> None:
    short = Policy(alg="RS256", rotation_period=2, publish_lead=5, retire_keep=10)
    doc = run(None, 0, short)
    doc = run(doc, 0, short)
    current, nxt = doc.keys
    assert current.sign_until == nxt.sign_from == 5
    assert nxt.sign_from - nxt.created_at >= short.publish_lead


def test_a_ring_left_alone_past_every_window_recovers_without_breaking_publication() -> None:
    doc = run(run(None, 0), 600)  # current k + next, next signs 1000..2000
    late = 2200  # nobody maintained the ring for a whole window; k2 is retired, published
    assert current_key(doc.keys, late) is None
    doc = run(doc, late)
    signing = current_key(doc.keys, late)
    assert signing is not None
    # The key that signs again was published all along (it is not a new, unknown key).
    assert signing.created_at < late
    assert signing.remove_at >= signing.sign_until + POLICY.retire_keep


def test_a_ring_outlived_by_the_clock_resumes_with_its_last_published_key() -> None:
    doc = run(run(None, 0), 600)
    last = max(doc.keys, key=lambda k: k.sign_until)
    # Every key is past its removal time; the last one stays published, never an empty JWKS.
    assert [k.kid for k in published_keys(doc.keys, 5000)] == [last.kid]
    doc = run(doc, 5000)
    assert current_key(doc.keys, 5000).kid == last.kid  # type: ignore[union-attr]
    assert all(k.state(5000) in ("current", "next") for k in doc.keys)


def test_rotate_promotes_a_next_key_published_long_enough() -> None:
    doc = run(run(None, 0), 500)
    old, nxt = doc.keys
    new_doc, message = rotate(doc, 700, POLICY, new_key)
    assert new_doc is not None and "signs from now" in message
    assert current_key(new_doc.keys, 700).kid == nxt.kid  # type: ignore[union-attr]
    retired = next(k for k in new_doc.keys if k.kid == old.kid)
    assert retired.state(700) == "retired"
    # remove_at never moves earlier: a replica that missed the rotation stays verifiable.
    assert retired.remove_at == old.remove_at


def test_rotate_refuses_to_sign_with_a_key_published_too_recently() -> None:
    doc = run(run(None, 0), 500)
    new_doc, message = rotate(doc, 550, POLICY, new_key)
    assert new_doc is None
    assert "may only sign from 1970-01-01T00:10:00Z" in message


def test_rotate_without_a_next_key_publishes_one_and_says_when_it_signs() -> None:
    doc = run(None, 0)
    new_doc, message = rotate(doc, 10, POLICY, new_key)
    assert new_doc is not None
    fresh = max(new_doc.keys, key=lambda k: k.created_at)
    assert fresh.state(10) == "next" and fresh.sign_from == 110
    assert "starts signing at 1970-01-01T00:01:50Z" in message
    assert current_key(new_doc.keys, 109) is not None


@pytest.mark.parametrize("now", [0, 499, 500, 999, 1000, 1499, 1500, 2399])
def test_states_follow_the_recorded_times(now: int) -> None:
    doc = run(None, 0)
    for t in range(0, now + 1, 50):
        doc = run(doc, t)
    doc = run(doc, now)
    assert list(states(doc, now).values()).count("current") == 1


# --- request-token secrets ------------------------------------------------------------------

SECRETS = Policy(
    alg="RS256",
    rotation_period=1000,
    publish_lead=100,
    retire_keep=400,
    secret_period=5000,
    secret_lead=10,
    secret_keep=2000,
)


def secret_ids(doc: RingDoc) -> list[str]:
    # Ids are "r<created_at>-<tag of the value>": compare the times.
    return [s.id.split("-")[0] for s in doc.secrets]


def test_a_new_ring_signs_request_tokens_with_its_first_secret_at_once() -> None:
    doc = run(None, 0, SECRETS)
    assert secret_ids(doc) == ["r0"]
    assert signing_secret(doc.secrets, 0, SECRETS).id.startswith("r0-")


def test_secrets_rotate_publish_first_and_stay_while_their_tokens_live() -> None:
    doc = run(None, 0, SECRETS)
    doc = run(doc, 4999, SECRETS)
    assert secret_ids(doc) == ["r0"]
    doc = run(doc, 5000, SECRETS)
    assert secret_ids(doc) == ["r0", "r5000"]
    # Every replica reads the new secret before any token is signed with it.
    assert signing_secret(doc.secrets, 5009, SECRETS).id.startswith("r0-")
    assert signing_secret(doc.secrets, 5010, SECRETS).id.startswith("r5000-")
    # r0 signed until 5010; its tokens live up to secret_keep after that.
    doc = run(doc, 7009, SECRETS)
    assert secret_ids(doc) == ["r0", "r5000"]
    doc = run(doc, 7010, SECRETS)
    assert secret_ids(doc) == ["r5000"]


def test_a_ring_from_before_secrets_rotated_keeps_its_secret_for_its_tokens() -> None:
    old = run(None, 0)
    legacy = old.to_json()
    legacy["request_secret"] = legacy.pop("request_secrets")[0]["sealed"]
    doc = RingDoc.from_json(legacy)
    assert secret_ids(doc) == [LEGACY_SECRET_ID]
    # Its age is unknown (created_at 0): on any real clock it is due at once.
    assert needs_maintenance(doc, 10_000, SECRETS)
    doc = run(doc, 10_000, SECRETS)
    assert secret_ids(doc) == [LEGACY_SECRET_ID, "r10000"]
    assert RingDoc.from_json(doc.to_json()) == doc


def test_a_forced_key_rotation_leaves_the_secrets_alone() -> None:
    doc = run(None, 0, SECRETS)
    rotated, _ = rotate(doc, 6000, SECRETS, new_key)
    assert rotated is not None and rotated.secrets == doc.secrets


# --- a stored document is parsed strictly ---------------------------------------------------


def good_json() -> dict:
    return run(None, 0).to_json()


def edit(change) -> dict:  # type: ignore[no-untyped-def]
    data = good_json()
    change(data)
    return data


MALFORMED = {
    "not an object": [],
    "null": None,
    "empty object": {},
    "no keys": edit(lambda d: d.update(keys=[])),
    "keys not a list": edit(lambda d: d.update(keys={})),
    "a key not an object": edit(lambda d: d.update(keys=["k"])),
    "a key lacking sign_until": edit(lambda d: d["keys"][0].pop("sign_until")),
    "a time as a string": edit(lambda d: d["keys"][0].update(sign_from="0")),
    "a time as a bool": edit(lambda d: d["keys"][0].update(sign_from=True)),
    "a negative time": edit(lambda d: d["keys"][0].update(created_at=-1)),
    "times out of order": edit(lambda d: d["keys"][0].update(remove_at=0)),
    "a key twice": edit(lambda d: d.update(keys=d["keys"] * 2)),
    "private not an object": edit(lambda d: d["keys"][0].update(private="x")),
    "no request secrets": edit(lambda d: d.update(request_secrets=[])),
    "a secret twice": edit(lambda d: d.update(request_secrets=d["request_secrets"] * 2)),
    "a secret lacking its value": edit(lambda d: d["request_secrets"][0].pop("sealed")),
    "version zero": edit(lambda d: d.update(version=0)),
    "version a string": edit(lambda d: d.update(version="1")),
    "ring_id not a string": edit(lambda d: d.update(ring_id=7)),
    "kid empty": edit(lambda d: d["keys"][0].update(kid="")),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_document_is_refused_naming_the_part(name: str) -> None:
    with pytest.raises(Malformed):
        RingDoc.from_json(MALFORMED[name])


def test_a_good_document_reads_back_to_itself() -> None:
    doc = run(None, 0)
    assert RingDoc.from_json(doc.to_json()) == doc
    assert doc.ring_id != LEGACY_RING_ID


# --- two rings where there should be one ----------------------------------------------------


def test_a_second_ring_gets_every_key_that_may_have_signed_a_live_token() -> None:
    ours = run(run(None, 0), 600)  # k current until 1000, a next key published
    stored = run(None, 700)  # another ring, created while the store was empty
    merged = merge(stored, ours, 700, POLICY)
    assert merged is not None
    assert merged.ring_id == stored.ring_id
    assert merged.version > max(stored.version, ours.version)
    ours_current, ours_next = ours.keys
    kept = {k.kid: k for k in merged.keys}
    # Our current key is kept, retired now, and published until its tokens expire.
    assert kept[ours_current.kid].state(700) == "retired"
    assert kept[ours_current.kid].remove_at == ours_current.remove_at
    # Our next key never signed: left out. The stored ring's key still signs.
    assert ours_next.kid not in kept
    assert current_key(merged.keys, 700) == stored.keys[0]
    # Our request-token secret is kept for our live request tokens.
    assert {s.id for s in ours.secrets} <= {s.id for s in merged.secrets}
    # And the merge is stable: nothing more to add.
    assert merge(merged, ours, 701, POLICY) is None


def test_a_successor_that_has_everything_is_taken_as_is() -> None:
    ours = run(None, 0)
    stored = run(ours, 600)
    assert merge(stored, ours, 600, POLICY) is None


def test_a_key_already_gone_is_not_added_back() -> None:
    ours = run(None, 0)
    gone_at = ours.keys[0].remove_at
    stored = run(None, gone_at)
    merged = merge(stored, ours, gone_at, POLICY)
    assert merged is None or ours.keys[0].kid not in {k.kid for k in merged.keys}


def test_a_key_another_clock_counts_as_gone_is_not_added_back_within_the_skew() -> None:
    skewed = Policy(alg="RS256", rotation_period=1000, publish_lead=100, retire_keep=400, skew=5)
    ours = run(None, 0, skewed)
    almost = ours.keys[0].remove_at - 3
    stored = run(None, almost, skewed)
    merged = merge(stored, ours, almost, skewed)
    assert merged is None or ours.keys[0].kid not in {k.kid for k in merged.keys}
