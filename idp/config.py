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
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from idp.errors import ConfigError
from idp.tokens.vocabulary import (
    BUILTIN_POLICY,
    CONTEXT_CLAIMS,
    DEFAULT_SUBJECT_CLAIMS,
    ClaimPolicy,
    parse_claim_list,
)

__all__ = ["CONTEXT_CLAIMS", "ConfigError", "Settings", "load_settings"]

# The algorithms AWS STS accepts for OIDC ID tokens, with the key each one needs.
SIGNING_ALGS: dict[str, tuple[str, str | int]] = {
    "RS256": ("RSA", 2048),
    "RS384": ("RSA", 3072),
    "RS512": ("RSA", 4096),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}

DEFAULT_ISSUER = "http://127.0.0.1:8080/_services/token"
# The port sentinels listen on unless told otherwise (redis.io's Sentinel documentation).
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelSettings:
    """Redis through Sentinel (`IDP_REDIS_SENTINELS`, `IDP_REDIS_SENTINEL_MASTER`).

    What `IDP_REDIS_URL` says in one URL comes here in separate variables, since the master's
    address is not known in advance: its ACL user and password (`IDP_REDIS_USERNAME`,
    `IDP_REDIS_PASSWORD`), the sentinels' own (`IDP_REDIS_SENTINEL_USERNAME`,
    `IDP_REDIS_SENTINEL_PASSWORD`), and TLS for both (`IDP_REDIS_TLS`, `IDP_REDIS_TLS_CA_FILE`).
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: Path | None = None

    def describe(self) -> str:
        hosts = ",".join(_host_port(host, port) for host, port in self.sentinels)
        return f"redis master {self.master!r} via sentinels {hosts}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Settings:
    issuer: str = DEFAULT_ISSUER
    redis_url: str | None = None
    redis_sentinel: SentinelSettings | None = None
    keys_dir: Path = Path("keys")
    key_encryption_keys: tuple[str, ...] = ()
    ci_secrets: tuple[str, ...] = ()
    signing_alg: str = "RS256"
    token_ttl: int = 300
    # The longest `lifetime` a step may ask for (INTERFACE.md); keys stay published past it.
    token_max_ttl: int = 3600
    rotation_period: int = 86400
    subject_claims: tuple[str, ...] = DEFAULT_SUBJECT_CLAIMS
    audiences: tuple[str, ...] | None = None
    aws_session_tags: tuple[str, ...] = ()
    # IDP_CLAIMS_FILE, read once here: the build-context fields, the subject rules.
    claim_policy: ClaimPolicy = BUILTIN_POLICY
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
    def uses_redis(self) -> bool:
        return self.redis_url is not None or self.redis_sentinel is not None

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
        """How long a key stays published after it stops signing: its last token's life.

        That token may be the longest a step can ask for (`lifetime` up to IDP_TOKEN_MAX_TTL),
        not the default one: a key dropped while a token it signed is still valid would fail
        that token at every verifier (Vault's identity tokens can outlive their key that way).
        """
        return (
            self.token_max_ttl
            + self.clock_skew
            + self.jwks_max_age
            + math.ceil(self.refresh_interval)
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
    return parse_claim_list(raw)


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


def _claim_list(
    env: Mapping[str, str],
    name: str,
    default: tuple[str, ...],
    policy: ClaimPolicy = BUILTIN_POLICY,
) -> tuple[str, ...]:
    raw = _raw(env, name)
    if raw is None:
        return default
    claims = _csv(raw)
    known = policy.claim_names
    for claim in claims:
        if claim not in known:
            raise ConfigError(
                f"{name} names unknown claim {claim!r}: use keys from {', '.join(known)}"
            )
    if len(set(claims)) != len(claims):
        raise ConfigError(f"{name}={raw!r} repeats a claim: list each claim once")
    return claims


def _subject_claims(env: Mapping[str, str], policy: ClaimPolicy) -> tuple[str, ...]:
    subject_claims = _claim_list(env, "IDP_SUBJECT_CLAIMS", DEFAULT_SUBJECT_CLAIMS, policy)
    # A rule without `match` applies to every token: IDP_SUBJECT_CLAIMS is then never used.
    if any(not rule.match for rule in policy.subjects):
        return subject_claims
    identity = policy.identity
    if subject_claims[: len(identity)] != identity:
        if policy.source is None:
            raise ConfigError(
                "IDP_SUBJECT_CLAIMS must start with 'repo' so that every subject names its "
                "repository: e.g. repo,ref,event"
            )
        raise ConfigError(
            f"IDP_SUBJECT_CLAIMS ({','.join(subject_claims)}) must start with the identity "
            f"claims of {policy.source} ({','.join(identity)}) so that every subject names its "
            f"owner: set it to e.g. {','.join(identity)}, or end `subjects` with a rule "
            "without match"
        )
    return subject_claims


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

    sentinel = _sentinel(env)
    if sentinel is not None and redis_url is not None:
        raise ConfigError(
            "IDP_REDIS_URL and IDP_REDIS_SENTINELS are both set: keep IDP_REDIS_URL for one "
            "Redis, or IDP_REDIS_SENTINELS with IDP_REDIS_SENTINEL_MASTER for Redis through "
            "Sentinel"
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

    claims_file = _raw(env, "IDP_CLAIMS_FILE")
    if claims_file is None:
        policy = BUILTIN_POLICY
    else:
        from idp.tokens.claims_file import load_claims_file

        policy = load_claims_file(claims_file.strip())
    subject_claims = _subject_claims(env, policy)
    session_tags = (
        policy.session_tags
        if policy.session_tags is not None
        else _claim_list(env, "IDP_AWS_SESSION_TAGS", (), policy)
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

    token_ttl = _positive_int(env, "IDP_TOKEN_TTL", 300, "a number of seconds, e.g. 300")
    settings = Settings(
        issuer=issuer,
        redis_url=redis_url,
        redis_sentinel=sentinel,
        keys_dir=Path(_raw(env, "IDP_KEYS_DIR") or "keys"),
        key_encryption_keys=kek,
        ci_secrets=ci_secrets,
        signing_alg=alg,
        token_ttl=token_ttl,
        # Unset, the maximum is an hour, or the default lifetime if that is longer: an issuer
        # configured with IDP_TOKEN_TTL=7200 before lifetimes existed starts as it did.
        token_max_ttl=_positive_int(
            env, "IDP_TOKEN_MAX_TTL", max(3600, token_ttl), "a number of seconds, e.g. 3600"
        ),
        rotation_period=_positive_int(
            env, "IDP_ROTATION_PERIOD", 86400, "a number of seconds, e.g. 86400"
        ),
        subject_claims=subject_claims,
        audiences=audiences,
        aws_session_tags=session_tags,
        claim_policy=policy,
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
    _check_lifetimes(settings)
    _check_ring_size(settings)
    return settings


_SENTINEL_EXAMPLE = "sentinel-0.example.com:26379,sentinel-1.example.com:26379"
# A DNS name or an IPv4 address; IPv6 goes in brackets ([fd00::1]:26379).
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _sentinel_address(entry: str) -> tuple[str, int]:
    bad = ConfigError(
        f"IDP_REDIS_SENTINELS entry {entry[:80]!r} is not host:port: list the sentinels as "
        f"{_SENTINEL_EXAMPLE} (IPv6 in brackets, [fd00::1]:26379)"
    )
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep:
            raise bad
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise bad
    else:
        host, sep, port_text_or_empty = entry.rpartition(":")
        if not sep:
            host, port_text = entry, None
        else:
            port_text = port_text_or_empty
        if not _HOSTNAME.fullmatch(host):
            raise bad
    if port_text is None:
        return host, SENTINEL_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise bad
    return host, int(port_text)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _raw(env, name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name}={raw!r} is not a boolean: set it to true or false")
    return value in _TRUE


# Settings of the Redis connection that only Sentinel needs apart (IDP_REDIS_URL carries them).
_SENTINEL_ONLY = (
    "IDP_REDIS_USERNAME",
    "IDP_REDIS_PASSWORD",
    "IDP_REDIS_SENTINEL_USERNAME",
    "IDP_REDIS_SENTINEL_PASSWORD",
    "IDP_REDIS_TLS",
    "IDP_REDIS_TLS_CA_FILE",
)


def _sentinel(env: Mapping[str, str]) -> SentinelSettings | None:
    """`IDP_REDIS_SENTINELS` and its companions, checked together."""
    raw = _raw(env, "IDP_REDIS_SENTINELS")
    master = _raw(env, "IDP_REDIS_SENTINEL_MASTER")
    if raw is None:
        if master is not None:
            raise ConfigError(
                "IDP_REDIS_SENTINEL_MASTER is set but IDP_REDIS_SENTINELS is not: list the "
                f"sentinels as {_SENTINEL_EXAMPLE}"
            )
        for name in _SENTINEL_ONLY:
            if _raw(env, name) is not None:
                raise ConfigError(
                    f"{name} applies to Redis through Sentinel (IDP_REDIS_SENTINELS) only: "
                    "with IDP_REDIS_URL put credentials and TLS in the URL "
                    "(rediss://user:password@host:6380/0)"
                )
        return None
    entries = [part.strip() for part in raw.split(",")]
    if not any(entries) or any(not entry for entry in entries):
        raise ConfigError(
            f"IDP_REDIS_SENTINELS={raw[:120]!r} has an empty entry: list the sentinels as "
            f"{_SENTINEL_EXAMPLE}"
        )
    sentinels = tuple(_sentinel_address(entry) for entry in entries)
    if len(set(sentinels)) != len(sentinels):
        raise ConfigError("IDP_REDIS_SENTINELS lists a sentinel twice: list each one once")
    if master is None:
        raise ConfigError(
            "IDP_REDIS_SENTINELS is set but IDP_REDIS_SENTINEL_MASTER is not: set it to the "
            "master's name in the sentinels' `sentinel monitor <name> ...` line, e.g. mymaster"
        )
    master = master.strip()
    if not re.fullmatch(r"[\x21-\x7e]{1,128}", master):
        raise ConfigError(
            f"IDP_REDIS_SENTINEL_MASTER={master[:80]!r} is not a master name: use the name of "
            "the sentinels' `sentinel monitor <name> ...` line (printable, no spaces)"
        )
    username = _raw(env, "IDP_REDIS_USERNAME")
    password = _raw(env, "IDP_REDIS_PASSWORD")
    sentinel_username = _raw(env, "IDP_REDIS_SENTINEL_USERNAME")
    sentinel_password = _raw(env, "IDP_REDIS_SENTINEL_PASSWORD")
    for user, secret in (
        ("IDP_REDIS_USERNAME", password),
        ("IDP_REDIS_SENTINEL_USERNAME", sentinel_password),
    ):
        if _raw(env, user) is not None and secret is None:
            pair = user.replace("USERNAME", "PASSWORD")
            raise ConfigError(f"{user} is set but {pair} is not: an ACL user needs its password")
    ca_raw = _raw(env, "IDP_REDIS_TLS_CA_FILE")
    tls = _flag(env, "IDP_REDIS_TLS")
    ca_file = Path(ca_raw.strip()) if ca_raw is not None else None
    if ca_file is not None:
        if not tls:
            raise ConfigError(
                "IDP_REDIS_TLS_CA_FILE is set but IDP_REDIS_TLS is not true: set "
                "IDP_REDIS_TLS=true, or drop the CA file"
            )
        if not ca_file.is_file() or not os.access(ca_file, os.R_OK):
            raise ConfigError(
                f"IDP_REDIS_TLS_CA_FILE={str(ca_file)!r} is not a readable file: point it at the "
                "PEM bundle of the CA that signed the Redis and Sentinel certificates"
            )
    return SentinelSettings(
        sentinels=sentinels,
        master=master,
        username=username.strip() if username else None,
        password=password,
        sentinel_username=sentinel_username.strip() if sentinel_username else None,
        sentinel_password=sentinel_password,
        tls=tls,
        tls_ca_file=ca_file,
    )


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


# The shortest `lifetime` a step may ask for (INTERFACE.md's range): a shorter token could
# expire between the step fetching it and the relying party checking it.
MIN_LIFETIME = 60


def _check_lifetimes(settings: Settings) -> None:
    max_ttl, ttl = settings.token_max_ttl, settings.token_ttl
    if max_ttl < MIN_LIFETIME:
        raise ConfigError(
            f"IDP_TOKEN_MAX_TTL={max_ttl} is below {MIN_LIFETIME}, the shortest lifetime a step "
            f"may ask for: set it to {MIN_LIFETIME} or more, e.g. 3600"
        )
    if max_ttl < ttl:
        raise ConfigError(
            f"IDP_TOKEN_MAX_TTL={max_ttl} is below IDP_TOKEN_TTL={ttl}, so the default "
            f"lifetime could not be asked for: set IDP_TOKEN_MAX_TTL to {ttl} or more, or "
            f"lower IDP_TOKEN_TTL"
        )
    # Imported here: the token rules import this module, not the other way round.
    from idp.tokens.context import MAX_TTL

    # Closing a build (DELETE /builds/<id>) is remembered for MAX_TTL + skew, and the
    # request-token secrets are kept as long: both assume no request token lives longer than
    # MAX_TTL, which the build context's `ttl` respects and the default must too. (A closed
    # build stops its request tokens, not the ID tokens already minted, as with GitHub: so
    # IDP_TOKEN_MAX_TTL bears on how long keys are published, never on the closing window.)
    if settings.request_token_ttl > MAX_TTL:
        raise ConfigError(
            f"IDP_REQUEST_TOKEN_TTL={settings.request_token_ttl} is over {MAX_TTL}, the longest "
            f"a request token may live (a closed build is remembered that long): set it to "
            f"{MAX_TTL} or less, e.g. 3900"
        )


def _check_ring_size(settings: Settings) -> None:
    # Keys published at once: the current and next one, plus the retired ones still covering
    # live tokens, the longest-lived included (retire_keep counts IDP_TOKEN_MAX_TTL).
    published = 2 + -(-settings.retire_keep // settings.rotation_period)
    if published > MAX_PUBLISHED_KEYS:
        raise ConfigError(
            f"IDP_ROTATION_PERIOD={settings.rotation_period} is too short for IDP_TOKEN_MAX_TTL="
            f"{settings.token_max_ttl} and IDP_JWKS_MAX_AGE={settings.jwks_max_age}: every key "
            f"stays published until the longest-lived token it signed expires, so the JWKS "
            f"would hold about {published} keys (limit {MAX_PUBLISHED_KEYS}); rotate less "
            f"often or lower IDP_TOKEN_MAX_TTL"
        )
