"""IAM condition operators, evaluated the way AWS documents them, in three-valued logic.

A condition is `True` (met), `False` (not met) or `None` (this module cannot tell: a key it
cannot know offline, a policy variable, an operator outside the string family). What AWS
documents, and what is implemented here:

- operator names are case-sensitive (`StringEquals`, not `stringEquals`); key names are not;
- several values of one key are ORed; several keys, and several operators, are ANDed;
- a key absent from the request makes a positive operator false and a negated one
  (`StringNotEquals`, `StringNotLike`, ...) true; `...IfExists` is true when the key is absent;
  `Null: true` means "the key is absent";
- `ForAnyValue:` is true when any request value matches, false for an absent key or an empty set;
  `ForAllValues:` is true when every request value matches, and true for an absent key or an
  empty set (the trap: it then admits everything);
- `*` and `?` are wildcards only in the `...Like` operators; `StringEquals` compares literally.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from idp.aws.checks import Tri
from idp.aws.trust_policy import string_like

STRING_OPERATORS = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
    }
)
# Operators AWS has that this module does not evaluate (their keys are never the token's).
OTHER_OPERATORS = frozenset(
    {
        "NumericEquals",
        "NumericNotEquals",
        "NumericLessThan",
        "NumericLessThanEquals",
        "NumericGreaterThan",
        "NumericGreaterThanEquals",
        "DateEquals",
        "DateNotEquals",
        "DateLessThan",
        "DateLessThanEquals",
        "DateGreaterThan",
        "DateGreaterThanEquals",
        "Bool",
        "BinaryEquals",
        "IpAddress",
        "NotIpAddress",
        "ArnEquals",
        "ArnLike",
        "ArnNotEquals",
        "ArnNotLike",
    }
)
QUALIFIERS = ("ForAnyValue", "ForAllValues")
_VARIABLE = re.compile(r"\$\{[^}]*\}")


class OperatorError(ValueError):
    """An operator name AWS does not know: IAM refuses to store such a policy."""


@dataclass(frozen=True)
class Operator:
    name: str  # as written in the policy
    base: str  # StringEquals, Null, ...
    qualifier: str | None = None  # ForAnyValue or ForAllValues
    if_exists: bool = False

    @property
    def negated(self) -> bool:
        return "Not" in self.base and self.base != "Null"

    @property
    def evaluated(self) -> bool:
        return self.base in STRING_OPERATORS or self.base == "Null"


def parse_operator(name: str) -> Operator:
    qualifier = None
    rest = name
    head, sep, tail = name.partition(":")
    if sep:
        if head not in QUALIFIERS:
            raise OperatorError(
                f"{name!r}: the only qualifiers are ForAnyValue: and ForAllValues: (case matters)"
            )
        qualifier, rest = head, tail
    if_exists = rest.endswith("IfExists") and rest != "IfExists"
    base = rest[: -len("IfExists")] if if_exists else rest
    if base not in STRING_OPERATORS and base not in OTHER_OPERATORS and base != "Null":
        close = [op for op in (*STRING_OPERATORS, "Null") if op.lower() == base.lower()]
        hint = f" (operator names are case-sensitive: write {close[0]})" if close else ""
        raise OperatorError(f"{name!r} is not an IAM condition operator{hint}")
    if base == "Null" and (if_exists or qualifier):
        raise OperatorError(f"{name!r}: Null takes neither IfExists nor a qualifier")
    return Operator(name=name, base=base, qualifier=qualifier, if_exists=if_exists)


def policy_values(raw: object) -> list[str]:
    """A condition's values as AWS reads them: a list or a single value, scalars as strings."""
    items = raw if isinstance(raw, list) else [raw]
    values = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif item is None:
            values.append("")
        else:
            values.append(str(item))
    return values


def has_variable(values: Sequence[str]) -> bool:
    return any(_VARIABLE.search(v) for v in values)


def _match_one(base: str, actual: str, wanted: str) -> bool:
    """Does `actual` match one policy value under the positive form of `base`?"""
    if base in ("StringEquals", "StringNotEquals"):
        return actual == wanted
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return actual.lower() == wanted.lower()
    # StringLike / StringNotLike: `*` and `?` are wildcards, matched case-sensitively.
    return string_like(wanted).fullmatch(actual) is not None


def _value_matches(operator: Operator, actual: str, wanted: Sequence[str]) -> bool:
    """One request value against the policy's values (ORed), negation applied."""
    positive = any(_match_one(operator.base, actual, w) for w in wanted)
    return not positive if operator.negated else positive


def evaluate(operator: Operator, actual: list[str] | None, wanted: Sequence[str]) -> Tri:
    """The condition `operator: {key: wanted}` for a request whose key holds `actual`.

    `actual` is None when the key is absent from the request, a one-element list for a
    single-valued key, the full list for a multivalued key.
    """
    if not operator.evaluated:
        return None
    if operator.base == "Null":
        absent = actual is None or len(actual) == 0
        wants_absent = [w.lower() == "true" for w in wanted]
        return any(absent == w for w in wants_absent)
    if actual is None or (operator.qualifier is not None and not actual):
        if operator.if_exists:
            return True
        if operator.qualifier == "ForAllValues":
            return True
        if operator.qualifier == "ForAnyValue":
            return False
        return operator.negated
    if operator.qualifier == "ForAllValues":
        return all(_value_matches(operator, value, wanted) for value in actual)
    if operator.qualifier == "ForAnyValue":
        return any(_value_matches(operator, value, wanted) for value in actual)
    if len(actual) != 1:
        # A multivalued key needs a set operator; AWS does not document the result without one.
        return None
    return _value_matches(operator, actual[0], wanted)
