"""The build context the CI server sends for each step, validated field by field.

Claim policy is data (as in warehouse's `__required_verifiable_claims__`): the claim policy
(`idp.tokens.vocabulary`: the built-in `FIELDS` plus what `IDP_CLAIMS_FILE` declares) says, for
every field, its kind, its limits, whether it may be empty or absent, and the tests are
parametrized from the same table, so a new field cannot go untested.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idp.errors import InvalidRequest
from idp.tokens.images import ImageReference, InvalidImageReference, parse_image
from idp.tokens.vocabulary import BUILTIN_FIELDS, BUILTIN_POLICY, ClaimPolicy, Field

# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators: nothing in a
# claim may break a log line, a header or a subject.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A JSON string may carry a lone UTF-16 surrogate (`"\ud800"`): Python decodes it, but it is no
# character and cannot be encoded as UTF-8, so no token, log line or header could hold it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Either of the two, in one search: a clean value (every value, in practice) costs one scan.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
# Canonical decimal: no sign, no leading zeros (but "0"). "05003" would be kept verbatim and
# be another build than 5003 to every comparison (closing, the Vela route, trust policies).
_ID = re.compile(r"0|[1-9][0-9]{0,19}")
_ID_LIMIT = 10**20
ID_RULE = "digits without leading zeros, e.g. 5003 (not 05003)"


def is_canonical_id(text: str) -> bool:
    """A build id or number as the issuer stores it: ASCII digits, no leading zeros."""
    return _ID.fullmatch(text) is not None


# The built-in fields (kept under their old name: the tests are parametrized from it).
FIELDS: dict[str, Field] = BUILTIN_FIELDS

MAX_TTL = 86400


class DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def load_json(text: str | bytes) -> Any:
    """JSON as the build context must be written: an object naming a key twice is refused
    (DuplicateKey), not read as its last value. A CI server that checks one `repo` while the
    issuer reads the other is the parser disagreement a duplicate exists to exploit.
    Raises ValueError (DuplicateKey included) or RecursionError."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


@dataclass(frozen=True, kw_only=True)
class BuildContext:
    """A validated build context. A built-in field the claims file made optional is None when
    absent; declared claims are in `extra`, as parsed (a bool claim a bool, as the built-ins:
    the request token carries the context as JSON and the exchange parses it again)."""

    build_id: str
    repo: str | None = None
    ref: str | None = None
    sha: str | None = None
    event: str | None = None
    branch: str | None = None
    build_number: str | None = None
    actor: str | None = None
    actor_scm_id: str | None = None
    pull_fork: bool | None = None
    step: str | None = None
    image: str | None = None
    commands: bool | None = None
    request: str | None = None
    environment: str | None = None
    extra: Mapping[str, str | bool] = field(default_factory=dict)
    ttl: int | None = None

    @functools.cached_property
    def image_ref(self) -> ImageReference | None:
        # Cached: claims read it on every mint, and parse_context has parsed it already.
        return parse_image(self.image) if self.image is not None else None

    @property
    def org(self) -> str | None:
        return self.repo.split("/", 1)[0] if self.repo is not None else None

    @property
    def name(self) -> str | None:
        return self.repo.split("/", 1)[1] if self.repo is not None else None

    def fields(self) -> dict[str, Any]:
        """Every field the context has, built-ins first, as parsed (booleans as bool)."""
        data: dict[str, Any] = {}
        for name in BUILTIN_FIELDS:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        data.update(self.extra)
        return data

    def to_json(self) -> dict[str, Any]:
        data = self.fields()
        if self.ttl is not None:
            data["ttl"] = self.ttl
        return data


def _bad(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"build context field {field!r} {problem}")


def _preview(value: object) -> str:
    """A short view of a refused value for the error message, which never raises."""
    try:
        text = str(value)
    except ValueError:  # an int over Python's 4300-digit str() limit, maybe inside a list
        return f"a {type(value).__name__} value too large to show"
    return repr(text[:40])


