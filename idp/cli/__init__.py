"""The `idp` program: one command-line entry for operators and runners.

Every failure ends in one line on stderr that names the fix, with exit 2 for a usage error and
1 for a failure; a stack trace is a bug.
"""

from __future__ import annotations

import sys

import click

from idp.cli.ci import ci
from idp.cli.health import health
from idp.cli.keys import keys
from idp.cli.serve import serve
from idp.errors import IdpError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="idp")
def cli() -> None:
    """A self-hosted OpenID Connect identity provider for CI pipelines."""


cli.add_command(serve)
cli.add_command(keys)
cli.add_command(health)
cli.add_command(ci)


def _register_optional() -> None:
    # Command groups built in their own modules; each module registers itself here.
    import importlib

    for module in ("idp.cli.aws", "idp.cli.runner", "idp.cli.claims"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(cli)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    try:
        # Outside standalone mode click returns what `ctx.exit(n)` asked for (or the
        # command's own return value, which no command uses as a code).
        code = cli.main(args=argv, prog_name="idp", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("idp: aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            # `idp` or `idp aws` alone: a question, not a mistake. Show the help.
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"idp: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"idp: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except IdpError as exc:
        click.echo(f"idp: error: {exc.description}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
