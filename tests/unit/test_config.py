"""Configuration: defaults, X_FILE, and one clear error naming the variable for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from idp.config import Settings, load_settings
from idp.errors import ConfigError


def test_defaults_follow_the_interface() -> None:
    s = load_settings({})
    assert s.issuer == "http://127.0.0.1:8080/_services/token"
    assert s.issuer_path == "/_services/token"
    assert s.redis_url is None and s.keys_dir == Path("keys")
    assert (s.signing_alg, s.token_ttl, s.rotation_period) == ("RS256", 300, 86400)
    assert s.subject_claims == ("repo", "ref", "event")
    assert s.audiences is None and s.aws_session_tags == () and s.ci_secrets == ()


def test_every_variable_can_come_from_a_file(tmp_path: Path) -> None:
    one, two = "one-secret-value-0123456789abcdef", "two-secret-value-0123456789abcdef"
    (tmp_path / "secret").write_text(f"{one},{two}\n")
    (tmp_path / "ttl").write_text("120")
    s = load_settings(
        {
            "IDP_CI_SECRET_FILE": str(tmp_path / "secret"),
            "IDP_TOKEN_TTL_FILE": str(tmp_path / "ttl"),
        }
    )
    assert s.ci_secrets == (one, two)
    assert s.token_ttl == 120


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"IDP_ISSUER": "not a url"}, "IDP_ISSUER"),
        ({"IDP_ISSUER": "ftp://ci.example.com/x"}, "IDP_ISSUER"),
        ({"IDP_ISSUER": "https://ci.example.com/_services/token/"}, "IDP_ISSUER"),
        ({"IDP_ISSUER": "https://ci.example.com/x?a=b"}, "IDP_ISSUER"),
        ({"IDP_ISSUER": "https://user:pw@ci.example.com"}, "IDP_ISSUER"),
        ({"IDP_ISSUER": "https://ci.example.com:99999/x"}, "IDP_ISSUER"),
        ({"IDP_SIGNING_ALG": "HS256"}, "IDP_SIGNING_ALG"),
        ({"IDP_SIGNING_ALG": "none"}, "IDP_SIGNING_ALG"),
        ({"IDP_TOKEN_TTL": "abc"}, "IDP_TOKEN_TTL"),
        ({"IDP_TOKEN_TTL": "0"}, "IDP_TOKEN_TTL"),
        ({"IDP_TOKEN_TTL": "-5"}, "IDP_TOKEN_TTL"),
        ({"IDP_TOKEN_TTL": "1.5"}, "IDP_TOKEN_TTL"),
        ({"IDP_ROTATION_PERIOD": "soon"}, "IDP_ROTATION_PERIOD"),
        ({"IDP_ROTATION_PERIOD": "10"}, "IDP_ROTATION_PERIOD"),  # would publish too many keys
        ({"IDP_REDIS_URL": "http://localhost:6379"}, "IDP_REDIS_URL"),
        ({"IDP_SUBJECT_CLAIMS": "ref,repo"}, "IDP_SUBJECT_CLAIMS"),
        ({"IDP_SUBJECT_CLAIMS": "repo,colour"}, "IDP_SUBJECT_CLAIMS"),
        ({"IDP_SUBJECT_CLAIMS": "repo,ref,ref"}, "IDP_SUBJECT_CLAIMS"),
        ({"IDP_AWS_SESSION_TAGS": "image_name,secret"}, "IDP_AWS_SESSION_TAGS"),
        ({"IDP_KEY_ENCRYPTION_KEY": "short"}, "IDP_KEY_ENCRYPTION_KEY"),
        ({"IDP_LOG_FORMAT": "xml"}, "IDP_LOG_FORMAT"),
        ({"IDP_TOKEN_TTL": "5", "IDP_TOKEN_TTL_FILE": "/x"}, "IDP_TOKEN_TTL"),
        ({"IDP_CI_SECRET_FILE": "/nonexistent/secret"}, "IDP_CI_SECRET_FILE"),
        ({"IDP_CI_SECRET": "x"}, "IDP_CI_SECRET"),
        ({"IDP_CI_SECRET": "a" * 31}, "IDP_CI_SECRET"),
        ({"IDP_CI_SECRET": f"{'a' * 32},short"}, "IDP_CI_SECRET"),
        ({"IDP_CI_SECRET": f"short,{'a' * 32}"}, "IDP_CI_SECRET"),
        ({"IDP_AUDIENCES": ""}, "IDP_AUDIENCES"),
        ({"IDP_AUDIENCES": " , ,"}, "IDP_AUDIENCES"),
        ({"IDP_AUDIENCES_FILE": "/dev/null"}, "IDP_AUDIENCES"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = info.value.description
    assert names in message
    assert "\n" not in message


def test_local_development_means_plain_http_on_loopback() -> None:
    assert Settings(issuer="http://127.0.0.1:8080/x").is_local_development
    assert Settings(issuer="http://localhost:8080").is_local_development
    assert not Settings(issuer="https://127.0.0.1/x").is_local_development
    assert not Settings(issuer="http://ci.example.com/x").is_local_development


@pytest.mark.parametrize("secret", ["x", "dev-ci-secret-0123456789", "a" * 31])
def test_a_short_ci_secret_is_refused_saying_how_to_make_one(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"IDP_CI_SECRET": f"{'a' * 40},{secret}"})
    message = info.value.description
    assert "IDP_CI_SECRET" in message and "32 characters" in message
    assert "secrets.token_urlsafe(32)" in message
    assert secret not in message.replace("a" * 40, "")  # the secret is never echoed


def test_ci_secrets_of_32_characters_or_more_are_accepted() -> None:
    secrets = ("a" * 32, "b" * 64)
    assert load_settings({"IDP_CI_SECRET": ",".join(secrets)}).ci_secrets == secrets


@pytest.mark.parametrize(
    ("raw", "audiences"),
    [
        (None, None),  # unset: any well-formed audience
        ("sts.amazonaws.com", ("sts.amazonaws.com",)),
        (" sts.amazonaws.com , vault ,", ("sts.amazonaws.com", "vault")),
    ],
)
def test_audiences_unset_means_any_and_set_means_a_list(
    raw: str | None, audiences: tuple[str, ...] | None
) -> None:
    env = {} if raw is None else {"IDP_AUDIENCES": raw}
    assert load_settings(env).audiences == audiences


SENTINELS = {"IDP_REDIS_SENTINELS": "s0.example.com:26379,10.0.0.2,[fd00::3]:26380"}


def test_sentinels_are_parsed_with_their_master_and_credentials(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load_settings(
        {
            **SENTINELS,
            "IDP_REDIS_SENTINEL_MASTER": "mymaster",
            "IDP_REDIS_USERNAME": "idp",
            "IDP_REDIS_PASSWORD": "pw",
            "IDP_REDIS_SENTINEL_PASSWORD": "spw",
            "IDP_REDIS_TLS": "true",
            "IDP_REDIS_TLS_CA_FILE": str(ca),
        }
    )
    sentinel = s.redis_sentinel
    assert sentinel is not None and s.uses_redis and s.redis_url is None
    assert sentinel.sentinels == (
        ("s0.example.com", 26379),
        ("10.0.0.2", 26379),
        ("fd00::3", 26380),
    )
    assert (sentinel.master, sentinel.username, sentinel.password) == ("mymaster", "idp", "pw")
    assert sentinel.sentinel_password == "spw" and sentinel.tls and sentinel.tls_ca_file == ca
    # Passwords stay out of reprs (and so out of logs and tracebacks).
    assert "pw" not in repr(sentinel).replace("password", "")
    assert sentinel.describe() == (
        "redis master 'mymaster' via sentinels s0.example.com:26379,10.0.0.2:26379,[fd00::3]:26380"
    )


def test_the_store_asks_the_sentinels_with_short_timeouts_and_no_backoff() -> None:
    from redis.backoff import NoBackoff

    from idp.store import create_store
    from idp.store.redis_store import RedisStore

    s = load_settings(
        {
            **SENTINELS,
            "IDP_REDIS_SENTINEL_MASTER": "mymaster",
            "IDP_REDIS_PASSWORD": "pw",
            "IDP_KEY_ENCRYPTION_KEY": "k" * 32,
        }
    )
    store = create_store(s)  # nothing is connected yet
    assert isinstance(store, RedisStore)
    hot = store.hot.connection_pool.connection_kwargs
    background = store.client.connection_pool.connection_kwargs
    assert (hot["socket_timeout"], background["socket_timeout"]) == (0.5, 5.0)
    assert hot["password"] == "pw" and background["password"] == "pw"
    for kwargs in (hot, background):
        assert isinstance(kwargs["retry"]._backoff, NoBackoff)
        assert kwargs["retry"]._retries == 1
    manager = store.hot.connection_pool.sentinel_manager
    assert manager is store.client.connection_pool.sentinel_manager
    for client in manager.sentinels:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.5 and kwargs["retry"]._retries == 0


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({**SENTINELS}, "IDP_REDIS_SENTINEL_MASTER"),
        ({"IDP_REDIS_SENTINEL_MASTER": "m"}, "IDP_REDIS_SENTINELS"),
        (
            {**SENTINELS, "IDP_REDIS_SENTINEL_MASTER": "m", "IDP_REDIS_URL": "redis://r"},
            "IDP_REDIS_URL",
        ),
        (
            {"IDP_REDIS_SENTINELS": "s0:26379,", "IDP_REDIS_SENTINEL_MASTER": "m"},
            "IDP_REDIS_SENTINELS",
        ),
        (
            {"IDP_REDIS_SENTINELS": "s0:99999", "IDP_REDIS_SENTINEL_MASTER": "m"},
            "IDP_REDIS_SENTINELS",
        ),
        ({"IDP_REDIS_SENTINELS": "s0:x", "IDP_REDIS_SENTINEL_MASTER": "m"}, "IDP_REDIS_SENTINELS"),
        (
            {"IDP_REDIS_SENTINELS": "fd00::1", "IDP_REDIS_SENTINEL_MASTER": "m"},
            "IDP_REDIS_SENTINELS",
        ),
        (
            {"IDP_REDIS_SENTINELS": "[nope]:1", "IDP_REDIS_SENTINEL_MASTER": "m"},
            "IDP_REDIS_SENTINELS",
        ),
        (
            {"IDP_REDIS_SENTINELS": "a:1,a:1", "IDP_REDIS_SENTINEL_MASTER": "m"},
            "IDP_REDIS_SENTINELS",
        ),
        ({**SENTINELS, "IDP_REDIS_SENTINEL_MASTER": "my master"}, "IDP_REDIS_SENTINEL_MASTER"),
        (
            {**SENTINELS, "IDP_REDIS_SENTINEL_MASTER": "m", "IDP_REDIS_USERNAME": "u"},
            "IDP_REDIS_PASSWORD",
        ),
        (
            {**SENTINELS, "IDP_REDIS_SENTINEL_MASTER": "m", "IDP_REDIS_TLS": "maybe"},
            "IDP_REDIS_TLS",
        ),
        (
            {**SENTINELS, "IDP_REDIS_SENTINEL_MASTER": "m", "IDP_REDIS_TLS_CA_FILE": "/x"},
            "IDP_REDIS_TLS",
        ),
        (
            {
                **SENTINELS,
                "IDP_REDIS_SENTINEL_MASTER": "m",
                "IDP_REDIS_TLS": "true",
                "IDP_REDIS_TLS_CA_FILE": "/nonexistent/ca.pem",
            },
            "IDP_REDIS_TLS_CA_FILE",
        ),
        ({"IDP_REDIS_URL": "redis://r", "IDP_REDIS_PASSWORD": "pw"}, "IDP_REDIS_PASSWORD"),
        ({"IDP_REDIS_TLS": "true"}, "IDP_REDIS_TLS"),
    ],
)
def test_a_bad_sentinel_setting_names_its_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert names in info.value.description and "\n" not in info.value.description
