"""`idp health`: is a running issuer ready, and if not, why (what `/readyz` says)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import click

from idp.config import DEFAULT_ISSUER, validate_issuer


@click.command()
@click.option(
    "--issuer",
    envvar="IDP_ISSUER",
    show_envvar=True,
    default=DEFAULT_ISSUER,
    help="The issuer URL (its /readyz is asked).",
)
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, help="Seconds to wait.")
def health(issuer: str, timeout: float) -> None:
    """Print whether the issuer is ready and why; exit 0 when ready, 1 when not.

    For a readiness probe or a deploy script: on a not-ready issuer it prints the reason
    (`/readyz`'s), e.g. that the key store is unreachable, instead of an HTTP error.
    """
    try:
        validate_issuer(issuer, "--issuer")
    except Exception as exc:  # ConfigError: one line, as every setting
        raise click.UsageError(str(exc)) from None
    url = f"{issuer}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s)
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(
            f"no answer from {url} ({reason}): check that `idp serve` runs and --issuer "
            "(IDP_ISSUER) names it"
        ) from None
    try:
        answer = json.loads(body)
        ready, why = bool(answer["ready"]), str(answer["reason"])
    except (ValueError, KeyError, TypeError):
        raise click.ClickException(
            f"{url} answered HTTP {status} without a readiness document: --issuer must be the "
            "issuer URL (IDP_ISSUER), not another service"
        ) from None
    click.echo(f"{'ready' if ready else 'not ready'}: {why}")
    if not ready:
        raise SystemExit(1)
