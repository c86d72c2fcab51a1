"""Requested lifetimes: the `lifetime` parameter, IDP_TOKEN_MAX_TTL, and keys kept for the
longest token they can sign."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from idp.config import MIN_LIFETIME, Settings, load_settings
from idp.errors import ConfigError, InvalidRequest, Unavailable
from idp.keys.keyring import KeyRing
from idp.keys.ring import Policy, RingDoc, current_key, maintain, needs_maintenance
from idp.store import create_store
from idp.tokens.claims import id_token_claims
from idp.tokens.context import MAX_TTL, parse_context
from idp.tokens.lifetime import requested_lifetime
from tests.unit.test_claims import CONTEXT

# --- the parameter ---------------------------------------------------------------------------

DEFAULTS = Settings()  # IDP_TOKEN_TTL 300, IDP_TOKEN_MAX_TTL 3600


@pytest.mark.parametrize(
    ("values", "lifetime"),
    [
        ([], 300),  # absent: IDP_TOKEN_TTL
        (["60"], 60),
        (["61"], 61),
        (["900"], 900),
        (["3599"], 3599),
        (["3600"], 3600),
    ],
)
def test_good_lifetimes(values: list[str], lifetime: int) -> None:
    assert requested_lifetime(values, DEFAULTS) == lifetime


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([""], "is empty"),
        (["59"], "out of range"),
        (["0"], "not a whole number"),
        (["1"], "out of range"),
        (["3601"], "out of range"),
        (["99999999999"], "out of range"),
        (["9" * 400], "out of range"),
        (["060"], "not a whole number"),
        (["+60"], "not a whole number"),
        (["-60"], "not a whole number"),
        (["60.0"], "not a whole number"),
        (["6e1"], "not a whole number"),
        (["60s"], "not a whole number"),
        ([" 60"], "not a whole number"),
        (["60 "], "not a whole number"),
        (["\u0666\u0660"], "not a whole number"),  # Arabic-Indic digits: int() would take them
        (["6\u00b2"], "not a whole number"),
        (["ten"], "not a whole number"),
        (["60", "60"], "given 2 times"),
        (["60", "900"], "given 2 times"),
        (["", ""], "given 2 times"),
    ],
)
def test_bad_lifetimes_name_the_parameter_the_range_and_the_fix(
    values: list[str], problem: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        requested_lifetime(values, DEFAULTS)
    message = refused.value.description
    assert refused.value.code == "invalid_request" and refused.value.status == 400
    assert "lifetime" in message and problem in message
    assert "from 60 to 3600 (IDP_TOKEN_MAX_TTL)" in message
    assert "leave lifetime out for the default 300" in message
    assert len(message) < 400 and "\n" not in message


def test_the_range_follows_the_settings() -> None:
    settings = Settings(token_ttl=60, token_max_ttl=7200)
    assert requested_lifetime(["7200"], settings) == 7200
    assert requested_lifetime([], settings) == 60
    with pytest.raises(InvalidRequest, match="from 60 to 7200"):
        requested_lifetime(["7201"], settings)


def test_exp_is_iat_plus_the_lifetime() -> None:
    ctx = parse_context(CONTEXT)
    for lifetime in (60, 900, 3600):
        claims = id_token_claims(ctx, ["a"], DEFAULTS, 1_000_000, lifetime=lifetime)
        assert (claims["iat"], claims["nbf"]) == (1_000_000, 1_000_000)
        assert claims["exp"] - claims["iat"] == lifetime
    default = id_token_claims(ctx, ["a"], DEFAULTS, 1_000_000)
    assert default["exp"] - default["iat"] == DEFAULTS.token_ttl


# --- IDP_TOKEN_MAX_TTL -----------------------------------------------------------------------


def test_the_default_maximum_follows_the_interface() -> None:
    settings = load_settings({})
    assert settings.token_max_ttl == 3600
    assert MIN_LIFETIME == 60


def test_unset_the_maximum_is_at_least_the_default_lifetime() -> None:
    # An issuer configured with a long IDP_TOKEN_TTL before lifetimes existed starts as it did.
    assert load_settings({"IDP_TOKEN_TTL": "7200"}).token_max_ttl == 7200
    assert load_settings({"IDP_TOKEN_TTL": "600"}).token_max_ttl == 3600


def test_the_maximum_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "max").write_text("7200\n")
    assert load_settings({"IDP_TOKEN_MAX_TTL_FILE": str(tmp_path / "max")}).token_max_ttl == 7200


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"IDP_TOKEN_MAX_TTL": "abc"}, "IDP_TOKEN_MAX_TTL"),
        ({"IDP_TOKEN_MAX_TTL": "0"}, "IDP_TOKEN_MAX_TTL"),
        ({"IDP_TOKEN_MAX_TTL": "-60"}, "IDP_TOKEN_MAX_TTL"),
        ({"IDP_TOKEN_MAX_TTL": "60.5"}, "IDP_TOKEN_MAX_TTL"),
        ({"IDP_TOKEN_MAX_TTL": "59", "IDP_TOKEN_TTL": "30"}, "IDP_TOKEN_MAX_TTL"),
        ({"IDP_TOKEN_MAX_TTL": "600", "IDP_TOKEN_TTL": "601"}, "IDP_TOKEN_TTL"),
        ({"IDP_TOKEN_MAX_TTL": "60", "IDP_TOKEN_MAX_TTL_FILE": "/x"}, "IDP_TOKEN_MAX_TTL_FILE"),
        # Keys stay published for the longest token: a day-long token with hourly keys would
        # put some 26 keys in the JWKS.
        (
            {"IDP_TOKEN_MAX_TTL": "86400", "IDP_ROTATION_PERIOD": "3600"},
            "IDP_TOKEN_MAX_TTL=86400",
        ),
        ({"IDP_TOKEN_MAX_TTL": "3600", "IDP_ROTATION_PERIOD": "200"}, "IDP_ROTATION_PERIOD=200"),
        # A request token may not outlive the closed-build window (DELETE /builds).
        ({"IDP_REQUEST_TOKEN_TTL": str(MAX_TTL + 1)}, "IDP_REQUEST_TOKEN_TTL"),
    ],
)
def test_a_maximum_that_cannot_hold_is_refused_in_one_line(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(env)
    message = refused.value.description
    assert names in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "env",
    [
        {"IDP_TOKEN_MAX_TTL": "60", "IDP_TOKEN_TTL": "60"},
        {"IDP_TOKEN_MAX_TTL": "60", "IDP_TOKEN_TTL": "4"},  # a default below 60 is the operator's
        {"IDP_TOKEN_MAX_TTL": "86400", "IDP_ROTATION_PERIOD": "86400"},
        {"IDP_TOKEN_MAX_TTL": "43200", "IDP_ROTATION_PERIOD": "3600"},
        {"IDP_REQUEST_TOKEN_TTL": str(MAX_TTL)},
        # The functional tests' short rotations: 18 keys published at most.
        {
            "IDP_TOKEN_MAX_TTL": "60",
            "IDP_TOKEN_TTL": "4",
            "IDP_ROTATION_PERIOD": "4",
            "IDP_JWKS_MAX_AGE": "1",
            "IDP_CLOCK_SKEW": "0",
            "IDP_REFRESH_INTERVAL": "0.2",
        },
    ],
)
def test_maxima_that_hold_are_accepted(env: dict[str, str]) -> None:
    load_settings(env)


# --- keys are kept for the longest token -----------------------------------------------------


def test_the_retire_window_counts_the_longest_lifetime_not_the_default() -> None:
    settings = load_settings(
        {"IDP_TOKEN_TTL": "300", "IDP_TOKEN_MAX_TTL": "7200", "IDP_REFRESH_INTERVAL": "1.5"}
    )
    keep = 7200 + settings.clock_skew + settings.jwks_max_age + math.ceil(1.5)
    assert settings.retire_keep == keep
    assert Policy.from_settings(settings).retire_keep == keep


_ids = itertools.count(1)


def _new_key(alg: str) -> tuple[str, dict[str, Any]]:
    return f"k{next(_ids)}", {"plain": {"alg": alg}}


def _secret() -> dict[str, Any]:
    return {"plain": {"k": "s"}}


def _policy(max_ttl: int, rotation: int = 1000) -> tuple[Policy, int]:
    """A policy of these settings, and how long a key must outlast its token's `exp`."""
    settings = Settings(
        token_ttl=60,
        token_max_ttl=max_ttl,
        rotation_period=rotation,
        jwks_max_age=10,
        clock_skew=5,
        refresh_interval=1,
    )
    return Policy.from_settings(settings), settings.retire_keep - max_ttl


