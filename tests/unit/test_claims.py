"""Build contexts, subjects, audiences, session tags and the ID token's claims."""

from __future__ import annotations

from typing import Any

import pytest

from idp.config import CONTEXT_CLAIMS, load_settings
from idp.errors import InvalidAudience, InvalidRequest
from idp.tokens.claims import (
    build_subject,
    context_claims,
    id_token_claims,
    validate_audiences,
)
from idp.tokens.context import FIELDS, parse_context
from idp.tokens.tags import UnsafeTagValue, verbatim_tag_value

CONTEXT: dict[str, Any] = {
    "repo": "octo-org/octo-repo",
    "ref": "refs/heads/main",
    "sha": "a" * 40,
    "event": "push",
    "branch": "main",
    "build_id": 1234,
    "build_number": 42,
    "actor": "octocat",
    "actor_scm_id": 583231,
    "pull_fork": False,
    "step": "deploy",
    "image": "registry:5000/team/app:1.2",
    "commands": False,
    "request": "yes",
}


def test_a_valid_context_parses() -> None:
    ctx = parse_context(CONTEXT)
    assert ctx.build_id == "1234" and ctx.org == "octo-org" and ctx.name == "octo-repo"


REQUIRED = [name for name, spec in FIELDS.items() if spec.required]
OPTIONAL = [name for name, spec in FIELDS.items() if not spec.required]


@pytest.mark.parametrize("field", REQUIRED)
def test_every_required_field_is_required(field: str) -> None:
    body = {k: v for k, v in CONTEXT.items() if k != field}
    with pytest.raises(InvalidRequest, match=field):
        parse_context(body)


@pytest.mark.parametrize("field", OPTIONAL)
def test_an_optional_field_gives_its_claim_only_when_present(field: str) -> None:
    assert field not in context_claims(parse_context(CONTEXT))
    assert context_claims(parse_context({**CONTEXT, field: "prod"}))[field] == "prod"
    with pytest.raises(InvalidRequest, match=field):
        parse_context({**CONTEXT, field: ""})


@pytest.mark.parametrize("field", list(FIELDS))
def test_every_field_refuses_a_wrong_type(field: str) -> None:
    wrong = "yes" if FIELDS[field].kind == "bool" else ["a list"]
    # (an optional field too: present, it must be of its kind)
    with pytest.raises(InvalidRequest, match=field):
        parse_context({**CONTEXT, field: wrong})


@pytest.mark.parametrize("field", [f for f, spec in FIELDS.items() if spec.kind == "text"])
@pytest.mark.parametrize("bad", ["a\nb", "a\x00b", "tab\there", "a\u2028b", "\x7f"])
def test_no_text_field_takes_a_control_character(field: str, bad: str) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse_context({**CONTEXT, field: bad})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("repo", "octo-repo"),
        ("repo", "a/b/c"),
        ("repo", "a:b/c"),
        ("repo", "org/.."),
        ("ref", "refs/heads/x:event:push"),
        ("branch", "main:event:push"),
        ("build_id", -1),
        ("build_id", "12a"),
        ("build_number", True),
        ("image", "Not An Image"),
        ("step", ""),
        ("sha", "x" * 129),
        ("ttl", 0),
        ("ttl", 86401),
        ("ttl", "60"),
        ("colour", "blue"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse_context({**CONTEXT, field: value})


ID_FIELDS = [name for name, spec in FIELDS.items() if spec.kind == "id"]


@pytest.mark.parametrize("field", ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (5003, "5003"),
        ("5003", "5003"),
        (0, "0"),
        ("0", "0"),
        ("05003", None),  # kept verbatim, `DELETE /builds/5003` did not close it
        ("00", None),
        ("0" * 20, None),
        ("+5003", None),
        ("5003 ", None),
        ("5_003", None),
        ("\u0665\u0660\u0660\u0663", None),  # Arabic-Indic digits
        (10**20 - 1, str(10**20 - 1)),
        (10**20, None),
    ],
)
def test_ids_are_canonical_decimals(field: str, value: Any, kept: str | None) -> None:
    if kept is None:
        with pytest.raises(InvalidRequest, match=f"{field}.*non-negative integer"):
            parse_context({**CONTEXT, field: value})
    else:
        assert getattr(parse_context({**CONTEXT, field: value}), field) == kept


@pytest.mark.parametrize(
    ("repo", "accepted"),
    [
        ("octo-org/octo-repo", True),
        ("org/.x", True),
        (".x/..x", True),
        ("org/...", True),
        ("../x", False),
        ("x/..", False),
        ("./x", False),
        ("x/.", False),
        ("./.", False),
        ("../..", False),
        (".", False),
        ("..", False),
        ("../../x", False),
    ],
)
def test_no_repo_part_is_dot_or_dot_dot(repo: str, accepted: bool) -> None:
    if accepted:
        assert parse_context({**CONTEXT, "repo": repo}).repo == repo
    else:
        with pytest.raises(InvalidRequest, match="repo"):
            parse_context({**CONTEXT, "repo": repo})


def test_a_context_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest):
        parse_context(["not", "an", "object"])


def test_claims_are_strings_as_vela_and_github_send_them() -> None:
    claims = context_claims(parse_context({**CONTEXT, "environment": "prod"}))
    assert set(claims) == set(CONTEXT_CLAIMS)
    assert all(isinstance(v, str) for v in claims.values())
    assert claims["commands"] == "false" and claims["pull_fork"] == "false"
    assert claims["image_name"] == "registry:5000/team/app" and claims["image_tag"] == "1.2"


