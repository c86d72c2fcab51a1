"""`idp thumbprint` and `idp aws register|trust-policy|create-role|explain`: the issuer, into AWS.

Results go to stdout (a thumbprint, an ARN, a policy) so they can be captured; what was done
and why goes to stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from idp.aws import DEFAULT_AUDIENCE
from idp.aws.explain import (
    Facts,
    ProviderFacts,
    SessionRequest,
    explain,
    federated_principals,
    unverified_claims,
)
from idp.aws.explain_facts import (
    chain_thumbprints,
    fetch_jwks,
    parse_role_arn,
    provider_arn_for,
    read_policy_document,
    read_provider,
    read_role,
)
from idp.aws.iam import iam_client
from idp.aws.register import (
    ProviderRequest,
    check_url_syntax,
    normalize_thumbprint,
    register_provider,
)
from idp.aws.role import RoleRequest, apply_role
from idp.aws.thumbprint import DEFAULT_TIMEOUT, TlsOptions, issuer_thumbprints
from idp.aws.trust_policy import (
    IssuerShape,
    TrustPolicy,
    Wanted,
    build_trust_policy,
    parse_claim_list,
)
from idp.config import load_settings
from idp.errors import IdpError
from idp.tokens.claims_file import load_claims_file
from idp.tokens.vocabulary import BUILTIN_POLICY

F = TypeVar("F", bound=Callable[..., Any])


def register(cli: click.Group) -> None:
    """Add `thumbprint` and the `aws` group to the `idp` program."""
    cli.add_command(thumbprint)
    cli.add_command(aws)


def _note(message: str) -> None:
    click.echo(f"idp: {message}", err=True)


# --- idp thumbprint --------------------------------------------------------------------


def _tls_options(function: F) -> F:
    options = [
        click.option(
            "--cafile",
            type=click.Path(exists=True, dir_okay=False),
            envvar="IDP_CAFILE",
            show_envvar=True,
            help="PEM bundle of the CA(s) to trust instead of the system's (a private CA).",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="Take the thumbprint even if the TLS chain does not verify.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_TIMEOUT,
            envvar="IDP_TIMEOUT",
            show_envvar=True,
            help="Seconds to wait for each connection.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command()
@click.argument("issuer_url", envvar="IDP_ISSUER")
@_tls_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "terraform"]),
    default="text",
    envvar="IDP_THUMBPRINT_FORMAT",
    show_envvar=True,
    help="text: one thumbprint a line; terraform: a thumbprint_list line; json: all details.",
)
def thumbprint(
    issuer_url: str, cafile: str | None, insecure: bool, timeout: float, output_format: str
) -> None:
    """Print the SHA-1 thumbprint(s) AWS pins for the issuer at ISSUER_URL ($IDP_ISSUER).

    Follows AWS's documented procedure: read the discovery document, open TLS to the host of
    its jwks_uri, take the last certificate the server sends (the top intermediate, or the
    root when sent) and print the SHA-1 of it, 40 lowercase hex characters. When the issuer
    and jwks_uri hosts differ, both thumbprints are printed: give AWS both. HTTPS_PROXY and
    NO_PROXY are honoured.
    """
    options = TlsOptions(cafile=cafile, insecure=insecure, timeout=timeout)
    result = issuer_thumbprints(issuer_url, options)
    if insecure:
        _note("warning: --insecure: the chain was not verified; confirm the thumbprint another way")
    if output_format == "json":
        click.echo(result.to_json())
        return
    if output_format == "terraform":
        click.echo(result.to_terraform())
        return
    for endpoint in result.endpoints:
        _note(
            f"{endpoint.role} host {endpoint.address} sent {endpoint.chain_length} "
            f"certificate(s); the last is {endpoint.subject}: {endpoint.thumbprint}"
        )
    for value in result.thumbprints:
        click.echo(value)


# --- idp aws ---------------------------------------------------------------------------


@click.group()
def aws() -> None:
    """Register the issuer with AWS IAM and write roles that trust it.

    AWS calls use boto3's usual configuration (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...,
    AWS_ENDPOINT_URL included).
    """


@aws.command("register")
@click.argument("issuer_url", envvar="IDP_ISSUER")
@click.option(
    "--audience",
    "audiences",
    multiple=True,
    default=[DEFAULT_AUDIENCE],
    envvar="IDP_AWS_AUDIENCE",
    show_envvar=True,
    help="Audience (client ID) the provider accepts; repeat for more.",
)
@click.option(
    "--thumbprint",
    "thumbprints",
    multiple=True,
    default=["auto"],
    metavar="auto|HEX",
    envvar="IDP_AWS_THUMBPRINT",
    show_envvar=True,
    help="A thumbprint to pin, or auto to compute it as `idp thumbprint` does; repeatable.",
)
@click.option(
    "--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag for the provider; repeatable."
)
@_tls_options
def register_command(
    issuer_url: str,
    audiences: tuple[str, ...],
    thumbprints: tuple[str, ...],
    tags: tuple[str, ...],
    cafile: str | None,
    insecure: bool,
    timeout: float,
) -> None:
    """Create or update the IAM OIDC provider for ISSUER_URL ($IDP_ISSUER); print its ARN.

    Idempotent: when the provider exists, missing audiences are added, the thumbprints are
    replaced by the ones given and missing tags are set; nothing is removed otherwise.
    """
    check_url_syntax(issuer_url)  # refuse what AWS refuses before touching the network
    values: list[str] = []
    discovered_issuer = None
    for value in thumbprints:
        if value.strip().lower() != "auto":
            values.append(normalize_thumbprint(value))
    if any(value.strip().lower() == "auto" for value in thumbprints):
        result = issuer_thumbprints(
            issuer_url, TlsOptions(cafile=cafile, insecure=insecure, timeout=timeout)
        )
        if insecure:
            _note("warning: --insecure: registering thumbprints of a chain that was not verified")
        discovered_issuer = result.issuer
        values += result.thumbprints
    request = ProviderRequest(
        url=issuer_url,
        audiences=tuple(dict.fromkeys(a.strip() for a in audiences)),
        thumbprints=tuple(dict.fromkeys(values)),
        tags=tuple(_key_value(tag, "--tag") for tag in tags),
        issuer=discovered_issuer,
    )
    change = register_provider(iam_client(), request)
    for line in change.summary():
        _note(line)
    click.echo(change.arn)


def _key_value(raw: str, flag: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key.strip():
        raise click.UsageError(f"{flag} {raw!r} is not KEY=VALUE")
    return key.strip(), value


def _policy_options(function: F) -> F:
    options = [
        click.option(
            "--provider-arn",
            required=True,
            envvar="IDP_AWS_PROVIDER_ARN",
            show_envvar=True,
            help="ARN of the IAM OIDC provider (`idp aws register` prints it).",
        ),
        click.option(
            "--repo",
            metavar="PATTERN",
            help="Repositories let in: ORG/REPO or ORG/* (AWS StringLike: * and ?); "
            "shorthand for --match repo=PATTERN.",
        ),
        click.option(
            "--match",
            "matches",
            multiple=True,
            metavar="CLAIM=GLOB",
            help="A claim of sub to match (e.g. project=aws-*; '*' requires the claim); "
            "picks the claims file's subject rule; repeatable.",
        ),
        click.option(
            "--claims-file",
            metavar="FILE",
            envvar="IDP_CLAIMS_FILE",
            show_envvar=True,
            show_default="none: the built-in claims",
            help="The issuer's claims file: its declared claims and subject rules.",
        ),
        click.option(
            "--image",
            metavar="PATTERN",
            help="Step images let in, NAME or NAME:TAG as written in the pipeline "
            "(matched against image_name, and image_tag when a tag is given).",
        ),
        click.option(
            "--commands",
            type=click.Choice(["true", "false"]),
            help="false: only steps without a commands section (plugins); true: only with.",
        ),
        click.option("--ref", metavar="PATTERN", help="Git refs let in, e.g. refs/heads/main."),
        click.option("--event", metavar="PATTERN", help="Build events let in, e.g. push."),
        click.option(
            "--claim",
            "claims",
            multiple=True,
            metavar="KEY=PATTERN",
            help="Any other claim to match (e.g. step=deploy); repeatable.",
        ),
        click.option(
            "--audience",
            default=DEFAULT_AUDIENCE,
            envvar="IDP_AWS_AUDIENCE",
            show_envvar=True,
            help="Audience the tokens are asked for.",
        ),
        click.option(
            "--subject-claims",
            metavar="LIST",
            envvar="IDP_SUBJECT_CLAIMS",
            show_envvar=True,
            show_default="the issuer's setting, else repo,ref,event",
            help="The issuer's IDP_SUBJECT_CLAIMS, comma separated.",
        ),
        click.option(
            "--session-tags",
            metavar="LIST",
            envvar="IDP_AWS_SESSION_TAGS",
            show_envvar=True,
            show_default="the issuer's setting, else none",
            help="The issuer's IDP_AWS_SESSION_TAGS, comma separated.",
        ),
        click.option(
            "--allow-any-repo",
            is_flag=True,
            help="Allow a policy that does not pin the repository (any pipeline could assume).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _trust_policy(
    provider_arn: str,
    repo: str | None,
    image: str | None,
    commands: str | None,
    ref: str | None,
    event: str | None,
    claims: tuple[str, ...],
    audience: str,
    subject_claims: str | None,
    session_tags: str | None,
    allow_any_repo: bool,
    matches: tuple[str, ...] = (),
    claims_file: str | None = None,
) -> TrustPolicy:
    policy = load_claims_file(claims_file) if claims_file else BUILTIN_POLICY
    if subject_claims is None or session_tags is None:
        # Run where the issuer is configured: its settings say how it builds sub and tags.
        env = dict(os.environ)
        if claims_file:
            env.pop("IDP_CLAIMS_FILE_FILE", None)
            env["IDP_CLAIMS_FILE"] = claims_file
        settings = load_settings(env)
        if subject_claims is None:
            subject_claims = ",".join(settings.subject_claims)
        if session_tags is None:
            session_tags = ",".join(settings.aws_session_tags)
    tags = parse_claim_list(session_tags)
    shape = IssuerShape(
        subject_claims=parse_claim_list(subject_claims),
        # The file's session_tags override IDP_AWS_SESSION_TAGS on the issuer: here too.
        session_tags=policy.session_tags if policy.session_tags is not None else tags,
        policy=policy,
    )
    wanted = Wanted(
        repo=repo,
        image=image,
        commands=None if commands is None else commands == "true",
        ref=ref,
        event=event,
        claims=tuple(_key_value(claim, "--claim") for claim in claims),
        matches=tuple(_key_value(match, "--match") for match in matches),
        audience=audience,
        allow_any_repo=allow_any_repo,
    )
    return build_trust_policy(provider_arn, wanted, shape)


@aws.command("trust-policy")
@_policy_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["json", "terraform"]),
    default="json",
    envvar="IDP_AWS_POLICY_FORMAT",
    show_envvar=True,
    help="json: the policy document; terraform: aws_iam_policy_document and aws_iam_role.",
)
@click.option(
    "--role-name",
    default="idp-pipeline",
    help="Role name in the Terraform output.",
)
def trust_policy_command(output_format: str, role_name: str, **policy: Any) -> None:
    """Print a role trust policy that lets in exactly the pipelines described.

    AWS evaluates only aud and sub of an ID token (plus session tags), so --image,
    --commands, --ref, --event and --claim are expressed through the issuer's subject
    (IDP_SUBJECT_CLAIMS) or session tags (IDP_AWS_SESSION_TAGS); when neither carries a
    claim asked for, the command refuses and names the setting to turn on.
    """
    policy_document = _trust_policy(**policy)
    if output_format == "terraform":
        click.echo(policy_document.to_terraform(role_name))
    else:
        click.echo(policy_document.to_json())


@aws.command("create-role")
@click.argument("name")
@_policy_options
@click.option("--description", default="", help="The role's description.")
@click.option(
    "--max-session-duration",
    type=click.IntRange(3600, 43200),
    default=3600,
    help="Longest session, seconds (for a new role).",
)
@click.option(
    "--policy-arn",
    "policy_arns",
    multiple=True,
    metavar="ARN",
    help="A permissions policy to attach; repeatable.",
)
def create_role_command(
    name: str,
    description: str,
    max_session_duration: int,
    policy_arns: tuple[str, ...],
    **policy: Any,
) -> None:
    """Create the IAM role NAME with the trust policy `trust-policy` prints; print its ARN.

    When the role exists, its trust policy is replaced and nothing else changes.
    """
    request = RoleRequest(
        name=name,
        policy=_trust_policy(**policy),
        description=description,
        max_session_duration=max_session_duration,
        policy_arns=policy_arns,
    )
    change = apply_role(iam_client(), request)
    for line in change.summary():
        _note(line)
    click.echo(change.arn)


# --- idp aws explain -------------------------------------------------------------------


def _read_input(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise click.UsageError(f"{what} {path!r} does not exist: give the file's path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"{what} {path!r} cannot be read ({exc})") from None


def _read_json(path: str, what: str, fix: str) -> Any:
    text = _read_input(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.UsageError(f"{what} {path!r} is not JSON ({exc}): {fix}") from None


def _read_token(path: str) -> str:
    token = _read_input(path, "--token").strip()
    fix = (
        "pass the ID token itself, e.g. from `idp token --audience sts.amazonaws.com "
        "--output token.jwt`"
    )
    if not token:
        raise click.UsageError(f"--token {path!r} is empty: {fix}")
    if token.count(".") != 2 or any(ch.isspace() for ch in token):
        raise click.UsageError(f"--token {path!r} does not hold a JWT: {fix}")
    return token


@aws.command("explain")
@click.option(
    "--token",
    "token_path",
    required=True,
    metavar="FILE|-",
    help="The ID token to judge (a file, or - for stdin).",
)
@click.option(
    "--role-arn",
    metavar="ARN",
    envvar="IDP_AWS_ROLE_ARN",
    show_envvar=True,
    help="Read the role's trust policy and the provider from IAM (iam:GetRole, "
    "iam:GetOpenIDConnectProvider).",
)
@click.option(
    "--trust-policy",
    "policy_path",
    metavar="FILE",
    help="Offline: judge this trust policy document (or `aws iam get-role` output).",
)
@click.option(
    "--provider-arn",
    metavar="ARN",
    help="Offline: the provider STS would use. Default: the ARN `idp aws register` creates for "
    "the token's iss in --account-id, else the policy's own Federated principal.",
)
@click.option("--account-id", metavar="ID", help="Offline: the role's 12-digit account.")
@click.option(
    "--client-id",
    "client_ids",
    multiple=True,
    metavar="A",
    help="Offline: a client ID (audience) the provider lists; repeatable. Default: the "
    "token's aud.",
)
@click.option(
    "--jwks",
    "jwks_path",
    metavar="FILE",
    help="Verify the signature with these keys instead of fetching the issuer's jwks_uri.",
)
@click.option(
    "--duration-seconds",
    type=click.IntRange(min=0),
    help="The DurationSeconds the caller will ask for (STS's default: 3600).",
)
@click.option("--role-session-name", metavar="NAME", help="The RoleSessionName the caller sends.")
@click.option(
    "--max-session-duration",
    type=click.IntRange(3600, 43200),
    help="Offline: the role's MaxSessionDuration (read from IAM with --role-arn).",
)
@click.option(
    "--thumbprint/--no-thumbprint",
    "check_thumbprint",
    default=True,
    help="With --role-arn: compare today's TLS chain with the provider's thumbprints.",
)
@_tls_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="IDP_EXPLAIN_FORMAT",
    show_envvar=True,
    help="text for people; json: {allowed, verdict, deciding, checks: [...]}.",
)
def explain_command(
    token_path: str,
    role_arn: str | None,
    policy_path: str | None,
    provider_arn: str | None,
    account_id: str | None,
    client_ids: tuple[str, ...],
    jwks_path: str | None,
    duration_seconds: int | None,
    role_session_name: str | None,
    max_session_duration: int | None,
    check_thumbprint: bool,
    cafile: str | None,
    insecure: bool,
    timeout: float,
    output_format: str,
) -> None:
    """Say whether AWS STS would let the token assume the role, and exactly why not.

    Walks every check STS makes, in its order: the token, the provider, each statement and
    condition of the trust policy, the session. Exit 0: AWS would allow; 1: it would refuse;
    2: usage error; 3: the verdict depends on a key that cannot be judged here (e.g.
    aws:SourceIp).
    """
    if (role_arn is None) == (policy_path is None):
        raise click.UsageError("give exactly one of --role-arn ARN or --trust-policy FILE")
    if role_arn is not None and (provider_arn or account_id or client_ids or max_session_duration):
        raise click.UsageError(
            "--provider-arn, --account-id, --client-id and --max-session-duration are for "
            "--trust-policy: with --role-arn they are read from IAM"
        )
    if account_id is not None and not re.fullmatch(r"\d{12}", account_id):
        raise click.UsageError(f"--account-id {account_id!r} is not a 12-digit AWS account ID")
    token = _read_token(token_path)
    claims = unverified_claims(token)
    iss = claims.get("iss") if isinstance(claims.get("iss"), str) else None
    options = TlsOptions(cafile=cafile, insecure=insecure, timeout=timeout)

    session = SessionRequest(
        duration_seconds=duration_seconds,
        role_session_name=role_session_name,
        max_session_duration=max_session_duration,
    )
    chain: tuple[str, ...] | None = None
    chain_error = None
    if role_arn is not None:
        try:
            match = parse_role_arn(role_arn)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        iam = iam_client()
        role = read_role(iam, role_arn)
        policy = role.policy
        session = replace(session, max_session_duration=role.max_session_duration)
        provider = None
        if iss is not None:
            arn = provider_arn_for(iss, match.group("account"), match.group("partition"))
            provider = read_provider(iam, arn)
        if check_thumbprint and iss is not None and provider is not None and provider.registered:
            try:
                chain = chain_thumbprints(iss, options)
            except IdpError as exc:
                chain_error = exc.description
    else:
        assert policy_path is not None
        policy = read_policy_document(
            _read_json(policy_path, "--trust-policy", "give the role's trust policy document")
        )
        if isinstance(policy, dict) and isinstance(policy.get("Role"), dict):
            # `aws iam get-role` output: take its policy and its session limit.
            role_document = policy["Role"]
            policy = read_policy_document(role_document.get("AssumeRolePolicyDocument"))
            if session.max_session_duration is None and role_document.get("MaxSessionDuration"):
                session = replace(
                    session, max_session_duration=int(role_document["MaxSessionDuration"])
                )
        provider = _offline_provider(policy, iss, provider_arn, account_id, client_ids, claims)
        role_arn = None

    jwks: Any = None
    jwks_error = None
    if jwks_path is not None:
        jwks = _read_json(jwks_path, "--jwks", 'give the issuer\'s JWKS, {"keys": [...]}')
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise click.UsageError(f'--jwks {jwks_path!r} is not a JWKS: give {{"keys": [...]}}')
    elif iss is None:
        jwks_error = "the token has no iss"
    else:
        try:
            jwks = fetch_jwks(iss, options)
        except IdpError as exc:
            jwks_error = exc.description

    facts = Facts(
        token=token,
        policy=policy,
        provider=provider,
        now=int(time.time()),
        jwks=jwks,
        jwks_error=jwks_error,
        session=session,
        role_arn=role_arn,
        chain_thumbprints=chain,
        thumbprint_error=chain_error,
    )
    report = explain(facts)
    click.echo(report.to_json() if output_format == "json" else report.to_text())
    sys.exit(report.exit_code)


def _offline_provider(
    policy: Any,
    iss: str | None,
    provider_arn: str | None,
    account_id: str | None,
    client_ids: tuple[str, ...],
    claims: dict[str, Any],
) -> ProviderFacts | None:
    arn = provider_arn
    if arn is None and account_id is not None and iss is not None:
        arn = provider_arn_for(iss, account_id)
    if arn is None:
        federated = [p for p in federated_principals(policy) if ":oidc-provider/" in p]
        arn = federated[0] if federated else None
    if arn is None:
        return None
    if ":oidc-provider/" not in arn:
        raise click.UsageError(
            f"--provider-arn {arn!r} is not an IAM OIDC provider ARN: give the ARN "
            "`idp aws register` prints"
        )
    audience = claims.get("aud")
    default = [audience] if isinstance(audience, str) else list(audience or [])
    return ProviderFacts(arn=arn.strip(), client_ids=tuple(client_ids or default))