def _run(doc: RingDoc | None, now: int, policy: Policy) -> RingDoc:
    return maintain(doc, now, policy, _new_key, _secret) or doc  # type: ignore[return-value]


@pytest.mark.parametrize(("max_ttl", "rotation"), [(60, 1000), (3600, 1000), (7200, 3000)])
def test_a_token_of_the_longest_lifetime_signed_at_any_moment_is_covered(
    max_ttl: int, rotation: int
) -> None:
    policy, after_exp = _policy(max_ttl, rotation)
    doc = _run(None, 0, policy)
    removal: dict[str, int] = {}
    for now in range(0, 8 * rotation, 13):
        doc = _run(doc, now, policy)
        signing = current_key(doc.keys, now)
        assert signing is not None
        exp = now + max_ttl
        # Published at every moment up to exp and the margins after it.
        assert exp + after_exp <= signing.remove_at
        removal[signing.kid] = signing.remove_at
    for record in doc.keys:
        # remove_at never moved earlier than any promise made while the key signed.
        assert record.remove_at >= removal.get(record.kid, 0)


def test_a_ring_written_for_shorter_tokens_is_extended_for_the_longest() -> None:
    short, _ = _policy(60)
    long, after_exp = _policy(3600)
    doc = _run(_run(None, 0, short), 500, short)  # current k1 (0..1000), next k2 (1000..2000)
    doc = _run(doc, 1050, short)  # k1 retired (kept to 1076), k2 current
    retired, current = doc.keys[0], current_key(doc.keys, 1050)
    assert current is not None and retired.state(1050) == "retired"
    assert needs_maintenance(doc, 1050, long)
    extended = _run(doc, 1050, long)
    after = {k.kid: k for k in extended.keys}
    # The key that signs, and any next one, now outlast the longest token they can sign ...
    for record in extended.keys:
        if record.sign_until > 1050:
            assert record.remove_at >= record.sign_until + long.retire_keep
            assert record.sign_until + 3600 + after_exp <= record.remove_at
    # ... a retired key signs no more tokens, so it keeps its time ...
    assert after[retired.kid].remove_at == retired.remove_at
    # ... and a ring already right needs nothing; the shorter policy never shrinks it back.
    assert not needs_maintenance(extended, 1050, long)
    assert not needs_maintenance(extended, 1050, short)
    assert _run(extended, 1050, short) is extended


def test_the_signer_refuses_a_token_that_would_outlive_its_key(tmp_path: Path) -> None:
    # A ring written under IDP_TOKEN_MAX_TTL=60: its key is kept for 60 s tokens only.
    settings = load_settings(
        {"IDP_KEYS_DIR": str(tmp_path), "IDP_TOKEN_MAX_TTL": "60", "IDP_TOKEN_TTL": "60"}
    )
    ring = KeyRing(settings, create_store(settings))
    ring.refresh()
    now = int(ring.clock())
    (key,) = ring.describe()
    longest = key["remove_at"] - (settings.retire_keep - settings.token_max_ttl)
    token, kid = ring.sign({"exp": longest, "iat": now})
    assert kid == key["kid"] and token.count(".") == 2
    with pytest.raises(Unavailable, match="published only until"):
        ring.sign({"exp": longest + 1, "iat": now})