@pytest.mark.parametrize(
    ("keys", "overrides", "subject"),
    [
        (("repo", "ref", "event"), {}, "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"),
        (
            ("repo", "ref", "event"),
            {"event": "pull_request:opened"},
            "repo:octo-org/octo-repo:ref:refs/heads/main:event:pull_request%3Aopened",
        ),
        (
            ("repo", "image_name", "commands"),
            {},
            "repo:octo-org/octo-repo:image_name:registry%3A5000/team/app:commands:false",
        ),
        (("repo", "step"), {"step": "100%:x"}, "repo:octo-org/octo-repo:step:100%25%3Ax"),
    ],
)
def test_subject_is_built_githubs_way(
    keys: tuple[str, ...], overrides: dict[str, Any], subject: str
) -> None:
    claims = context_claims(parse_context({**CONTEXT, **overrides}))
    assert build_subject(claims, keys) == subject


def test_no_value_can_forge_another_segment_of_the_subject() -> None:
    keys = ("repo", "step", "event")
    honest = context_claims(parse_context({**CONTEXT, "step": "x", "event": "push"}))
    forged = context_claims(parse_context({**CONTEXT, "step": "x:event:push", "event": "tag"}))
    assert build_subject(honest, keys) != build_subject(forged, keys)
    assert ":event:push" not in build_subject(forged, keys).split(":step:")[1].split(":event:")[0]


@pytest.mark.parametrize(
    ("raw", "allowed", "result"),
    [
        (["sts.amazonaws.com"], None, ["sts.amazonaws.com"]),
        (["a", "b", "a"], None, ["a", "b"]),
        (["sts.amazonaws.com"], "sts.amazonaws.com,other", ["sts.amazonaws.com"]),
    ],
)
def test_good_audiences(raw: list[str], allowed: str | None, result: list[str]) -> None:
    env = {"IDP_AUDIENCES": allowed} if allowed else {}
    assert validate_audiences(raw, load_settings(env)) == result


@pytest.mark.parametrize(
    ("raw", "allowed"),
    [
        ([], None),
        ([""], None),
        (["a", ""], None),
        (["x" * 257], None),
        (["a,b"], None),
        (["a\nb"], None),
        ([" padded"], None),
        (["ünïcode"], None),
        ([str(i) for i in range(11)], None),
        (["evil.example.com"], "sts.amazonaws.com"),
    ],
)
def test_bad_audiences(raw: list[str], allowed: str | None) -> None:
    env = {"IDP_AUDIENCES": allowed} if allowed else {}
    with pytest.raises(InvalidAudience):
        validate_audiences(raw, load_settings(env))


def test_id_token_claims_follow_the_interface() -> None:
    settings = load_settings({"IDP_TOKEN_TTL": "600"})
    claims = id_token_claims(parse_context(CONTEXT), ["sts.amazonaws.com"], settings, 1000)
    assert claims["aud"] == "sts.amazonaws.com"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1000, 1000, 1600)
    assert claims["token_type"] == "ID" and claims["iss"] == settings.issuer
    assert "https://aws.amazon.com/tags" not in claims
    two = id_token_claims(parse_context(CONTEXT), ["a", "b"], settings, 1000)
    assert two["aud"] == ["a", "b"] and two["jti"] != claims["jti"]


def test_session_tags_carry_the_configured_claims_verbatim() -> None:
    settings = load_settings({"IDP_AWS_SESSION_TAGS": "image_name,commands,step"})
    ctx = parse_context({**CONTEXT, "step": "build + push @prod"})
    tags = id_token_claims(ctx, ["sts.amazonaws.com"], settings, 0)["https://aws.amazon.com/tags"]
    assert tags == {
        "principal_tags": {
            "image_name": ["registry:5000/team/app"],
            "commands": ["false"],
            "step": ["build + push @prod"],
        }
    }


@pytest.mark.parametrize(
    ("claim", "value", "problem"),
    [
        # Each of these was folded into `release_1`: a role for one admitted the others.
        ("ref", "refs/heads/release!1", "'!'"),
        ("ref", "refs/heads/release#1", "'#'"),
        ("ref", "refs/heads/release?1", "'?'"),
        ("step", "build & push (prod)", "'&'"),
        ("ref", "refs/heads/" + "x" * 250, "over 256 characters"),  # was cut to 256
    ],
)
def test_a_claim_no_session_tag_can_carry_verbatim_is_refused_at_mint_time(
    claim: str, value: str, problem: str
) -> None:
    settings = load_settings({"IDP_AWS_SESSION_TAGS": claim})
    overrides = {claim: value} if claim == "step" else {"ref": value, "branch": value[11:]}
    ctx = parse_context({**CONTEXT, **overrides})
    with pytest.raises(InvalidRequest) as info:
        id_token_claims(ctx, ["sts.amazonaws.com"], settings, 0)
    message = info.value.description
    assert info.value.status == 400 and info.value.code == "invalid_request"
    assert repr(claim) in message and problem in message
    assert "IDP_AWS_SESSION_TAGS" in message and "IDP_SUBJECT_CLAIMS" in message
    # Without it as a session tag (it may be in sub), the same build mints.
    assert "sub" in id_token_claims(ctx, ["sts.amazonaws.com"], load_settings({}), 0)


@pytest.mark.parametrize(
    "value",
    ["golang", "a b:c/d=e+f-g@h.i_j", "", "caf\u00e9\u00a0\u00fc", "x" * 256],
)
def test_a_value_aws_can_carry_is_its_own_tag(value: str) -> None:
    assert verbatim_tag_value(value) == value


@pytest.mark.parametrize("value", ["a&b", "x" * 257, "tab\there", "$(x)", "a*b"])
def test_a_value_aws_cannot_carry_is_never_folded(value: str) -> None:
    with pytest.raises(UnsafeTagValue):
        verbatim_tag_value(value)
