"""Role trust policies that AWS really evaluates.

For an OIDC provider, STS exposes only four condition keys from the token: `<provider>:aud`,
`:sub`, `:amr` and `:azp`. A condition on any other claim (`<provider>:image`,
`<provider>:commands`, as in Vela's documentation) names a key that is never present, so it
is never met and the role cannot be assumed at all. Every other claim reaches a policy one of
two ways, and this module uses whichever the issuer offers:

- inside `sub`, when the claim is in `IDP_SUBJECT_CLAIMS`: the subject is `key:value` pairs in
  that order, joined by `:` (a `:` inside a value is written `%3A`), so one `StringLike` on
  `sub` with a pattern per position matches them all;
- as a session tag, when the claim is in `IDP_AWS_SESSION_TAGS`: the token carries it under
  `https://aws.amazon.com/tags`, STS offers it as `aws:RequestTag/<claim>`, and the statement
  must then also allow `sts:TagSession` (without it, every token that carries tags is refused).

A request that neither way can express is refused, naming the setting to turn on; so is a
policy without a condition on the repository (or, with a claims file, on its identity claims),
which any pipeline could assume.

With `IDP_CLAIMS_FILE`, `sub` follows the file's subject rules: the rule that the `--match`
globs select builds the pattern (a choice that depends on values the globs leave open is
refused, naming the rules), and a claim the issuer leaves out of `sub` when absent gets one
pattern per shape `sub` can take (AWS ORs a condition's values).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from idp.aws import DEFAULT_AUDIENCE
from idp.aws.errors import TrustPolicyError
from idp.tokens.claims import escape_subject_value
from idp.tokens.tags import TAG_VALUE_MAX, tag_value_problem
from idp.tokens.vocabulary import (
    BUILTIN_POLICY,
    DEFAULT_SUBJECT_CLAIMS,
    ClaimPolicy,
    SubjectRule,
    parse_claim_list,
)

ASSUME_ROLE = "sts:AssumeRoleWithWebIdentity"
TAG_SESSION = "sts:TagSession"
POLICY_VERSION = "2012-10-17"
# AWS ORs a condition's values; past this many shapes of sub, constrain the optional claims.
MAX_SUBJECT_SHAPES = 16

PROVIDER_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:oidc-provider/(?P<url>[^\s:?#]+)")
ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}")

_WILDCARD = re.compile(r"([*?])")

# Which flag asks for a claim, for messages.
_FLAGS = {
    "repo": "--repo",
    "ref": "--ref",
    "event": "--event",
    "image_name": "--image",
    "image_tag": "--image (with a tag)",
    "commands": "--commands",
}


# --- what the issuer exposes -----------------------------------------------------------


@dataclass(frozen=True)
class IssuerShape:
    """How the issuer exposes claims to AWS: the subject's claims (its default, and the claims
    file's subject rules) and the session tags."""

    subject_claims: tuple[str, ...] = DEFAULT_SUBJECT_CLAIMS
    session_tags: tuple[str, ...] = ()
    policy: ClaimPolicy = BUILTIN_POLICY

    def __post_init__(self) -> None:
        known = self.policy.claim_names
        for name, claims in (
            ("--subject-claims (IDP_SUBJECT_CLAIMS)", self.subject_claims),
            ("--session-tags (IDP_AWS_SESSION_TAGS)", self.session_tags),
        ):
            unknown = [c for c in claims if c not in known]
            if unknown:
                raise TrustPolicyError(
                    f"{name} names unknown claim {unknown[0]!r}: use keys from {', '.join(known)}"
                )
            if len(set(claims)) != len(claims):
                raise TrustPolicyError(f"{name} repeats a claim: list each claim once")
        if any(not rule.match for rule in self.policy.subjects):
            return  # a rule for every token: IDP_SUBJECT_CLAIMS is never used
        identity = self.policy.identity
        if self.subject_claims[: len(identity)] != identity:
            raise TrustPolicyError(
                f"--subject-claims (IDP_SUBJECT_CLAIMS) must start with {','.join(identity)}, "
                f"as the issuer's does: e.g. {','.join((*identity, 'ref', 'event'))}"
                if identity == ("repo",)
                else f"--subject-claims (IDP_SUBJECT_CLAIMS) must start with the identity "
                f"claims {','.join(identity)}, as the issuer's does"
            )

    @property
    def is_repo_identity(self) -> bool:
        return self.policy.identity == ("repo",)


