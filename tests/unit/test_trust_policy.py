"""Trust policies: golden outputs, refusals, and what AWS would let in.

`aws_allows` below is a small model of how STS decides AssumeRoleWithWebIdentity for an OIDC
token, written for these tests and independent of the code under test: the request context
holds only `<provider>:aud`, `<provider>:sub` and `aws:RequestTag/<key>` for session tags
(nothing else of the token), conditions are ANDed, the values of one condition key ORed,
`StringEquals` compares exactly and `StringLike` treats `*` and `?` as wildcards; a condition
on a key the context does not hold is not met. When the token carries session tags, STS also
requires `sts:TagSession`.

Set UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change, then review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from idp.aws.errors import TrustPolicyError
from idp.aws.trust_policy import IssuerShape, Wanted, build_trust_policy
from idp.errors import IdpError
from idp.tokens.tags import TAG_KEY_PATTERN, verbatim_tag_value
from tests.support import run_cli

GOLDEN = Path(__file__).parent / "golden"
PROVIDER = "arn:aws:iam::123456789012:oidc-provider/ci.example.com/_services/token"
URL = "ci.example.com/_services/token"
FULL_SUBJECT = ("repo", "ref", "event", "image_name", "commands")


# --- the model of AWS ------------------------------------------------------------------


def make_sub(claims: dict[str, str], order: tuple[str, ...]) -> str:
    """`sub` as the issuer builds it (GitHub's way): key:value pairs, '%' in values as %25,
    then ':' as %3A."""
    return ":".join(f"{key}:{claims[key].replace('%', '%25').replace(':', '%3A')}" for key in order)


def _like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _condition_met(operator: str, key: str, wanted: Any, context: dict[str, str]) -> bool:
    if key not in context:
        return False
    values = wanted if isinstance(wanted, list) else [wanted]
    actual = context[key]
    if operator == "StringEquals":
        return any(actual == v for v in values if isinstance(v, str))
    if operator == "StringLike":
        return any(_like(v, actual) for v in values if isinstance(v, str))
    raise AssertionError(f"the model does not know {operator}")


def _statement_allows(statement: dict[str, Any], action: str, context: dict[str, str]) -> bool:
    if statement.get("Principal", {}).get("Federated") != PROVIDER:
        return False
    actions = (
        statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    )
    if action not in actions:
        return False
    return all(
        _condition_met(operator, key, wanted, context)
        for operator, block in statement.get("Condition", {}).items()
        for key, wanted in block.items()
    )


def aws_allows(
    policy: dict[str, Any],
    claims: dict[str, str],
    subject_claims: tuple[str, ...],
    session_tags: tuple[str, ...] = (),
    audience: str = "sts.amazonaws.com",
) -> bool:
    context = {f"{URL}:aud": audience, f"{URL}:sub": make_sub(claims, subject_claims)}
    for key in session_tags:
        context[f"aws:RequestTag/{key}"] = verbatim_tag_value(claims[key])
    actions = ["sts:AssumeRoleWithWebIdentity"] + (["sts:TagSession"] if session_tags else [])
    statements = policy["Statement"]
    for action in actions:
        if any(s["Effect"] == "Deny" and _statement_allows(s, action, context) for s in statements):
            return False
        if not any(
            s["Effect"] == "Allow" and _statement_allows(s, action, context) for s in statements
        ):
            return False
    return True


CLAIMS = {
    "repo": "octo-org/octo-repo",
    "ref": "refs/heads/main",
    "sha": "0" * 40,
    "event": "push",
    "branch": "main",
    "build_id": "7",
    "build_number": "42",
    "actor": "octocat",
    "actor_scm_id": "1",
    "pull_fork": "false",
    "step": "deploy",
    "image": "golang:1.22",
    "image_name": "golang",
    "image_tag": "1.22",
    "commands": "false",
    "request": "yes",
}


def token(**changes: str) -> dict[str, str]:
    return {**CLAIMS, **changes}


def policy(shape: IssuerShape, **wanted: Any) -> dict[str, Any]:
    return build_trust_policy(PROVIDER, Wanted(**wanted), shape).document()


# The target: repo X, image Y, no commands; both ways AWS can see them.
SUBJECT_WAY = IssuerShape(subject_claims=FULL_SUBJECT)
TAGS_WAY = IssuerShape(session_tags=("image_name", "commands"))
REPO_IMAGE_NO_COMMANDS = {"repo": "octo-org/octo-repo", "image": "golang", "commands": False}

# Vela's documented policy: conditions on keys STS never supplies.
SEED_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Federated": PROVIDER},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringLike": {
                    f"{URL}:sub": "repo:octo-org/octo-repo:*",
                    f"{URL}:image": "golang:*",
                },
                "StringEquals": {f"{URL}:aud": "sts.amazonaws.com", f"{URL}:commands": False},
            },
        }
    ],
}

ALLOWED, DENIED = True, False
DECISIONS = [
    # (name, token changes, expected) for the repo X / image Y / no commands policy
    ("the pipeline asked for", {}, ALLOWED),
    ("any branch and event", {"ref": "refs/heads/dev", "event": "pull_request:opened"}, ALLOWED),
    ("any tag of the image", {"image_tag": "1.23", "image": "golang:1.23"}, ALLOWED),
    ("a step with commands", {"commands": "true"}, DENIED),
    ("another image", {"image_name": "python", "image": "python:3"}, DENIED),
    ("an image whose name starts the same", {"image_name": "golang-evil"}, DENIED),
    ("the image under another path", {"image_name": "evil/golang"}, DENIED),
    ("another repo of the org", {"repo": "octo-org/other"}, DENIED),
    ("a repo whose name starts the same", {"repo": "octo-org/octo-repo-fork"}, DENIED),
    ("the same name in another org", {"repo": "evil-org/octo-repo"}, DENIED),
    (
        "a ref crafted to look like the rest of sub",
        {"ref": "refs/heads/x:image_name:golang:commands:false", "image_name": "python"},
        DENIED,
    ),
]


@pytest.mark.parametrize(("name", "changes", "expected"), DECISIONS, ids=[d[0] for d in DECISIONS])
@pytest.mark.parametrize("way", ["subject", "tags"])
def test_repo_image_and_no_commands(
    way: str, name: str, changes: dict[str, str], expected: bool
) -> None:
    shape = SUBJECT_WAY if way == "subject" else TAGS_WAY
    document = policy(shape, **REPO_IMAGE_NO_COMMANDS)
    claims = token(**changes)
    assert aws_allows(document, claims, shape.subject_claims, shape.session_tags) is expected


@pytest.mark.parametrize("way", ["subject", "tags"])
def test_another_audience_is_denied(way: str) -> None:
    shape = SUBJECT_WAY if way == "subject" else TAGS_WAY
    document = policy(shape, **REPO_IMAGE_NO_COMMANDS)
    assert not aws_allows(document, token(), shape.subject_claims, shape.session_tags, "other")


def test_the_seeds_policy_never_lets_anyone_in() -> None:
    for shape in (IssuerShape(), SUBJECT_WAY, TAGS_WAY):
        assert not aws_allows(SEED_POLICY, token(), shape.subject_claims, shape.session_tags)


def test_tokens_with_tags_need_tag_session() -> None:
    # A policy written for an issuer without tags stops working when the issuer adds them.
    document = policy(SUBJECT_WAY, **REPO_IMAGE_NO_COMMANDS)
    assert aws_allows(document, token(), FULL_SUBJECT)
    assert not aws_allows(document, token(), FULL_SUBJECT, session_tags=("step",))
    with_tags = policy(IssuerShape(FULL_SUBJECT, ("step",)), **REPO_IMAGE_NO_COMMANDS)
    assert aws_allows(with_tags, token(), FULL_SUBJECT, session_tags=("step",))


MIXED = IssuerShape(
    subject_claims=("repo", "ref", "event", "image_name"), session_tags=("image_tag", "commands")
)
MIXED_WANTED = {
    "repo": "octo-org/*",
    "image": "registry:5000/team/app:1.2*",
    "ref": "refs/heads/main",
    "event": "push",
    "commands": False,
}
REGISTRY_IMAGE = {"image_name": "registry:5000/team/app", "image_tag": "1.2.3"}
MIXED_DECISIONS = [
    ("the pipeline asked for", {}, ALLOWED),
    ("another repo of the org", {"repo": "octo-org/other"}, ALLOWED),
    ("another org", {"repo": "evil-org/app"}, DENIED),
    ("another tag", {"image_tag": "1.3"}, DENIED),
    ("another registry port", {"image_name": "registry:5001/team/app"}, DENIED),
    ("another branch", {"ref": "refs/heads/dev"}, DENIED),
    ("a pull request", {"event": "pull_request:opened"}, DENIED),
    ("a step with commands", {"commands": "true"}, DENIED),
]


@pytest.mark.parametrize(
    ("name", "changes", "expected"), MIXED_DECISIONS, ids=[d[0] for d in MIXED_DECISIONS]
)
def test_subject_and_tags_together(name: str, changes: dict[str, str], expected: bool) -> None:
    document = policy(MIXED, **MIXED_WANTED)
    claims = token(**{**REGISTRY_IMAGE, **changes})
    assert aws_allows(document, claims, MIXED.subject_claims, MIXED.session_tags) is expected


@pytest.mark.parametrize(
    ("event", "claims", "expected"),
    [
        ("pull_request:*", {"event": "pull_request:opened"}, ALLOWED),
        ("pull_request:*", {"event": "pull_request"}, DENIED),
        ("push", {"event": "push"}, ALLOWED),
        ("push", {"event": "pushy"}, DENIED),
    ],
)
@pytest.mark.parametrize("way", ["subject", "tags"])
def test_values_with_colons(way: str, event: str, claims: dict[str, str], expected: bool) -> None:
    shape = IssuerShape() if way == "subject" else IssuerShape(session_tags=("event",))
    document = policy(shape, repo="octo-org/octo-repo", event=event)
    assert (
        aws_allows(document, token(**claims), shape.subject_claims, shape.session_tags) is expected
    )


@pytest.mark.parametrize(
    ("ref", "claims", "expected"),
    [
        ("refs/heads/100%", {"ref": "refs/heads/100%"}, ALLOWED),
        ("refs/heads/100%*", {"ref": "refs/heads/100%-done"}, ALLOWED),
        ("refs/heads/100%", {"ref": "refs/heads/100%25"}, DENIED),
    ],
)
def test_values_with_percent_signs(ref: str, claims: dict[str, str], expected: bool) -> None:
    # The issuer writes '%' in a sub value as %25; the policy must say the same, or a ref
    # holding a '%' would never match.
    shape = IssuerShape()
    document = policy(shape, repo="octo-org/octo-repo", ref=ref)
    assert aws_allows(document, token(**claims), shape.subject_claims) is expected


def test_allow_any_repo_pins_only_the_audience() -> None:
    document = policy(IssuerShape(), allow_any_repo=True)
    assert list(document["Statement"][0]["Condition"]) == ["StringEquals"]
    assert aws_allows(document, token(repo="anyone/anything"), ("repo", "ref", "event"))


# --- golden outputs --------------------------------------------------------------------


GOLDEN_CASES = {
    "subject_repo_image_no_commands": [
        "--repo",
        "octo-org/octo-repo",
        "--image",
        "golang",
        "--commands",
        "false",
        "--subject-claims",
        ",".join(FULL_SUBJECT),
        "--session-tags",
        "",
    ],
    "tags_repo_image_no_commands": [
        "--repo",
        "octo-org/octo-repo",
        "--image",
        "golang",
        "--commands",
        "false",
        "--subject-claims",
        "repo,ref,event",
        "--session-tags",
        "image_name,commands",
    ],
    "mixed_registry_image_ref_event": [
        "--repo",
        "octo-org/*",
        "--image",
        "registry:5000/team/app:1.2*",
        "--ref",
        "refs/heads/main",
        "--event",
        "push",
        "--commands",
        "false",
        "--subject-claims",
        "repo,ref,event,image_name",
        "--session-tags",
        "image_tag,commands",
        "--role-name",
        "app-deploy",
    ],
    "repo_only": [
        "--repo",
        "repo:octo-org/octo-repo:*",
        "--subject-claims",
        "repo,ref,event",
        "--session-tags",
        "",
        "--audience",
        "deploy.example.com",
    ],
}


def test_trust_policy_refuses_a_tag_value_it_cannot_write_verbatim(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's command wrote `aws:RequestTag/ref = refs/heads/release_1`, which the
    branches release!1, release#1 and release?1 all met."""
    code, out, err = run_cli(
        capsys,
        "aws",
        "trust-policy",
        "--provider-arn",
        PROVIDER,
        "--repo",
        "octo-org/octo-repo",
        "--subject-claims",
        "repo",
        "--session-tags",
        "ref",
        "--ref",
        "refs/heads/release!1",
    )
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idp: error: --ref 'refs/heads/release!1'")
    assert "release_1" not in err


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path} differs; see the module docstring"


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
@pytest.mark.parametrize("output_format", ["json", "terraform"])
def test_golden_outputs(capsys: pytest.CaptureFixture[str], case: str, output_format: str) -> None:
    args = ["aws", "trust-policy", "--provider-arn", PROVIDER, *GOLDEN_CASES[case]]
    code, out, err = run_cli(capsys, *args, "--format", output_format)
    assert code == 0, err
    check_golden(f"{case}.{'json' if output_format == 'json' else 'tf'}", out)


