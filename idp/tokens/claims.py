"""The ID token: its claims, its subject, its audiences, its AWS session tags.

AWS evaluates only `aud`, `sub`, `amr` and `azp` of an OIDC token in a role's trust policy, so
whatever a policy must enforce (image, commands) has to reach AWS through `sub` (configurable
with IDP_SUBJECT_CLAIMS) or through session tags (IDP_AWS_SESSION_TAGS).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from idp.aws.tags import tag_value_problem
from idp.config import Settings
from idp.errors import InvalidAudience, InvalidRequest
from idp.tokens.context import BuildContext

AUDIENCE_MAX = 256
AUDIENCES_MAX = 10
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"

_PRINTABLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def context_claims(ctx: BuildContext) -> dict[str, str]:
    """Every context claim as a string, as Vela (since v0.27) and GitHub send them."""
    image = ctx.image_ref
    return {
        "repo": ctx.repo,
        "ref": ctx.ref,
        "sha": ctx.sha,
        "event": ctx.event,
        "branch": ctx.branch,
        "build_id": ctx.build_id,
        "build_number": ctx.build_number,
        "actor": ctx.actor,
        "actor_scm_id": ctx.actor_scm_id,
        "pull_fork": "true" if ctx.pull_fork else "false",
        "step": ctx.step,
        "image": ctx.image,
        "image_name": image.name,
        "image_tag": image.tag,
        "commands": "true" if ctx.commands else "false",
        "request": ctx.request,
    }


def escape_subject_value(value: str) -> str:
    # '%' first, so that an escaped value can never be read back as another one: the subject
    # is then an injective function of the context (no value can forge a ':key:' segment).
    return value.replace("%", "%25").replace(":", "%3A")


def build_subject(claims: dict[str, str], keys: Sequence[str]) -> str:
    """GitHub's shape: `key:value` pairs joined by ':' (`repo:o/r:ref:refs/heads/main:...`)."""
    return ":".join(f"{key}:{escape_subject_value(claims[key])}" for key in keys)


def session_tags(claims: dict[str, str], keys: Sequence[str]) -> dict[str, Any]:
    """The principal tags, each the claim's value verbatim; a value that AWS's tag characters
    cannot carry is refused (folding it would let it match another value's tag)."""
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
        "sub": build_subject(claims, settings.subject_claims),
        "aud": audiences[0] if len(audiences) == 1 else list(audiences),
        "exp": now + (settings.token_ttl if lifetime is None else lifetime),
        "iat": now,
        "nbf": now,
        "jti": str(uuid.uuid4()),
        "token_type": "ID",
        **claims,
    }
    if settings.aws_session_tags:
        token[AWS_TAGS_CLAIM] = session_tags(claims, settings.aws_session_tags)
    return token
