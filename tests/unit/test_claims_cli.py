"""`idp aws trust-policy --match` with a claims file, and `idp claims show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from idp.aws.errors import TrustPolicyError
from idp.aws.trust_policy import IssuerShape, Wanted, build_trust_policy
from idp.tokens.claims_file import load_claims_file
from tests.support import run_cli as run
from tests.unit.test_claims import CONTEXT
from tests.unit.test_claims_file import GITHUB_ENVIRONMENTS, OCTOPUS, OCTOPUS_CONTEXT

PROVIDER = "arn:aws:iam::123456789012:oidc-provider/ci.example.com/_services/token"
SUB = "ci.example.com/_services/token:sub"


@pytest.fixture
def octopus_file(tmp_path: Path) -> Path:
    path = tmp_path / "octopus.yaml"
    path.write_text(OCTOPUS, encoding="utf-8")
    return path


@pytest.fixture
def octopus(octopus_file: Path) -> IssuerShape:
    policy = load_claims_file(str(octopus_file))
    return IssuerShape(session_tags=policy.session_tags or (), policy=policy)


def sub_condition(shape: IssuerShape, **matches: str) -> tuple[str, Any]:
    wanted = Wanted(matches=tuple(matches.items()))
    document = build_trust_policy(PROVIDER, wanted, shape).document()
    for test, block in document["Statement"][0]["Condition"].items():
        if SUB in block:
            return test, block[SUB]
    raise AssertionError("no sub condition")


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # The seed's pattern, exactly.
        (
            {"space": "default", "project": "aws-oidc-testing", "environment": "*"},
            ("StringLike", "space:default:project:aws-oidc-testing:environment:*"),
        ),
        # environment and tenant may be absent from sub: one value per shape.
        (
            {"space": "default", "project": "aws-oidc-testing"},
            (
                "StringLike",
                [
                    "space:default:project:aws-oidc-testing",
                    "space:default:project:aws-oidc-testing:tenant:*",
                    "space:default:project:aws-oidc-testing:environment:*",
                ],
            ),
        ),
        (
            {"space": "default", "project": "aws-x", "environment": "prod", "tenant": "acme"},
            ("StringEquals", "space:default:project:aws-x:environment:prod:tenant:acme"),
        ),
        # Another project: the catch-all rule, with runbook before environment.
        (
            {"space": "default", "project": "web", "runbook": "restart", "environment": "dev"},
            ("StringEquals", "space:default:project:web:runbook:restart:environment:dev"),
        ),
    ],
)
def test_the_rule_the_matches_select_builds_the_pattern(
    octopus: IssuerShape, matches: dict[str, str], expected: tuple[str, Any]
) -> None:
    assert sub_condition(octopus, **matches) == expected


@pytest.mark.parametrize(
    ("matches", "fragments"),
    [
        # project=aws* admits aws-x (rule 1) and awsome (rule 2): which rule depends on the value.
        (
            {"space": "default", "project": "aws*"},
            ["leave open which subject rule", "subjects[1]", "subjects[2]"],
        ),
        (
            {"space": "default", "project": "aws-x", "runbook": "r"},
            ["subjects[1] (match space=default, project=aws-*)", "runbook", "never be enforced"],
        ),
        ({"environment": "dev"}, ["no --match on the identity claims", "--match space="]),
        ({"space": "default", "colour": "red"}, ["names no claim", "colour"]),
    ],
)
def test_refusals_name_the_rule(
    octopus: IssuerShape, matches: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(TrustPolicyError) as info:
        sub_condition(octopus, **matches)
    for fragment in fragments:
        assert fragment in info.value.description


def test_a_match_that_only_selects_a_rule_is_enforced_by_the_shape(tmp_path: Path) -> None:
    path = tmp_path / "github.yaml"
    path.write_text(GITHUB_ENVIRONMENTS, encoding="utf-8")
    shape = IssuerShape(policy=load_claims_file(str(path)))
    wanted = Wanted(repo="octo-org/octo-repo", matches=(("event", "push"), ("environment", "prod")))
    document = build_trust_policy(PROVIDER, wanted, shape).document()
    condition = document["Statement"][0]["Condition"]["StringEquals"]
    assert condition[SUB] == "repo:octo-org/octo-repo:environment:prod"
    # `push*` is not the rule's glob: event `push-x` would take IDP_SUBJECT_CLAIMS instead.
    with pytest.raises(TrustPolicyError, match="leave open which subject rule"):
        build_trust_policy(
            PROVIDER, Wanted(repo="octo-org/octo-repo", matches=(("event", "push*"),)), shape
        )


def test_repo_is_a_shorthand_for_match_repo() -> None:
    shape = IssuerShape()
    by_flag = build_trust_policy(PROVIDER, Wanted(repo="octo-org/*"), shape).document()
    by_match = build_trust_policy(
        PROVIDER, Wanted(matches=(("repo", "octo-org/*"),)), shape
    ).document()
    assert by_flag == by_match
    with pytest.raises(TrustPolicyError, match="twice"):
        build_trust_policy(PROVIDER, Wanted(repo="o/r", matches=(("repo", "o/r"),)), shape)


def test_the_trust_policy_command_reads_the_claims_file(
    capsys: pytest.CaptureFixture[str], octopus_file: Path
) -> None:
    code, out, err = run(
        capsys,
        "aws",
        "trust-policy",
        "--provider-arn",
        PROVIDER,
        "--claims-file",
        str(octopus_file),
        "--match",
        "space=default",
        "--match",
        "project=aws-oidc-testing",
        "--match",
        "environment=*",
    )
    assert code == 0, err
    condition = json.loads(out)["Statement"][0]["Condition"]
    assert condition["StringLike"] == {SUB: "space:default:project:aws-oidc-testing:environment:*"}
    assert condition["StringEquals"] == {"ci.example.com/_services/token:aud": "sts.amazonaws.com"}

    code, _, err = run(
        capsys,
        "aws",
        "trust-policy",
        "--provider-arn",
        PROVIDER,
        "--claims-file",
        str(octopus_file),
        "--match",
        "space",
    )
    assert code == 2 and "--match 'space' is not KEY=VALUE" in err


# --- idp claims show -----------------------------------------------------------------------


def test_claims_show_prints_the_table_and_rules(
    capsys: pytest.CaptureFixture[str], octopus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDP_CLAIMS_FILE", str(octopus_file))
    code, out, err = run(capsys, "claims", "show")
    assert code == 0, err
    assert f"claims ({octopus_file}):" in out
    assert (
        "  space         text  required  declared  max 256; no ':'; pattern [a-z0-9-]{1,64}" in out
    )
    assert "identity: space, project" in out
    assert (
        "  subjects[1]: match space=default, project=aws-* -> space, project, environment, tenant"
        in out
    )
    assert "session tags: project, environment" in out


def test_claims_show_without_a_file_is_the_built_in_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IDP_CLAIMS_FILE", raising=False)
    code, out, _ = run(capsys, "claims", "show", "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert document["source"] is None
    assert document["subjects"] == [
        {"rule": "IDP_SUBJECT_CLAIMS", "match": {}, "claims": ["repo", "ref", "event"]}
    ]
    assert {"claim": "environment", "kind": "text", "required": False} in [
        {k: row[k] for k in ("claim", "kind", "required")} for row in document["claims"]
    ]


@pytest.mark.parametrize(
    ("context", "sub"),
    [
        (OCTOPUS_CONTEXT, "space:default:project:aws-oidc-testing:environment:dev"),
        ({**OCTOPUS_CONTEXT, "project": "web"}, "space:default:project:web:environment:dev"),
    ],
)
def test_claims_show_with_a_context_prints_its_claims_and_sub(
    capsys: pytest.CaptureFixture[str],
    octopus_file: Path,
    tmp_path: Path,
    context: dict[str, Any],
    sub: str,
) -> None:
    path = tmp_path / "context.json"
    path.write_text(json.dumps(context), encoding="utf-8")
    code, out, err = run(
        capsys, "claims", "show", "--claims-file", str(octopus_file), "--context", str(path)
    )
    assert code == 0, err
    assert out.splitlines()[0] == f"sub: {sub}"
    assert "  space: default" in out


@pytest.mark.parametrize(
    ("content", "code", "fragment"),
    [
        ('{"space": "Default", "project": "p", "build_id": 1}', 1, "'space'"),
        ('{"space": "default", "build_id": 1}', 1, "'project' is missing"),
        ("{", 1, "is not JSON"),
        # As the issuer judges it: a key named twice is refused, not read as its last value.
        ('{"space": "default", "project": "p", "project": "q", "build_id": 1}', 1, "twice"),
    ],
)
def test_claims_show_refuses_a_bad_context_in_one_line(
    capsys: pytest.CaptureFixture[str],
    octopus_file: Path,
    tmp_path: Path,
    content: str,
    code: int,
    fragment: str,
) -> None:
    path = tmp_path / "context.json"
    path.write_text(content, encoding="utf-8")
    got, out, err = run(
        capsys, "claims", "show", "--claims-file", str(octopus_file), "--context", str(path)
    )
    assert (got, out) == (code, "")
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_claims_show_of_a_vela_context(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "context.json"
    path.write_text(json.dumps(CONTEXT), encoding="utf-8")
    code, out, _ = run(capsys, "claims", "show", "--context", str(path), "--format", "json")
    assert code == 0
    token = json.loads(out)["token"]
    assert token["sub"] == "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"
    assert token["rule"] == "IDP_SUBJECT_CLAIMS"
