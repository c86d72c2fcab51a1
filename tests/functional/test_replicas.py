"""Three replicas on one real Redis, rotating every few seconds under load.

Checks the promises of the key life from the outside, with PyJWT as the verifier:
- every token verifies with the JWKS any replica served at any moment of its life, from
  `max-age` before it was signed (a verifier's cache) until it expires;
- the replicas' JWKS agree within the documented bound;
- with Redis killed, JWKS and discovery keep being served, minting goes on until the last
  known key's signing window ends and answers 503 only after that; it all resumes without a
  restart when Redis comes back (even empty: a replica restores the ring).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import jwt
import pytest
import requests

from tests.support import CI_SECRET, NO_RATE_LIMITS, IssuerProcess, RedisServer, free_port
from tests.unit.test_claims import CONTEXT

KEK = "replica-test-key-encryption-key-0123456789"
MAX_AGE = 1
REFRESH = 0.2
# Documented bound for replicas to agree: one refresh interval; slack for a loaded 2-core box.
AGREEMENT_BOUND = REFRESH + 1.5
# Every key stays published until the longest token it may sign has expired: MAX_TTL (the
# least IDP_TOKEN_MAX_TTL may be) + skew + max-age + refresh = 62 s, so with a key every
# ROTATION seconds the JWKS holds up to 2 + ceil(62 / ROTATION) keys; 4 s is the shortest
# period the start-up check accepts (at most 20 keys), and rotates often enough for the tests.
ROTATION = 4
MAX_TTL = 60
MAX_KEYS = 2 + -(-(MAX_TTL + MAX_AGE + 1) // ROTATION)


def replica_env(redis_url: str, issuer: str) -> dict[str, str]:
    return {
        "IDP_REDIS_URL": redis_url,
        "IDP_KEY_ENCRYPTION_KEY": KEK,
        "IDP_ISSUER": issuer,
        "IDP_ROTATION_PERIOD": str(ROTATION),
        "IDP_JWKS_MAX_AGE": str(MAX_AGE),
        "IDP_CLOCK_SKEW": "0",
        "IDP_REFRESH_INTERVAL": str(REFRESH),
        "IDP_TOKEN_TTL": "4",
        "IDP_TOKEN_MAX_TTL": str(MAX_TTL),
        "IDP_READY_STALE_AFTER": "2",
        # This load tests the key ring, not the rate limits (tests/functional/test_security.py)
        **NO_RATE_LIMITS,
    }


@dataclass
class Observations:
    mints: list[tuple[float, float, int, int, str]] = field(default_factory=list)
    snapshots: list[tuple[float, float, int, int, bytes]] = field(default_factory=list)
    discovery: list[int] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    # Exchanges with the request token of a build closed before the load began.
    closed: list[tuple[float, int]] = field(default_factory=list)


@pytest.fixture
def replicas(redis_url: str) -> Iterator[list[IssuerProcess]]:
    issuer = f"http://127.0.0.1:{free_port()}/_services/token"
    with ExitStack() as stack:
        procs = [IssuerProcess(replica_env(redis_url, issuer)) for _ in range(3)]
        for proc in procs:
            stack.enter_context(proc)
        yield procs


def observe_documents(
    session: requests.Session,
    proc: IssuerProcess,
    index: int,
    obs: Observations,
    discovery: bool = True,
) -> None:
    """One look at a replica's JWKS, kept with when it was taken (every token's `kid` is
    checked against the snapshots of its life), and at its discovery document's status."""
    start = time.time()
    response = session.get(f"{proc.issuer}/.well-known/jwks", timeout=10)
    obs.snapshots.append((start, time.time(), index, response.status_code, response.content))
    if discovery:
        found = session.get(f"{proc.issuer}/.well-known/openid-configuration", timeout=10)
        obs.discovery.append(found.status_code)