__all__ = ["IssuerShape", "Wanted", "build_trust_policy", "parse_claim_list"]


# --- what the operator asks for --------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """The pipelines a role lets in; each pattern is AWS `StringLike` (`*`, `?`)."""

    repo: str | None = None  # ORG/REPO or ORG/*; `repo:ORG/REPO:*` as in GitHub's docs works too
    image: str | None = None  # NAME or NAME:TAG, matched against image_name and image_tag
    commands: bool | None = None
    ref: str | None = None
    event: str | None = None
    claims: tuple[tuple[str, str], ...] = ()  # any other claim: (key, pattern)
    audience: str = DEFAULT_AUDIENCE
    allow_any_repo: bool = False
    # --match CLAIM=GLOB: a claim of sub, kept even when only '*' (it asks for the claim).
    matches: tuple[tuple[str, str], ...] = ()

    def matched(self) -> dict[str, str]:
        """--match claim -> pattern (`--repo` is a --match repo=...)."""
        found: dict[str, str] = {}
        for claim, value in self.matches:
            if claim in found or (claim == "repo" and self.repo is not None):
                raise TrustPolicyError(
                    f"{claim} is asked for twice: give --match {claim}=... once"
                    + (" (or --repo, not both)" if claim == "repo" else "")
                )
            found[claim] = value
        return found

    def patterns(
        self, known: Sequence[str] = BUILTIN_POLICY.claim_names, identity: Sequence[str] = ("repo",)
    ) -> dict[str, str]:
        """claim -> pattern for every claim the policy must constrain."""
        patterns: dict[str, str] = {}
        matched = self.matched()
        repo_wanted = self.repo if self.repo is not None else matched.pop("repo", None)
        if tuple(identity) == ("repo",) or repo_wanted is not None:
            repo = _repo_pattern(repo_wanted, self.allow_any_repo)
            if repo is not None:
                patterns["repo"] = repo
        for claim, value in (("ref", self.ref), ("event", self.event)):
            if value is not None:
                patterns[claim] = _check_pattern(value, f"--{claim}")
        if self.image is not None:
            patterns.update(_image_patterns(self.image))
        if self.commands is not None:
            patterns["commands"] = "true" if self.commands else "false"
        for claim, value in matched.items():
            if claim not in known:
                raise TrustPolicyError(
                    f"--match {claim}=... names no claim of the token: use one of "
                    f"{', '.join(known)}"
                )
            if claim in patterns:
                raise TrustPolicyError(f"{claim} is asked for twice: give it once, by --match")
            patterns[claim] = _check_pattern(value, f"--match {claim}")
        # As --repo for Vela: a policy must pin whose tokens it admits.
        if (
            tuple(identity) != ("repo",)
            and not self.allow_any_repo
            and not any(_WILDCARD.sub("", patterns.get(claim, "")) for claim in identity)
        ):
            first = identity[0]
            raise TrustPolicyError(
                f"no --match on the identity claims ({', '.join(identity)}): without one any "
                f"pipeline could assume the role; pass --match {first}=VALUE, or "
                "--allow-any-repo if that is intended"
            )
        for claim, value in self.claims:
            if claim not in known:
                raise TrustPolicyError(
                    f"--claim {claim}=... names no claim of the token: use one of "
                    f"{', '.join(known)}"
                )
            if claim in patterns or claim in ("repo", "image_name", "image_tag"):
                flag = _FLAGS.get(claim, "--claim")
                raise TrustPolicyError(
                    f"{claim} is asked for twice: use {flag} once (not --claim {claim}=...)"
                )
            patterns[claim] = _check_pattern(value, f"--claim {claim}")
        # A pattern of only wildcards constrains nothing: leave it out (a --match keeps it: it
        # asks for a claim that sub may leave out).
        return {
            c: p for c, p in patterns.items() if _WILDCARD.sub("", p) or c == "repo" or c in matched
        }


