"""AWS's rules for session tags, shared by the token side and the trust-policy builder.

AWS accepts tag keys and values made of Unicode letters, digits, white space and `_.:/=+-@`
(keys 1-128 characters, values up to 256). The issuer copies claims into the
`https://aws.amazon.com/tags` claim; a value outside that set would make STS refuse the whole
token, so values are cleaned the same way on both sides: a trust policy matches what the
token really carries.
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


def clean_tag_value(value: str) -> str:
    """`value` with every character AWS refuses replaced by `_`, cut to 256 characters."""
    return _NOT_TAG_CHAR.sub("_", value)[:TAG_VALUE_MAX]


def is_valid_tag_key(key: str) -> bool:
    return TAG_KEY_PATTERN.fullmatch(key) is not None and not key.lower().startswith("aws:")
