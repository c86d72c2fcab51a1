"""Configuration, read once from the `IDP_*` environment at the edge of the program.

Every variable `X` may instead be given as `X_FILE`, a path whose content is the value (the way
Kubernetes and Docker secrets are mounted). A bad value stops the program at start-up with one
line that names the variable and says what a good value looks like.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from idp.errors import ConfigError

# The algorithms AWS STS accepts for OIDC ID tokens, with the key each one needs.
SIGNING_ALGS: dict[str, tuple[str, str | int]] = {
    "RS256": ("RSA", 2048),
    "RS384": ("RSA", 3072),
    "RS512": ("RSA", 4096),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}

# Claims that come from the build context; `sub` and the AWS session tags are built from these.
CONTEXT_CLAIMS = (
    "repo",
    "ref",
    "sha",
    "event",
    "branch",
    "build_id",
    "build_number",
    "actor",
    "actor_scm_id",
    "pull_fork",
    "step",
    "image",
    "image_name",
    "image_tag",
    "commands",
    "request",
)

DEFAULT_ISSUER = "http://127.0.0.1:8080/_services/token"


@dataclass(frozen=True)
class Settings:
    issuer: str = DEFAULT_ISSUER
    redis_url: str | None = None
    keys_dir: Path = Path("keys")
    key_encryption_keys: tuple[str, ...] = ()
    ci_secrets: tuple[str, ...] = ()
    signing_alg: str = "RS256"
    token_ttl: int = 300
    rotation_period: int = 86400
    subject_claims: tuple[str, ...] = ("repo", "ref", "event")
    audiences: tuple[str, ...] | None = None
    aws_session_tags: tuple[str, ...] = ()
    # Not in the outside contract, but operators may need them; see README "Key life".
    jwks_max_age: int = 300
    clock_skew: int = 60
    refresh_interval: float = 2.0
    request_token_ttl: int = 3900
    ready_stale_after: int = 30
    log_format: str = "text"
    # Rate limits (README "Security"): `limits` strings such as "100/second", None = off.
    rate_limit_ci: str | None = "100/second"
    rate_limit_step: str | None = "30/minute"
    rate_limit_client: str | None = "60/second"
    # How many reverse proxies in front append to X-Forwarded-For (0: trust no such header).
    trusted_proxies: int = 0

    @property
    def issuer_path(self) -> str:
        """The path the issuer's routes hang below ('' when the issuer is a bare origin)."""
        return urlsplit(self.issuer).path

    @property
    def origin(self) -> str:
        """scheme://host[:port] of the issuer, where Vela's `/api/v1/...` route lives."""
        parts = urlsplit(self.issuer)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def is_local_development(self) -> bool:
        """Plain http on a loopback address: the only place secrets may be kept unencrypted."""
        parts = urlsplit(self.issuer)
        if parts.scheme != "http" or parts.hostname is None:
            return False
        if parts.hostname == "localhost":
            return True
        try:
            return ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            return False

    @property
    def publish_lead(self) -> int:
        """How long a new key is published before any replica may sign with it.

        A verifier may hold a JWKS for `max-age`; a replica learns of a change within
        `refresh_interval`; clocks may differ by `clock_skew`; and ring times are whole
        seconds, so one more second covers the rounding.
        """
        return self.jwks_max_age + math.ceil(self.refresh_interval) + self.clock_skew + 1

    @property
    def retire_keep(self) -> int:
        """How long a key stays published after it stops signing: its last token's life."""
        return (
            self.token_ttl + self.clock_skew + self.jwks_max_age + math.ceil(self.refresh_interval)
        )


# --- reading the environment -------------------------------------------------------------


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    path = env.get(f"{name}_FILE")
    if value is not None and path is not None:
        raise ConfigError(f"both {name} and {name}_FILE are set: keep only one of them")
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{name}_FILE={path!r} cannot be read ({exc.strerror}): point it at a readable file"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"{name}_FILE={path!r} is not UTF-8 text: store the value as text"
            ) from None
        # Files written by editors and `echo` end with a newline that is not part of the value.
        value = value.strip("\r\n")
    if value is not None and value.strip() == "":
        return None
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int, example: str) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} is not a positive integer: set it to {example}")
    return value