def _check_pattern(pattern: str, flag: str) -> str:
    if not pattern:
        raise TrustPolicyError(f"{flag} is empty: give a value or a pattern such as 'main*'")
    if "$" in pattern:
        # `${...}` is a policy variable in a 2012-10-17 policy; no claim value holds a `$`.
        raise TrustPolicyError(f"{flag} {pattern!r} contains '$': drop it")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in pattern):
        raise TrustPolicyError(f"{flag} {pattern!r} contains control characters")
    return pattern


def _repo_pattern(repo: str | None, allow_any_repo: bool) -> str | None:
    if repo is None or _WILDCARD.sub("", repo) == "":
        if allow_any_repo:
            return None
        raise TrustPolicyError(
            "no --repo: without a condition on the repository any pipeline could assume the "
            "role; pass --repo ORG/REPO (or ORG/*), or --allow-any-repo if that is intended"
        )
    pattern = _check_pattern(repo, "--repo")
    if pattern.startswith("repo:"):
        pattern = pattern[len("repo:") :]
    if pattern.endswith(":*"):
        pattern = pattern[: -len(":*")]
    if ":" in pattern or "/" not in pattern:
        raise TrustPolicyError(
            f"--repo {repo!r} is not ORG/REPO: give e.g. octo-org/octo-repo or octo-org/*"
        )
    org = pattern.split("/", 1)[0]
    if _WILDCARD.search(org) and not allow_any_repo:
        raise TrustPolicyError(
            f"--repo {repo!r} has a wildcard in the organization, so a pipeline of any "
            "matching organization could assume the role: name the organization, or pass "
            "--allow-any-repo if that is intended"
        )
    return pattern


def _image_patterns(image: str) -> dict[str, str]:
    """NAME[:TAG] split the way image_name and image_tag are (Docker reference grammar)."""
    pattern = _check_pattern(image, "--image")
    if "@" in pattern:
        raise TrustPolicyError(
            f"--image {image!r} has a digest, which image_name and image_tag do not carry: "
            "match by name and tag, e.g. golang:1.22*"
        )
    # The tag follows the last ':' after the last '/'; a ':' before a '/' is a registry port.
    name, tag = pattern, None
    last_slash = pattern.rfind("/")
    colon = pattern.rfind(":")
    if colon > last_slash:
        name, tag = pattern[:colon], pattern[colon + 1 :]
    if not name:
        raise TrustPolicyError(f"--image {image!r} has no name: give e.g. golang or golang:1.22*")
    if tag == "":
        raise TrustPolicyError(f"--image {image!r} ends with ':': give a tag or drop the ':'")
    patterns = {"image_name": name}
    if tag is not None and _WILDCARD.sub("", tag):
        patterns["image_tag"] = tag
    return patterns


# --- the policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    test: str  # StringEquals or StringLike
    variable: str
    value: str | list[str]  # several: AWS ORs them

    @property
    def values(self) -> list[str]:
        return [self.value] if isinstance(self.value, str) else list(self.value)


@dataclass(frozen=True)
class TrustPolicy:
    provider_arn: str
    actions: tuple[str, ...]
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def document(self) -> dict[str, Any]:
        conditions: dict[str, dict[str, str | list[str]]] = {}
        for condition in self.conditions:
            conditions.setdefault(condition.test, {})[condition.variable] = condition.value
        statement = {
            "Effect": "Allow",
            "Principal": {"Federated": self.provider_arn},
            "Action": self.actions[0] if len(self.actions) == 1 else list(self.actions),
            "Condition": conditions,
        }
        return {"Version": POLICY_VERSION, "Statement": [statement]}

    def to_json(self) -> str:
        return json.dumps(self.document(), indent=2)

    def to_terraform(self, role_name: str) -> str:
        name = check_role_name(role_name)
        ident = terraform_identifier(name)
        lines = [
            f'data "aws_iam_policy_document" "{ident}_trust" {{',
            "  statement {",
            '    effect  = "Allow"',
            f"    actions = {_hcl_list(self.actions)}",
            "",
            "    principals {",
            '      type        = "Federated"',
            f"      identifiers = {_hcl_list([self.provider_arn])}",
            "    }",
        ]
        for condition in self.conditions:
            lines += [
                "",
                "    condition {",
                f"      test     = {_hcl(condition.test)}",
                f"      variable = {_hcl(condition.variable)}",
                f"      values   = {_hcl_list(condition.values)}",
                "    }",
            ]
        lines += [
            "  }",
            "}",
            "",
            f'resource "aws_iam_role" "{ident}" {{',
            f"  name               = {_hcl(name)}",
            f"  assume_role_policy = data.aws_iam_policy_document.{ident}_trust.json",
            "}",
        ]
        return "\n".join(lines)


