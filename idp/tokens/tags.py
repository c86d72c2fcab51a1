"""AWS's rules for session tags, shared by the token side and the trust-policy builder.

They live with the token rules (the issuer refuses a claim no tag can carry at mint time), so
`idp.tokens` needs nothing from `idp.aws`: `aws` imports `tokens`, never the other way.

AWS accepts tag keys and values made of Unicode letters, digits, white space and `_.:/=+-@`
(keys 1-128 characters, values up to 256). The issuer copies claims into the
`https://aws.amazon.com/tags` claim; a value outside that set would make STS refuse the whole
token.

Values are never cleaned into that set: folding every other character into `_` (and cutting at
256) made `release!1`, `release#1` and `release?1` one tag, so a role written for one branch
admitted the others. A claim value that a tag cannot carry verbatim is refused instead: at mint
time by the issuer (400, naming the claim), and by `idp aws trust-policy` for a pattern. Every
tag value the issuer sends is therefore the claim value itself, and two claim values never
give one tag.
"""

from __future__ import annotations

import re

TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256

# `\w` is Unicode letters and digits plus `_`; the rest are the Unicode space separators
# (AWS's `\p{Z}`) and the punctuation AWS allows.
_SPACES = " \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_TAG_CHARS = r"\w.:/=+\-@" + _SPACES

TAG_KEY_PATTERN = re.compile(f"[{_TAG_CHARS}]{{1,{TAG_KEY_MAX}}}")
"""Use with `fullmatch`: a tag key AWS accepts (keys starting with `aws:` are reserved)."""

_NOT_TAG_CHAR = re.compile(f"[^{_TAG_CHARS}]")


TAG_VALUE_CHARS = "letters, digits, spaces and _.:/=+-@"


class UnsafeTagValue(ValueError):
    """A value that AWS cannot carry verbatim as a session tag."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def tag_value_problem(value: str) -> str | None:
    """Why AWS cannot carry `value` verbatim as a tag value (a short phrase), or None."""
    if len(value) > TAG_VALUE_MAX:
        return f"is over {TAG_VALUE_MAX} characters"
    refused = _NOT_TAG_CHAR.search(value)
    if refused is not None:
        return f"holds {refused.group()!r} (tag values hold only {TAG_VALUE_CHARS})"
    return None


def verbatim_tag_value(value: str) -> str:
    """`value` itself when AWS can carry it as a tag value; else raise UnsafeTagValue.

    Never folds or cuts: the tag of a value is that value, so distinct values give distinct
    tags.
    """
    problem = tag_value_problem(value)
    if problem is not None:
        raise UnsafeTagValue(problem)
    return value


# The old name: callers keep working, but a value is no longer folded into the tag charset.
clean_tag_value = verbatim_tag_value


def is_valid_tag_key(key: str) -> bool:
    return TAG_KEY_PATTERN.fullmatch(key) is not None and not key.lower().startswith("aws:")