def test_golden_json_is_what_the_library_builds(capsys: pytest.CaptureFixture[str]) -> None:
    golden = json.loads((GOLDEN / "subject_repo_image_no_commands.json").read_text())
    assert golden == policy(SUBJECT_WAY, **REPO_IMAGE_NO_COMMANDS)


# --- the issuer's settings -------------------------------------------------------------


def test_settings_come_from_the_issuers_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("IDP_"):
            monkeypatch.delenv(name)
    base = [
        "aws",
        "trust-policy",
        "--provider-arn",
        PROVIDER,
        "--repo",
        "octo-org/octo-repo",
        "--image",
        "golang",
    ]
    code, _, err = run_cli(capsys, *base)
    assert code == 1
    assert "IDP_SUBJECT_CLAIMS=repo,ref,event,image_name" in err

    # IDP_AWS_SESSION_TAGS_FILE works as for the issuer, through load_settings.
    (tmp_path / "tags").write_text("image_name\n")
    monkeypatch.setenv("IDP_AWS_SESSION_TAGS_FILE", str(tmp_path / "tags"))
    code, out, err = run_cli(capsys, *base)
    assert code == 0, err
    assert (
        json.loads(out)["Statement"][0]["Condition"]["StringEquals"]["aws:RequestTag/image_name"]
        == "golang"
    )

    # A flag overrides the setting.
    monkeypatch.setenv("IDP_SUBJECT_CLAIMS", "repo,ref,event,image_name")
    code, out, err = run_cli(capsys, *base, "--session-tags", "")
    assert code == 0, err
    document = json.loads(out)
    assert document["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert document["Statement"][0]["Condition"]["StringLike"][f"{URL}:sub"] == (
        "repo:octo-org/octo-repo:ref:*:event:*:image_name:golang"
    )


