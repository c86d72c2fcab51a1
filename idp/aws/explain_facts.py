"""The facts `idp aws explain` judges, fetched: the role and provider from IAM, the JWKS and
today's certificate chain from the issuer.

A thin layer over boto3 and the discovery/TLS code `idp thumbprint` uses; the judging is
`idp.aws.explain`'s.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from idp.aws.errors import AwsApiError, ThumbprintError
from idp.aws.explain import ProviderFacts
from idp.aws.iam import aws_errors, error_code
from idp.aws.thumbprint import TlsOptions, _verifying_context, fetch_discovery, issuer_thumbprints

PERMISSIONS = "iam:GetRole, iam:GetOpenIDConnectProvider and iam:ListOpenIDConnectProviders"
ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?:[\w+=,.@/-]*/)?"
    r"(?P<name>[\w+=,.@-]{1,64})"
)
MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True)
class Role:
    arn: str
    policy: Any
    max_session_duration: int | None


def parse_role_arn(arn: str) -> re.Match[str]:
    match = ROLE_ARN.fullmatch(arn.strip())
    if match is None:
        raise ValueError(
            f"--role-arn {arn!r} is not a role ARN: give "
            "arn:aws:iam::<12-digit account>:role/<name>"
        )
    return match


def provider_arn_for(iss: str, account: str, partition: str = "aws") -> str:
    """The ARN `idp aws register` creates (and STS looks up) for tokens with this `iss`."""
    stored = iss.split("://", 1)[1] if "://" in iss else iss
    return f"arn:{partition}:iam::{account}:oidc-provider/{stored}"


def read_policy_document(raw: Any) -> Any:
    """A trust policy as IAM hands it out: a dict, JSON text, or URL-encoded JSON text."""
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("%7B") or text.startswith("%7b"):
            text = urllib.parse.unquote(text)
        return json.loads(text)
    return raw


def read_role(iam: Any, arn: str) -> Role:
    name = parse_role_arn(arn).group("name")  # checked by the caller
    with aws_errors(f"read the IAM role {name}", PERMISSIONS):
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except ClientError as exc:
            if error_code(exc) == "NoSuchEntity":
                raise AwsApiError(
                    f"IAM has no role {name} in this account: check --role-arn and the AWS "
                    "credentials' account (`aws sts get-caller-identity`)"
                ) from None
            raise
    duration = role.get("MaxSessionDuration")
    return Role(
        arn=str(role.get("Arn", arn)),
        policy=read_policy_document(role.get("AssumeRolePolicyDocument")),
        max_session_duration=int(duration) if duration is not None else None,
    )


def read_provider(iam: Any, arn: str) -> ProviderFacts:
    """The provider STS would use, or one marked unregistered with the URLs IAM does have."""
    with aws_errors("read the IAM OIDC provider", PERMISSIONS):
        try:
            answer = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            listing = iam.list_open_id_connect_providers().get("OpenIDConnectProviderList", [])
            wanted = arn.partition(":oidc-provider/")[2].lower().rstrip("/")
            near = []
            for entry in listing:
                url = str(entry.get("Arn", "")).partition(":oidc-provider/")[2]
                host = url.split("/", 1)[0].lower()
                if url.lower().rstrip("/") == wanted or host == wanted.split("/", 1)[0]:
                    near.append(url)
            return ProviderFacts(arn=arn, registered=False, source="iam", near_misses=tuple(near))
    return ProviderFacts(
        arn=arn,
        client_ids=tuple(str(c) for c in answer.get("ClientIDList", [])),
        thumbprints=tuple(str(t).lower() for t in answer.get("ThumbprintList", [])),
        source="iam",
    )


def fetch_jwks(iss: str, options: TlsOptions) -> dict[str, Any]:
    """The issuer's JWKS through its discovery document, as STS fetches it."""
    discovery = fetch_discovery(iss, options)
    jwks_uri = str(discovery["jwks_uri"])
    if not jwks_uri.startswith("https://"):
        raise ThumbprintError(f"the jwks_uri {jwks_uri!r} is not https: AWS would not fetch it")
    request = urllib.request.Request(jwks_uri, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(  # noqa: S310 - https, checked above
            request, timeout=options.timeout, context=_verifying_context(options)
        ) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise ThumbprintError(f"{jwks_uri} could not be read ({exc})") from None
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ThumbprintError(f'{jwks_uri} is not a JWKS ({{"keys": [...]}})')
    return document


def chain_thumbprints(iss: str, options: TlsOptions) -> tuple[str, ...]:
    return issuer_thumbprints(iss, options).thumbprints