def _text(name: str, spec: Field, value: object) -> str:
    if spec.kind == "id":
        # Vela sends build ids and numbers as JSON numbers; accept digit strings too.
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _bad(name, "must be a non-negative integer (or a string of digits)")
        if isinstance(value, int) and not 0 <= value < _ID_LIMIT:
            raise _bad(name, f"must be a non-negative integer, got {_preview(value)}")
        text = str(value)
        if text == "" and spec.allow_empty:
            return text
        if not is_canonical_id(text):
            raise _bad(name, f"must be a non-negative integer, {ID_RULE}; got {text[:40]!r}")
        return text
    if not isinstance(value, str):
        raise _bad(name, f"must be a string, got {type(value).__name__}")
    if value == "" and not spec.allow_empty:
        raise _bad(name, "must not be empty")
    if len(value) > spec.max_length:
        raise _bad(name, f"is over {spec.max_length} characters")
    if _UNPRINTABLE.search(value):
        if _CONTROL.search(value):
            raise _bad(name, "contains a control character")
        raise _bad(name, "contains a lone UTF-16 surrogate (a \\udXXX escape), which is not text")
    if value != value.strip():
        raise _bad(name, "has leading or trailing whitespace")
    if spec.no_colon and ":" in value:
        if name in BUILTIN_FIELDS:
            raise _bad(name, "contains ':', which git refs cannot hold")
        raise _bad(name, "contains ':', which a declared claim cannot hold (it would blur sub)")
    return value


def _check_policy(name: str, spec: Field, value: str) -> None:
    # The claims file's narrowing: an allow-list, a pattern the whole value must match.
    if spec.values is not None and value not in spec.values:
        raise _bad(name, f"is {_preview(value)}, not one of {', '.join(spec.values)}")
    if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
        raise _bad(name, f"is {_preview(value)}, which does not match {spec.pattern!r}")


def parse_value(name: str, spec: Field, value: object) -> str | bool:
    """One field's value, checked by its kind and the claims file's rules; raise
    InvalidRequest naming the field."""
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise _bad(name, f"must be true or false, got {_preview(value)}")
        return value
    text = _text(name, spec, value)
    _check_policy(name, spec, text)
    return text


def parse_context(data: object, policy: ClaimPolicy = BUILTIN_POLICY) -> BuildContext:
    """Validate a decoded JSON body against the claim policy, or raise InvalidRequest naming
    the field."""
    if not isinstance(data, Mapping):
        raise InvalidRequest("the build context must be a JSON object")
    fields = policy.fields
    unknown = sorted(set(data) - set(fields) - {"ttl"})
    if unknown:
        where = f" ({policy.source})" if policy.source else ""
        raise InvalidRequest(
            f"unknown build context field {unknown[0]!r}: the fields{where} are "
            f"{', '.join(fields)} and optional ttl"
        )
    missing = [name for name, spec in fields.items() if spec.required and name not in data]
    if missing:
        raise InvalidRequest(f"build context field {missing[0]!r} is missing")

    values: dict[str, Any] = {}
    extra: dict[str, str | bool] = {}
    for name, spec in fields.items():
        if name not in data:
            continue
        value = parse_value(name, spec, data[name])
        if name in BUILTIN_FIELDS:
            values[name] = value
        else:
            # As parsed: the ID token's claims are made strings by tokens.claims.
            extra[name] = value

    # Neither part may be '.' or '..': `../x` or `x/..` would read as a path to another repo
    # in every URL, file or policy pattern built from it.
    repo = values.get("repo")
    if repo is not None and (
        not _REPO.fullmatch(repo) or any(part in (".", "..") for part in repo.split("/"))
    ):
        raise _bad(
            "repo", "must be 'org/name' (letters, digits, '.', '_', '-'; neither part '.' or '..')"
        )
    image: ImageReference | None = None
    if "image" in values:
        try:
            image = parse_image(values["image"])
        except InvalidImageReference as exc:
            raise _bad("image", f"is not an image reference: {exc}") from None

    ttl = data.get("ttl")
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL
    ):
        raise _bad("ttl", f"must be a whole number of seconds from 1 to {MAX_TTL}")
    context = BuildContext(**values, extra=extra, ttl=ttl)
    # The reference was parsed to validate it: keep it (cached_property's own slot), so a
    # mint parses the image once.
    context.__dict__["image_ref"] = image
    return context
