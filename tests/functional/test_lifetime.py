"""Requested lifetimes over HTTP against `idp serve`, every token checked by PyJWT.

- `lifetime` is honoured on both exchanges (`exp - iat`), and anything else than whole seconds
  from 60 to IDP_TOKEN_MAX_TTL is refused with 400 naming the parameter and the range;
- with keys rotating every few seconds and tokens of mixed lifetimes, a token minted with the
  longest lifetime just before a rotation keeps its `kid` in every JWKS that any replica serves
  and keeps verifying while it lives; the ring (`idp keys list`) keeps each key published past
  the expiry of the longest token it signed. The tokens live a minute (the least
  IDP_TOKEN_MAX_TTL may be), the test a few seconds: what cannot be waited for is read from the
  ring's own schedule, which every replica follows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests

from tests.functional.test_replicas import (
    Observations,
    check_every_token_verifies_throughout_its_life,
    observe_documents,
)
from tests.support import CI_SECRET, NO_RATE_LIMITS, ROOT, IssuerProcess, free_port
from tests.unit.test_claims import CONTEXT

CI = {"Authorization": f"Bearer {CI_SECRET}"}
AUD = "sts.amazonaws.com"
VELA = "/api/v1/repos/octo-org/octo-repo/builds/42/id_token"


def open_request_token(issuer: IssuerProcess, build_id: int = 1234) -> str:
    response = requests.post(
        f"{issuer.issuer}/request-tokens",
        json={**CONTEXT, "build_id": build_id, "build_number": 42},
        headers=CI,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def exchange_url(issuer: IssuerProcess, protocol: str, query: str) -> str:
    if protocol == "github":
        return f"{issuer.issuer}/id-token?api-version=2.0&audience={AUD}{query}"
    return f"{issuer.base}{VELA}?audience={AUD}{query}"


def exchange(issuer: IssuerProcess, token: str, protocol: str, query: str) -> requests.Response:
    return requests.get(
        exchange_url(issuer, protocol, query),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def value(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    return str(body.get("value") or body["token"])


def verify(issuer: IssuerProcess, token: str) -> dict[str, Any]:
    """PyJWT against the served JWKS, as any relying party: signature, exp, aud, iss."""
    discovery = requests.get(f"{issuer.issuer}/.well-known/openid-configuration", timeout=10).json()
    # This process's own JWKS: replicas share a public issuer URL that nothing listens on.
    jwks_uri = f"{issuer.issuer}/.well-known/jwks"
    assert discovery["jwks_uri"].endswith(jwks_uri.removeprefix(issuer.base))
    key = jwt.PyJWKClient(jwks_uri, cache_keys=False).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=AUD,
        issuer=discovery["issuer"],
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    return claims


# --- the parameter over HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerProcess]:
    keys = tmp_path_factory.mktemp("lifetime-keys")
    env = {
        "IDP_KEYS_DIR": str(keys),
        "IDP_TOKEN_TTL": "300",
        "IDP_TOKEN_MAX_TTL": "7200",
        **NO_RATE_LIMITS,
    }
    with IssuerProcess(env) as proc:
        yield proc


@pytest.fixture(scope="module")
def request_token(issuer: IssuerProcess) -> str:
    return open_request_token(issuer)


@pytest.mark.parametrize("protocol", ["github", "vela"])
@pytest.mark.parametrize(
    ("query", "lifetime"),
    [("", 300), ("&lifetime=60", 60), ("&lifetime=900", 900), ("&lifetime=7200", 7200)],
)
def test_the_lifetime_asked_for_is_the_tokens(
    issuer: IssuerProcess, request_token: str, protocol: str, query: str, lifetime: int
) -> None:
    before = int(time.time())
    claims = verify(issuer, value(exchange(issuer, request_token, protocol, query)))
    assert claims["exp"] - claims["iat"] == lifetime
    assert before <= claims["iat"] <= int(time.time())


@pytest.mark.parametrize("protocol", ["github", "vela"])
@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("&lifetime=59", "lifetime=59 is out of range"),
        ("&lifetime=7201", "lifetime=7201 is out of range"),
        ("&lifetime=0", "not a whole number"),
        ("&lifetime=060", "not a whole number"),
        ("&lifetime=%2B60", "not a whole number"),  # +60
        ("&lifetime=-60", "not a whole number"),
        ("&lifetime=60.0", "not a whole number"),
        ("&lifetime=1m", "not a whole number"),
        ("&lifetime=%20600", "not a whole number"),
        ("&lifetime=" + quote("\u0666\u0660"), "not a whole number"),
        ("&lifetime=" + "9" * 40, "out of range"),
        ("&lifetime=", "is empty"),
        ("&lifetime", "is empty"),
        ("&lifetime=60&lifetime=60", "given 2 times"),
        ("&lifetime=60&lifetime=120", "given 2 times"),
    ],
)
def test_a_lifetime_out_of_range_or_malformed_is_a_400_naming_the_range(
    issuer: IssuerProcess, request_token: str, protocol: str, query: str, problem: str
) -> None:
    response = exchange(issuer, request_token, protocol, query)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "invalid_request"
    assert problem in body["error_description"]
    assert "from 60 to 7200 (IDP_TOKEN_MAX_TTL)" in body["error_description"]


def test_the_served_openapi_states_this_issuers_maximum(issuer: IssuerProcess) -> None:
    document = requests.get(f"{issuer.issuer}/openapi.json", timeout=10).json()
    schema = document["components"]["parameters"]["Lifetime"]["schema"]
    assert (schema["minimum"], schema["maximum"]) == (60, 7200)


# --- rotation with mixed lifetimes ------------------------------------------------------------

MAX_AGE = 1
REFRESH = 0.2
ROTATION = 4  # the shortest period the start-up check accepts with 60 s tokens
TTL = 4
MAX_TTL = 60
# What a retire window computed from IDP_TOKEN_TTL would keep a key after it stops signing.
SHORT_KEEP = TTL + MAX_AGE + 1
RUN = 14.0


def lifetime_env(redis_url: str, issuer: str) -> dict[str, str]:
    return {
        "IDP_REDIS_URL": redis_url,
        "IDP_KEY_ENCRYPTION_KEY": "lifetime-test-key-encryption-key-0123456789",
        "IDP_ISSUER": issuer,
        "IDP_ROTATION_PERIOD": str(ROTATION),
        "IDP_JWKS_MAX_AGE": str(MAX_AGE),
        "IDP_CLOCK_SKEW": "0",
        "IDP_REFRESH_INTERVAL": str(REFRESH),
        "IDP_TOKEN_TTL": str(TTL),
        "IDP_TOKEN_MAX_TTL": str(MAX_TTL),
        **NO_RATE_LIMITS,
    }


@pytest.fixture
def replicas(redis_url: str) -> Iterator[list[IssuerProcess]]:
    issuer = f"http://127.0.0.1:{free_port()}/_services/token"
    with ExitStack() as stack:
        procs = [IssuerProcess(lifetime_env(redis_url, issuer)) for _ in range(2)]
        for proc in procs:
            stack.enter_context(proc)
        yield procs


def run_mixed_load(replicas: list[IssuerProcess], seconds: float) -> Observations:
    """Each replica mints alternately the longest and the default lifetime; a watcher
    records every replica's JWKS."""
    obs = Observations()
    token = open_request_token(replicas[0])
    stop = threading.Event()

    def mint(index: int) -> None:
        session = requests.Session()
        for turn in range(10**9):
            if stop.is_set():
                return
            query = f"&lifetime={MAX_TTL}" if turn % 2 == 0 else ""
            start = time.time()
            response = session.get(
                exchange_url(replicas[index], "github", query),
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            got = response.json().get("value", "") if response.status_code == 200 else ""
            obs.mints.append((start, time.time(), index, response.status_code, got))
            time.sleep(0.05)

    def watch() -> None:
        session = requests.Session()
        while not stop.is_set():
            for index, proc in enumerate(replicas):
                observe_documents(session, proc, index, obs, discovery=False)
            time.sleep(0.05)

    threads = [threading.Thread(target=mint, args=(i,)) for i in range(len(replicas))]
    threads.append(threading.Thread(target=watch))
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return obs


def keys_list(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    listing = subprocess.run(
        [sys.executable, "-m", "idp", "keys", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
    )
    assert listing.returncode == 0, listing.stderr
    return {row["kid"]: row for row in json.loads(listing.stdout)["keys"]}


def test_a_key_stays_published_until_its_longest_token_expires(
    replicas: list[IssuerProcess], redis_url: str
) -> None:
    obs = run_mixed_load(replicas, RUN)
    ended = time.time()

    assert {status for *_, status, _ in obs.mints} == {200}
    tokens = [
        (jwt.get_unverified_header(t)["kid"], jwt.decode(t, options={"verify_signature": False}), t)
        for *_, t in obs.mints
    ]
    lifetimes = {claims["exp"] - claims["iat"] for _, claims, _ in tokens}
    assert lifetimes == {TTL, MAX_TTL}, "both lifetimes were minted and honoured"
    signed_by: dict[str, list[dict[str, Any]]] = {}
    for kid, claims, _ in tokens:
        signed_by.setdefault(kid, []).append(claims)
    assert len(signed_by) >= 3, f"only {len(signed_by)} keys signed in {RUN} s: no rotation"

    # Every token's kid is in every JWKS any replica served while the token lived (from a
    # verifier's cached max-age before it was signed), and its signature verifies with PyJWT.
    check_every_token_verifies_throughout_its_life(obs)

    # The case a retire window of IDP_TOKEN_TTL would lose: a key that stopped signing well
    # over that window ago, still served because a 60 s token it signed still lives.
    last_use = {kid: max(c["iat"] for c in signed) for kid, signed in signed_by.items()}
    newest = max(last_use.values())
    retired = [kid for kid, at in last_use.items() if at < newest - ROTATION]
    assert retired, "no key retired during the run"
    kid = min(retired, key=lambda k: last_use[k])
    late = [
        start
        for start, _, _, status, body in obs.snapshots
        if status == 200 and start > last_use[kid] + 1 + SHORT_KEEP + 2
    ]
    assert late, "the run ended before a short retire window would have dropped the key"
    for start, _, replica, status, body in obs.snapshots:
        if status == 200 and start in late:
            served = {k["kid"] for k in json.loads(body)["keys"]}
            assert kid in served, f"replica {replica} dropped {kid} at {start:.2f}"

    # The longest tokens, minted before one rotation or more, verify now against what each
    # replica serves now: signature, exp, aud, iss, by PyJWT.
    still_valid = [t for _, claims, t in tokens if claims["exp"] > time.time() + 1]
    old = [t for t in still_valid if jwt.get_unverified_header(t)["kid"] in retired]
    assert old, "no live token of a retired key to check"
    for proc in replicas:
        for token in old[:: max(1, len(old) // 20)]:
            claims = verify(proc, token)
            assert claims["exp"] - claims["iat"] == MAX_TTL

    # And the schedule every replica follows keeps each key published until its longest
    # token has expired, plus a verifier's cached JWKS and a replica's refresh: what this test
    # cannot wait a minute to watch, the ring states (`idp keys list`).
    ring = keys_list(lifetime_env(redis_url, replicas[0].env["IDP_ISSUER"]))
    for kid, signed in signed_by.items():
        latest_exp = max(c["exp"] for c in signed)
        if kid not in ring:
            # Dropped: only once its last token had expired.
            assert latest_exp + MAX_AGE <= ended, f"{kid} dropped with a token live"
            continue
        assert ring[kid]["remove_at"] >= latest_exp + MAX_AGE + 1, (
            f"{kid} is removed at {ring[kid]['remove_at']}, before its token of "
            f"{latest_exp} expired (+ max-age and refresh)"
        )
        assert ring[kid]["sign_until"] + MAX_TTL + MAX_AGE + 1 <= ring[kid]["remove_at"]