# --- refusals --------------------------------------------------------------------------

REFUSALS = [
    ("no repo", IssuerShape(), {}, ["no --repo", "--allow-any-repo"]),
    ("any org", IssuerShape(), {"repo": "*/octo-repo"}, ["wildcard in the organization"]),
    ("org prefix", IssuerShape(), {"repo": "octo-*/x"}, ["wildcard in the organization"]),
    ("not org/repo", IssuerShape(), {"repo": "octo-org"}, ["not ORG/REPO"]),
    ("colon in repo", IssuerShape(), {"repo": "octo-org/x:y"}, ["not ORG/REPO"]),
    (
        "image nowhere",
        IssuerShape(),
        {"repo": "o/r", "image": "golang"},
        [
            "--image needs image_name",
            "IDP_AWS_SESSION_TAGS=image_name",
            "IDP_SUBJECT_CLAIMS=repo,ref,event,image_name",
            "sts:TagSession",
        ],
    ),
    (
        "tag without image_tag",
        IssuerShape(subject_claims=("repo", "image_name")),
        {"repo": "o/r", "image": "golang:1.22"},
        ["needs image_tag"],
    ),
    (
        "commands nowhere",
        IssuerShape(session_tags=("image_name",)),
        {"repo": "o/r", "image": "golang", "commands": False},
        ["--commands needs commands", "IDP_AWS_SESSION_TAGS=image_name,commands"],
    ),
    ("digest", SUBJECT_WAY, {"repo": "o/r", "image": "golang@sha256:abc"}, ["digest"]),
    ("empty tag", SUBJECT_WAY, {"repo": "o/r", "image": "golang:"}, ["ends with ':'"]),
    ("policy variable", IssuerShape(), {"repo": "o/${aws:username}"}, ["'$'"]),
    ("unknown claim", IssuerShape(), {"repo": "o/r", "claims": (("color", "red"),)}, ["color"]),
    (
        "claim twice",
        SUBJECT_WAY,
        {"repo": "o/r", "image": "golang", "claims": (("image_name", "x"),)},
        ["asked for twice"],
    ),
    (
        "a pattern that matches a claim name",
        IssuerShape(subject_claims=("repo", "ref", "event", "pull_fork")),
        {"repo": "o/r", "event": "pull*"},
        ["'pull_fork'", "more specific"],
    ),
    ("empty audience", IssuerShape(), {"repo": "o/r", "audience": ""}, ["--audience"]),
]


