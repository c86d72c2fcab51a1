"""The Redis key ring: shared, encrypted at rest, and refusing a wrong encryption key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import redis as redis_lib
import requests

from idp.app import create_app
from idp.config import load_settings
from idp.errors import ConfigError, KeyDecryptionError, Unavailable
from idp.keys.keyring import KeyRing
from idp.store import create_store, redis_store
from idp.store.base import StoreUnavailable
from tests.support import CI_SECRET, ROOT, IssuerProcess, RedisServer, wait_for
from tests.unit.test_claims import CONTEXT

KEK = "correct-horse-battery-staple-0123456789"
OTHER_KEK = "a-completely-different-secret-9876543210"


def ring(redis_url: str, **env: str) -> KeyRing:
    settings = load_settings({"IDP_REDIS_URL": redis_url, "IDP_KEY_ENCRYPTION_KEY": KEK, **env})
    keyring = KeyRing(settings, create_store(settings))
    keyring.refresh()
    return keyring


def test_replicas_share_one_ring(redis_url: str) -> None:
    first, second = ring(redis_url), ring(redis_url)
    assert first.jwks().body == second.jwks().body
    assert len(json.loads(first.jwks().body)["keys"]) == 1


def test_private_keys_are_not_readable_in_redis(redis_url: str, redis_server: RedisServer) -> None:
    keyring = ring(redis_url)
    keyring.rotate_now()  # two keys and the request secret in the store
    client = redis_server.client()
    values = b"".join(client.dump(key) or b"" for key in client.keys("*"))
    client.close()
    assert b"PRIVATE KEY" not in values
    assert b'"d":' not in values and b'"p":' not in values and b'"k":' not in values


def test_a_start_with_the_wrong_encryption_key_fails_saying_so(redis_url: str) -> None:
    ring(redis_url)
    with pytest.raises(KeyDecryptionError, match="IDP_KEY_ENCRYPTION_KEY does not decrypt"):
        ring(redis_url, IDP_KEY_ENCRYPTION_KEY=OTHER_KEK)
    result = subprocess.run(
        [sys.executable, "-m", "idp", "keys", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "IDP_REDIS_URL": redis_url, "IDP_KEY_ENCRYPTION_KEY": OTHER_KEK},
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "IDP_KEY_ENCRYPTION_KEY" in result.stderr


def test_the_encryption_key_can_be_rotated(redis_url: str, redis_server: RedisServer) -> None:
    before = ring(redis_url).jwks().body
    rotated = ring(redis_url, IDP_KEY_ENCRYPTION_KEY=f"{OTHER_KEK},{KEK}")
    assert rotated.jwks().body == before
    # Resealed under the new key: the old one alone no longer opens the ring.
    assert ring(redis_url, IDP_KEY_ENCRYPTION_KEY=OTHER_KEK).jwks().body == before
    with pytest.raises(KeyDecryptionError):
        ring(redis_url)


def test_redis_without_an_encryption_key_is_refused_outside_development(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="IDP_KEY_ENCRYPTION_KEY"):
        create_store(
            load_settings(
                {
                    "IDP_REDIS_URL": redis_url,
                    "IDP_ISSUER": "https://ci.example.com/_services/token",
                }
            )
        )
    # Plain http on loopback is development: allowed, with a warning.
    create_store(load_settings({"IDP_REDIS_URL": redis_url}))


def test_closed_builds_are_shared_and_survive_a_redis_that_forgot_them(
    redis_url: str, make_settings
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(IDP_REDIS_URL=redis_url, IDP_KEY_ENCRYPTION_KEY=KEK)
    one, two = create_store(settings), create_store(settings)
    one.close_build("99", 2**31)
    assert two.is_build_closed("99") and not two.is_build_closed("98")
    two.sync()
    redis_lib.Redis.from_url(redis_url).flushall()
    assert two.is_build_closed("99")  # mirrored before Redis lost it


def _lost_and_unmirrored(client: redis_lib.Redis, lost_expiry: float) -> None:
    """Redis lacks closure 7002 and holds 7004, which another replica wrote late (after an
    outage) with an older expiry: as many closures as the replica mirrors, other ones."""
    client.delete("idp:build:closed:7002")
    client.zrem("idp:builds:closed", "7002")
    late = int(lost_expiry) - 60
    client.set("idp:build:closed:7004", "1", exat=late)
    client.zadd("idp:builds:closed", {"7004": late})


def test_a_failover_to_a_server_that_lacks_a_closure_is_seen_even_when_counts_agree(
    tmp_path: Path, make_settings
) -> None:  # type: ignore[no-untyped-def]
    # A restart that loads an older copy stands for a failover: either way another server
    # (another run_id) answers, with the same epoch and without a closure it had taken.
    server = RedisServer(tmp_path)
    server.start()
    try:
        settings = make_settings(IDP_REDIS_URL=server.url, IDP_KEY_ENCRYPTION_KEY=KEK)
        one = create_store(settings)
        one.settle = 0.0  # an epoch of long ago: a sync reads only the newest closures
        one.sync()
        client = server.client()
        client.save()  # the older copy: the epoch, no closures
        expiry = time.time() + 3600
        one.close_build("7002", int(expiry))
        one.sync()
        server.stop()
        server.start()
        client = server.client()
        assert not client.exists("idp:build:closed:7002")
        _lost_and_unmirrored(client, expiry)

        def synced() -> bool:
            try:
                one.sync()
            except StoreUnavailable:
                return False  # the pool's connections died with the old server
            return True

        wait_for(synced, what="a sync with the restarted Redis")
        assert client.exists("idp:build:closed:7002"), "the lost closure was not written back"
        server.stop()  # from here on, the mirror alone answers
        assert one.is_build_closed("7002") and one.is_build_closed("7004")
    finally:
        server.stop()


def test_closures_that_cancel_out_in_the_count_are_compared_at_the_latest_periodically(
    redis_url: str, make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(IDP_REDIS_URL=redis_url, IDP_KEY_ENCRYPTION_KEY=KEK)
    one = create_store(settings)
    one.settle = 0.0  # an epoch of long ago: a sync reads only the newest closures
    expiry = time.time() + 3600
    one.close_build("7002", int(expiry))
    one.sync()
    one.sync()
    client = redis_lib.Redis.from_url(redis_url)
    _lost_and_unmirrored(client, expiry)
    one.sync()  # same server, same count: only the periodic comparison can see it
    assert not client.exists("idp:build:closed:7002")
    monkeypatch.setattr(redis_store, "FULL_RECONCILE", 0.0)
    one.sync()
    assert client.exists("idp:build:closed:7002")
    assert one.is_build_closed("7004")


def test_a_closure_no_replica_confirmed_is_not_answered_as_done(
    tmp_path: Path, make_settings
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master, replica = RedisServer(tmp_path / "master"), RedisServer(tmp_path / "replica")
    master.start()
    replica.start()
    try:
        settings = make_settings(IDP_REDIS_URL=master.url, IDP_KEY_ENCRYPTION_KEY=KEK)
        store = create_store(settings)
        store.sync()
        expiry = int(time.time()) + 3600
        store.close_build("1", expiry)  # a master without replicas: it alone holds anything
        links = master.client()
        links.config_set("repl-diskless-sync-delay", 0)  # not Redis's 5 s wait for more replicas
        replica.client().replicaof("127.0.0.1", master.port)
        # Online as its master sees it (its first acknowledgement can take a second).
        wait_for(
            lambda: links.info("replication").get("slave0", {}).get("state") == "online",
            what="a replica in sync",
        )
        store.sync()
        store.close_build("2", expiry)  # held by the replica before the answer
        assert replica.client().exists("idp:build:closed:2")
        replica.stop()
        wait_for(lambda: links.info("replication")["connected_slaves"] == 0, what="no replica")
        store.sync()  # none now, but one a moment ago: its link breaking is the case to catch
        with pytest.raises(Unavailable, match="close it again"):
            store.close_build("3", expiry)
        assert store.is_build_closed("3")  # refused here all the same, and written again
        assert links.exists("idp:build:closed:3")
    finally:
        replica.stop()
        master.stop()


def test_the_app_serves_from_redis(redis_url: str, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(IDP_REDIS_URL=redis_url, IDP_KEY_ENCRYPTION_KEY=KEK)
    client = create_app(settings, start_refresh=False).test_client()
    assert client.get("/_services/token/.well-known/jwks").status_code == 200
    assert client.get("/_services/token/readyz").get_json()["ready"] is True


def test_idp_serve_started_before_redis_waits_for_it(tmp_path: Path) -> None:
    """Redis not up yet (a pod starting before its Redis): the issuer is alive but not ready,
    answers 503 instead of signing with keys nobody published, and serves as soon as Redis
    comes up, without a restart."""
    (tmp_path / "late-redis").mkdir()
    redis = RedisServer(tmp_path / "late-redis")
    env = {
        "IDP_REDIS_URL": redis.url,
        "IDP_KEY_ENCRYPTION_KEY": "late-redis-key-encryption-key-0123456789",
        "IDP_REFRESH_INTERVAL": "0.5",
    }
    proc = IssuerProcess(env)
    proc.start(wait=False)
    try:
        wait_for(lambda: requests.get(f"{proc.issuer}/healthz", timeout=2).ok, what="liveness")
        ready = requests.get(f"{proc.issuer}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        jwks = requests.get(f"{proc.issuer}/.well-known/jwks", timeout=5)
        assert jwks.status_code == 503
        assert set(jwks.json()) == {"error", "error_description"}
        redis.start()
        wait_for(lambda: requests.get(f"{proc.issuer}/readyz", timeout=5).ok, what="readiness")
        keys = requests.get(f"{proc.issuer}/.well-known/jwks", timeout=5).json()["keys"]
        opened = requests.post(
            f"{proc.issuer}/request-tokens",
            json=CONTEXT,
            headers={"Authorization": f"Bearer {CI_SECRET}"},
            timeout=5,
        )
        token = requests.get(
            f"{proc.issuer}/id-token?audience=sts.amazonaws.com",
            headers={"Authorization": f"Bearer {opened.json()['token']}"},
            timeout=5,
        ).json()["value"]
        assert jwt.get_unverified_header(token)["kid"] in {k["kid"] for k in keys}
        # The log said what was happening: no ring yet, not "serving the cached key ring".
        log = proc._read_log()
        assert b"no key ring is loaded yet" in log and b"serving the cached" not in log
    finally:
        proc.stop()
        redis.stop()
