"""`idp thumbprint` and `idp aws register|trust-policy|create-role`: the issuer, into AWS.

Results go to stdout (a thumbprint, an ARN, a policy) so they can be captured; what was done
and why goes to stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from idp.aws import DEFAULT_AUDIENCE
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
            help="Repositories let in: ORG/REPO or ORG/* (AWS StringLike: * and ?).",
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
) -> TrustPolicy:
    if subject_claims is None or session_tags is None:
        # Run where the issuer is configured: its settings say how it builds sub and tags.
        settings = load_settings()
        if subject_claims is None:
            subject_claims = ",".join(settings.subject_claims)
        if session_tags is None:
            session_tags = ",".join(settings.aws_session_tags)
    shape = IssuerShape(
        subject_claims=parse_claim_list(subject_claims),
        session_tags=parse_claim_list(session_tags),
    )
    wanted = Wanted(
        repo=repo,
        image=image,
        commands=None if commands is None else commands == "true",
        ref=ref,
        event=event,
        claims=tuple(_key_value(claim, "--claim") for claim in claims),
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