@pytest.mark.parametrize(
    ("name", "shape", "wanted", "fragments"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusals(
    name: str, shape: IssuerShape, wanted: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(IdpError) as error:
        build_trust_policy(PROVIDER, Wanted(**wanted), shape)
    for fragment in fragments:
        assert fragment in error.value.description


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iam::123:oidc-provider/x",
        "arn:aws:iam::123456789012:role/x",
        "ci.example.com/_services/token",
    ],
)
def test_bad_provider_arns(arn: str) -> None:
    with pytest.raises(IdpError, match="not an IAM OIDC provider ARN"):
        build_trust_policy(arn, Wanted(repo="o/r"), IssuerShape())


@pytest.mark.parametrize(
    ("subject_claims", "session_tags", "fragment"),
    [
        (("ref", "repo"), (), "start with repo"),
        (("repo", "colour"), (), "unknown claim"),
        (("repo", "ref", "ref"), (), "repeat"),
        (("repo",), ("nope",), "unknown claim"),
    ],
)
def test_bad_issuer_shapes(
    subject_claims: tuple[str, ...], session_tags: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(IdpError, match=fragment):
        IssuerShape(subject_claims, session_tags)


def test_refusals_through_the_cli_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "aws",
        "trust-policy",
        "--provider-arn",
        PROVIDER,
        "--subject-claims",
        "repo",
        "--session-tags",
        "",
    )
    assert code == 1 and out == ""
    assert err.startswith("idp: error: no --repo") and err.count("\n") == 1

    code, _, err = run_cli(capsys, "aws", "trust-policy", "--repo", "o/r")
    assert code == 2 and "--provider-arn" in err


# --- image patterns and session tag values ---------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("golang", {"image_name": "golang"}),
        ("golang:*", {"image_name": "golang"}),
        ("golang:1.22*", {"image_name": "golang", "image_tag": "1.22*"}),
        ("registry:5000/team/app", {"image_name": "registry:5000/team/app"}),
        (
            "registry:5000/team/app:1.2",
            {"image_name": "registry:5000/team/app", "image_tag": "1.2"},
        ),
        ("ghcr.io/octo-org/*", {"image_name": "ghcr.io/octo-org/*"}),
        ("*:1.22", {"image_tag": "1.22"}),
    ],
)
def test_image_patterns(image: str, expected: dict[str, str]) -> None:
    assert Wanted(repo="o/r", image=image).patterns() == {"repo": "o/r", **expected}


