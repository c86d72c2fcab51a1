"""Rate limits: shared by replicas through the real Redis, answered with 429 and Retry-After.

Each test runs `idp serve` processes on the private Redis with small budgets, so that a few
requests reach them; nothing here depends on timing beyond "within the same minute".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests

from idp.ratelimit import KEY_PREFIX
from idp.views.headers import SECURITY_HEADERS
from tests.support import CI_SECRET, IssuerProcess, RedisServer, free_port
from tests.unit.test_claims import CONTEXT

CI = {"Authorization": f"Bearer {CI_SECRET}"}
KEK = "rate-limit-tests-key-encryption-key-0123456789"


def replicas(redis_url: str, count: int, **env: str) -> ExitStack:
    """`count` single-worker replicas of one issuer on one Redis, started in an ExitStack."""
    stack = ExitStack()
    # One public issuer for all, as behind a load balancer: each one's tokens work at all.
    issuer = f"http://127.0.0.1:{free_port()}/_services/token"
    base = {"IDP_REDIS_URL": redis_url, "IDP_KEY_ENCRYPTION_KEY": KEK, "IDP_ISSUER": issuer, **env}
    stack.procs = [stack.enter_context(IssuerProcess(base)) for _ in range(count)]  # type: ignore[attr-defined]
    return stack


@pytest.fixture
def pair(redis_url: str) -> Iterator[list[IssuerProcess]]:
    env = {
        "IDP_RATE_LIMIT_STEP": "4/minute",
        "IDP_RATE_LIMIT_CI": "3/minute",
        "IDP_RATE_LIMIT_CLIENT": "5/minute",
    }
    with replicas(redis_url, 2, **env) as stack:
        yield stack.procs  # type: ignore[attr-defined]


def open_token(
    proc: IssuerProcess, build_id: int, headers: dict[str, str] = CI
) -> requests.Response:
    return requests.post(
        f"{proc.issuer}/request-tokens",
        json={**CONTEXT, "build_id": build_id},
        headers=headers,
        timeout=10,
    )


def exchange(proc: IssuerProcess, token: str, **headers: str) -> requests.Response:
    return requests.get(
        f"{proc.issuer}/id-token?audience=sts.amazonaws.com",
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=10,
    )


def assert_too_many(response: requests.Response, window: int = 60) -> None:
    assert response.status_code == 429, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "rate_limited"
    assert "IDP_RATE_LIMIT" in body["error_description"]
    assert 1 <= int(response.headers["Retry-After"]) <= window
    assert response.headers["Cache-Control"] == "no-store"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


def test_a_request_tokens_budget_is_shared_by_the_replicas(pair: list[IssuerProcess]) -> None:
    one, two = pair
    token = open_token(one, 501).json()["token"]
    answers = [exchange(pair[i % 2], token).status_code for i in range(4)]
    assert answers == [200, 200, 200, 200]
    # The fifth, on either replica, is over the budget the two replicas count together.
    assert_too_many(exchange(one, token))
    assert_too_many(exchange(two, token))
    # Another step's token has its own budget.
    other = open_token(two, 502).json()["token"]
    assert exchange(one, other).status_code == 200
    # And the refusals are counted, by budget.
    metrics = requests.get(f"{one.issuer}/metrics", timeout=10).text
    assert 'idp_rate_limited_total{budget="step"} 1.0' in metrics


def test_the_ci_budget_is_per_secret_and_wrong_secrets_count_per_address(
    pair: list[IssuerProcess],
) -> None:
    one, two = pair
    assert [open_token(pair[i % 2], 600 + i).status_code for i in range(3)] == [200] * 3
    assert_too_many(open_token(one, 610))
    # A wrong secret does not get a budget of its own: it spends the address's (5/minute).
    wrong = {"Authorization": "Bearer guess"}
    assert [open_token(pair[i % 2], 620, wrong).status_code for i in range(5)] == [401] * 5
    assert_too_many(open_token(two, 620, wrong))


def test_forged_tokens_spend_the_address_budget(pair: list[IssuerProcess]) -> None:
    one, _ = pair
    statuses = [exchange(one, f"forged.{i}.token").status_code for i in range(5)]
    assert statuses == [401] * 5
    assert_too_many(exchange(one, "forged.6.token"))


def test_other_endpoints_are_limited_per_address(pair: list[IssuerProcess]) -> None:
    one, two = pair
    statuses = [
        requests.get(f"{pair[i % 2].issuer}/readyz", timeout=10).status_code for i in range(5)
    ]
    assert statuses == [200] * 5
    assert_too_many(requests.get(f"{two.issuer}/readyz", timeout=10))


def test_counters_in_redis_name_no_secret_and_no_token(
    pair: list[IssuerProcess], redis_server: RedisServer
) -> None:
    one, _ = pair
    token = open_token(one, 701).json()["token"]
    exchange(one, token)
    client = redis_server.client()
    keys = [key.decode() for key in client.keys("*")]
    counters = [key for key in keys if "limits" in key]
    assert counters, keys
    assert all(key.startswith("idp:limits") for key in counters)
    assert not any(CI_SECRET in key or token in key or token.split(".")[2] in key for key in keys)
    # Nor a bare digest of the secret, which a dump would let anyone test guesses against
    # offline: the CI budget's name is an HMAC under a key derived from the server's secrets.
    digest = hashlib.sha256(CI_SECRET.encode()).hexdigest()
    ci_counters = [key for key in counters if key.startswith(f"{KEY_PREFIX}:ci/")]
    assert ci_counters, counters
    assert not any(digest[:8] in key for key in keys), ci_counters
    names = {name for key in ci_counters for name in key.split("/") if len(name) == 32}
    assert len(names) == 1, ci_counters


def test_ci_budget_names_are_keyed_by_the_servers_own_secret() -> None:
    """Two issuers with the same CI secret but different key-encryption keys name its budget
    differently: the name says nothing about the secret without the server's key."""
    from idp.config import load_settings
    from idp.ratelimit import name_key, secret_name

    one = load_settings({"IDP_CI_SECRET": CI_SECRET, "IDP_KEY_ENCRYPTION_KEY": KEK})
    other = load_settings({"IDP_CI_SECRET": CI_SECRET, "IDP_KEY_ENCRYPTION_KEY": KEK + "x"})
    dev = load_settings({"IDP_CI_SECRET": CI_SECRET})
    names = {secret_name(CI_SECRET, name_key(s)) for s in (one, other, dev)}
    assert len(names) == 3
    assert all(hashlib.sha256(CI_SECRET.encode()).hexdigest()[:16] not in n for n in names)
    # Stable for one configuration, so every replica counts the same budget.
    assert secret_name(CI_SECRET, name_key(one)) == secret_name(CI_SECRET, name_key(one))


