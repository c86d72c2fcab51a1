"""The claim vocabulary: one table from which everything that knows a claim is derived.

The build context's fields (built in, plus those an operator declares in `IDP_CLAIMS_FILE`),
the claims of the ID token, discovery's `claims_supported`, the OpenAPI build-context schema,
the validation of `IDP_SUBJECT_CLAIMS`/`IDP_AWS_SESSION_TAGS` and `idp aws trust-policy` all read
a `ClaimPolicy`, as warehouse's OIDC publishers derive verification from
`__required_verifiable_claims__`: a claim cannot be known to one of them and not the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

Kind = Literal["text", "id", "bool"]
KINDS: tuple[Kind, ...] = ("text", "id", "bool")


@dataclass(frozen=True)
class Field:
    """One build-context field: its kind, its limits, and whether a context must have it."""

    kind: Kind
    max_length: int = 256
    allow_empty: bool = False
    # git forbids ':' in refs and branch names; refusing it keeps `sub` unambiguous to read.
    no_colon: bool = False
    required: bool = True
    # A Python regular expression the whole value must match (re.fullmatch), or None.
    pattern: str | None = None
    # An allow-list of values, or None.
    values: tuple[str, ...] | None = None


BUILTIN_FIELDS: dict[str, Field] = {
    "repo": Field("text", 201),
    "ref": Field("text", 512, no_colon=True),
    "sha": Field("text", 128),
    "event": Field("text", 128),
    "branch": Field("text", 512, allow_empty=True, no_colon=True),
    "build_id": Field("id"),
    "build_number": Field("id"),
    "actor": Field("text", 256),
    "actor_scm_id": Field("id", allow_empty=True),
    "pull_fork": Field("bool"),
    "step": Field("text", 256),
    "image": Field("text", 512),
    "commands": Field("bool"),
    "request": Field("text", 256),
    # GitHub's limit for an environment name; deploy tools have one, Vela's steps may not.
    "environment": Field("text", 255, required=False),
}

# Claims the issuer computes from a field instead of receiving them, right after that field.
DERIVED_CLAIMS: dict[str, tuple[str, ...]] = {"image": ("image_name", "image_tag")}

# The one place the default subject is written: Vela's `repo:ORG/REPO:ref:REF:event:EVENT`.
DEFAULT_SUBJECT_CLAIMS: tuple[str, ...] = ("repo", "ref", "event")
DEFAULT_IDENTITY: tuple[str, ...] = ("repo",)
# The handle by which a build is closed: a context without it could never be stopped.
NEVER_OPTIONAL: tuple[str, ...] = ("build_id",)

# Claims of the token that are not the context's (the issuer sets them): no field may take
# one of these names. RFC 7519, OpenID Connect Core's ID token, and the IANA registry's
# entries a relying party may act on.
REGISTERED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "azp",
        "amr",
        "acr",
        "auth_time",
        "nonce",
        "at_hash",
        "c_hash",
        "s_hash",
        "sid",
        "cnf",
        "act",
        "may_act",
        "scope",
        "client_id",
        "typ",
        "token_type",
    }
)
# Names a context field cannot take although they are no claim: `ttl` is the request token's.
RESERVED_FIELDS = frozenset({"ttl"})


def parse_claim_list(raw: str | None) -> tuple[str, ...]:
    """A comma list of claim keys (`repo, ref,event`), blanks dropped. The only parser of one."""
    if raw is None:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class SubjectRule:
    """`subjects[n]` of the claims file: when every glob of `match` matches, sub is `claims`."""

    claims: tuple[str, ...]
    match: tuple[tuple[str, str], ...] = ()
    # 1-based position in the file, for messages ("subjects[1]").
    number: int = 0

    def matches(self, claims: Mapping[str, str]) -> bool:
        # fnmatch on the raw claim value, case-sensitive on every platform; an absent claim
        # matches no glob (not even `*`), so a rule never applies by accident of a missing value.
        return all(key in claims and fnmatchcase(claims[key], glob) for key, glob in self.match)

    def describe(self) -> str:
        if not self.match:
            return f"subjects[{self.number}] (no match: applies to all)"
        globs = ", ".join(f"{key}={glob}" for key, glob in self.match)
        return f"subjects[{self.number}] (match {globs})"


def _builtin_fields() -> Mapping[str, Field]:
    return BUILTIN_FIELDS


@dataclass(frozen=True)
class ClaimPolicy:
    """The effective claim table: built-ins (some maybe optional) plus declared claims."""

    fields: Mapping[str, Field] = field(default_factory=_builtin_fields)
    identity: tuple[str, ...] = DEFAULT_IDENTITY
    subjects: tuple[SubjectRule, ...] = ()
    # The claims file's `session_tags`, which overrides IDP_AWS_SESSION_TAGS; None: not given.
    session_tags: tuple[str, ...] | None = None
    # Where the policy came from (the claims file's path), for messages; None: built in.
    source: str | None = None

    @property
    def claim_names(self) -> tuple[str, ...]:
        """Every claim the token may carry from the context, in the token's order."""
        names: list[str] = []
        for name in self.fields:
            names.append(name)
            names.extend(DERIVED_CLAIMS.get(name, ()))
        return tuple(names)

    @property
    def declared(self) -> tuple[str, ...]:
        """The claims the file adds to the built-in table."""
        return tuple(name for name in self.fields if name not in BUILTIN_FIELDS)

    def is_always_present(self, claim: str) -> bool:
        """Whether every token has this claim (its field, or the field it derives from, is
        required)."""
        for source, derived in DERIVED_CLAIMS.items():
            if claim in derived:
                claim = source
        spec = self.fields.get(claim)
        return spec is not None and spec.required

    def rule_for(self, claims: Mapping[str, str]) -> SubjectRule | None:
        """The first subject rule whose globs all match these claims; None: the default."""
        for rule in self.subjects:
            if rule.matches(claims):
                return rule
        return None

    def subject_keys(self, claims: Mapping[str, str], default: Sequence[str]) -> tuple[str, ...]:
        """The keys of `sub` for these claims: the rule's (or `default`), absent ones left out
        (as Octopus leaves out keys with no value; identity claims are never absent)."""
        rule = self.rule_for(claims)
        keys = rule.claims if rule is not None else tuple(default)
        return tuple(key for key in keys if key in claims)


BUILTIN_POLICY = ClaimPolicy()
# The token's context claims without a claims file (the built-in table, in order).
CONTEXT_CLAIMS: tuple[str, ...] = BUILTIN_POLICY.claim_names