@pytest.mark.parametrize(
    "value",
    [
        "octo-org/octo-repo",
        "registry:5000/team/app",
        "a b_c.d:e/f=g+h-i@j",
        "café\u00a0ü",  # Unicode letters and spaces are allowed
        "x" * 256,
    ],
)
def test_a_tag_pattern_is_written_verbatim(value: str) -> None:
    document = policy(IssuerShape(("repo",), ("step",)), repo="o/r", claims=(("step", value),))
    assert document["Statement"][0]["Condition"]["StringEquals"]["aws:RequestTag/step"] == value


def test_tag_patterns_keep_their_wildcards() -> None:
    document = policy(IssuerShape(("repo",), ("ref",)), repo="o/r", ref="refs/heads/feat-*")
    assert document["Statement"][0]["Condition"]["StringLike"]["aws:RequestTag/ref"] == (
        "refs/heads/feat-*"
    )


@pytest.mark.parametrize(
    ("wanted", "flag", "problem"),
    [
        # The example: it wrote `refs/heads/release_1`, which three branches satisfied.
        ({"ref": "refs/heads/release!1"}, "--ref", "'!'"),
        ({"ref": "refs/heads/feat#*"}, "--ref", "'#'"),
        ({"claims": (("step", "build & push"),)}, "--claim step", "'&'"),
        ({"claims": (("step", "x" * 257),)}, "--claim step", "over 256 characters"),
        ({"claims": (("step", "x" * 250 + "???????"),)}, "--claim step", "over 256 characters"),
    ],
)
def test_a_tag_condition_no_token_could_meet_verbatim_is_refused(
    wanted: dict[str, Any], flag: str, problem: str
) -> None:
    shape = IssuerShape(("repo",), ("ref", "step"))
    with pytest.raises(TrustPolicyError) as info:
        build_trust_policy(PROVIDER, Wanted(repo="o/r", **wanted), shape)
    message = info.value.description
    assert message.startswith(flag) and problem in message and "\n" not in message
    assert "IDP_SUBJECT_CLAIMS" in message


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("image_name", True),
        ("team:ci/x=y+z-1@2", True),
        ("", False),
        ("a#b", False),
        ("k" * 128, True),
        ("k" * 129, False),
    ],
)
def test_tag_key_pattern(key: str, valid: bool) -> None:
    assert (TAG_KEY_PATTERN.fullmatch(key) is not None) is valid
