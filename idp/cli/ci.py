"""`idp ci open` and `idp ci close`: the CI server's side, for a CI that is not Vela.

A Jenkins shell step, a Woodpecker or Drone plugin, a deploy script: each opens a request token
for a step from its build context and hands the step the environment printed here; at the end
of the build it closes it. Results go to stdout; errors are one line on stderr.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from idp.ci import UsageError
from idp.ci.client import DEFAULT_TIMEOUT, Issuer, check_issuer, close_build, open_request_token
from idp.ci.client import read_secret as _read_secret
from idp.ci.step_env import BOOL_FIELDS, FORMATS, apply_sets, parse_context, render
from idp.config import DEFAULT_ISSUER
from idp.errors import ConfigError
from idp.tokens.claims_file import load_claims_file
from idp.tokens.context import ID_RULE, is_canonical_id

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def ci() -> None:
    """CI-server side, for any CI: open a step's request token, close a build.

    Both send the CI secret (IDP_CI_SECRET or IDP_CI_SECRET_FILE, as the issuer has it) to
    IDP_ISSUER. See docs/integrations.md for Jenkins, Woodpecker/Drone and deploy scripts.
    """
    # Retries (a 429 or 503 from the issuer) are told on stderr, as every `idp` note is.
    logger = logging.getLogger("idp.ci")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("idp: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def _issuer_options(function: F) -> F:
    options = [
        click.option(
            "--issuer",
            envvar="IDP_ISSUER",
            show_envvar=True,
            default=DEFAULT_ISSUER,
            help="The issuer URL, as the issuer's own IDP_ISSUER says.",
        ),
        click.option(
            "--secret-file",
            envvar="IDP_CI_SECRET_FILE",
            show_envvar=True,
            metavar="FILE",
            help="File holding the CI secret; without it, the secret is $IDP_CI_SECRET. "
            "Of several comma-separated secrets the first is sent.",
        ),
        click.option(
            "--cafile",
            type=click.Path(exists=True, dir_okay=False),
            envvar="IDP_CAFILE",
            show_envvar=True,
            help="PEM bundle of the CA(s) to trust for an https issuer instead of the system's.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(0.1, 300),
            default=DEFAULT_TIMEOUT,
            envvar="IDP_TIMEOUT",
            show_envvar=True,
            help="Seconds to wait for the issuer's answer.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    # The library says "usage" (a bad --set, a --cafile that is no PEM): exit 2, with the hint.
    try:
        yield
    except UsageError as exc:
        raise click.UsageError(exc.description) from None


def _issuer(issuer: str, secret_file: str | None, cafile: str | None, timeout: float) -> Issuer:
    # From the environment, IDP_CI_SECRET_FILE is read with IDP_CI_SECRET, as `idp serve`
    # reads them (both set is an error); only a --secret-file typed out overrides the other.
    ctx = click.get_current_context()
    explicit = ctx.get_parameter_source("secret_file") == ParameterSource.COMMANDLINE
    with _usage_errors():
        target = Issuer(
            url=check_issuer(issuer),
            secret=_read_secret(secret_file if explicit else None),
            cafile=cafile,
            timeout=timeout,
        )
    parts = urlsplit(target.url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        # Allowed (a cluster-internal Service is often plain http), never silently: the CI
        # secret opens request tokens for any repository.
        click.echo(
            f"idp: warning: the CI secret goes to {parts.hostname} over plain http; use the "
            "issuer's https URL unless this network is private to the CI server and the issuer",
            err=True,
        )
    return target


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_context(path: str) -> str:
    where = "(stdin)" if path == "-" else repr(path)
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8-sig") as handle:  # a BOM from Windows editors
            return handle.read()
    except FileNotFoundError:
        raise click.UsageError(f"--context {where} does not exist: give the file's path") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise click.UsageError(f"--context {where} cannot be read ({reason})") from None


@ci.command("open")
@click.option(
    "--context",
    "context_path",
    envvar="IDP_CI_CONTEXT",
    show_envvar=True,
    metavar="FILE|-",
    help="The step's build context, a JSON object (a file, or - for stdin).  [required]",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="CLAIM=VALUE",
    help="Set a field of the context (repeatable). The value keeps the type the field has "
    "in the context (true/false for pull_fork, commands and the claims file's bool claims, "
    "digits for ttl), else text.",
)
@click.option(
    "--claims-file",
    envvar="IDP_CLAIMS_FILE",
    show_envvar=True,
    metavar="FILE",
    help="The issuer's claim policy (YAML), if it has one: --set then knows which declared "
    "claims are booleans.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="env",
    envvar="IDP_CI_FORMAT",
    show_envvar=True,
    help="env: `export NAME='value'` lines for a POSIX shell; dotenv: NAME=value lines; "
    "json: the issuer's answer as is.",
)
@_issuer_options
def open_(
    context_path: str | None,
    assignments: tuple[str, ...],
    claims_file: str | None,
    output_format: str,
    issuer: str,
    secret_file: str | None,
    cafile: str | None,
    timeout: float,
) -> None:
    """Open a step's request token and print the step's environment.

    The four variables printed (VELA_ID_TOKEN_REQUEST_URL/_TOKEN and
    ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN) are what `idp token` and `idp aws credentials` read
    in the step. Example, in a shell step:

        eval "$(idp ci open --context build.json --set step=deploy)"
    """
    if not context_path:
        raise click.UsageError(
            "Missing option '--context': give the build context as a JSON file, or - for stdin"
        )
    target = _issuer(issuer, secret_file, cafile, timeout)
    where = "(stdin)" if context_path == "-" else repr(context_path)
    bools = BOOL_FIELDS
    if claims_file:
        try:
            policy = load_claims_file(claims_file)
        except ConfigError as exc:
            raise click.UsageError(exc.description) from None
        bools = frozenset(n for n, spec in policy.fields.items() if spec.kind == "bool")
    with _usage_errors():
        context = apply_sets(parse_context(_read_context(context_path), where), assignments, bools)
        opened = open_request_token(target, context)
    click.echo(render(opened.answer, opened.body, output_format), nl=False)


@ci.command("close")
@click.argument("build_id")
@_issuer_options
def close(
    build_id: str, issuer: str, secret_file: str | None, cafile: str | None, timeout: float
) -> None:
    """Close build BUILD_ID: its request tokens stop working at once.

    Run it when the build ends, whatever its outcome (a `post { always { } }` block, a shell
    `trap`): a closed build's steps can mint no more ID tokens.
    """
    if not is_canonical_id(build_id):
        raise click.UsageError(f"BUILD_ID {build_id!r} is not a build id: give {ID_RULE}")
    with _usage_errors():
        close_build(_issuer(issuer, secret_file, cafile, timeout), build_id)
    click.echo(f"closed build {build_id}: its request tokens no longer work")
