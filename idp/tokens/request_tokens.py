"""Request tokens: what a step holds to ask for ID tokens.

A request token is a JWT signed with HS256 under a server secret kept in the key ring (never a
key of the published JWKS), with its own `typ`, so it can never verify as an ID token anywhere
and an ID token can never pass as a request token here. It carries the validated build context,
so the exchange needs no lookup but one: whether its build was closed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from idp.errors import InvalidRequest, InvalidToken
from idp.keys.ring import LEGACY_SECRET_ID
from idp.store.base import LEGACY_EPOCH
from idp.tokens.context import BuildContext, parse_context
from idp.tokens.vocabulary import BUILTIN_POLICY, ClaimPolicy

TYP = "idp-request+jwt"
ALG = "HS256"
# A request token travels as "Authorization: Bearer <token>", which gunicorn caps at 8190
# bytes per header line: a token longer than this could be issued but never presented.
MAX_TOKEN_LENGTH = 8000
# Built once: joserfc builds a registry on every call that is given `algorithms` instead.
# HS256 only: `alg: none`, an RS256 ID token and an HS256 token forged with a public key as
# the secret all fail its checks.
_REGISTRY = JWSRegistry(algorithms=[ALG])


@dataclass(frozen=True)
class RequestToken:
    token: str
    jti: str
    expires_at: int
    context: BuildContext
    # The key store's epoch at issue (Store.epoch): closures are known per epoch.
    epoch: str = LEGACY_EPOCH


def audience_of(issuer: str) -> str:
    # Request tokens are addressed to the issuer's own exchange, nothing else.
    return f"{issuer}/id-token"


def issue(
    ctx: BuildContext,
    key: tuple[str, OctKey],
    issuer: str,
    now: int,
    default_ttl: int,
    epoch: str = LEGACY_EPOCH,
) -> RequestToken:
    """Sign a request token with `key` = (secret id, secret); the id goes into `kid`."""
    key_id, secret = key
    ttl = ctx.ttl or default_ttl
    jti = str(uuid.uuid4())
    claims = {
        "iss": issuer,
        "aud": audience_of(issuer),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": jti,
        "ctx": ctx.to_json(),
        "ep": epoch,
    }
    token = jwt.encode({"alg": ALG, "typ": TYP, "kid": key_id}, claims, secret, algorithms=[ALG])
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidRequest(
            f"the build context makes a request token of {len(token)} characters, over the "
            f"{MAX_TOKEN_LENGTH} a step can send in a header: shorten ref, branch, step, image "
            "or the other text fields"
        )
    return RequestToken(token=token, jti=jti, expires_at=now + ttl, context=ctx, epoch=epoch)


def verify(
    token: str,
    keys: Mapping[str, OctKey],
    issuer: str,
    now: int,
    policy: ClaimPolicy = BUILTIN_POLICY,
) -> RequestToken:
    """Check signature, type, issuer, audience and time; raise InvalidToken saying which failed.

    The context is checked again against today's claim policy: a token opened before the
    claims file changed must not mint a token of a shape the file no longer allows.
    """
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise InvalidToken(
            "the request token is malformed: pass the value of "
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN or VELA_ID_TOKEN_REQUEST_TOKEN as is"
        )
    # The compact form is split and its header decoded once (jwt.decode would do it again
    # after we read `kid`): the exchange verifies a request token on every mint.
    try:
        signed = jws.extract_compact(token.encode(), registry=_REGISTRY)
    except (JoseError, ValueError, TypeError):
        raise _not_valid() from None
    header = signed.headers()
    # `kid` (unverified: it only picks the secret to verify with); tokens from before
    # secrets rotated have none and were signed with the legacy secret.
    kid = header.get("kid", LEGACY_SECRET_ID)
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise InvalidToken(
            "the request token was signed with a secret this issuer no longer holds (it "
            "outlived its build's longest ttl) or never held; ask the CI server for a new one"
        )
    try:
        valid = jws.validate_compact(signed, key, registry=_REGISTRY)
        payload = json.loads(signed.payload) if valid else None
    except (JoseError, ValueError, TypeError):
        valid = False
    if not valid or not isinstance(payload, dict):
        raise _not_valid()
    if header.get("typ") != TYP:
        raise InvalidToken("the bearer token is not a request token of this issuer")
    registry = JWTClaimsRegistry(
        now=now,
        leeway=0,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience_of(issuer)},
        exp={"essential": True},
        jti={"essential": True},
    )
    try:
        registry.validate(payload)
    except ExpiredTokenError:
        raise InvalidToken(
            "the request token has expired: the step ran longer than its ttl; "
            "raise the build context's ttl on the CI server"
        ) from None
    except JoseError as exc:
        raise InvalidToken(f"the request token was not issued for this issuer ({exc})") from None
    try:
        ctx = parse_context(payload.get("ctx"), policy)
    except InvalidRequest as exc:
        raise InvalidToken(
            f"the request token carries no valid build context ({exc.description}): ask the "
            "CI server for a new one"
        ) from None
    epoch = payload.get("ep", LEGACY_EPOCH)
    return RequestToken(
        token=token,
        jti=str(payload["jti"]),
        expires_at=int(payload["exp"]),
        context=ctx,
        epoch=epoch if isinstance(epoch, str) else "",
    )


def _not_valid() -> InvalidToken:
    return InvalidToken(
        "the request token is not valid for this issuer (bad signature or encoding); "
        "ask the CI server for a new one"
    )
