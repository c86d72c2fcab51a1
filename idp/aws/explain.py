"""Why AWS STS would refuse (or accept) a token for a role: every check, in STS's order.

STS answers AssumeRoleWithWebIdentity with an opaque "Not authorized" on purpose, and IAM's
policy simulator does not evaluate trust policies. This module holds a real trust policy
against a real token and reports every check STS makes, with what it saw and the fix:

1. the token: size, `alg`, `iss`, required claims, `exp`/`nbf`/`iat` with STS's 5-minute
   skew, `kid`, the signature, the session-tags claim;
2. the provider: registered for exactly this `iss`, the audience among its client IDs, and
   (online) the thumbprint of today's chain;
3. the trust policy: each statement's Effect, Principal, Action/NotAction and every condition,
   with AWS's semantics (`idp.aws.conditions`), explicit Deny first, and `sts:TagSession`
   when the token carries session tags;
4. the session: the role session name and the duration.

Everything here is pure: it takes facts already fetched (`idp.aws.explain_facts` fetches them
from IAM and the issuer), so the table of cases in the tests drives it without a network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from idp.aws import DEFAULT_AUDIENCE
from idp.aws.checks import (
    FAIL,
    INFO,
    PASS,
    UNKNOWN,
    WARN,
    Check,
    Report,
    Tri,
    all_of,
    section_result,
)
from idp.aws.errors import ProviderUrlError
from idp.aws.policy_eval import (
    TAGS_CLAIM,
    audiences,
    federated_principals,
    matched_audience,
    policy_checks,
    request_context,
    session_tags,
)
from idp.aws.register import check_url_syntax
from idp.tokens.tags import TAG_VALUE_MAX, clean_tag_value, is_valid_tag_key

__all__ = [
    "Check",
    "Facts",
    "ProviderFacts",
    "Report",
    "SessionRequest",
    "explain",
    "federated_principals",
    "session_tags",
    "unverified_claims",
]

TOKEN_MIN, TOKEN_MAX = 4, 20000  # STS's WebIdentityToken length limits
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
SKEW = 300  # seconds STS tolerates around exp, nbf and iat
DURATION_MIN, DURATION_MAX, DURATION_DEFAULT = 900, 43200, 3600
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")


# --- facts in --------------------------------------------------------------


@dataclass(frozen=True)
class ProviderFacts:
    """The IAM OIDC provider STS would use for the token's `iss`."""

    arn: str
    registered: bool = True  # False: IAM has no provider for exactly this iss
    client_ids: tuple[str, ...] = ()
    thumbprints: tuple[str, ...] = ()
    source: str = "offline"  # "iam" when read with iam:GetOpenIDConnectProvider
    near_misses: tuple[str, ...] = ()  # registered URLs that differ only by a slash or path

    @property
    def url(self) -> str:
        return self.arn.partition(":oidc-provider/")[2]


@dataclass(frozen=True)
class SessionRequest:
    """What the caller asks STS for, and the role's limit when known."""

    duration_seconds: int | None = None
    role_session_name: str | None = None
    max_session_duration: int | None = None


@dataclass(frozen=True)
class Facts:
    token: str
    policy: Any
    provider: ProviderFacts | None
    now: int
    jwks: Mapping[str, Any] | None = None
    jwks_error: str | None = None  # why the JWKS could not be read, when it could not
    session: SessionRequest = field(default_factory=SessionRequest)
    role_arn: str | None = None
    chain_thumbprints: tuple[str, ...] | None = None  # online: today's chain
    thumbprint_error: str | None = None


# --- the token -------------------------------------------------------------------------


@dataclass
class Token:
    header: dict[str, Any]
    claims: dict[str, Any]


def _decode(token: str) -> Token:
    """Header and claims, not verified; `ValueError` naming what is malformed."""
    try:
        compact = jws.extract_compact(token.encode("ascii"))
    except (JoseError, UnicodeError, ValueError) as exc:
        raise ValueError(f"not a compact JWS (three base64url parts): {exc}") from None
    header = compact.headers()
    try:
        claims = json.loads(compact.payload)
    except ValueError:
        raise ValueError("its payload is not JSON") from None
    if not isinstance(claims, dict):
        raise ValueError("its payload is not a JSON object")
    return Token(header=dict(header), claims=claims)


def unverified_claims(token: str) -> dict[str, Any]:
    """The token's claims, NOT verified (empty when unreadable): to know where to look."""
    try:
        return _decode(token).claims
    except ValueError:
        return {}


def _when(seconds: int) -> str:
    if seconds == 0:
        return "now"
    if seconds < 0:
        return f"{-seconds} s ago"
    return f"in {seconds} s"