def run_load(
    replicas: list[IssuerProcess],
    seconds: float,
    obs: Observations,
    during: list[tuple[float, object]] | None = None,
) -> None:
    def open_token(build_id: str) -> str:
        return str(
            requests.post(
                f"{replicas[0].issuer}/request-tokens",
                json={**CONTEXT, "build_id": build_id},
                headers={"Authorization": f"Bearer {CI_SECRET}"},
                timeout=10,
            ).json()["token"]
        )

    token = open_token(CONTEXT["build_id"])
    closed = open_token("424242")
    requests.delete(
        f"{replicas[1].issuer}/builds/424242",
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        timeout=10,
    ).raise_for_status()
    time.sleep(3 * REFRESH)  # every replica mirrors the closure
    stop = threading.Event()

    def try_closed() -> None:
        session = requests.Session()
        while not stop.is_set():
            for proc in replicas:
                url = f"{proc.issuer}/id-token?audience=sts.amazonaws.com"
                try:
                    response = session.get(
                        url, headers={"Authorization": f"Bearer {closed}"}, timeout=30
                    )
                except requests.RequestException:
                    obs.closed.append((time.time(), -1))
                    continue
                obs.closed.append((time.time(), response.status_code))
            time.sleep(0.02)

    def mint(index: int) -> None:
        session = requests.Session()
        url = f"{replicas[index].issuer}/id-token?audience=sts.amazonaws.com"
        while not stop.is_set():
            start = time.time()
            try:
                response = session.get(
                    url, headers={"Authorization": f"Bearer {token}"}, timeout=30
                )
            except requests.RequestException:
                obs.mints.append((start, time.time(), index, -1, ""))  # recorded, then failed
                continue
            value = response.json().get("value", "") if response.status_code == 200 else ""
            obs.mints.append((start, time.time(), index, response.status_code, value))
            time.sleep(0.01)

    def watch() -> None:
        session = requests.Session()
        while not stop.is_set():
            for index, proc in enumerate(replicas):
                observe_documents(session, proc, index, obs)
                obs.ready.append(
                    (time.time(), session.get(f"{proc.issuer}/readyz", timeout=10).status_code)
                )
            time.sleep(0.05)

    threads = [threading.Thread(target=mint, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=watch))
    threads.append(threading.Thread(target=try_closed))
    for thread in threads:
        thread.start()
    began = time.time()
    try:
        for at, action in during or []:
            time.sleep(max(0.0, began + at - time.time()))
            action()  # type: ignore[operator]
        time.sleep(max(0.0, began + seconds - time.time()))
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def check_every_token_verifies_throughout_its_life(obs: Observations) -> int:
    good = [(s, e, i, tok) for s, e, i, status, tok in obs.mints if status == 200]
    assert good, "no token was minted"
    checked = 0
    # Each body parsed once: JWKS hold up to MAX_KEYS keys and are checked thousands of times.
    kids_of = {
        body: {k["kid"] for k in json.loads(body)["keys"]}
        for _, _, _, status, body in obs.snapshots
        if status == 200
    }
    for _, _, _, token in good:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        for start, end, replica, status, body in obs.snapshots:
            # Snapshots taken wholly inside [iat - max-age, exp] must hold the key.
            if status != 200 or start < claims["iat"] - MAX_AGE or end > claims["exp"]:
                continue
            assert header["kid"] in kids_of[body], (
                f"replica {replica} served a JWKS at {start:.2f} without key {header['kid']} "
                f"of a token valid {claims['iat']}..{claims['exp']}"
            )
            checked += 1
        # And the signature verifies, with PyJWT, against a key a replica served.
        served = next(
            json.loads(b)["keys"]
            for s, e, _, st, b in obs.snapshots
            if st == 200 and any(k["kid"] == header["kid"] for k in json.loads(b)["keys"])
        )
        key = jwt.PyJWK(next(k for k in served if k["kid"] == header["kid"]))
        jwt.decode(
            token,
            key.key,
            algorithms=["RS256"],
            audience="sts.amazonaws.com",
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    return checked


def test_three_replicas_rotating_under_load(replicas: list[IssuerProcess]) -> None:
    obs = Observations()
    run_load(replicas, 20, obs)

    statuses = {status for _, _, _, status, _ in obs.mints}
    assert statuses == {200}, f"minting answered {statuses}"
    assert set(obs.discovery) == {200}
    kids = {jwt.get_unverified_header(t)["kid"] for *_, t in obs.mints}
    assert len(kids) >= 20 // ROTATION - 1, f"only {len(kids)} keys signed in 20 s: no rotation"
    assert check_every_token_verifies_throughout_its_life(obs) > 1000
    assert obs.closed and {status for _, status in obs.closed} == {401}

    # The replicas agree: each JWKS body any replica served was served by the others within
    # the documented bound of its first appearance (bodies alive long enough to be seen).
    first_seen: dict[bytes, dict[int, float]] = {}
    for start, _, replica, _, body in obs.snapshots:
        first_seen.setdefault(body, {}).setdefault(replica, start)
    for seen in first_seen.values():
        if len(seen) == 3:
            assert max(seen.values()) - min(seen.values()) <= AGREEMENT_BOUND
    sizes = {len(json.loads(b)["keys"]) for b in first_seen}
    assert max(sizes) <= MAX_KEYS and min(sizes) >= 1


def test_redis_killed_mid_load_and_restarted(
    replicas: list[IssuerProcess], redis_server: RedisServer
) -> None:
    obs = Observations()
    last_window: list[float] = []

    def kill() -> None:
        client = redis_server.client()
        ring = json.loads(client.get("idp:ring"))
        client.close()
        last_window.append(max(k["sign_until"] for k in ring["keys"]))
        redis_server.stop()
        last_window.append(time.time())

    def restart() -> None:
        last_window.append(time.time())
        redis_server.start()  # empty: no persistence
        last_window.append(time.time())  # it answers PING: back

    run_load(replicas, 22, obs, during=[(3, kill), (13, restart)])
    window_end, killed_at, restarted_at, back_at = last_window
    assert restarted_at - killed_at > window_end - killed_at, "outage shorter than the window"

    assert 500 not in {s for _, _, _, s, _ in obs.snapshots} | set(obs.discovery)
    assert all(s == 200 for _, _, _, s, _ in obs.snapshots), "JWKS not served from cache"
    assert set(obs.discovery) == {200}
    for start, end, _replica, status, _ in obs.mints:
        assert status in (200, 503), status
        if status == 503:
            # Only past the signing window of every key the replica knew, and only while
            # Redis was down (plus the refresh it takes to notice its return).
            assert end >= window_end, f"503 at {end:.2f} before window end {window_end}"
            assert start <= restarted_at + 3 * REFRESH + 1.0
    assert any(s == 503 for _, _, _, s, _ in obs.mints), "the outage never reached the window end"
    counts = {
        "mints": len(obs.mints),
        "non-200/503 mint answers": sum(s not in (200, 503) for _, _, _, s, _ in obs.mints),
        "JWKS/discovery 5xx": sum(s >= 500 for _, _, _, s, _ in obs.snapshots)
        + sum(s >= 500 for s in obs.discovery),
        "tokens for the closed build": sum(s == 200 for _, s in obs.closed),
        "closed-build answers other than 401/503": sum(s not in (401, 503) for _, s in obs.closed),
        "503s with Redis back for 2 refresh intervals": sum(
            s == 503 for start, _, _, s, _ in obs.mints if start > back_at + 2 * REFRESH
        ),
    }
    print(f"fault counts: {json.dumps(counts)}")
    assert counts["tokens for the closed build"] == 0, counts
    assert counts["closed-build answers other than 401/503"] == 0, counts
    assert counts["503s with Redis back for 2 refresh intervals"] == 0, counts
    # Minting recovered without a restart.
    assert any(s == 200 and start > restarted_at + 1 for start, _, _, s, _ in obs.mints)
    check_every_token_verifies_throughout_its_life(obs)
    # Readiness went false during the outage and came back.
    assert any(s == 503 for t, s in obs.ready if killed_at < t < restarted_at)
    assert obs.ready[-1][1] == 200