def _positive_number(env: Mapping[str, str], name: str, default: float, example: str) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} is not a positive number: set it to {example}")
    return value


def _csv(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# The shortest secret accepted: 32 characters of `secrets.token_urlsafe` carry 192 bits.
SECRET_MIN_LENGTH = 32


def _secrets(env: Mapping[str, str], name: str, what: str) -> tuple[str, ...]:
    secrets = _csv(_raw(env, name))
    for secret in secrets:
        if len(secret) < SECRET_MIN_LENGTH:
            raise ConfigError(
                f"{name} holds {what} shorter than {SECRET_MIN_LENGTH} characters: generate one "
                "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
    return secrets


def _claim_list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _raw(env, name)
    if raw is None:
        return default
    claims = _csv(raw)
    for claim in claims:
        if claim not in CONTEXT_CLAIMS:
            raise ConfigError(
                f"{name} names unknown claim {claim!r}: use keys from {', '.join(CONTEXT_CLAIMS)}"
            )
    if len(set(claims)) != len(claims):
        raise ConfigError(f"{name}={raw!r} repeats a claim: list each claim once")
    return claims


def validate_issuer(issuer: str, name: str = "IDP_ISSUER") -> str:
    parts = urlsplit(issuer)
    fix = "set it to a URL such as https://ci.example.com/_services/token"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={issuer!r} is not an http(s) URL with a host: {fix}")
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise ConfigError(f"{name}={issuer!r} has a query or fragment, which OIDC forbids: {fix}")
    if parts.username or parts.password:
        raise ConfigError(f"{name}={issuer!r} carries credentials: remove the user:password@ part")
    if issuer.endswith("/"):
        raise ConfigError(
            f"{name}={issuer!r} ends with '/': drop it; `iss` must match what AWS stores exactly"
        )
    if not re.fullmatch(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*", parts.path):
        raise ConfigError(f"{name}={issuer!r} has characters a URL path cannot hold: {fix}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{name}={issuer!r} has a malformed port: {fix}") from None
    return issuer


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment, or raise `ConfigError` naming the bad variable."""
    env = os.environ if env is None else env

    issuer = validate_issuer(_raw(env, "IDP_ISSUER") or DEFAULT_ISSUER)

    redis_url = _raw(env, "IDP_REDIS_URL")
    if redis_url is not None:
        redis_url = redis_url.strip()
        if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"IDP_REDIS_URL={redis_url!r} is not a Redis URL: use redis://host:6379/0, "
                "rediss:// for TLS, or unix:///path/to/socket"
            )

    kek = _secrets(env, "IDP_KEY_ENCRYPTION_KEY", "a key")
    # A CI secret is a bearer credential worth every repository's tokens: long enough that no
    # guess, online or against a digest, can find it.
    ci_secrets = _secrets(env, "IDP_CI_SECRET", "a secret")

    alg = (_raw(env, "IDP_SIGNING_ALG") or "RS256").strip()
    if alg not in SIGNING_ALGS:
        raise ConfigError(
            f"IDP_SIGNING_ALG={alg!r} is not an algorithm AWS accepts: use one of "
            f"{', '.join(SIGNING_ALGS)}"
        )

    subject_claims = _claim_list(env, "IDP_SUBJECT_CLAIMS", ("repo", "ref", "event"))
    if not subject_claims or subject_claims[0] != "repo":
        raise ConfigError(
            "IDP_SUBJECT_CLAIMS must start with 'repo' so that every subject names its "
            "repository: e.g. repo,ref,event"
        )

    audiences_raw = _raw(env, "IDP_AUDIENCES")
    audiences = _csv(audiences_raw) if audiences_raw is not None else None
    # Unset means any audience; set must list one. `IDP_AUDIENCES=` (or only commas) read as
    # unset silently turned the allow-list off.
    if not audiences and ("IDP_AUDIENCES" in env or "IDP_AUDIENCES_FILE" in env):
        raise ConfigError(
            "IDP_AUDIENCES is set but lists no audience: list the allowed audiences, e.g. "
            "IDP_AUDIENCES=sts.amazonaws.com, or unset it to accept any audience"
        )

    log_format = (_raw(env, "IDP_LOG_FORMAT") or "text").strip()
    if log_format not in ("text", "json"):
        raise ConfigError(f"IDP_LOG_FORMAT={log_format!r} is unknown: use text or json")

    settings = Settings(
        issuer=issuer,
        redis_url=redis_url,
        keys_dir=Path(_raw(env, "IDP_KEYS_DIR") or "keys"),
        key_encryption_keys=kek,
        ci_secrets=ci_secrets,
        signing_alg=alg,
        token_ttl=_positive_int(env, "IDP_TOKEN_TTL", 300, "a number of seconds, e.g. 300"),
        rotation_period=_positive_int(
            env, "IDP_ROTATION_PERIOD", 86400, "a number of seconds, e.g. 86400"
        ),
        subject_claims=subject_claims,
        audiences=audiences,
        aws_session_tags=_claim_list(env, "IDP_AWS_SESSION_TAGS", ()),
        jwks_max_age=_positive_int(env, "IDP_JWKS_MAX_AGE", 300, "a number of seconds, e.g. 300"),
        clock_skew=_non_negative_int(env, "IDP_CLOCK_SKEW", 60),
        refresh_interval=_positive_number(
            env, "IDP_REFRESH_INTERVAL", 2.0, "a number of seconds, e.g. 2"
        ),
        request_token_ttl=_positive_int(
            env, "IDP_REQUEST_TOKEN_TTL", 3900, "a number of seconds, e.g. 3900"
        ),
        ready_stale_after=_positive_int(
            env, "IDP_READY_STALE_AFTER", 30, "a number of seconds, e.g. 30"
        ),
        log_format=log_format,
        rate_limit_ci=_rate_limit(env, "IDP_RATE_LIMIT_CI", Settings.rate_limit_ci),
        rate_limit_step=_rate_limit(env, "IDP_RATE_LIMIT_STEP", Settings.rate_limit_step),
        rate_limit_client=_rate_limit(env, "IDP_RATE_LIMIT_CLIENT", Settings.rate_limit_client),
        trusted_proxies=_non_negative_int(
            env, "IDP_TRUSTED_PROXIES", 0, "the number of proxies, e.g. 1"
        ),
    )
    _check_ring_size(settings)
    return settings


def _non_negative_int(
    env: Mapping[str, str], name: str, default: int, example: str = "a number of seconds, e.g. 60"
) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name}={raw!r} is not a whole number: set it to {example}")
    return value


def _rate_limit(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    """A rate limit in the `limits` notation ("100/second", "30/minute;500/hour"), or off."""
    raw = _raw(env, name)
    if raw is None:
        return default
    value = raw.strip()
    if value.lower() == "off":
        return None
    from limits import parse_many

    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if not items or any(item.amount <= 0 for item in items):
        raise ConfigError(
            f"{name}={raw!r} is not a rate limit: write it as COUNT/PERIOD such as 100/second, "
            "30/minute or 1000/hour (several joined by ';'), or off"
        )
    return value


# AWS stops matching `kid`s somewhere near 100 keys; stay far below.
MAX_PUBLISHED_KEYS = 20


def _check_ring_size(settings: Settings) -> None:
    # Keys published at once: the current and next one, plus the retired ones still covering
    # live tokens.
    published = 2 + -(-settings.retire_keep // settings.rotation_period)
    if published > MAX_PUBLISHED_KEYS:
        raise ConfigError(
            f"IDP_ROTATION_PERIOD={settings.rotation_period} is too short for IDP_TOKEN_TTL="
            f"{settings.token_ttl} and IDP_JWKS_MAX_AGE={settings.jwks_max_age}: the JWKS would "
            f"hold about {published} keys (limit {MAX_PUBLISHED_KEYS}); rotate less often"
        )
