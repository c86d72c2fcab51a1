"""The build context the CI server sends for each step, validated field by field.

Claim policy is data (as in warehouse's `__required_verifiable_claims__`): `FIELDS` says, for
every field, its kind, its limits and whether it may be empty, and the tests are parametrized
from the same table, so a new field cannot go untested.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from idp.errors import InvalidRequest
from idp.tokens.images import ImageReference, InvalidImageReference, parse_image

Kind = Literal["text", "id", "bool"]

# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators: nothing in a
# claim may break a log line, a header or a subject.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A JSON string may carry a lone UTF-16 surrogate (`"\ud800"`): Python decodes it, but it is no
# character and cannot be encoded as UTF-8, so no token, log line or header could hold it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
# Canonical decimal: no sign, no leading zeros (but "0"). "05003" would be kept verbatim and
# be another build than 5003 to every comparison (closing, the Vela route, trust policies).
_ID = re.compile(r"0|[1-9][0-9]{0,19}")
_ID_LIMIT = 10**20
ID_RULE = "digits without leading zeros, e.g. 5003 (not 05003)"


def is_canonical_id(text: str) -> bool:
    """A build id or number as the issuer stores it: ASCII digits, no leading zeros."""
    return _ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Field:
    kind: Kind
    max_length: int = 256
    allow_empty: bool = False
    # git forbids ':' in refs and branch names; refusing it keeps `sub` unambiguous to read.
    no_colon: bool = False


FIELDS: dict[str, Field] = {
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
}

MAX_TTL = 86400


@dataclass(frozen=True)
class BuildContext:
    repo: str
    ref: str
    sha: str
    event: str
    branch: str
    build_id: str
    build_number: str
    actor: str
    actor_scm_id: str
    pull_fork: bool
    step: str
    image: str
    commands: bool
    request: str
    ttl: int | None = None

    @functools.cached_property
    def image_ref(self) -> ImageReference:
        # Cached: claims read it on every mint, and parse_context has parsed it already.
        return parse_image(self.image)

    @property
    def org(self) -> str:
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo.split("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
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
    if _CONTROL.search(value):
        raise _bad(name, "contains a control character")
    if _SURROGATE.search(value):
        raise _bad(name, "contains a lone UTF-16 surrogate (a \\udXXX escape), which is not text")
    if value != value.strip():
        raise _bad(name, "has leading or trailing whitespace")
    if spec.no_colon and ":" in value:
        raise _bad(name, "contains ':', which git refs cannot hold")
    return value


def parse_context(data: object) -> BuildContext:
    """Validate a decoded JSON body, or raise InvalidRequest naming the field."""
    if not isinstance(data, Mapping):
        raise InvalidRequest("the build context must be a JSON object")
    unknown = sorted(set(data) - set(FIELDS) - {"ttl"})
    if unknown:
        raise InvalidRequest(
            f"unknown build context field {unknown[0]!r}: the fields are "
            f"{', '.join(FIELDS)} and optional ttl"
        )
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise InvalidRequest(f"build context field {missing[0]!r} is missing")

    values: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        value = data[name]
        if spec.kind == "bool":
            if not isinstance(value, bool):
                raise _bad(name, f"must be true or false, got {_preview(value)}")
            values[name] = value
        else:
            values[name] = _text(name, spec, value)

    # Neither part may be '.' or '..': `../x` or `x/..` would read as a path to another repo
    # in every URL, file or policy pattern built from it.
    if not _REPO.fullmatch(values["repo"]) or any(
        part in (".", "..") for part in values["repo"].split("/")
    ):
        raise _bad(
            "repo", "must be 'org/name' (letters, digits, '.', '_', '-'; neither part '.' or '..')"
        )
    try:
        image = parse_image(values["image"])
    except InvalidImageReference as exc:
        raise _bad("image", f"is not an image reference: {exc}") from None

    ttl = data.get("ttl")
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL
    ):
        raise _bad("ttl", f"must be a whole number of seconds from 1 to {MAX_TTL}")
    context = BuildContext(**values, ttl=ttl)
    # The reference was parsed to validate it: keep it (cached_property's own slot), so a
    # mint parses the image once.
    context.__dict__["image_ref"] = image
    return context
