"""The ID token: its claims, its subject, its audiences, its AWS session tags.

AWS evaluates only `aud`, `sub`, `amr` and `azp` of an OIDC token in a role's trust policy, so
whatever a policy must enforce (image, commands) has to reach AWS through `sub` (configurable
with IDP_SUBJECT_CLAIMS) or through session tags (IDP_AWS_SESSION_TAGS).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from idp.config import Settings
from idp.errors import InvalidAudience, InvalidRequest
from idp.tokens.context import BuildContext
from idp.tokens.tags import tag_value_problem

AUDIENCE_MAX = 256
AUDIENCES_MAX = 10
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"

_PRINTABLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def context_claims(ctx: BuildContext) -> dict[str, str]:
    """Every claim the context gives, as strings, as Vela (since v0.27) and GitHub send them;
    an absent optional field gives no claim (not an empty string)."""
    claims: dict[str, str] = {}
    for name, value in ctx.fields().items():
        claims[name] = ("true" if value else "false") if isinstance(value, bool) else value
        if name == "image" and ctx.image_ref is not None:
            claims["image_name"] = ctx.image_ref.name
            claims["image_tag"] = ctx.image_ref.tag
    return claims


def escape_subject_value(value: str) -> str:
    # '%' first, so that an escaped value can never be read back as another one: the subject
    # is then an injective function of the context (no value can forge a ':key:' segment).
    return value.replace("%", "%25").replace(":", "%3A")


def build_subject(claims: Mapping[str, str], keys: Sequence[str]) -> str:
    """GitHub's shape: `key:value` pairs joined by ':' (`repo:o/r:ref:refs/heads/main:...`).

    A key whose claim is absent is left out (as Octopus does): the keys stay in the subject,
    so it still reads back to exactly the claims it was built from.
    """
    return ":".join(f"{key}:{escape_subject_value(claims[key])}" for key in keys if key in claims)


def subject_of(claims: Mapping[str, str], settings: Settings) -> str:
    """The token's `sub`: the first matching subject rule of the claims file, else
    IDP_SUBJECT_CLAIMS."""
    return build_subject(
        claims, settings.claim_policy.subject_keys(claims, settings.subject_claims)
    )


def session_tags(claims: Mapping[str, str], keys: Sequence[str]) -> dict[str, Any]:
    """The principal tags, each the claim's value verbatim; a value that AWS's tag characters
    cannot carry is refused (folding it would let it match another value's tag). A claim the
    build does not have gives no tag (a policy on it then fails closed)."""
    keys = [key for key in keys if key in claims]
    for key in keys:
        problem = tag_value_problem(claims[key])
        if problem is not None:
            raise InvalidRequest(
                f"claim {key!r} of this build {problem}, so it cannot be an AWS session tag "
                "verbatim: ask the issuer's operator to drop it from IDP_AWS_SESSION_TAGS "
                "(choose another claim) or to match it through sub (IDP_SUBJECT_CLAIMS)"
            )
    return {"principal_tags": {key: [claims[key]] for key in keys}}


def validate_audiences(raw: Sequence[str], settings: Settings) -> list[str]:
    """The requested audiences, checked; raise InvalidAudience naming the problem.

    The result is the requested audiences in order without repeats: never more or others.
    """
    # A bare string is a Sequence[str] too: iterated, "ab" would become audiences "a" and "b".
    if (
        isinstance(raw, str | bytes)
        or not isinstance(raw, Sequence)
        or not all(isinstance(audience, str) for audience in raw)
    ):
        raise InvalidAudience("the audiences must be a list of strings: one per audience")
    if not raw:
        raise InvalidAudience(
            "no audience was requested: add ?audience=<the relying party's client id>, "
            "e.g. sts.amazonaws.com"
        )
    if len(raw) > AUDIENCES_MAX:
        raise InvalidAudience(f"{len(raw)} audiences were requested; at most {AUDIENCES_MAX}")
    seen: list[str] = []
    for audience in raw:
        if audience == "":
            raise InvalidAudience("an audience parameter is empty: give each one a value")
        if len(audience) > AUDIENCE_MAX:
            raise InvalidAudience(f"an audience is over {AUDIENCE_MAX} characters")
        if not _PRINTABLE.fullmatch(audience):
            raise InvalidAudience(
                "an audience holds control, non-ASCII or surrounding whitespace characters: "
                "use the relying party's client id as it is"
            )
        if "," in audience:
            raise InvalidAudience(
                "an audience contains ',': ask for several audiences with several "
                "audience parameters, not a comma list"
            )
        if settings.audiences is not None and audience not in settings.audiences:
            raise InvalidAudience(
                f"audience {audience!r} is not allowed by this issuer (IDP_AUDIENCES): ask for "
                f"one of {', '.join(settings.audiences) or '(none configured)'}"
            )
        if audience not in seen:
            seen.append(audience)
    return seen


def id_token_claims(
    ctx: BuildContext,
    audiences: Sequence[str],
    settings: Settings,
    now: int,
    *,
    lifetime: int | None = None,
) -> dict[str, Any]:
    """`lifetime`: the seconds the step asked for, already checked (`tokens.lifetime`);
    None gives IDP_TOKEN_TTL."""
    claims = context_claims(ctx)
    token: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": subject_of(claims, settings),
        "aud": audiences[0] if len(audiences) == 1 else list(audiences),
        "exp": now + (settings.token_ttl if lifetime is None else lifetime),
        "iat": now,
        "nbf": now,
        "jti": str(uuid.uuid4()),
        "token_type": "ID",
        **claims,
    }
    tags = session_tags(claims, settings.aws_session_tags)
    # No claim at all when the build has none of the tag claims (they may be optional): an
    # empty tag set is not something STS documents accepting.
    if tags["principal_tags"]:
        token[AWS_TAGS_CLAIM] = tags
    return token