def test_the_redis_script_counts_exactly_as_memory_does(redis_url: str) -> None:
    # The store's Lua script and idp.store.counters.decide are one rule written twice: drive
    # both with the same hits at the same moments (across window edges, over the limit and
    # back) and compare every answer.
    import random

    from idp.config import load_settings
    from idp.store import Budget
    from idp.store.counters import MemoryCounters
    from idp.store.redis_store import RedisStore

    settings = load_settings(
        {"IDP_REDIS_URL": redis_url, "IDP_KEY_ENCRYPTION_KEY": KEK, "IDP_CI_SECRET": CI_SECRET}
    )
    store = RedisStore.create(settings)
    memory = MemoryCounters()
    rng = random.Random(17)
    budgets = [Budget.of("test", "k", 5, 10), Budget.of("test", "k", 12, 60)]
    now = 1_800_000_000.0
    compared = refused = 0
    for _ in range(400):
        now += rng.choice([0.01, 0.3, 1.7, 4.0, 9.5])
        store.clock = lambda now=now: now  # type: ignore[misc]
        shared = store.count_and_check(budgets)
        assert shared.shared
        assert shared.retry_after == memory.hit(budgets, now), now
        compared += 1
        refused += any(shared.retry_after)
        assert all(0 <= w <= b.window for w, b in zip(shared.retry_after, budgets, strict=True))
    assert compared == 400 and 50 < refused < 350, refused


