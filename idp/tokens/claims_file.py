"""`IDP_CLAIMS_FILE`: the claim policy as a YAML file (JSON is YAML too), read once at start-up.

The whole file is checked before the issuer serves anything, and every problem stops start-up
with one line naming the file, the entry and the fix: a policy that half applies would mint
tokens of a shape nobody wrote a trust policy for.

    identity: [space, project]        # the claims every subject starts with; default [repo]
    optional: [repo, ref, ...]        # built-ins this CI does not have
    claims:                           # extra build-context fields (or narrowed built-ins)
      space: {kind: text, required: true, pattern: "[a-z0-9-]{1,64}"}
      environment: {values: [dev, test, prod]}
    subjects:                         # ordered; the first rule whose every glob matches wins
      - match: {space: default, project: "aws-*"}
        claims: [space, project, environment]
      - claims: [space, project]      # no match: applies to all
    session_tags: [project, environment]   # overrides IDP_AWS_SESSION_TAGS
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from idp.errors import ConfigError, InvalidRequest
from idp.tokens.vocabulary import (
    BUILTIN_FIELDS,
    DEFAULT_IDENTITY,
    DERIVED_CLAIMS,
    KINDS,
    NEVER_OPTIONAL,
    REGISTERED_CLAIMS,
    RESERVED_FIELDS,
    ClaimPolicy,
    Field,
    SubjectRule,
)

TOP_KEYS = ("identity", "optional", "claims", "subjects", "session_tags")
CLAIM_KEYS = ("kind", "required", "max_length", "pattern", "values")
RULE_KEYS = ("match", "claims")
# A claim name is a plain identifier: it becomes a JSON key, a `key:` of sub, a tag key.
CLAIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_LENGTH_LIMIT = 4096
_NARROWING = ("required", "max_length", "pattern", "values")


class _Problem(Exception):
    """One problem of the file: the entry and what to do; `load_claims_file` adds the file."""

    def __init__(self, entry: str, problem: str) -> None:
        super().__init__(f"{entry}: {problem}")


def load_claims_file(path: str) -> ClaimPolicy:
    """Read and check the claims file; raise ConfigError with one line naming file and entry."""
    where = f"IDP_CLAIMS_FILE {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{where} cannot be read ({exc.strerror}): point IDP_CLAIMS_FILE at a readable file"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text: save it as UTF-8") from None
    try:
        return parse_claims_document(_yaml(text), source=path)
    except _Problem as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise _Problem("the file", f"is not YAML{line} ({problem}): fix the syntax") from None


def parse_claims_document(document: Any, source: str = "<claims file>") -> ClaimPolicy:
    """The policy a decoded claims document describes; raise _Problem naming the entry."""
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise _Problem("the file", f"must be a mapping with the keys {', '.join(TOP_KEYS)}")
    for key in document:
        if key not in TOP_KEYS:
            raise _Problem(repr(key), f"is no key of a claims file: use {', '.join(TOP_KEYS)}")

    fields: dict[str, Field] = dict(BUILTIN_FIELDS)
    for name in _names(document.get("optional"), "optional", required=False):
        if name not in BUILTIN_FIELDS:
            raise _Problem(
                f"optional: {name}",
                f"is no built-in field: list only built-ins here ({', '.join(BUILTIN_FIELDS)}); "
                "declare an optional claim under claims without required: true",
            )
        if name in NEVER_OPTIONAL:
            raise _Problem(
                f"optional: {name}",
                "cannot be optional: it is the handle by which a build is closed; remove it",
            )
        fields[name] = replace(fields[name], required=False)

    claims = document.get("claims") or {}
    if not isinstance(claims, Mapping):
        raise _Problem("claims", "must be a mapping of claim name to {kind, required, ...}")
    for name, spec in claims.items():
        fields[str(name)] = _claim(name, spec, fields.get(str(name)))

    known = tuple(name for field in fields for name in (field, *DERIVED_CLAIMS.get(field, ())))
    identity = _names(document.get("identity"), "identity", required=False) or DEFAULT_IDENTITY
    for name in identity:
        if name not in fields:
            raise _Problem(
                f"identity: {name}",
                f"is no claim: declare it under claims, or use one of {', '.join(fields)}",
            )
        if not fields[name].required:
            fix = (
                "remove it from optional"
                if name in BUILTIN_FIELDS and name not in claims
                else f"set required: true in claims.{name}"
            )
            raise _Problem(
                f"identity: {name}",
                f"is not required, but every subject starts with the identity claims: {fix}",
            )

    rules = document.get("subjects") or []
    if not isinstance(rules, list):
        raise _Problem("subjects", "must be a list of {match, claims} rules")
    subjects = tuple(
        _rule(number, rule, known, identity) for number, rule in enumerate(rules, start=1)
    )

    session_tags = document.get("session_tags")
    tags: tuple[str, ...] | None = None
    if session_tags is not None:
        tags = _names(session_tags, "session_tags", required=False)
        for name in tags:
            if name not in known:
                raise _Problem(
                    f"session_tags: {name}", f"is no claim: use one of {', '.join(known)}"
                )
    return ClaimPolicy(
        fields=fields, identity=identity, subjects=subjects, session_tags=tags, source=source
    )


def _names(raw: Any, entry: str, required: bool) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise _Problem(entry, "must be a list of claim names, e.g. [space, project]")
    if len(set(raw)) != len(raw):
        raise _Problem(entry, "repeats a claim: list each claim once")
    if required and not raw:
        raise _Problem(entry, "is empty: list at least one claim")
    return tuple(raw)


def _claim(name: Any, spec: Any, builtin: Field | None) -> Field:
    entry = f"claims.{name}"
    if not isinstance(name, str) or not CLAIM_NAME.fullmatch(name):
        raise _Problem(
            entry, "is not a claim name: use letters, digits and '_' (at most 64), e.g. project"
        )
    if name in REGISTERED_CLAIMS:
        raise _Problem(
            entry,
            f"{name!r} is a registered JWT/OIDC claim the issuer sets itself: choose another name",
        )
    if name in RESERVED_FIELDS or any(name in derived for derived in DERIVED_CLAIMS.values()):
        raise _Problem(entry, f"{name!r} is computed by the issuer: choose another name")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise _Problem(entry, f"must be a mapping with keys from {', '.join(CLAIM_KEYS)}")
    for key in spec:
        if key not in CLAIM_KEYS:
            raise _Problem(f"{entry}.{key}", f"is unknown: use {', '.join(CLAIM_KEYS)}")

    kind = spec.get("kind", builtin.kind if builtin else "text")
    if kind not in KINDS:
        raise _Problem(f"{entry}.kind", f"is {kind!r}: use text, id or bool")
    if builtin is not None and kind != builtin.kind:
        raise _Problem(
            entry,
            f"{name!r} is a built-in field of kind {builtin.kind}: a claims file may only narrow "
            f"it ({', '.join(_NARROWING)}); choose another name for a new claim",
        )
    # A declared text claim refuses ':' as git refs do: sub would escape one (`%3A`), but
    # values without it keep sub readable and every trust-policy glob on its own field.
    field = builtin or Field(kind, no_colon=kind == "text", required=False)

    required = spec.get("required", field.required)
    if not isinstance(required, bool):
        raise _Problem(f"{entry}.required", "must be true or false")
    if name in NEVER_OPTIONAL and not required:
        raise _Problem(
            f"{entry}.required", "cannot be false: build_id is how a build is closed; remove it"
        )

    max_length = spec.get("max_length", field.max_length)
    if "max_length" in spec and kind != "text":
        raise _Problem(f"{entry}.max_length", f"applies to text claims only, not {kind}")
    limit = builtin.max_length if builtin is not None else MAX_LENGTH_LIMIT
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise _Problem(f"{entry}.max_length", "must be a whole number of characters")
    if not 1 <= max_length <= limit:
        raise _Problem(f"{entry}.max_length", f"is {max_length}: use 1 to {limit}")

    pattern = spec.get("pattern")
    if pattern is not None:
        if kind == "bool":
            raise _Problem(f"{entry}.pattern", "applies to text and id claims, not bool")
        if not isinstance(pattern, str) or not pattern:
            raise _Problem(f"{entry}.pattern", 'must be a regular expression, e.g. "[a-z-]+"')
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Problem(
                f"{entry}.pattern", f"is not a regular expression ({exc}): fix it"
            ) from None

    field = replace(field, required=required, max_length=max_length, pattern=pattern)
    values = spec.get("values")
    if values is not None:
        if kind == "bool":
            raise _Problem(f"{entry}.values", "applies to text and id claims, not bool")
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(value, str) for value in values)
        ):
            raise _Problem(
                f"{entry}.values",
                "must be a non-empty list of strings (quote values YAML reads otherwise, "
                'e.g. "yes", "1")',
            )
        if len(set(values)) != len(values):
            raise _Problem(f"{entry}.values", "repeats a value: list each once")
        from idp.tokens.context import parse_value

        for value in values:
            # Each allowed value must pass every rule of the field itself, or it could never
            # be sent: a typo in the file would silently close a door.
            try:
                parse_value(name, field, value)
            except InvalidRequest as exc:
                raise _Problem(
                    f"{entry}.values", f"{value!r} could never be sent ({exc.description})"
                ) from None
        field = replace(field, values=tuple(values))
    return field


def _rule(number: int, rule: Any, known: tuple[str, ...], identity: tuple[str, ...]) -> SubjectRule:
    entry = f"subjects[{number}]"
    if not isinstance(rule, Mapping):
        raise _Problem(entry, "must be a mapping with claims (and optionally match)")
    for key in rule:
        if key not in RULE_KEYS:
            raise _Problem(f"{entry}.{key}", f"is unknown: use {', '.join(RULE_KEYS)}")
    if "claims" not in rule:
        raise _Problem(entry, "has no claims: list the claims of its sub")
    claims = _names(rule["claims"], f"{entry}.claims", required=True)
    for name in claims:
        if name not in known:
            raise _Problem(
                f"{entry}.claims: {name}",
                f"is no declared claim: declare it under claims, or use one of {', '.join(known)}",
            )
    if claims[: len(identity)] != identity:
        fixed = ", ".join((*identity, *(c for c in claims if c not in identity)))
        raise _Problem(
            f"{entry}.claims",
            f"must start with the identity claims ({', '.join(identity)}) so every subject "
            f"names its owner: write [{fixed}]",
        )
    match = rule.get("match") or {}
    if not isinstance(match, Mapping):
        raise _Problem(f"{entry}.match", "must be a mapping of claim name to glob")
    globs: list[tuple[str, str]] = []
    for name, glob in match.items():
        if name not in known:
            raise _Problem(
                f"{entry}.match.{name}",
                f"is no declared claim: declare it under claims, or use one of {', '.join(known)}",
            )
        if not isinstance(glob, str) or not glob:
            raise _Problem(
                f"{entry}.match.{name}", 'must be a glob string (quote it), e.g. "aws-*"'
            )
        globs.append((str(name), glob))
    return SubjectRule(claims=claims, match=tuple(globs), number=number)
