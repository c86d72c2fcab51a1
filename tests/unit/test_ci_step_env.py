"""The pure rules of `idp ci open`: how `--set` types a value, and how the step environment is
written for a shell (checked by a real `sh`) and for dotenv readers."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from idp.ci import CiError, UsageError
from idp.ci.step_env import BOOL_FIELDS, apply_sets, parse_context, render, sh_quote, typed_value
from idp.tokens.context import FIELDS


def test_the_bool_fields_are_the_issuers() -> None:
    # Derived from the issuer's own table, so a new boolean field is typed without a change here.
    assert {name for name, spec in FIELDS.items() if spec.kind == "bool"} == BOOL_FIELDS
    assert {"pull_fork", "commands"} <= BOOL_FIELDS


# (claim, raw value, what the context holds now, the JSON value sent)
TYPED = [
    ("step", "deploy", "build", "deploy"),
    ("step", "", "build", ""),
    ("step", "true", "build", "true"),  # text stays text, whatever it looks like
    ("step", "42", None, "42"),
    ("environment", "prod", None, "prod"),
    ("pull_fork", "true", None, True),
    ("pull_fork", "False", False, False),
    ("commands", " TRUE ", None, True),
    ("custom_flag", "false", True, False),  # a bool in the context, whatever its name
    ("build_id", "5004", 5003, 5004),
    ("build_id", "0", 5003, 0),
    ("build_id", "5004", "5003", "5004"),  # digit strings stay strings: the issuer takes both
    ("ttl", "600", None, 600),
    ("weight", "1.5", 2.0, 1.5),
    ("weight", "1e3", 2.0, 1000.0),
    ("other", "[1]", [0], "[1]"),
]


@pytest.mark.parametrize(("claim", "raw", "current", "expected"), TYPED)
def test_typed_value(claim: str, raw: str, current: Any, expected: Any) -> None:
    value = typed_value(claim, raw, current)
    assert value == expected and type(value) is type(expected)


REFUSED = [
    ("pull_fork", "yes", None, "true or false"),
    ("pull_fork", "1", False, "true or false"),
    ("custom_flag", "", True, "true or false"),
    ("build_id", "abc", 5003, "whole number"),
    ("build_id", "05004", 5003, "whole number"),
    ("build_id", "1.0", 5003, "whole number"),
    ("build_id", "", 5003, "whole number"),
    ("ttl", "10m", None, "whole number"),
    ("weight", "NaN", 2.0, "a number"),
    ("weight", "0x10", 2.0, "a number"),
    ("weight", "1e999", 2.0, "a number"),
]


@pytest.mark.parametrize(("claim", "raw", "current", "fragment"), REFUSED)
def test_typed_value_refusals(claim: str, raw: str, current: Any, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment) as info:
        typed_value(claim, raw, current)
    assert claim in info.value.description


def test_apply_sets_in_order_without_touching_the_input() -> None:
    context = {"step": "a", "pull_fork": False}
    result = apply_sets(context, ["step=b", "step=c=d", "pull_fork=true", "new=1"])
    assert result == {"step": "c=d", "pull_fork": True, "new": "1"}
    assert context == {"step": "a", "pull_fork": False}


@pytest.mark.parametrize("assignment", ["step", "=x", "a.b=x", "a-b=x", "9a=x", "a b=x", "é=x"])
def test_apply_sets_refuses_what_is_not_a_plain_claim(assignment: str) -> None:
    with pytest.raises(UsageError):
        apply_sets({}, [assignment])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{", "not JSON"),
        ("1", "int"),
        ("null", "None"),
        ('{"repo": "a/b", "repo": "c/d"}', "names 'repo' twice"),
    ],
)
def test_parse_context_wants_an_object(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_context(text, "'c.json'")


def test_parse_context_survives_deep_nesting() -> None:
    with pytest.raises(UsageError):
        parse_context("[" * 100_000, "(stdin)")


VALUES = [
    "",
    "plain",
    "it's",
    "''",
    "'\\''",
    "a b  c",
    "$(touch pwned)",
    "`touch pwned`",
    "${HOME}",
    "a\\nb\\",
    "one\ntwo\n",
    "\t\r",
    '"double"',
    "!history",
    "*glob?[x]",
    "~user",
    "héllo wörld ☃",
    "-n",
]


@pytest.mark.parametrize("value", VALUES)
def test_sh_quote_round_trips_through_a_real_sh(value: str, tmp_path: Any) -> None:
    # The value must come back byte for byte, and nothing in it may run.
    script = f"X={sh_quote(value)}; printf '%s' \"$X\""
    done = subprocess.run(["sh", "-c", script], capture_output=True, cwd=tmp_path, timeout=10)
    assert done.returncode == 0, done
    assert done.stdout.decode() == value
    assert not list(tmp_path.iterdir())


def test_sh_quote_is_always_single_quotes() -> None:
    assert sh_quote("abc") == "'abc'"
    assert sh_quote("it's") == "'it'\\''s'"


ENV = {
    "ACTIONS_ID_TOKEN_REQUEST_URL": "https://ci.example.com/_services/token/id-token?api-version=2.0",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "eyJ0.eyJ1.c2ln-_",
}


def test_render_formats() -> None:
    answer = {"token": "t", "expires_at": 1, "env": ENV}
    assert render(answer, '{"a": 1}', "json") == '{"a": 1}\n'
    assert render(answer, "", "env").splitlines() == [
        f"export {name}='{value}'" for name, value in ENV.items()
    ]
    assert render(answer, "", "dotenv").splitlines() == [f"{n}={v}" for n, v in ENV.items()]


@pytest.mark.parametrize("value", ["a\nb", "a b", "a#b", "'a'", '"a"', "$A", "a\\b", "a`b", " a"])
def test_dotenv_refuses_what_readers_disagree_on(value: str) -> None:
    with pytest.raises(CiError, match="--format env"):
        render({"env": {"NAME": value}}, "", "dotenv")
    # The shell format carries it.
    assert render({"env": {"NAME": value}}, "", "env") == f"export NAME={sh_quote(value)}\n"


@pytest.mark.parametrize(
    "env", [{"A B": "x"}, {"A;B": "x"}, {"1A": "x"}, {"": "x"}, {"A": 1}, {"A": "a\x00"}, {}]
)
def test_render_refuses_what_no_shell_can_set(env: dict[str, Any]) -> None:
    with pytest.raises(CiError):
        render({"env": env}, "", "env")