def test_one_script_answers_the_closed_build_and_the_budgets_together(redis_url: str) -> None:
    # The exchange's one command: whether its build is closed, and each budget's wait, with
    # or without budgets (IDP_RATE_LIMIT_STEP=off) and with or without a build to check.
    from idp.config import load_settings
    from idp.store import Budget
    from idp.store.redis_store import RedisStore

    settings = load_settings(
        {"IDP_REDIS_URL": redis_url, "IDP_KEY_ENCRYPTION_KEY": KEK, "IDP_CI_SECRET": CI_SECRET}
    )
    store = RedisStore.create(settings)
    store.close_build("90001", 1_900_000_000)
    budget = [Budget.of("script", "jti-1", 2, 60)]
    assert store._send_count(budget, "90001", 1_800_000_000.0) == (True, (0,))
    assert store._send_count(budget, "90002", 1_800_000_000.0) == (False, (0,))
    closed, waits = store._send_count(budget, "90001", 1_800_000_000.0)
    assert closed and waits[0] > 0  # the third hit of two: refused, and the build closed
    assert store._send_count([], "90001", 1_800_000_000.0) == (True, ())
    assert store._send_count([], "90002", 1_800_000_000.0) == (False, ())
    assert store._send_count(budget, None, 1_800_000_000.0)[0] is False
    assert store._send_count([], None, 1_800_000_000.0) == (False, ())
    # Through the store's interface, as the exchange calls it.
    assert store.count_and_check([Budget.of("script", "jti-2", 5, 60)], "90001").closed


def test_a_redis_that_lost_the_counting_script_still_counts(
    pair: list[IssuerProcess], redis_server: RedisServer
) -> None:
    # A restarted Redis has no scripts: the exchange loads it again, counts, and answers.
    one, _ = pair
    token = open_token(one, 761).json()["token"]
    client = redis_server.client()
    client.script_flush()
    assert [exchange(one, token).status_code for _ in range(5)] == [200] * 4 + [429]


def test_x_forwarded_for_is_ignored_unless_a_proxy_is_trusted(redis_url: str) -> None:
    env = {"IDP_RATE_LIMIT_CLIENT": "2/minute"}
    with replicas(redis_url, 1, **env) as stack:
        (proc,) = stack.procs  # type: ignore[attr-defined]
        spoofed = [
            requests.get(
                f"{proc.issuer}/readyz", headers={"X-Forwarded-For": f"10.0.0.{i}"}, timeout=10
            )
            for i in range(3)
        ]
        assert [r.status_code for r in spoofed[:2]] == [200, 200]
        assert_too_many(spoofed[2])
    with replicas(redis_url, 1, IDP_TRUSTED_PROXIES="1", **env) as stack:
        (proc,) = stack.procs  # type: ignore[attr-defined]
        for i in range(3):
            forwarded = {"X-Forwarded-For": f"10.0.1.{i}"}
            assert requests.get(f"{proc.issuer}/readyz", headers=forwarded, timeout=10).ok


def test_public_documents_never_touch_redis(redis_url: str, redis_server: RedisServer) -> None:
    with replicas(redis_url, 1, IDP_RATE_LIMIT_CLIENT="1000/minute") as stack:
        (proc,) = stack.procs  # type: ignore[attr-defined]
        client = redis_server.client()

        def limiter_calls() -> int:
            stats = client.info("commandstats")
            return sum(
                stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval")
            )

        before = limiter_calls()
        for path in ("/.well-known/jwks", "/.well-known/openid-configuration", "/openapi.json"):
            for _ in range(20):
                assert requests.get(f"{proc.issuer}{path}", timeout=10).status_code == 200
        assert limiter_calls() == before
        # ... while an exchange does count (so the probe above can see a counter at all).
        token = open_token(proc, 801).json()["token"]
        before = limiter_calls()
        assert exchange(proc, token).status_code == 200
        assert limiter_calls() > before


def test_limits_hold_per_worker_while_redis_is_down(
    redis_url: str, redis_server: RedisServer
) -> None:
    with replicas(redis_url, 1, IDP_RATE_LIMIT_STEP="3/minute") as stack:
        (proc,) = stack.procs  # type: ignore[attr-defined]
        token = open_token(proc, 901).json()["token"]
        redis_server.stop()
        try:
            # Tokens keep being minted from the cached ring, and the budget is counted in
            # memory: neither failing open (no limit) nor failing every step (5xx).
            statuses = [exchange(proc, token).status_code for _ in range(4)]
        finally:
            redis_server.start()
        assert statuses == [200, 200, 200, 429], statuses


def test_a_budget_counted_per_worker_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The file store counts in each worker's memory: the 429 must not claim a shared count."""
    env = {"IDP_KEYS_DIR": str(tmp_path / "keys"), "IDP_RATE_LIMIT_STEP": "2/minute"}
    with IssuerProcess(env) as issuer:
        token = open_token(issuer, 702).json()["token"]
        answers = [exchange(issuer, token) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "2 per 1 minute per worker process" in answers[2].json()["error_description"]