def provider_url(provider_arn: str) -> str:
    """The provider's URL as AWS stores it, which prefixes its condition keys."""
    match = PROVIDER_ARN.fullmatch(provider_arn.strip())
    if match is None:
        raise TrustPolicyError(
            f"--provider-arn {provider_arn!r} is not an IAM OIDC provider ARN: give the ARN "
            "`idp aws register` prints, e.g. "
            "arn:aws:iam::123456789012:oidc-provider/ci.example.com/_services/token"
        )
    return match.group("url")


def build_trust_policy(provider_arn: str, wanted: Wanted, shape: IssuerShape) -> TrustPolicy:
    """The trust policy that lets in exactly the pipelines `wanted` describes, or refuses."""
    url = provider_url(provider_arn)
    if not wanted.audience or "$" in wanted.audience:
        raise TrustPolicyError(
            f"--audience {wanted.audience!r} is not usable: e.g. {DEFAULT_AUDIENCE}"
        )
    policy = shape.policy
    patterns = wanted.patterns(policy.claim_names, policy.identity)
    rule = select_rule(policy.subjects, patterns)
    subject_claims = rule.claims if rule is not None else shape.subject_claims
    in_subject = {c: p for c, p in patterns.items() if c in subject_claims}
    in_tags = {c: p for c, p in patterns.items() if c not in in_subject and c in shape.session_tags}
    missing = [c for c in patterns if c not in in_subject and c not in in_tags]
    # `--match event=push` that only picks the rule (`match: {event: push}`) is kept by sub's
    # shape when no other rule shares it; then it needs no condition of its own.
    missing = [
        c for c in missing if not _enforced_by_shape(c, patterns[c], rule, shape, in_subject)
    ]
    if missing and (rule is not None or policy.subjects):
        raise TrustPolicyError(_rule_message(missing, rule, subject_claims, policy))
    if missing:
        raise TrustPolicyError(_missing_message(missing, shape))

    conditions = [Condition("StringEquals", f"{url}:aud", wanted.audience)]
    if in_subject:
        subjects = subject_patterns(in_subject, subject_claims, policy)
        conditions.append(
            Condition(
                _test(*subjects), f"{url}:sub", subjects[0] if len(subjects) == 1 else subjects
            )
        )
    for claim, pattern in in_tags.items():
        value = tag_pattern(pattern, claim)
        conditions.append(Condition(_test(value), f"aws:RequestTag/{claim}", value))
    if len(conditions) == 1 and not wanted.allow_any_repo:
        raise TrustPolicyError(
            "the policy would have no condition on sub or on a session tag, so any pipeline "
            "could assume the role: pass --repo, or --allow-any-repo if that is intended"
        )
    # When the issuer sends session tags, STS also checks sts:TagSession for every token.
    actions = (ASSUME_ROLE, TAG_SESSION) if shape.session_tags else (ASSUME_ROLE,)
    return TrustPolicy(
        provider_arn=provider_arn.strip(), actions=actions, conditions=tuple(conditions)
    )


def _term(wanted: str | None, glob: str) -> bool | None:
    """Whether every value `wanted` admits matches the rule's `glob`: True (all do), False
    (none does), None (it depends on the value)."""
    if wanted is None:
        return None
    if not _WILDCARD.search(wanted):
        return fnmatchcase(wanted, glob)
    if wanted == glob or glob == "*":
        return True
    return None


def select_rule(rules: Sequence[SubjectRule], patterns: Mapping[str, str]) -> SubjectRule | None:
    """The subject rule every token these patterns admit falls under (None: no rule, so
    IDP_SUBJECT_CLAIMS); refuse when that depends on values the patterns leave open."""
    undecided: list[str] = []
    for rule in rules:
        terms = [_term(patterns.get(claim), glob) for claim, glob in rule.match]
        if False in terms:
            continue
        if all(terms):
            if undecided:
                raise _ambiguous([*undecided, rule.describe()])
            return rule
        undecided.append(rule.describe())
    if undecided:
        raise _ambiguous([*undecided, "IDP_SUBJECT_CLAIMS (when no rule matches)"])
    return None