def token_checks(facts: Facts) -> tuple[list[Check], Token | None]:
    token = facts.token
    checks: list[Check] = []
    size_ok = TOKEN_MIN <= len(token) <= TOKEN_MAX
    try:
        parsed = _decode(token)
    except ValueError as exc:
        checks.append(
            Check(
                "token.format",
                FAIL,
                f"{len(token)} characters, {exc}",
                "pass the ID token itself (`idp token --audience sts.amazonaws.com`), not a "
                "request token, a JSON answer or a file with other text",
            )
        )
        return checks, None
    checks.append(
        Check(
            "token.format",
            PASS if size_ok else FAIL,
            f"a JWT of {len(token)} characters"
            + ("" if size_ok else f", outside STS's {TOKEN_MIN} to {TOKEN_MAX}"),
            "" if size_ok else "make the token smaller: fewer session tags or claims",
        )
    )
    header, claims = parsed.header, parsed.claims
    alg = header.get("alg")
    checks.append(
        Check(
            "token.alg",
            PASS if alg in ALGORITHMS else FAIL,
            f"alg {alg}",
            f"sign with one of {', '.join(ALGORITHMS)} (IDP_SIGNING_ALG)",
        )
    )
    iss = claims.get("iss")
    iss_status, iss_detail, iss_fix = PASS, f"iss {iss}", ""
    if not isinstance(iss, str) or not iss:
        iss_status, iss_detail = FAIL, "no iss claim"
        iss_fix = "the token must name its issuer: it is IDP_ISSUER"
    else:
        try:
            check_url_syntax(iss)
        except ProviderUrlError as exc:
            iss_status, iss_detail = FAIL, f"iss {iss!r}: AWS would not accept it"
            iss_fix = exc.description.split(": ", 1)[-1]
    checks.append(Check("token.iss", iss_status, iss_detail, iss_fix))

    missing = [c for c in ("sub", "aud") if not claims.get(c)]
    if not audiences(claims) and "aud" not in missing:
        missing.append("aud")
    checks.append(
        Check(
            "token.claims",
            FAIL if missing else PASS,
            f"missing {', '.join(missing)}"
            if missing
            else f"sub {claims.get('sub')!r}, aud {claims.get('aud')!r}",
            "ask the issuer for an ID token with an audience (`?audience=sts.amazonaws.com`)",
        )
    )
    checks += _time_checks(claims, facts.now)
    checks += _key_checks(facts, parsed, alg)
    if TAGS_CLAIM in claims:
        checks.append(_tags_check(claims[TAGS_CLAIM]))
    return checks, parsed


def _time_checks(claims: Mapping[str, Any], now: int) -> list[Check]:
    checks = []
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        checks.append(Check("token.exp", FAIL, "no numeric exp claim", "STS requires exp"))
    else:
        late = now > exp + SKEW
        checks.append(
            Check(
                "token.exp",
                FAIL if late else PASS,
                f"expires {_when(int(exp) - now)}"
                + (f", past STS's {SKEW} s of skew" if late else ""),
                "fetch a fresh token right before calling STS (tokens live IDP_TOKEN_TTL "
                "seconds) and check the clocks of the runner and the issuer",
            )
        )
    for name, what in (("nbf", "valid from"), ("iat", "issued")):
        value = claims.get(name)
        if value is None:
            if name == "iat":
                checks.append(Check("token.iat", WARN, "no iat claim", "ID tokens carry iat"))
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            checks.append(Check(f"token.{name}", FAIL, f"{name} is not a number", ""))
            continue
        early = value > now + SKEW
        checks.append(
            Check(
                f"token.{name}",
                FAIL if early else PASS,
                f"{what} {_when(int(value) - now)}"
                + (f", beyond STS's {SKEW} s of skew" if early else ""),
                "the issuer's clock is ahead: synchronise it (NTP)",
            )
        )
    return checks


