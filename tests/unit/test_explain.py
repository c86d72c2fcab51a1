"""`idp aws explain`'s evaluator: a table of what AWS documents and what its users hit.

Each row is a trust policy, a token (claims and header changed from a valid one), the verdict
AWS would give and the check that decides it. The expectations follow AWS's documentation of
AssumeRoleWithWebIdentity and of IAM's condition operators, not the code under test:

- absent key: positive operators false, negated operators (`StringNotEquals`, `StringNotLike`)
  true, `...IfExists` true, `Null: true` true;
- `ForAllValues:` true on an absent key, `ForAnyValue:` false;
- `*`/`?` are wildcards only in `StringLike`; values of one key are ORed, keys ANDed;
- STS puts only `aud`, `sub`, `amr`, `azp` of the token in the request context, plus session
  tags as `aws:RequestTag/K` and `aws:TagKeys`, which also require `sts:TagSession`;
- an explicit Deny beats any Allow; tokens are accepted up to 5 minutes past `exp`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from idp.aws.explain import Facts, ProviderFacts, SessionRequest, explain
from tests.support import run_cli as run

NOW = 1_700_000_000
URL = "ci.example.com/_services/token"
ISS = f"https://{URL}"
ARN = f"arn:aws:iam::123456789012:oidc-provider/{URL}"
GITHUB_ARN = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
SUB = "repo:octo-org/octo-repo:ref:refs/heads/main:event:push"
ASSUME = "sts:AssumeRoleWithWebIdentity"
TAGS = "https://aws.amazon.com/tags"

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
OTHER_RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, other key
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
JWKS = {"keys": [RSA.as_dict(private=False), EC.as_dict(private=False)]}


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": SUB,
        "aud": "sts.amazonaws.com",
        "exp": NOW + 300,
        "iat": NOW,
        "nbf": NOW,
        "repo": "octo-org/octo-repo",
        "image": "golang:1.22",
        "commands": "false",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def tagged(**tags: str) -> dict[str, Any]:
    return {TAGS: {"principal_tags": {k: [v] for k, v in tags.items()}}}


def mint(payload: dict[str, Any], header: dict[str, Any] | None = None, key: Any = RSA) -> str:
    alg = "ES256" if isinstance(key, ECKey) else "HS256" if isinstance(key, OctKey) else "RS256"
    head = {"alg": alg, "kid": key.kid, **(header or {})}
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(head, payload, key, algorithms=[head["alg"]])


def allow(
    condition: dict[str, Any] | None = None,
    action: Any = ASSUME,
    principal: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Federated": ARN} if principal is None else principal,
        "Action": action,
        **extra,
    }
    if condition is not None:
        statement["Condition"] = condition
    return statement


def deny(condition: dict[str, Any], action: Any = ASSUME) -> dict[str, Any]:
    return {"Effect": "Deny", "Principal": "*", "Action": action, "Condition": condition}


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


PINNED = {"StringEquals": {f"{URL}:aud": "sts.amazonaws.com", f"{URL}:sub": SUB}}


def cond(name: str, key: str, index: int = 1) -> str:
    return f"policy.{index}.condition.{name}.{key}"


@dataclass
class Case:
    id: str
    policy: dict[str, Any]
    verdict: str
    deciding: str | None
    claims: dict[str, Any] = field(default_factory=claims)
    header: dict[str, Any] = field(default_factory=dict)
    key: Any = field(default_factory=lambda: RSA)
    provider: ProviderFacts | None = None
    session: SessionRequest = field(default_factory=SessionRequest)
    token: str | None = None

    def facts(self) -> Facts:
        provider = self.provider or ProviderFacts(arn=ARN, client_ids=("sts.amazonaws.com",))
        token = self.token or mint(self.claims, self.header, self.key)
        return Facts(
            token=token,
            policy=self.policy,
            provider=provider,
            now=NOW,
            jwks=JWKS,
            session=self.session,
        )


ESCAPED_SUB = SUB + ":image_name:registry%3A5000/team/app"
VELA_SEED = policy(
    allow(
        {
            "StringLike": {f"{URL}:sub": "repo:octo-org/octo-repo:*", f"{URL}:image": "golang:*"},
            "StringEquals": {f"{URL}:aud": "sts.amazonaws.com", f"{URL}:commands": False},
        }
    )
)

CASES = [
    # --- the token ---------------------------------------------------------------------
    Case("github-style pinned sub and aud", policy(allow(PINNED)), "allowed", None),
    Case(
        "expired beyond the 5-minute skew",
        policy(allow(PINNED)),
        "refused",
        "token.exp",
        claims=claims(exp=NOW - 301),
    ),
    Case(
        "expired within the skew",
        policy(allow(PINNED)),
        "allowed",
        None,
        claims=claims(exp=NOW - 200),
    ),
    Case(
        "not valid before, beyond the skew",
        policy(allow(PINNED)),
        "refused",
        "token.nbf",
        claims=claims(nbf=NOW + 600),
    ),
    Case(
        "issued in the future",
        policy(allow(PINNED)),
        "refused",
        "token.iat",
        claims=claims(iat=NOW + 600),
    ),
    Case("unknown kid", policy(allow(PINNED)), "refused", "token.kid", header={"kid": "gone"}),
    Case("no kid", policy(allow(PINNED)), "refused", "token.kid", header={"kid": None}),
    Case(
        "signed by another key under a published kid",
        policy(allow(PINNED)),
        "refused",
        "token.signature",
        key=OTHER_RSA,
    ),
    Case(
        "HS256 is not an alg AWS accepts",
        policy(allow(PINNED)),
        "refused",
        "token.alg",
        key=OctKey.import_key("a-shared-secret-of-32-bytes-long!", {"kid": "rsa-1"}),
    ),
    Case("ES256 against the EC key", policy(allow(PINNED)), "allowed", None, key=EC),
    Case(
        "iss over http",
        policy(allow(PINNED)),
        "refused",
        "token.iss",
        claims=claims(iss=f"http://{URL}"),
    ),
    Case(
        "iss with a port",
        policy(allow(PINNED)),
        "refused",
        "token.iss",
        claims=claims(iss="https://ci.example.com:8443/_services/token"),
    ),
    Case(
        "a token over 20,000 characters",
        policy(allow(PINNED)),
        "refused",
        "token.format",
        claims=claims(padding="x" * 20000),
    ),
    Case("no sub claim", policy(allow(PINNED)), "refused", "token.claims", claims=claims(sub=None)),
    # --- the provider ------------------------------------------------------------------
    Case(
        "wrong audience: not a client ID of the provider",
        policy(allow(PINNED)),
        "refused",
        "provider.audience",
        claims=claims(aud="api://something-else"),
    ),
    Case(
        "several audiences, none a client ID",
        policy(allow(PINNED)),
        "refused",
        "provider.audience",
        claims=claims(aud=["a", "b"]),
    ),
    Case(
        "several audiences, one is the client ID and the condition's",
        policy(allow(PINNED)),
        "allowed",
        None,
        claims=claims(aud=["other.example.com", "sts.amazonaws.com"]),
    ),
    Case(
        "azp is what is compared with the client IDs",
        policy(allow(PINNED)),
        "allowed",
        None,
        claims=claims(aud="other.example.com", azp="sts.amazonaws.com"),
    ),
    Case(
        "trailing slash in the provider",
        policy(allow(PINNED, principal={"Federated": ARN + "/"})),
        "refused",
        "provider.registered",
        provider=ProviderFacts(arn=ARN + "/", client_ids=("sts.amazonaws.com",)),
    ),
    Case(
        "the provider is registered for another path",
        policy(allow(PINNED)),
        "refused",
        "provider.registered",
        provider=ProviderFacts(
            arn="arn:aws:iam::123456789012:oidc-provider/ci.example.com",
            client_ids=("sts.amazonaws.com",),
        ),
    ),
    Case(
        "no provider registered at all",
        policy(allow(PINNED)),
        "refused",
        "provider.registered",
        provider=ProviderFacts(arn=ARN, registered=False),
    ),
    # --- principal and action ----------------------------------------------------------
    Case(
        "another provider as principal",
        policy(allow(PINNED, principal={"Federated": GITHUB_ARN})),
        "refused",
        "policy.1.principal",
    ),
    Case("Principal *", policy(allow(PINNED, principal="*")), "allowed", None),
    Case(
        "sts:AssumeRole is not AssumeRoleWithWebIdentity",
        policy(allow(PINNED, action="sts:AssumeRole")),
        "refused",
        "policy.1.action",
    ),
    Case("sts:Assume* covers it", policy(allow(PINNED, action="sts:Assume*")), "allowed", None),
    Case(
        "action names ignore case",
        policy(allow(PINNED, action="STS:assumerolewithwebidentity")),
        "allowed",
        None,
    ),
    Case(
        "NotAction sts:AssumeRole",
        {"Version": "2012-10-17", "Statement": [{**allow(PINNED), "NotAction": "sts:AssumeRole"}]},
        "allowed",
        None,
    ),
    # --- claims AWS never evaluates (the seeds) ----------------------------------------
    Case(
        "Vela's seed policy: image and commands",
        VELA_SEED,
        "refused",
        cond("StringLike", f"{URL}:image"),
    ),
    Case(
        "a commands condition alone",
        policy(
            allow({"StringEquals": {f"{URL}:aud": "sts.amazonaws.com", f"{URL}:commands": "false"}})
        ),
        "refused",
        cond("StringEquals", f"{URL}:commands"),
    ),
    Case(
        "IfExists on a claim AWS never sees admits everything",
        policy(allow({**PINNED, "StringLikeIfExists": {f"{URL}:image": "golang:*"}})),
        "allowed",
        None,
    ),
    Case(
        "StringNotEquals on an absent key is true",
        policy(allow({**PINNED, "StringNotEquals": {f"{URL}:image": "evil"}})),
        "allowed",
        None,
    ),
    Case(
        "another provider's key is absent",
        policy(allow({"StringEquals": {"token.actions.githubusercontent.com:sub": SUB}})),
        "refused",
        cond("StringEquals", "token.actions.githubusercontent.com:sub"),
    ),
    # --- string operators --------------------------------------------------------------
    Case(
        "StringLike with *",
        policy(allow({"StringLike": {f"{URL}:sub": "repo:octo-org/octo-repo:*"}})),
        "allowed",
        None,
    ),
    Case(
        "StringLike with ?",
        policy(allow({"StringLike": {f"{URL}:sub": "repo:octo-org/octo-rep?:*"}})),
        "allowed",
        None,
    ),
    Case(
        "StringEquals with a wildcard never matches",
        policy(allow({"StringEquals": {f"{URL}:sub": "repo:octo-org/octo-repo:*"}})),
        "refused",
        cond("StringEquals", f"{URL}:sub"),
    ),
    Case(
        "StringLike for another repository",
        policy(allow({"StringLike": {f"{URL}:sub": "repo:octo-org/other:*"}})),
        "refused",
        cond("StringLike", f"{URL}:sub"),
    ),
    Case(
        "several values are ORed",
        policy(allow({"StringEquals": {f"{URL}:sub": ["repo:a/b:ref:x:event:y", SUB]}})),
        "allowed",
        None,
    ),
    Case(
        "several keys are ANDed",
        policy(allow({"StringEquals": {f"{URL}:sub": SUB, f"{URL}:aud": "other"}})),
        "refused",
        cond("StringEquals", f"{URL}:aud"),
    ),
    Case(
        "several operators are ANDed",
        policy(
            allow(
                {
                    "StringEquals": {f"{URL}:aud": "sts.amazonaws.com"},
                    "StringNotLike": {f"{URL}:sub": "repo:octo-org/*"},
                }
            )
        ),
        "refused",
        cond("StringNotLike", f"{URL}:sub"),
    ),
    Case(
        "StringEquals is case-sensitive",
        policy(allow({"StringEquals": {f"{URL}:sub": SUB.upper()}})),
        "refused",
        cond("StringEquals", f"{URL}:sub"),
    ),
    Case(
        "StringEqualsIgnoreCase",
        policy(allow({"StringEqualsIgnoreCase": {f"{URL}:sub": SUB.upper()}})),
        "allowed",
        None,
    ),
    Case(
        "StringNotEqualsIgnoreCase",
        policy(allow({"StringNotEqualsIgnoreCase": {f"{URL}:sub": SUB.upper()}})),
        "refused",
        cond("StringNotEqualsIgnoreCase", f"{URL}:sub"),
    ),
    Case(
        "condition keys ignore case",
        policy(allow({"StringEquals": {f"{URL.upper()}:SUB": SUB}})),
        "allowed",
        None,
    ),
    Case(
        "operator names do not ignore case",
        policy(allow({"stringEquals": {f"{URL}:sub": SUB}})),
        "refused",
        "policy.1.condition.stringEquals",
    ),
    Case(
        "a sub with %3A, pattern written with a raw ':'",
        policy(
            allow(
                {"StringLike": {f"{URL}:sub": "repo:octo-org/*:image_name:registry:5000/team/app"}}
            )
        ),
        "refused",
        cond("StringLike", f"{URL}:sub"),
        claims=claims(sub=ESCAPED_SUB),
    ),
    Case(
        "a sub with %3A, pattern written as idp aws trust-policy does",
        policy(
            allow(
                {
                    "StringLike": {
                        f"{URL}:sub": "repo:octo-org/*:image_name:registry%3A5000/team/app"
                    }
                }
            )
        ),
        "allowed",
        None,
        claims=claims(sub=ESCAPED_SUB),
    ),
    Case(
        "StringEqualsIfExists on a present key that differs",
        policy(allow({"StringEqualsIfExists": {f"{URL}:sub": "repo:x/y"}})),
        "refused",
        cond("StringEqualsIfExists", f"{URL}:sub"),
    ),
    # --- set operators, Null -----------------------------------------------------------
    Case(
        "ForAllValues on an absent amr is true",
        policy(allow({**PINNED, "ForAllValues:StringEquals": {f"{URL}:amr": "mfa"}})),
        "allowed",
        None,
    ),
    Case(
        "ForAnyValue on an absent amr is false",
        policy(allow({**PINNED, "ForAnyValue:StringEquals": {f"{URL}:amr": "mfa"}})),
        "refused",
        cond("ForAnyValue:StringEquals", f"{URL}:amr"),
    ),
    Case(
        "ForAnyValue:StringLike on a multivalued amr",
        policy(allow({**PINNED, "ForAnyValue:StringLike": {f"{URL}:amr": "auth*"}})),
        "allowed",
        None,
        claims=claims(amr=["pwd", "authenticated"]),
    ),
    Case(
        "ForAllValues with a value outside the set",
        policy(allow({**PINNED, "ForAllValues:StringEquals": {f"{URL}:amr": "pwd"}})),
        "refused",
        cond("ForAllValues:StringEquals", f"{URL}:amr"),
        claims=claims(amr=["pwd", "mfa"]),
    ),
    Case(
        "ForAllValues on aws:TagKeys inside the allowed set",
        policy(
            allow(
                {**PINNED, "ForAllValues:StringEquals": {"aws:TagKeys": ["repo", "image", "x"]}},
                action=[ASSUME, "sts:TagSession"],
            )
        ),
        "allowed",
        None,
        claims=claims(**tagged(repo="octo-org/octo-repo", image="golang")),
    ),
    Case(
        "ForAllValues on aws:TagKeys with a tag outside the set",
        policy(
            allow(
                {**PINNED, "ForAllValues:StringEquals": {"aws:TagKeys": ["repo"]}},
                action=[ASSUME, "sts:TagSession"],
            )
        ),
        "refused",
        cond("ForAllValues:StringEquals", "aws:TagKeys"),
        claims=claims(**tagged(repo="octo-org/octo-repo", image="golang")),
    ),
    Case(
        "Null true on an absent tag",
        policy(allow({**PINNED, "Null": {"aws:RequestTag/env": "true"}})),
        "allowed",
        None,
    ),
    Case(
        "Null false on an absent tag",
        policy(allow({**PINNED, "Null": {"aws:RequestTag/env": "false"}})),
        "refused",
        cond("Null", "aws:RequestTag/env"),
    ),
    # --- session tags ------------------------------------------------------------------
    Case(
        "sts:TagSession missing with a tags claim",
        policy(allow(PINNED)),
        "refused",
        "policy.tag_session",
        claims=claims(**tagged(image="golang")),
    ),
    Case(
        "sts:Assume* does not cover sts:TagSession",
        policy(allow(PINNED, action="sts:Assume*")),
        "refused",
        "policy.tag_session",
        claims=claims(**tagged(image="golang")),
    ),
    Case(
        "session tags with sts:TagSession and an aws:RequestTag condition",
        policy(
            allow(
                {**PINNED, "StringLike": {"aws:RequestTag/image": "golang*"}},
                action=[ASSUME, "sts:TagSession"],
            )
        ),
        "allowed",
        None,
        claims=claims(**tagged(image="golang")),
    ),
    Case(
        "sts:* covers both actions",
        policy(
            allow({**PINNED, "StringEquals": {"aws:RequestTag/image": "golang"}}, action="sts:*")
        ),
        "refused",
        cond("StringEquals", "aws:RequestTag/image"),
        claims=claims(**tagged(image="python")),
    ),
    # --- explicit Deny -----------------------------------------------------------------
    Case(
        "an explicit Deny beats the Allow",
        policy(allow(PINNED), deny({"StringLike": {f"{URL}:sub": "repo:octo-org/*"}})),
        "refused",
        "policy.2.deny",
    ),
    Case(
        "a Deny that does not match",
        policy(allow(PINNED), deny({"StringLike": {f"{URL}:sub": "repo:evil-org/*"}})),
        "allowed",
        None,
    ),
    Case(
        "a Deny on sts:TagSession refuses a tagged token",
        policy(
            allow(PINNED, action=[ASSUME, "sts:TagSession"]),
            deny({"Null": {"aws:RequestTag/image": "false"}}, action="sts:TagSession"),
        ),
        "refused",
        "policy.2.deny",
        claims=claims(**tagged(image="golang")),
    ),
    Case(
        "only a Deny",
        policy(deny({"StringEquals": {f"{URL}:sub": "x"}})),
        "refused",
        "policy.decision",
    ),
    # --- what cannot be judged offline -------------------------------------------------
    Case(
        "aws:SourceIp",
        policy(allow({**PINNED, "IpAddress": {"aws:SourceIp": "203.0.113.0/24"}})),
        "undecidable",
        cond("IpAddress", "aws:SourceIp"),
    ),
    Case(
        "a policy variable",
        policy(allow({"StringEquals": {f"{URL}:sub": "${aws:username}"}})),
        "undecidable",
        cond("StringEquals", f"{URL}:sub"),
    ),
    Case(
        "an unknown key beside a failing one is still a refusal",
        policy(
            allow(
                {
                    "StringEquals": {f"{URL}:sub": "repo:x/y"},
                    "IpAddress": {"aws:SourceIp": "203.0.113.0/24"},
                }
            )
        ),
        "refused",
        cond("StringEquals", f"{URL}:sub"),
    ),
    # --- the session -------------------------------------------------------------------
    Case(
        "duration above the role's maximum",
        policy(allow(PINNED)),
        "refused",
        "session.duration",
        session=SessionRequest(duration_seconds=7200, max_session_duration=3600),
    ),
    Case(
        "duration below 900",
        policy(allow(PINNED)),
        "refused",
        "session.duration",
        session=SessionRequest(duration_seconds=600),
    ),
    Case(
        "duration above 3600 when the role's maximum is not known",
        policy(allow(PINNED)),
        "undecidable",
        "session.duration",
        session=SessionRequest(duration_seconds=7200),
    ),
    Case(
        "a session name with a space",
        policy(allow(PINNED)),
        "refused",
        "session.name",
        session=SessionRequest(role_session_name="my build"),
    ),
    Case(
        "sts:RoleSessionName matched",
        policy(allow({**PINNED, "StringLike": {"sts:RoleSessionName": "build-*"}})),
        "allowed",
        None,
        session=SessionRequest(role_session_name="build-42"),
    ),
    Case(
        "sts:RoleSessionName without a session name given",
        policy(allow({**PINNED, "StringLike": {"sts:RoleSessionName": "build-*"}})),
        "undecidable",
        cond("StringLike", "sts:RoleSessionName"),
    ),
]


def test_the_table_is_big_enough_and_its_ids_unique() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_verdict_and_deciding_check(case: Case) -> None:
    report = explain(case.facts())
    assert report.verdict == case.verdict, report.to_text()
    assert report.deciding == case.deciding, report.to_text()
    marked = [c.check for c in report.checks if c.deciding]
    assert marked == ([case.deciding] if case.deciding else [])
    assert report.exit_code == {"allowed": 0, "refused": 1, "undecidable": 3}[case.verdict]


def test_every_check_is_reported_not_only_the_first_failure() -> None:
    report = explain(
        Case("x", VELA_SEED, "refused", None, claims=claims(exp=NOW - 1000, aud="wrong")).facts()
    )
    failing = [c.check for c in report.checks if c.status == "fail"]
    assert failing[:2] == ["token.exp", "provider.audience"]
    assert cond("StringLike", f"{URL}:image") in failing
    assert cond("StringEquals", f"{URL}:commands") in failing
    assert report.deciding == "token.exp"


def test_the_seed_conditions_name_the_claim_and_the_fix() -> None:
    report = explain(Case("x", VELA_SEED, "refused", None).facts())
    image = report.check(cond("StringLike", f"{URL}:image"))
    assert image.detail.startswith("never true: AWS does not evaluate the claim 'image'")
    assert "IDP_SUBJECT_CLAIMS" in image.fix and "IDP_AWS_SESSION_TAGS" in image.fix
    assert '"aws:RequestTag/image": "golang:*"' in image.fix
    commands = report.check(cond("StringEquals", f"{URL}:commands"))
    assert "--commands false" in commands.fix


def test_if_exists_on_an_unseen_claim_is_flagged_even_though_it_passes() -> None:
    case = next(c for c in CASES if c.id.startswith("IfExists on a claim"))
    check = explain(case.facts()).check(cond("StringLikeIfExists", f"{URL}:image"))
    assert check.status == "warn" and "constrains nothing" in check.detail


def test_for_all_values_on_an_absent_key_is_flagged() -> None:
    case = next(c for c in CASES if c.id == "ForAllValues on an absent amr is true")
    check = explain(case.facts()).check(cond("ForAllValues:StringEquals", f"{URL}:amr"))
    assert check.status == "warn" and "admits any token" in check.detail


def test_a_wildcard_in_string_equals_says_use_string_like() -> None:
    case = next(c for c in CASES if c.id == "StringEquals with a wildcard never matches")
    check = explain(case.facts()).check(cond("StringEquals", f"{URL}:sub"))
    assert "StringLike" in check.fix


def test_a_raw_colon_in_a_sub_pattern_says_write_percent_3a() -> None:
    case = next(c for c in CASES if "raw ':'" in c.id)
    check = explain(case.facts()).check(cond("StringLike", f"{URL}:sub"))
    assert "%3A" in check.fix


def test_the_request_context_holds_only_what_sts_takes_from_the_token() -> None:
    report = explain(Case("x", policy(allow(PINNED)), "allowed", None).facts())
    assert report.context == {f"{URL}:aud": ["sts.amazonaws.com"], f"{URL}:sub": [SUB]}


def test_without_a_jwks_the_signature_is_unknown_and_the_verdict_undecidable() -> None:
    facts = Case("x", policy(allow(PINNED)), "allowed", None).facts()
    report = explain(Facts(**{**facts.__dict__, "jwks": None, "jwks_error": "offline"}))
    assert report.verdict == "undecidable"
    assert report.check("token.signature").ok is None
    assert "--jwks" in report.check("token.kid").fix


# --- the command line ------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    import time

    now = int(time.time())
    paths = {
        "token": tmp_path / "token.jwt",
        "jwks": tmp_path / "jwks.json",
        "allow": tmp_path / "allow.json",
        "seed": tmp_path / "seed.json",
        "ip": tmp_path / "ip.json",
    }
    paths["token"].write_text(mint(claims(exp=now + 300, iat=now, nbf=now)) + "\n")
    paths["jwks"].write_text(json.dumps(JWKS))
    paths["allow"].write_text(json.dumps(policy(allow(PINNED))))
    paths["seed"].write_text(json.dumps(VELA_SEED))
    paths["ip"].write_text(
        json.dumps(policy(allow({**PINNED, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})))
    )
    return paths


@pytest.mark.parametrize(("policy_file", "code"), [("allow", 0), ("seed", 1), ("ip", 3)])
def test_exit_codes(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], policy_file: str, code: int
) -> None:
    result, out, err = run(
        capsys,
        "aws",
        "explain",
        "--token",
        str(files["token"]),
        "--trust-policy",
        str(files[policy_file]),
        "--jwks",
        str(files["jwks"]),
    )
    assert result == code, out + err
    assert "Traceback" not in out + err
    deciding = [line for line in out.splitlines() if line.startswith(">>")]
    assert len(deciding) == (0 if code == 0 else 1)


def test_json_output(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    code, out, _ = run(
        capsys,
        "aws",
        "explain",
        "--token",
        str(files["token"]),
        "--trust-policy",
        str(files["seed"]),
        "--jwks",
        str(files["jwks"]),
        "--format",
        "json",
    )
    assert code == 1
    answer = json.loads(out)
    assert answer["allowed"] is False and answer["verdict"] == "refused"
    assert answer["deciding"] == cond("StringLike", f"{URL}:image")
    for check in answer["checks"]:
        assert {"check", "ok", "detail", "fix"} <= set(check)
    assert [c["check"] for c in answer["checks"] if c["deciding"]] == [answer["deciding"]]


def test_the_token_from_stdin_and_get_role_output(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    role = tmp_path / "role.json"
    role.write_text(
        json.dumps(
            {
                "Role": {
                    "AssumeRolePolicyDocument": policy(allow(PINNED)),
                    "MaxSessionDuration": 3600,
                }
            }
        )
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(files["token"].read_text()))
    code, out, _ = run(
        capsys,
        "aws",
        "explain",
        "--token",
        "-",
        "--trust-policy",
        str(role),
        "--jwks",
        str(files["jwks"]),
        "--duration-seconds",
        "7200",
    )
    assert code == 1
    assert ">> FAIL session.duration" in out and "up to 3600 s" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "exactly one of --role-arn ARN or --trust-policy FILE"),
        (
            ["--trust-policy", "POLICY", "--role-arn", "arn:aws:iam::123456789012:role/r"],
            "exactly one",
        ),
        (["--trust-policy", "MISSING"], "does not exist"),
        (["--trust-policy", "NOTJSON"], "is not JSON"),
        (["--trust-policy", "POLICY", "--jwks", "NOTJSON"], "is not JSON"),
        (["--role-arn", "deploy"], "is not a role ARN"),
        (["--trust-policy", "POLICY", "--account-id", "12"], "12-digit"),
        (
            ["--trust-policy", "POLICY", "--provider-arn", "arn:aws:iam::1:role/x"],
            "not an IAM OIDC provider ARN",
        ),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    tmp_path: Path,
    args: list[str],
    fragment: str,
) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    names = {
        "POLICY": str(files["allow"]),
        "MISSING": str(tmp_path / "nope.json"),
        "NOTJSON": str(tmp_path / "bad.json"),
    }
    argv = ["aws", "explain", "--token", str(files["token"]), *[names.get(a, a) for a in args]]
    if "--jwks" not in args and "--role-arn" not in args:
        argv += ["--jwks", str(files["jwks"])]
    code, out, err = run(capsys, *argv)
    assert code == 2, out + err
    assert err.startswith("idp: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert fragment in err


@pytest.mark.parametrize("content", ["", "not a token", '{"value": "x"}'])
def test_a_token_file_that_is_not_a_jwt(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, content: str
) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    code, _, err = run(
        capsys, "aws", "explain", "--token", str(path), "--trust-policy", str(files["allow"])
    )
    assert code == 2 and err.count("\n") == 1
    assert "idp token --audience" in err