def _ambiguous(candidates: list[str]) -> TrustPolicyError:
    return TrustPolicyError(
        f"the --match values leave open which subject rule builds sub: {' or '.join(candidates)} "
        "could apply; give --match values that select one rule (a value each of its globs "
        "matches and no earlier rule's does)"
    )


def _rule_message(
    missing: list[str], rule: SubjectRule | None, keys: Sequence[str], policy: ClaimPolicy
) -> str:
    which = rule.describe() if rule is not None else "IDP_SUBJECT_CLAIMS (no subject rule matches)"
    return (
        f"{which} builds sub from {','.join(keys)}: a condition on {', '.join(missing)} could "
        f"never be enforced (AWS sees only aud, sub and session tags); drop that --match, or "
        f"add {missing[0]} to that rule's claims in {policy.source or 'the claims file'} "
        "(change the roles' trust policies first: tokens change shape at once)"
    )


def subject_shapes(
    patterns: Mapping[str, str], subject_claims: Iterable[str], policy: ClaimPolicy = BUILTIN_POLICY
) -> list[tuple[tuple[str, ...], str]]:
    """Every shape `sub` can take under these patterns: (its keys, its `StringLike` pattern).
    Each claim's pattern is in its place, `key:*` for another claim every token has; a claim
    that may be absent (sub then leaves it out) gives shapes with and without its place."""
    claims = list(subject_claims)
    for claim, pattern in patterns.items():
        # Only wildcards (`--match environment='*'`) is the `key:*` of an unconstrained claim.
        if _WILDCARD.sub("", pattern):
            _refuse_shiftable(claim, pattern, claims)
    optional = [c for c in claims if c not in patterns and not policy.is_always_present(c)]
    if 2 ** len(optional) > MAX_SUBJECT_SHAPES:
        raise TrustPolicyError(
            f"sub can take {2 ** len(optional)} shapes (optional claims "
            f"{', '.join(optional)}): --match some of them (e.g. --match {optional[0]}='*' to "
            "require it)"
        )
    shapes: list[tuple[tuple[str, ...], str]] = []
    # Fewest claims first: the shape most tokens of a deployment tool have.
    for absent in itertools.product((True, False), repeat=len(optional)):
        left_out = {claim for claim, out in zip(optional, absent, strict=True) if out}
        keys = tuple(claim for claim in claims if claim not in left_out)
        if keys:
            pattern = ":".join(f"{c}:{escape_subject_value(patterns.get(c, '*'))}" for c in keys)
            shapes.append((keys, pattern))
    return shapes


def subject_patterns(
    patterns: Mapping[str, str], subject_claims: Iterable[str], policy: ClaimPolicy = BUILTIN_POLICY
) -> list[str]:
    """The `StringLike` values for `sub`, one per shape (AWS ORs them), without those another
    already covers."""
    shapes = list(
        dict.fromkeys(pattern for _, pattern in subject_shapes(patterns, subject_claims, policy))
    )
    # A shape that extends one ending in '*' adds nothing: that '*' already spans the rest.
    return [
        shape
        for shape in shapes
        if not any(
            other != shape and other.endswith("*") and shape.startswith(other) for other in shapes
        )
    ]


def _key_sequences(claims: Sequence[str], policy: ClaimPolicy) -> set[tuple[str, ...]]:
    """Every sequence of keys a sub built from `claims` can have (absent claims left out)."""
    optional = [c for c in claims if not policy.is_always_present(c)]
    found = set()
    for absent in itertools.product((True, False), repeat=min(len(optional), 12)):
        left_out = {c for c, out in zip(optional, absent, strict=False) if out}
        found.add(tuple(c for c in claims if c not in left_out))
    return found


def _enforced_by_shape(
    claim: str,
    wanted: str,
    rule: SubjectRule | None,
    shape: IssuerShape,
    patterns: Mapping[str, str],
) -> bool:
    """Whether a --match on a claim outside sub is enforced anyway: it repeats a glob of the
    rule that builds sub, and no other rule (nor IDP_SUBJECT_CLAIMS) builds a sub with the
    same keys, so a token whose sub has this shape passed that very glob."""
    if rule is None or dict(rule.match).get(claim) != wanted:
        return False
    policy = shape.policy
    ours = {keys for keys, _ in subject_shapes(patterns, rule.claims, policy)}
    others = [other.claims for other in policy.subjects if other is not rule]
    if not any(not other.match for other in policy.subjects):
        others.append(shape.subject_claims)
    return not any(ours & _key_sequences(claims, policy) for claims in others)


