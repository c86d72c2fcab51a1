"""The promises that must hold when Redis misbehaves and when someone who can write Redis is
hostile (issue: faults and hostile operators), against real `idp serve` processes and a real
private `redis-server`:

- a damaged ring stops a start with one line, and a running replica keeps its last good ring;
- with a key-encryption key, a ring written without it (a plain secret, a foreign key, a MAC
  stripped or not matching) is refused: no forged request token mints, no foreign key is served;
- closed builds stay closed when Redis restarts empty, even for a worker started afterwards;
- request tokens whose build state was lost entirely are refused, not trusted;
- replicas that saw different rings converge on one JWKS holding every key of a live token.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import jwt
import pytest
import requests
from joserfc import jwt as jose_jwt
from joserfc.jwk import OctKey, RSAKey

from tests.support import (
    CI_SECRET,
    NO_RATE_LIMITS,
    ROOT,
    IssuerProcess,
    RedisServer,
    free_port,
    wait_for,
)
from tests.unit.test_claims import CONTEXT

pytestmark = pytest.mark.redis

KEK = "fault-test-key-encryption-key-0123456789"
REFRESH = 0.2
AUD = "sts.amazonaws.com"


def env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "IDP_REDIS_URL": redis_url,
        "IDP_KEY_ENCRYPTION_KEY": KEK,
        "IDP_REFRESH_INTERVAL": str(REFRESH),
        "IDP_READY_STALE_AFTER": "5",
        **NO_RATE_LIMITS,
        **extra,
    }


def open_token(proc: IssuerProcess, build_id: int) -> str:
    response = requests.post(
        f"{proc.issuer}/request-tokens",
        json={**CONTEXT, "build_id": build_id},
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def mint(proc: IssuerProcess, token: str) -> requests.Response:
    return requests.get(
        f"{proc.issuer}/id-token?audience={AUD}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def close(proc: IssuerProcess, build_id: int) -> None:
    response = requests.delete(
        f"{proc.issuer}/builds/{build_id}",
        headers={"Authorization": f"Bearer {CI_SECRET}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def jwks(proc: IssuerProcess) -> set[str]:
    body = requests.get(f"{proc.issuer}/.well-known/jwks", timeout=10).json()
    return {k["kid"] for k in body["keys"]}


def metric(proc: IssuerProcess, name: str) -> float:
    text = requests.get(f"{proc.issuer}/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's master and workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def signal_tree(proc: IssuerProcess, sig: signal.Signals) -> None:
    assert proc.proc is not None
    for pid in process_tree(proc.proc.pid):
        os.kill(pid, sig)


def workers(proc: IssuerProcess) -> list[int]:
    assert proc.proc is not None
    return [pid for pid in process_tree(proc.proc.pid) if pid != proc.proc.pid]


def stored_ring(redis_server: RedisServer) -> bytes:
    client = redis_server.client()
    try:
        value = client.get("idp:ring")
    finally:
        client.close()
    assert value is not None
    return bytes(value)


def store_ring(redis_server: RedisServer, value: bytes) -> None:
    client = redis_server.client()
    try:
        client.set("idp:ring", value)
    finally:
        client.close()


def idp(*args: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **extra_env},
    )


def without_field(ring: dict) -> dict:  # type: ignore[type-arg]
    del ring["keys"][0]["sign_until"]
    return ring


# Each a value someone (a bug, a hand, a truncated restore) left in `idp:ring`.
CORRUPT_SHAPES = {
    "empty object": lambda ring: b"{}",
    "no keys": lambda ring: json.dumps({**ring, "keys": []}).encode(),
    "truncated JSON": lambda ring: json.dumps(ring).encode()[:100],
    "a list": lambda ring: b"[]",
    "null": lambda ring: b"null",
    "a key lacking a field": lambda ring: json.dumps(without_field(ring)).encode(),
    "version not a number": lambda ring: json.dumps({**ring, "version": "x"}).encode(),
    "not UTF-8": lambda ring: b"\xff\xfe{",
}


@pytest.fixture
def issuer(redis_url: str) -> Iterator[IssuerProcess]:
    with IssuerProcess(env(redis_url)) as proc:
        yield proc


# --- a damaged ring ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(CORRUPT_SHAPES))
def test_a_damaged_ring_stops_a_start_with_one_line(
    shape: str, redis_url: str, redis_server: RedisServer
) -> None:
    first = idp("keys", "list", extra_env=env(redis_url))
    assert first.returncode == 0, first.stderr
    damaged = CORRUPT_SHAPES[shape](json.loads(stored_ring(redis_server)))
    store_ring(redis_server, damaged)

    for command in (("keys", "list"), ("serve", "--port", str(free_port()))):
        result = idp(*command, extra_env=env(redis_url))
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("idp: error: the key ring in Redis key idp:ring")
        assert "idp keys repair" in lines[0]
    # Nothing was written over it.
    assert stored_ring(redis_server) == damaged
    diagnosis = idp("keys", "repair", extra_env=env(redis_url))
    assert diagnosis.returncode == 1 and "is refused" in diagnosis.stdout


def test_a_running_replica_keeps_its_last_good_ring(
    issuer: IssuerProcess, redis_server: RedisServer
) -> None:
    good = stored_ring(redis_server)
    served = jwks(issuer)
    token = open_token(issuer, 9100)
    for shape, make in sorted(CORRUPT_SHAPES.items()):
        damaged = make(json.loads(good))
        store_ring(redis_server, damaged)
        time.sleep(4 * REFRESH)
        assert jwks(issuer) == served, shape
        assert requests.get(f"{issuer.issuer}/readyz", timeout=10).status_code == 200, shape
        assert mint(issuer, token).status_code == 200, shape
        # Never replaced by a new ring, never "repaired" behind the operator's back.
        assert stored_ring(redis_server) == damaged, shape
    assert metric(issuer, "idp_ring_refused_total") >= len(CORRUPT_SHAPES)
    store_ring(redis_server, good)
    wait_for(lambda: b"usable again" in issuer._read_log(), timeout=10, what="recovery")


def test_repair_restores_a_backup_and_replicas_take_it(
    issuer: IssuerProcess, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    backup = tmp_path / "ring.json"
    result = idp("keys", "backup", "--output", str(backup), extra_env=env(redis_url))
    assert result.returncode == 0, result.stderr
    served = jwks(issuer)
    store_ring(redis_server, b"{}")
    result = idp("keys", "repair", "--from", str(backup), extra_env=env(redis_url))
    assert result.returncode == 0, result.stderr
    assert "wrote the backup" in result.stdout
    assert idp("keys", "repair", extra_env=env(redis_url)).returncode == 0
    time.sleep(4 * REFRESH)
    assert jwks(issuer) == served


# --- a forged ring ----------------------------------------------------------------------------


def forged_request_token(issuer: str, secret: OctKey, secret_id: str) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": f"{issuer}/id-token",
        "iat": now,
        "exp": now + 600,
        "jti": "forged",
        "ctx": {**CONTEXT, "repo": "victim-org/victim-repo"},
    }
    header = {"alg": "HS256", "typ": "idp-request+jwt", "kid": secret_id}
    return jose_jwt.encode(header, claims, secret, algorithms=["HS256"])


def plant_secret(ring: dict, secret: OctKey, keep_mac: bool) -> dict:  # type: ignore[type-arg]
    ring = {**ring, "version": ring["version"] + 1}
    ring["request_secrets"] = [
        *ring["request_secrets"],
        {"id": "evil", "created_at": 0, "sealed": {"plain": secret.as_dict(private=True)}},
    ]
    if not keep_mac:
        ring.pop("mac", None)
    return ring


def plant_key(ring: dict, key: RSAKey) -> dict:  # type: ignore[type-arg]
    now = int(time.time())
    ring = {k: v for k, v in ring.items() if k != "mac"}
    ring["version"] += 1
    ring["keys"] = [
        *ring["keys"],
        {
            "kid": key.thumbprint(),
            "alg": "RS256",
            "created_at": now - 1000,
            "sign_from": now - 10,
            "sign_until": now + 1000,
            "remove_at": now + 2000,
            "private": {"plain": key.as_dict(private=True)},
        },
    ]
    return ring


@pytest.mark.parametrize(
    "attack", ["plain secret, MAC stripped", "plain secret, MAC kept", "foreign key, no MAC"]
)
def test_a_ring_written_without_the_kek_is_refused(
    attack: str, issuer: IssuerProcess, redis_server: RedisServer
) -> None:
    good = json.loads(stored_ring(redis_server))
    served = jwks(issuer)
    secret = OctKey.generate_key(256)
    foreign = RSAKey.generate_key(2048, private=True)
    if attack.startswith("foreign"):
        forged = plant_key(good, foreign)
    else:
        forged = plant_secret(good, secret, keep_mac="kept" in attack)
    store_ring(redis_server, json.dumps(forged).encode())
    time.sleep(4 * REFRESH)

    response = mint(issuer, forged_request_token(issuer.issuer, secret, "evil"))
    assert response.status_code == 401, response.text
    assert jwks(issuer) == served
    assert foreign.thumbprint() not in jwks(issuer)
    assert metric(issuer, "idp_ring_refused_total") >= 1
    assert b"is refused" in issuer._read_log()


# --- closures when Redis forgets --------------------------------------------------------------


def test_closed_builds_stay_closed_after_an_empty_restart_and_a_killed_worker(
    redis_url: str, redis_server: RedisServer
) -> None:
    with IssuerProcess(env(redis_url), workers=2) as issuer:
        closed_token = open_token(issuer, 9200)
        open_build_token = open_token(issuer, 9201)
        close(issuer, 9200)
        time.sleep(3 * REFRESH)  # every worker mirrors the closure

        redis_server.stop()
        redis_server.start()  # empty: no persistence
        victim = workers(issuer)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(workers(issuer)) == 2 and victim not in workers(issuer), timeout=20)

        statuses = []
        for _ in range(12):
            statuses.append(mint(issuer, closed_token).status_code)
            time.sleep(0.25)
        assert 200 not in statuses, statuses
        assert set(statuses) <= {401, 503}, statuses
        # The replica is not simply broken: an open build's token mints, and the closed
        # build cannot get a new request token either.
        wait_for(lambda: mint(issuer, open_build_token).status_code == 200, timeout=10)
        for _ in range(6):  # both workers answer
            assert mint(issuer, closed_token).status_code == 401
            refused = requests.post(
                f"{issuer.issuer}/request-tokens",
                json={**CONTEXT, "build_id": 9200},
                headers={"Authorization": f"Bearer {CI_SECRET}"},
                timeout=10,
            )
            assert refused.status_code == 400 and "already closed" in refused.text


def test_request_tokens_whose_build_state_was_lost_are_refused(
    redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    backup = tmp_path / "ring.json"
    port = free_port()
    with IssuerProcess(env(redis_url), port=port) as issuer:
        old = open_token(issuer, 9300)
        close(issuer, 9300)
        assert idp("keys", "backup", "-o", str(backup), extra_env=env(redis_url)).returncode == 0
    # Redis and every replica forget at once; the ring alone comes back from a backup.
    redis_server.stop()
    redis_server.start()
    result = idp("keys", "repair", "--from", str(backup), extra_env=env(redis_url))
    assert result.returncode == 0, result.stderr
    with IssuerProcess(env(redis_url), port=port) as issuer:
        wait_for(lambda: mint(issuer, old).status_code != 503, timeout=10)
        response = mint(issuer, old)
        assert response.status_code == 401
        assert "issued before the key store lost its build state" in response.text
        assert mint(issuer, open_token(issuer, 9301)).status_code == 200


# --- replicas that saw different rings --------------------------------------------------------


def test_replicas_converge_after_a_reset_while_some_were_paused(
    redis_url: str, redis_server: RedisServer
) -> None:
    issuer = f"http://127.0.0.1:{free_port()}/_services/token"
    with ExitStack() as stack:
        a, b = (stack.enter_context(IssuerProcess(env(redis_url, IDP_ISSUER=issuer))) for _ in "ab")
        token = open_token(a, 9400)
        before = [mint(a, token).json()["value"], mint(b, token).json()["value"]]

        # B sleeps through a reset: A restores the ring, and a replica started meanwhile
        # takes A's ring instead of creating its own.
        signal_tree(b, signal.SIGSTOP)
        redis_server.stop()
        redis_server.start()
        c = stack.enter_context(IssuerProcess(env(redis_url, IDP_ISSUER=issuer)))
        signal_tree(b, signal.SIGCONT)
        wait_for(lambda: jwks(a) == jwks(b) == jwks(c), timeout=10, what="one JWKS")

        # Now all sleep through a reset, and a new replica finds nothing: it has to create
        # a ring. When the others wake they merge their keys into it.
        for proc in (a, b, c):
            signal_tree(proc, signal.SIGSTOP)
        redis_server.stop()
        redis_server.start()
        d = stack.enter_context(IssuerProcess(env(redis_url, IDP_ISSUER=issuer)))
        new_kid = jwt.get_unverified_header(mint(d, open_token(d, 9401)).json()["value"])["kid"]
        for proc in (a, b, c):
            signal_tree(proc, signal.SIGCONT)
        wait_for(lambda: len({frozenset(jwks(p)) for p in (a, b, c, d)}) == 1, timeout=10)

        served = jwks(d)
        assert new_kid in served
        for value in before:
            assert jwt.get_unverified_header(value)["kid"] in served
            key = jwt.PyJWKClient(f"{d.issuer}/.well-known/jwks").get_signing_key_from_jwt(value)
            jwt.decode(value, key.key, algorithms=["RS256"], audience=AUD)
        assert sum(metric(p, "idp_ring_conflicts_total") for p in (a, b, c)) >= 1
        # The request token opened before both resets still works on every replica: its
        # secret was merged back, and its build state was written back by replicas that
        # lived through its epoch.
        for proc in (a, b, c, d):
            assert mint(proc, token).status_code == 200
