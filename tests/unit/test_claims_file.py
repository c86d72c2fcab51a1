"""IDP_CLAIMS_FILE: the loader's checks, the subject rules, and the parser of declared claims.

Table-driven from the schema, as the built-in table is: every declared claim's rules are
probed from its own `Field`, so a new rule cannot go untested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from idp.config import load_settings
from idp.errors import ConfigError, InvalidRequest
from idp.tokens.claims import context_claims, id_token_claims, subject_of
from idp.tokens.claims_file import load_claims_file, parse_claims_document
from idp.tokens.context import parse_context
from idp.tokens.vocabulary import BUILTIN_FIELDS, REGISTERED_CLAIMS, ClaimPolicy
from tests.unit.test_claims import CONTEXT

# The issue's example: an Octopus Deploy-style deployment identity (seed 000).
OCTOPUS = """\
identity: [space, project]
optional: [repo, ref, sha, event, branch, build_number, actor, actor_scm_id,
           pull_fork, step, image, commands, request]
claims:
  space:       {kind: text, required: true, pattern: "[a-z0-9-]{1,64}"}
  project:     {kind: text, required: true, pattern: "[a-z0-9-]{1,64}"}
  environment: {values: [dev, test, prod]}
  tenant:      {kind: text, max_length: 64}
  runbook:     {kind: text}
subjects:
  - match: {space: default, project: "aws-*"}
    claims: [space, project, environment, tenant]
  - claims: [space, project, runbook, environment]
session_tags: [project, environment]
"""

# GitHub's most used AWS condition, `repo:org/repo:environment:prod`, on Vela's context.
GITHUB_ENVIRONMENTS = """\
claims:
  environment: {values: [staging, prod]}
subjects:
  - match: {event: push}
    claims: [repo, environment]