def subject_pattern(patterns: Mapping[str, str], subject_claims: Iterable[str]) -> str:
    """A `StringLike` pattern for `sub` when every claim of it is always present."""
    return subject_patterns(patterns, subject_claims)[0]


def tag_pattern(pattern: str, claim: str = "") -> str:
    """A pattern for a session tag, written verbatim, or refused.

    The issuer puts a claim into a tag only verbatim (it refuses a value outside AWS's tag
    characters rather than fold it), so a literal part that a tag cannot hold would match no
    token; and a cleaned literal would match values the operator never named. Either way the
    condition would not say what was asked: refuse it.
    """
    flag = _FLAGS.get(claim, f"--claim {claim}") if claim else "the pattern"
    literal = _WILDCARD.sub("", pattern)  # what every matching value holds, in order
    problem = tag_value_problem(literal)
    if problem is None and len(literal) + pattern.count("?") > TAG_VALUE_MAX:
        problem = f"is over {TAG_VALUE_MAX} characters"
    if problem is not None:
        raise TrustPolicyError(
            f"{flag} {pattern!r} {problem}, so no session tag can match it (the issuer never "
            f"folds such values into a tag): match {claim or 'this claim'} through sub "
            "instead (--subject-claims / IDP_SUBJECT_CLAIMS)"
        )
    return pattern


def _refuse_shiftable(claim: str, pattern: str, keys: list[str]) -> None:
    # Values never hold a ':', so sub's fields line up with the pattern's, unless a pattern
    # could also match a claim *name*: then a crafted value equal to a name could shift the
    # match by one field and satisfy this pattern with the next field's name.
    matcher = string_like(escape_subject_value(pattern))
    shadowed = [key for key in keys if matcher.fullmatch(key)]
    if shadowed:
        raise TrustPolicyError(
            f"the pattern {pattern!r} for {claim} also matches the claim name "
            f"{shadowed[0]!r} inside sub, which a crafted value could exploit: make the "
            "pattern more specific"
        )


def string_like(pattern: str) -> re.Pattern[str]:
    """AWS `StringLike`: `*` any run of characters, `?` one character, the rest literal."""
    parts = _WILDCARD.split(pattern)
    body = "".join(
        ".*" if part == "*" else "." if part == "?" else re.escape(part) for part in parts
    )
    return re.compile(body, re.DOTALL)


def _test(*values: str) -> str:
    return "StringLike" if any(_WILDCARD.search(value) for value in values) else "StringEquals"


def _missing_message(missing: list[str], shape: IssuerShape) -> str:
    flags = ", ".join(dict.fromkeys(f"{_FLAGS.get(c, '--claim ' + c)} needs {c}" for c in missing))
    subject = ",".join([*shape.subject_claims, *missing])
    tags = ",".join([*shape.session_tags, *missing])
    return (
        f"AWS cannot see the claims this policy needs ({flags}): AWS evaluates only aud and "
        f"sub of the token, plus session tags. On the issuer set IDP_AWS_SESSION_TAGS={tags} "
        f"(roles of this issuer then need sts:TagSession) or IDP_SUBJECT_CLAIMS={subject} "
        "(this changes every sub, so existing roles' sub conditions need updating), then run "
        "this with the same --session-tags/--subject-claims"
    )


def check_role_name(name: str) -> str:
    if not ROLE_NAME.fullmatch(name):
        raise TrustPolicyError(
            f"role name {name!r} is not one IAM accepts: use 1-64 letters, digits or +=,.@_-"
        )
    return name


def terraform_identifier(name: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return ident if ident[0].isalpha() or ident[0] == "_" else f"role_{ident}"


def _hcl(value: str) -> str:
    """A Terraform string literal: JSON escapes, plus `${`/`%{` kept literal."""
    return json.dumps(value, ensure_ascii=False).replace("${", "$${").replace("%{", "%%{")


def _hcl_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_hcl(v) for v in values) + "]"
