"""One check of `idp aws explain`, the report that lists them, and three-valued logic.

A check passes, fails, warns (it passes, but something is probably not what was meant), is
unknown (it depends on what cannot be judged here) or is information only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Tri = bool | None  # True, False, or None for "cannot tell"

PASS, FAIL, WARN, UNKNOWN, INFO = "pass", "fail", "warn", "unknown", "info"
_MARKS = {PASS: "ok", FAIL: "FAIL", WARN: "warn", UNKNOWN: "??", INFO: "--"}
_HEADLINES = {
    "allowed": "AWS would ALLOW this token",
    "refused": "AWS would REFUSE this token",
    "undecidable": "the verdict depends on what cannot be judged here",
}


@dataclass
class Check:
    check: str
    status: str  # pass, fail, warn, unknown, info
    detail: str
    fix: str = ""
    deciding: bool = False

    @property
    def ok(self) -> bool | None:
        if self.status == UNKNOWN:
            return None
        return self.status != FAIL


@dataclass
class Report:
    verdict: str  # allowed, refused, undecidable
    checks: list[Check]
    deciding: str | None
    context: dict[str, list[str]]
    role_arn: str | None = None
    provider_arn: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allowed"

    @property
    def exit_code(self) -> int:
        return {"allowed": 0, "refused": 1, "undecidable": 3}[self.verdict]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.check == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "verdict": self.verdict,
            "deciding": self.deciding,
            "role_arn": self.role_arn,
            "provider_arn": self.provider_arn,
            "context": self.context,
            "checks": [{**asdict(c), "ok": c.ok} for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """One check a line; `>>` marks the deciding one; the fix beside what failed."""
        headline = _HEADLINES[self.verdict]
        lines = [headline + (f" (deciding: {self.deciding})" if self.deciding else "")]
        width = min(max((len(c.check) for c in self.checks), default=10), 28)
        for c in self.checks:
            arrow = ">>" if c.deciding else "  "
            line = f"{arrow} {_MARKS[c.status]:<4} {c.check:<{width}}  {c.detail}"
            if c.fix and c.status in (FAIL, WARN, UNKNOWN):
                line += f"  -> fix: {c.fix}"
            lines.append(line)
        return "\n".join(lines)


def all_of(values: Iterable[Tri]) -> Tri:
    """Kleene AND: False if any is False, else unknown if any is unknown."""
    result: Tri = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def any_of(values: Iterable[Tri]) -> Tri:
    """Kleene OR: True if any is True, else unknown if any is unknown."""
    result: Tri = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def negate(value: Tri) -> Tri:
    return None if value is None else not value


def status_of(value: Tri) -> str:
    return PASS if value is True else FAIL if value is False else UNKNOWN


def section_result(checks: Sequence[Check]) -> Tri:
    return all_of(c.ok for c in checks)