"""

OCTOPUS_CONTEXT: dict[str, Any] = {
    "space": "default",
    "project": "aws-oidc-testing",
    "environment": "dev",
    "build_id": 5003,
}


def write(tmp_path: Path, text: str, name: str = "claims.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def octopus(tmp_path: Path) -> ClaimPolicy:
    return load_claims_file(write(tmp_path, OCTOPUS))


# --- the loader ------------------------------------------------------------------------------

BAD_FILES = [
    # (file text, what the line must name: the entry, and words of the fix)
    ("identity: [repo]\nextra: 1\n", ["'extra'", "identity, optional, claims"]),
    ("claims: [a, b]\n", ["claims", "mapping"]),
    ("claims:\n  x: {kind: number}\n", ["claims.x.kind", "text, id or bool"]),
    ("claims:\n  x: {kind: text, colour: red}\n", ["claims.x.colour", "kind, required"]),
    ('claims:\n  x: {pattern: "[a-"}\n', ["claims.x.pattern", "not a regular expression"]),
    ("claims:\n  sub: {}\n", ["claims.sub", "registered JWT/OIDC claim"]),
    ("claims:\n  azp: {}\n", ["claims.azp", "registered"]),
    ("claims:\n  image_name: {}\n", ["claims.image_name", "computed by the issuer"]),
    ("claims:\n  ttl: {}\n", ["claims.ttl", "computed by the issuer"]),
    ("claims:\n  repo: {kind: id}\n", ["claims.repo", "built-in field of kind text", "narrow"]),
    ("claims:\n  build_id: {required: false}\n", ["claims.build_id.required", "closed"]),
    ("claims:\n  x-y: {}\n", ["claims.x-y", "letters, digits and '_'"]),
    ("claims:\n  x: {max_length: 0}\n", ["claims.x.max_length", "1 to 4096"]),
    ("claims:\n  environment: {max_length: 300}\n", ["claims.environment.max_length", "1 to 255"]),
    ("claims:\n  x: {kind: bool, max_length: 3}\n", ["claims.x.max_length", "text claims only"]),
    ("claims:\n  x: {kind: bool, values: [a]}\n", ["claims.x.values", "not bool"]),
    ("claims:\n  x: {values: [yes, no]}\n", ["claims.x.values", "quote"]),
    ("claims:\n  x: {values: []}\n", ["claims.x.values", "non-empty"]),
    ('claims:\n  x: {values: ["a:b"]}\n', ["claims.x.values", "could never be sent", "':'"]),
    ('claims:\n  x: {values: [ab], pattern: "a"}\n', ["claims.x.values", "does not match"]),
    ("claims:\n  x: {required: maybe}\n", ["claims.x.required", "true or false"]),
    ("optional: [build_id]\n", ["optional: build_id", "closed"]),
    ("optional: [space]\n", ["optional: space", "no built-in"]),
    ("optional: repo\n", ["optional", "list of claim names"]),
    ("optional: [ref, ref]\n", ["optional", "repeats"]),
    ("optional: [repo]\n", ["identity: repo", "remove it from optional"]),
    ("identity: [space]\n", ["identity: space", "declare it under claims"]),
    ("identity: [space]\nclaims:\n  space: {}\n", ["identity: space", "required: true"]),
    ("subjects: {claims: [repo]}\n", ["subjects", "list"]),
    ("subjects:\n  - match: {event: push}\n", ["subjects[1]", "has no claims"]),
    ("subjects:\n  - claims: [repo, colour]\n", ["subjects[1].claims: colour", "declare it"]),
    ("subjects:\n  - claims: [ref, repo]\n", ["subjects[1].claims", "start with", "[repo, ref]"]),
    ("subjects:\n  - claims: [repo]\n    when: {}\n", ["subjects[1].when", "match, claims"]),
    (
        "subjects:\n  - {claims: [repo]}\n  - match: {colour: red}\n    claims: [repo]\n",
        ["subjects[2].match.colour", "declare it"],
    ),
    (
        "subjects:\n  - match: {event: 1}\n    claims: [repo]\n",
        ["subjects[1].match.event", "quote"],
    ),
    ("session_tags: [colour]\n", ["session_tags: colour", "no claim"]),
    ("identity: [repo\n", ["the file", "not YAML", "line"]),
    ("- a list\n", ["the file", "must be a mapping"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_FILES)
def test_every_problem_stops_start_up_with_one_line_naming_file_entry_and_fix(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings({"IDP_CLAIMS_FILE": path})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"IDP_CLAIMS_FILE {path}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml cannot be read"):
        load_settings({"IDP_CLAIMS_FILE": missing})


@pytest.mark.parametrize("name", sorted(REGISTERED_CLAIMS))
def test_no_registered_claim_can_be_declared(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="registered JWT/OIDC claim"):
        load_claims_file(write(tmp_path, f"claims:\n  {name}: {{}}\n"))


def test_the_octopus_file_loads(octopus: ClaimPolicy) -> None:
    assert octopus.identity == ("space", "project")
    assert octopus.declared == ("space", "project", "tenant", "runbook")
    assert [name for name, spec in octopus.fields.items() if spec.required] == [
        "build_id",
        "space",
        "project",
    ]
    assert octopus.fields["environment"].values == ("dev", "test", "prod")
    assert octopus.fields["environment"].max_length == 255
    assert octopus.fields["tenant"].max_length == 64
    assert octopus.fields["space"].no_colon and not octopus.fields["space"].allow_empty
    assert [rule.number for rule in octopus.subjects] == [1, 2]
    assert octopus.session_tags == ("project", "environment")


def test_json_is_yaml_too(tmp_path: Path) -> None:
    document = {"claims": {"team": {"required": True}}, "subjects": [{"claims": ["repo", "team"]}]}
    policy = load_claims_file(write(tmp_path, json.dumps(document), "claims.json"))
    assert policy.fields["team"].required


def test_an_empty_file_is_the_built_in_policy(tmp_path: Path) -> None:
    settings = load_settings({"IDP_CLAIMS_FILE": write(tmp_path, "")})
    assert dict(settings.claim_policy.fields) == BUILTIN_FIELDS
    assert settings.subject_claims == ("repo", "ref", "event")


def test_session_tags_of_the_file_override_the_variable(tmp_path: Path) -> None:
    settings = load_settings(
        {"IDP_CLAIMS_FILE": write(tmp_path, OCTOPUS), "IDP_AWS_SESSION_TAGS": "repo"}
    )
    assert settings.aws_session_tags == ("project", "environment")


def test_declared_claims_may_be_used_in_the_variables(tmp_path: Path) -> None:
    path = write(tmp_path, "claims:\n  team: {required: true}\n")
    settings = load_settings(
        {
            "IDP_CLAIMS_FILE": path,
            "IDP_SUBJECT_CLAIMS": "repo,team,environment",
            "IDP_AWS_SESSION_TAGS": "team",
        }
    )
    assert settings.subject_claims == ("repo", "team", "environment")
    with pytest.raises(ConfigError, match="unknown claim 'team'"):
        load_settings({"IDP_SUBJECT_CLAIMS": "repo,team"})


def test_without_a_catch_all_rule_the_variable_must_start_with_the_identity(
    tmp_path: Path,
) -> None:
    text = OCTOPUS.replace("  - claims: [space, project, runbook, environment]\n", "")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"must start with the identity claims .*space,project"):
        load_settings({"IDP_CLAIMS_FILE": path})
    settings = load_settings({"IDP_CLAIMS_FILE": path, "IDP_SUBJECT_CLAIMS": "space,project"})
    assert settings.subject_claims == ("space", "project")


def test_environment_is_a_built_in_claim_for_the_variables() -> None:
    settings = load_settings(
        {"IDP_SUBJECT_CLAIMS": "repo,environment", "IDP_AWS_SESSION_TAGS": "environment"}
    )
    ctx = parse_context({**CONTEXT, "environment": "prod"})
    claims = id_token_claims(ctx, ["sts.amazonaws.com"], settings, 0)
    assert claims["sub"] == "repo:octo-org/octo-repo:environment:prod"
    assert claims["https://aws.amazon.com/tags"] == {"principal_tags": {"environment": ["prod"]}}
    # Without one, no claim, no part of sub, no tag: never an empty string.
    bare = id_token_claims(parse_context(CONTEXT), ["sts.amazonaws.com"], settings, 0)
    assert "environment" not in bare
    assert bare["sub"] == "repo:octo-org/octo-repo"
    assert "https://aws.amazon.com/tags" not in bare


# --- the subject rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "subject"),
    [
        # The seed's subject, exactly.
        (OCTOPUS_CONTEXT, "space:default:project:aws-oidc-testing:environment:dev"),
        (
            {**OCTOPUS_CONTEXT, "tenant": "acme"},
            "space:default:project:aws-oidc-testing:environment:dev:tenant:acme",
        ),
        (
            {**OCTOPUS_CONTEXT, "environment": "prod", "runbook": "r1"},
            "space:default:project:aws-oidc-testing:environment:prod",
        ),
        # Another project: rule 1's glob fails, the catch-all applies (runbook before env).
        (
            {**OCTOPUS_CONTEXT, "project": "web", "runbook": "restart"},
            "space:default:project:web:runbook:restart:environment:dev",
        ),
        # Another space: the same.
        ({**OCTOPUS_CONTEXT, "space": "ops"}, "space:ops:project:aws-oidc-testing:environment:dev"),
        # No environment: its key is left out, the identity never is.
        ({"space": "default", "project": "aws-x", "build_id": 1}, "space:default:project:aws-x"),
    ],
)
def test_the_first_matching_rule_builds_sub(
    tmp_path: Path, context: dict[str, Any], subject: str
) -> None:
    settings = load_settings({"IDP_CLAIMS_FILE": write(tmp_path, OCTOPUS)})
    claims = context_claims(parse_context(context, settings.claim_policy))
    assert subject_of(claims, settings) == subject


def test_no_matching_rule_falls_back_to_the_variable(tmp_path: Path) -> None:
    settings = load_settings({"IDP_CLAIMS_FILE": write(tmp_path, GITHUB_ENVIRONMENTS)})
    policy = settings.claim_policy
    push = context_claims(parse_context({**CONTEXT, "environment": "prod"}, policy))
    assert subject_of(push, settings) == "repo:octo-org/octo-repo:environment:prod"
    tag = context_claims(parse_context({**CONTEXT, "event": "tag", "environment": "prod"}, policy))
    assert subject_of(tag, settings) == "repo:octo-org/octo-repo:ref:refs/heads/main:event:tag"


def test_a_glob_never_matches_an_absent_claim(tmp_path: Path) -> None:
    text = "subjects:\n  - match: {environment: '*'}\n    claims: [repo, environment]\n"
    settings = load_settings({"IDP_CLAIMS_FILE": write(tmp_path, text)})
    claims = context_claims(parse_context(CONTEXT, settings.claim_policy))
    assert subject_of(claims, settings) == "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"


# --- the parser, table-driven from each declared field ---------------------------------------


def _bad_values(policy: ClaimPolicy) -> list[tuple[str, object, str]]:
    cases: list[tuple[str, object, str]] = []
    for name in policy.declared + ("environment",):
        spec = policy.fields[name]
        cases += [
            (name, "a\nb", "control character"),
            (name, " padded", "whitespace"),
            (name, "\ud800", "surrogate"),
            (name, ["a list"], "must be a string"),
            (name, "", "must not be empty"),
            (name, "x" * (spec.max_length + 1), f"over {spec.max_length}"),
        ]
        if spec.no_colon:
            cases.append((name, "a:b", "':'"))
        if spec.values is not None:
            cases.append((name, "staging", "not one of dev, test, prod"))
        if spec.pattern is not None:
            cases.append((name, "Default", "does not match"))
    return cases


def test_declared_claims_keep_every_built_in_rule(octopus: ClaimPolicy) -> None:
    cases = _bad_values(octopus)
    assert {name for name, _, _ in cases} == {
        "space",
        "project",
        "tenant",
        "runbook",
        "environment",
    }
    for name, value, problem in cases:
        with pytest.raises(InvalidRequest, match=f"'{name}'") as info:
            parse_context({**OCTOPUS_CONTEXT, name: value}, octopus)
        assert problem in info.value.description, (name, value, info.value.description)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"space": None}, "'space' is missing"),
        ({"project": None}, "'project' is missing"),
        ({"build_id": None}, "'build_id' is missing"),
        ({"colour": "red"}, "unknown build context field 'colour'"),
        ({"environment": "staging"}, "'environment' is 'staging', not one of dev, test, prod"),
        ({"project": "AWS"}, "'project' is 'AWS', which does not match"),
        ({"project": "a:b"}, "'project' contains ':'"),
    ],
)
def test_bad_octopus_contexts_name_the_claim(
    octopus: ClaimPolicy, change: dict[str, Any], fragment: str
) -> None:
    context = {**OCTOPUS_CONTEXT, **change}
    context = {key: value for key, value in context.items() if value is not None}
    with pytest.raises(InvalidRequest, match=fragment) as info:
        parse_context(context, octopus)
    assert info.value.status == 400


def test_optional_built_ins_may_be_absent_and_give_no_claim(octopus: ClaimPolicy) -> None:
    ctx = parse_context(OCTOPUS_CONTEXT, octopus)
    assert ctx.repo is None and ctx.image_ref is None
    assert context_claims(ctx) == {
        "build_id": "5003",
        "environment": "dev",
        "space": "default",
        "project": "aws-oidc-testing",
    }
    # Present, an optional built-in keeps its rules.
    with pytest.raises(InvalidRequest, match="'repo'"):
        parse_context({**OCTOPUS_CONTEXT, "repo": "no-slash"}, octopus)
    assert (
        context_claims(parse_context({**OCTOPUS_CONTEXT, "image": "golang:1.22"}, octopus))[
            "image_tag"
        ]
        == "1.22"
    )


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        ("{kind: id}", [7, "12"], ["012", -1, True, "x"]),
        ("{kind: bool}", [True, False], ["true", 1, None]),
        ('{kind: id, values: ["1", "2"]}', [1, "2"], [3, "3"]),
        ("{kind: text, max_length: 3}", ["abc"], ["abcd"]),
    ],
)
def test_kinds_of_declared_claims(
    tmp_path: Path, spec: str, good: list[object], bad: list[object]
) -> None:
    policy = load_claims_file(write(tmp_path, f"claims:\n  extra: {spec}\n"))
    for value in good:
        claims = context_claims(parse_context({**CONTEXT, "extra": value}, policy))
        expected = ("true" if value else "false") if isinstance(value, bool) else str(value)
        assert claims["extra"] == expected
    for value in bad:
        with pytest.raises(InvalidRequest, match="'extra'"):
            parse_context({**CONTEXT, "extra": value}, policy)


@pytest.mark.parametrize("name", ["claims-octopus.yaml", "claims-github.yaml"])
def test_the_readme_shows_the_example_files_and_they_load(name: str) -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "examples" / name).read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    body = body if name != "claims-github.yaml" else text.split("\n", 1)[1]
    assert body in (root / "README.md").read_text(encoding="utf-8")
    load_settings({"IDP_CLAIMS_FILE": str(root / "docs" / "examples" / name)})


def test_the_octopus_example_is_the_issues_file() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "examples" / "claims-octopus.yaml").read_text(encoding="utf-8")
    assert parse_claims_document(yaml.safe_load(text)) == parse_claims_document(
        yaml.safe_load(OCTOPUS)
    )