def _key_checks(facts: Facts, parsed: Token, alg: Any) -> list[Check]:
    kid = parsed.header.get("kid")
    if not isinstance(kid, str) or not kid:
        return [
            Check(
                "token.kid",
                FAIL,
                "the header has no kid",
                "AWS picks the verification key by kid: sign with a key whose kid the JWKS "
                "publishes",
            ),
            Check("token.signature", UNKNOWN, "not checked: no kid", ""),
        ]
    if facts.jwks is None:
        reason = facts.jwks_error or "no JWKS given"
        fix = "pass the issuer's keys with --jwks FILE, or run where the issuer is reachable"
        return [
            Check("token.kid", UNKNOWN, f"kid {kid}; the JWKS could not be read ({reason})", fix),
            Check("token.signature", UNKNOWN, "not checked: no JWKS", fix),
        ]
    try:
        keys = KeySet.import_key_set(dict(facts.jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        return [
            Check("token.kid", UNKNOWN, f"kid {kid}; the JWKS is not usable ({exc})", ""),
            Check("token.signature", UNKNOWN, "not checked: the JWKS is not usable", ""),
        ]
    published = [k.kid for k in keys.keys]
    key = next((k for k in keys.keys if k.kid == kid), None)
    if key is None:
        return [
            Check(
                "token.kid",
                FAIL,
                f"kid {kid} is not in the JWKS (it has {', '.join(map(str, published)) or 'none'})",
                "the key was retired or the token comes from another issuer: fetch a new "
                "token, and check that the issuer's replicas share one key ring",
            ),
            Check("token.signature", UNKNOWN, "not checked: no key with this kid", ""),
        ]
    checks = [Check("token.kid", PASS, f"kid {kid} is published", "")]
    if alg not in ALGORITHMS:
        checks.append(Check("token.signature", UNKNOWN, f"not checked: alg {alg}", ""))
        return checks
    try:
        jws.deserialize_compact(facts.token, key, algorithms=[str(alg)])
    except JoseError as exc:
        checks.append(
            Check(
                "token.signature",
                FAIL,
                f"does not verify with key {kid} ({exc.error})",
                "the token was altered or signed by another key: fetch a new one",
            )
        )
    else:
        checks.append(Check("token.signature", PASS, f"verifies with key {kid} ({alg})", ""))
    return checks


def _tags_check(tags: Any) -> Check:
    fix = "the issuer must send {'principal_tags': {KEY: [VALUE]}} with AWS's tag characters"
    if not isinstance(tags, dict) or not isinstance(tags.get("principal_tags", {}), dict):
        return Check("token.session_tags", FAIL, "the tags claim is not an object", fix)
    for key, value in tags.get("principal_tags", {}).items():
        values = value if isinstance(value, list) else [value]
        if not is_valid_tag_key(str(key)):
            return Check("token.session_tags", FAIL, f"tag key {key!r} is refused by AWS", fix)
        if len(values) != 1 or not isinstance(values[0], str):
            return Check("token.session_tags", FAIL, f"tag {key!r} must hold one string value", fix)
        text = values[0]
        if len(text) > TAG_VALUE_MAX or clean_tag_value(text) != text:
            return Check("token.session_tags", FAIL, f"tag {key!r} has characters AWS refuses", fix)
    names = ", ".join(sorted(tags.get("principal_tags", {}))) or "none"
    return Check("token.session_tags", PASS, f"session tags: {names}", "")


# --- the provider ----------------------------------------------------------------------


def stored_iss(iss: str) -> str:
    """The provider URL AWS would look up for `iss`: without the scheme."""
    return iss.split("://", 1)[1] if "://" in iss else iss


def provider_checks(facts: Facts, token: Token | None) -> list[Check]:
    provider = facts.provider
    if provider is None or token is None:
        return [Check("provider.registered", UNKNOWN, "no provider to compare with", "")]
    iss = token.claims.get("iss")
    checks = []
    wanted = stored_iss(iss) if isinstance(iss, str) else ""
    if not provider.registered:
        hint = ""
        if provider.near_misses:
            hint = f"; IAM has {', '.join(provider.near_misses)}, a different provider"
        checks.append(
            Check(
                "provider.registered",
                FAIL,
                f"no IAM OIDC provider for {wanted}{hint}",
                f"register exactly the token's iss: `idp aws register {iss}`",
            )
        )
    elif provider.url != wanted:
        differs = "a trailing '/'" if provider.url.rstrip("/") == wanted.rstrip("/") else "a path"
        checks.append(
            Check(
                "provider.registered",
                FAIL,
                f"the provider is {provider.url} but iss is {iss}: {differs} makes it a "
                "different provider",
                f"register exactly the token's iss (`idp aws register {iss}`) and name that "
                "provider in the policy",
            )
        )
    else:
        checks.append(Check("provider.registered", PASS, f"{provider.arn}", ""))

    audience = matched_audience(token.claims, provider.client_ids)
    what = "azp" if token.claims.get("azp") else "aud"
    ok = audience is not None and audience in provider.client_ids
    checks.append(
        Check(
            "provider.audience",
            PASS if ok else FAIL,
            f"{what} {audience!r} "
            + ("is" if ok else "is not")
            + f" among the client IDs {list(provider.client_ids)}",
            f"ask for an audience the provider lists (e.g. --audience {DEFAULT_AUDIENCE}), or "
            f"add it: `idp aws register {iss} --audience {audience}`",
        )
    )
    if facts.chain_thumbprints is not None or facts.thumbprint_error is not None:
        checks.append(_thumbprint_check(facts, provider))
    return checks


def _thumbprint_check(facts: Facts, provider: ProviderFacts) -> Check:
    note = (
        "AWS relies on its own trusted CAs when the JWKS host's certificate comes from one, "
        "and checks the thumbprint only for other CAs"
    )
    if facts.chain_thumbprints is None:
        return Check(
            "provider.thumbprint", WARN, f"today's chain not read ({facts.thumbprint_error})", note
        )
    today = set(facts.chain_thumbprints)
    if today & set(provider.thumbprints):
        return Check("provider.thumbprint", PASS, f"today's chain matches ({', '.join(today)})")
    return Check(
        "provider.thumbprint",
        WARN,
        f"today's chain has {', '.join(sorted(today))}, the provider pins "
        f"{', '.join(provider.thumbprints) or 'none'}; {note}",
        "update the pins: `idp aws register ISSUER_URL` (thumbprint auto)",
    )


# --- the session -----------------------------------------------------------------------


def session_checks(session: SessionRequest) -> list[Check]:
    checks = []
    name = session.role_session_name
    if name is None:
        checks.append(Check("session.name", INFO, "no role session name given", ""))
    else:
        ok = SESSION_NAME.fullmatch(name) is not None
        checks.append(
            Check(
                "session.name",
                PASS if ok else FAIL,
                f"role session name {name!r}",
                "use 2 to 64 of letters, digits and + = , . @ _ -",
            )
        )
    duration = session.duration_seconds
    asked = DURATION_DEFAULT if duration is None else duration
    shown = f"{asked} s" + (" (STS's default)" if duration is None else "")
    limit = session.max_session_duration
    if not DURATION_MIN <= asked <= DURATION_MAX:
        checks.append(
            Check(
                "session.duration",
                FAIL,
                f"{shown}, outside {DURATION_MIN} to {DURATION_MAX}",
                f"ask for {DURATION_MIN} to the role's MaxSessionDuration",
            )
        )
    elif limit is None:
        status = PASS if asked <= DURATION_DEFAULT else UNKNOWN
        checks.append(
            Check(
                "session.duration",
                status,
                f"{shown}; the role's MaxSessionDuration is not known here"
                + (" (it is at least 3600)" if status == PASS else ""),
                "pass --max-session-duration, or use --role-arn to read it",
            )
        )
    else:
        ok = asked <= limit
        checks.append(
            Check(
                "session.duration",
                PASS if ok else FAIL,
                f"{shown}, the role allows up to {limit} s",
                f"ask for at most {limit} s (set the session duration to the role's maximum), "
                "or raise the role's MaxSessionDuration",
            )
        )
    return checks


# --- all of it -------------------------------------------------------------------------


def explain(facts: Facts) -> Report:
    """Every check STS makes for `facts`, in STS's order, with the verdict and the deciding one."""
    token_list, token = token_checks(facts)
    provider_list = provider_checks(facts, token)
    iss = token.claims.get("iss") if token else None
    provider_url = (
        stored_iss(iss) if isinstance(iss, str) else (facts.provider.url if facts.provider else "")
    )
    policy_list, policy_result, policy_deciding = policy_checks(
        facts.policy,
        token.claims if token else None,
        facts.provider.arn if facts.provider else "",
        facts.provider.client_ids if facts.provider else (),
        provider_url,
        facts.session.role_session_name,
    )
    session_list = session_checks(facts.session)

    sections: list[tuple[list[Check], Tri, Check | None]] = [
        (token_list, section_result(token_list), None),
        (provider_list, section_result(provider_list), None),
        (policy_list, policy_result, policy_deciding),
        (session_list, section_result(session_list), None),
    ]
    verdict_value = all_of(result for _, result, _ in sections)
    deciding: Check | None = None
    if verdict_value is not True:
        wanted = FAIL if verdict_value is False else UNKNOWN
        for checks, result, chosen in sections:
            if result is verdict_value:
                deciding = chosen or next((c for c in checks if c.status == wanted), None)
                break
    if deciding is not None:
        deciding.deciding = True
    context = {}
    if token is not None:
        client_ids = facts.provider.client_ids if facts.provider else ()
        context = request_context(
            token.claims, provider_url, client_ids, facts.session.role_session_name
        ).values
    return Report(
        verdict={True: "allowed", False: "refused", None: "undecidable"}[verdict_value],
        checks=token_list + provider_list + policy_list + session_list,
        deciding=deciding.check if deciding else None,
        context=context,
        role_arn=facts.role_arn,
        provider_arn=facts.provider.arn if facts.provider else None,
    )
