"""The build context a CI server sends, and the step environment it gets back, as text.

`--set CLAIM=VALUE` arrives as a string; the issuer wants JSON types (a boolean `pull_fork`,
a whole-number `ttl`). The rule: a value becomes the type the field already has in the context,
or the type the issuer's table gives it, and otherwise stays a string; anything that does not
convert is refused here, in one line, rather than by the issuer as a 400 about a JSON type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from idp.ci import CiError, UsageError
from idp.tokens.context import FIELDS, DuplicateKey, load_json

FORMATS = ("env", "json", "dotenv")

# A claim as a build context names it: no dots or brackets, so a `--set` never means a path
# into a nested value, and never anything a shell or dotenv line would have to escape.
_CLAIM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What POSIX calls a name: the only variable names a shell's `export` takes.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Fields the issuer wants as JSON booleans even when the context does not have them yet.
BOOL_FIELDS = frozenset(name for name, spec in FIELDS.items() if spec.kind == "bool")
# Outside FIELDS but a JSON number to the issuer: the request token's lifetime, seconds.
INT_FIELDS = frozenset({"ttl"})
# A JSON number's grammar (RFC 8259), so that "1e3" is a number and "0x10" or "NaN" are not.
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# What a dotenv value may hold and mean the same to every reader (docker --env-file takes the
# rest of the line verbatim; python-dotenv and compose read quotes, `#`, `$` and `\`; systemd
# folds whitespace): URLs and JWTs fit, and nothing else is ever in the issuer's answer.
_DOTENV_VALUE = re.compile(r"[A-Za-z0-9_.,:/?&=%+@~*!\-\[\]]*")


def parse_context(text: str, where: str) -> dict[str, Any]:
    """The build context as a JSON object, or a usage error naming `where` it came from."""
    try:
        data = load_json(text)
    except DuplicateKey as exc:
        raise UsageError(
            f"--context {where} names {str(exc)[:40]!r} twice: write each field once "
            "(or override it with --set)"
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"--context {where} is not JSON ({exc}): give the build context as a JSON object"
        ) from None
    except RecursionError:
        raise UsageError(f"--context {where} nests too deeply to be a build context") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"--context {where} holds a JSON {type(data).__name__}, not an object: give the "
            'build context as {"repo": ..., "build_id": ..., ...}'
        )
    return data


def apply_sets(
    context: Mapping[str, Any],
    assignments: Iterable[str],
    bool_fields: frozenset[str] = BOOL_FIELDS,
) -> dict[str, Any]:
    """The context with each `CLAIM=VALUE` applied in order (a later one wins).
    `bool_fields`: the fields the issuer wants as JSON booleans (its claim policy's)."""
    result = dict(context)
    for assignment in assignments:
        claim, sep, raw = assignment.partition("=")
        if not sep:
            raise UsageError(f"--set {assignment!r} is not CLAIM=VALUE: e.g. --set step=deploy")
        if not _CLAIM.fullmatch(claim):
            raise UsageError(
                f"--set {claim!r}: a claim is a plain name (letters, digits and '_', not "
                "starting with a digit), e.g. --set environment=prod"
            )
        result[claim] = typed_value(claim, raw, context.get(claim), bool_fields)
    return result


def typed_value(
    claim: str, raw: str, current: Any, bool_fields: frozenset[str] = BOOL_FIELDS
) -> Any:
    """`raw` as the JSON type `claim` has now (or always has, for the issuer's own fields)."""
    if isinstance(current, bool) or (current is None and claim in bool_fields):
        lowered = raw.strip().lower()
        if lowered not in ("true", "false"):
            raise UsageError(f"--set {claim}={raw!r}: {claim} is a boolean, give true or false")
        return lowered == "true"
    if isinstance(current, int) or (current is None and claim in INT_FIELDS):
        if not _INT.fullmatch(raw.strip()):
            raise UsageError(
                f"--set {claim}={raw!r}: {claim} is a whole number in the context, give digits "
                "without leading zeros, e.g. 600"
            )
        return int(raw.strip())
    if isinstance(current, float):
        number = float(raw.strip()) if _NUMBER.fullmatch(raw.strip()) else math.nan
        if not math.isfinite(number):
            raise UsageError(f"--set {claim}={raw!r}: {claim} is a number in the context")
        return number
    # Text, and ids: the issuer takes build ids and numbers as digit strings as well.
    return raw


def render(answer: Mapping[str, Any], body: str, output_format: str) -> str:
    """The lines to print: `export NAME='value'`, `NAME=value`, or the issuer's JSON as is."""
    if output_format == "json":
        return body if body.endswith("\n") else body + "\n"
    env = answer.get("env")
    if not isinstance(env, Mapping) or not env:
        raise CiError("the issuer's answer has no `env` object: check that --issuer is idp")
    lines = []
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise CiError(f"the issuer's answer names a variable {name!r} no shell can set")
        if not isinstance(value, str) or "\x00" in value:
            raise CiError(f"the issuer's answer gives {name} a value that is not text")
        if output_format == "env":
            lines.append(f"export {name}={sh_quote(value)}")
        else:
            if not _DOTENV_VALUE.fullmatch(value):
                raise CiError(
                    f"{name}'s value holds {_describe(value)}, which dotenv readers do not read "
                    "alike: use --format env (for a shell) or --format json"
                )
            lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def sh_quote(value: str) -> str:
    """`value` in single quotes for any POSIX shell: inside them nothing is special but `'`,
    which is closed, escaped and reopened (`'\\''`). Always quoted, unlike shlex.quote, so
    the lines read alike whatever the value."""
    return "'" + value.replace("'", "'\\''") + "'"


def _describe(value: str) -> str:
    bad = next(ch for ch in value if not _DOTENV_VALUE.fullmatch(ch))
    if bad == "\n":
        return "a newline"
    if bad.isspace():
        return "white space"
    return f"{bad!r}"
