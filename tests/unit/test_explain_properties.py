"""Property (Hypothesis, derandomized): every trust policy `idp aws trust-policy` writes admits
exactly the tokens it was written for, as judged by `idp aws explain`.

Contexts, wanted patterns and the issuer's shape (which claims go into `sub`, which into
session tags) are generated; the oracle is written here from AWS's `StringLike` definition,
applied to the claim values themselves (not to `sub` or the tags, where the code under test
escapes and cleans them).
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey

from idp.aws.errors import TrustPolicyError
from idp.aws.explain import Facts, ProviderFacts, explain
from idp.aws.trust_policy import IssuerShape, Wanted, build_trust_policy
from idp.tokens.claims import build_subject, session_tags

NOW = 1_700_000_000
URL = "ci.example.com/_services/token"
ARN = f"arn:aws:iam::123456789012:oidc-provider/{URL}"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k"})
JWKS = {"keys": [KEY.as_dict(private=False)]}
AUDIENCES = ("sts.amazonaws.com", "deploy.example.com")


def like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


contexts = st.fixed_dictionaries(
    {
        "repo": st.sampled_from(["octo-org/octo-repo", "octo-org/app", "other-org/app"]),
        "ref": st.sampled_from(["refs/heads/main", "refs/heads/dev", "refs/tags/v1.0"]),
        "event": st.sampled_from(["push", "pull_request:opened", "tag"]),
        "image_name": st.sampled_from(["golang", "python", "registry:5000/team/app"]),
        "image_tag": st.sampled_from(["1.22", "1.21", "latest"]),
        "commands": st.sampled_from(["true", "false"]),
        "step": st.sampled_from(["deploy", "test"]),
    }
)
wanted = st.builds(
    Wanted,
    repo=st.sampled_from(["octo-org/octo-repo", "octo-org/*", "other-org/app", "octo-org/?pp"]),
    image=st.sampled_from(
        [None, "golang", "golang:1.2*", "registry:5000/team/app", "python:latest", "go*"]
    ),
    commands=st.sampled_from([None, True, False]),
    ref=st.sampled_from([None, "refs/heads/main", "refs/heads/*", "refs/tags/*"]),
    event=st.sampled_from([None, "push", "pull_request:*"]),
    claims=st.sampled_from([(), (("step", "deploy"),)]),
    audience=st.sampled_from(AUDIENCES),
)
EXTRA = ("image_name", "image_tag", "commands", "step")
shapes = st.builds(
    lambda sub, tags: IssuerShape(
        subject_claims=("repo", "ref", "event", *sub),
        session_tags=tuple(t for t in tags if t not in sub),
    ),
    st.lists(st.sampled_from(EXTRA), unique=True, max_size=4),
    st.lists(st.sampled_from(EXTRA), unique=True, max_size=4),
)


def token_for(context: dict[str, str], shape: IssuerShape, audience: str) -> str:
    claims: dict[str, Any] = {
        "iss": f"https://{URL}",
        "sub": build_subject(context, shape.subject_claims),
        "aud": audience,
        "exp": NOW + 300,
        "iat": NOW,
        "nbf": NOW,
        **context,
    }
    if shape.session_tags:
        claims["https://aws.amazon.com/tags"] = session_tags(context, shape.session_tags)
    return jwt.encode({"alg": "RS256", "kid": "k"}, claims, KEY)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(wanted, shapes, contexts, st.sampled_from(AUDIENCES), st.data())
def test_a_written_policy_admits_exactly_its_tokens(
    want: Wanted, shape: IssuerShape, context: dict[str, str], audience: str, data: Any
) -> None:
    try:
        policy = build_trust_policy(ARN, want, shape)
    except TrustPolicyError:
        assume(False)
        return
    if data.draw(st.booleans(), label="fit the context to the patterns"):
        # Half the contexts are made to match (a wildcard filled in), or nearly all would
        # be refusals.
        for claim, pattern in want.patterns().items():
            filler = data.draw(st.sampled_from(["", "x", "1.2.3"]), label=claim)
            context[claim] = pattern.replace("*", filler).replace("?", "a")
        audience = want.audience
    report = explain(
        Facts(
            token=token_for(context, shape, audience),
            policy=policy.document(),
            provider=ProviderFacts(arn=ARN, client_ids=AUDIENCES),
            now=NOW,
            jwks=JWKS,
        )
    )
    expected = audience == want.audience and all(
        like(pattern, context[claim]) for claim, pattern in want.patterns().items()
    )
    event("admitted" if expected else "refused")
    assert report.verdict == ("allowed" if expected else "refused"), report.to_text()
    if not expected:
        assert report.deciding is not None and report.deciding.startswith("policy.1.condition.")
