"""`idp token` and `idp aws credentials`: what a pipeline step runs.

Results go to stdout (the token, the variables to export); logs go to stderr, masked.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from joserfc import jws
from joserfc.errors import JoseError

from idp.config import MIN_LIFETIME
from idp.runner import ParameterError, chain
from idp.runner.client import fetch_id_token
from idp.runner.credentials import (
    PARAMETER_DIRS,
    PARAMETER_DIRS_ENV,
    PARAMETERS,
    Masker,
    masked_logging,
    resolve,
    run,
    write_private,
)


def register(cli: click.Group) -> None:
    """Add `token` and `aws credentials` (to the `aws` group if another module made one)."""
    cli.add_command(token)
    group = cli.commands.get("aws")
    if not isinstance(group, click.Group):
        group = click.Group(
            "aws", help="AWS: register the issuer, write trust policies, assume roles."
        )
        cli.add_command(group)
    group.add_command(credentials)


def decoded(id_token: str) -> str:
    """The header and claims of a JWT as indented JSON, read without verifying it: for people
    to look at, never to trust (`idp aws explain` verifies)."""
    try:
        compact = jws.extract_compact(id_token.strip().encode())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeDecodeError):
        raise click.ClickException(
            "that is not a JWT (three base64url parts joined by '.'): pass the ID token as "
            "`idp token` prints it"
        ) from None
    return json.dumps({"header": compact.protected, "claims": claims}, indent=2)


@click.command()
@click.option(
    "--audience",
    envvar="IDP_TOKEN_AUDIENCE",
    show_envvar=True,
    help="The audience (`aud`) the ID token is for, e.g. sts.amazonaws.com.  [required]",
)
@click.option(
    "--lifetime",
    type=click.IntRange(min=MIN_LIFETIME),
    envvar="IDP_TOKEN_LIFETIME",
    show_envvar=True,
    metavar="SECONDS",
    help=f"How long the ID token lives, {MIN_LIFETIME} s up to the issuer's IDP_TOKEN_MAX_TTL "
    "(as Buildkite's --lifetime).  [default: the issuer's IDP_TOKEN_TTL]",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the token to this file (mode 0600) instead of printing it.",
)
@click.option(
    "--claims",
    "show_claims",
    is_flag=True,
    help="Print the token's header and claims as JSON (not verified) instead of the token.",
)
@click.option(
    "--decode",
    "decode_file",
    type=click.File("r"),
    metavar="FILE|-",
    help="Print the header and claims of this token (a file, or - for stdin); fetches nothing.",
)
def token(
    audience: str | None,
    lifetime: int | None,
    output: str | None,
    show_claims: bool,
    decode_file: Any,
) -> None:
    """Fetch an ID token through the step's request variables.

    Reads VELA_ID_TOKEN_REQUEST_URL/_TOKEN or ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN, which the
    CI server injects into steps with `id_request: yes`.
    """
    if decode_file is not None:
        click.echo(decoded(decode_file.read()))
        return
    if not audience:
        raise click.UsageError(
            "Missing option '--audience': name the relying party, e.g. --audience sts.amazonaws.com"
        )
    masker = Masker()
    with masked_logging("info", masker):
        id_token = fetch_id_token(audience, lifetime=lifetime)
    if show_claims:
        click.echo(decoded(id_token))
        return
    if output:
        write_private(Path(output), id_token)
        click.echo(f"idp: wrote the ID token to {output}", err=True)
    else:
        click.echo(id_token)


def _parameter_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for parameter in reversed(PARAMETERS):
        default = f" [default: {parameter.default}]" if parameter.default else ""
        function = click.option(
            f"--{parameter.name.replace('_', '-')}",
            parameter.name,
            default=None,
            metavar="VALUE",
            help=f"{parameter.help}{default} Env: PARAMETER_{parameter.name.upper()}, "
            f"AWS_CREDENTIALS_{parameter.name.upper()}.",
        )(function)
    return function


@click.command(
    epilog=(
        "Sources, highest first: flags; files named after the parameter in "
        f"{' then '.join(PARAMETER_DIRS)} (folders: ${PARAMETER_DIRS_ENV}, colon separated); "
        "PARAMETER_<NAME>; AWS_CREDENTIALS_<NAME>."
    )
)
@_parameter_options
@click.option(
    "--source",
    type=click.Choice(chain.SOURCES),
    default="idp",
    envvar="IDP_AWS_CREDENTIALS_SOURCE",
    show_envvar=True,
    help="Where the credentials come from: idp (the step's request token), web-identity "
    "($AWS_WEB_IDENTITY_TOKEN_FILE), instance (the instance role, IMDSv2), or auto (the "
    "first of those the step has).",
)
def credentials(source: str, **flags: str | None) -> None:
    """Assume an AWS role with the step's ID token (Vela's aws-credentials plugin)."""
    picked = chain.pick(source, os.environ)
    try:
        settings = resolve(flags, os.environ, require_role=picked == "idp")
    except ParameterError as exc:
        raise click.UsageError(exc.description) from None
    if picked == "instance" and settings.script_format == "web_identity":
        raise click.UsageError(
            "script_format web_identity writes an ID token, and the instance role has none: "
            "use shell or credential_file"
        )
    if source == "auto" or picked != "idp":
        click.echo(f"idp: credentials from {chain.DESCRIPTIONS[picked]}", err=True)
    masker = Masker()
    try:
        with masked_logging(settings.log_level, masker):
            if picked == "idp":
                id_token: str | None = fetch_id_token(settings.audience)
                found = None
            elif picked == "web-identity":
                found, id_token = chain.web_identity(settings, os.environ)
            else:
                found, id_token = chain.instance(settings), None
            masker.add(id_token)
            outcome = run(settings, id_token, masker, found)
    except ParameterError as exc:
        raise click.UsageError(exc.description) from None
    for name, value in outcome.exports:
        click.echo(f"export {name}={shlex.quote(value)}")
    if outcome.arn and not outcome.exports:
        click.echo(outcome.arn)
