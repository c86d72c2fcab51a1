"""The CI server's side, for any CI: open a step's request token and close a build.

`client` speaks the issuer's CI API (`POST /request-tokens`, `DELETE /builds/<id>`) with the
CI secret; `step_env` turns a build context and `--set` overrides into the request body, and the
issuer's answer into the lines a step's shell, a dotenv file or a program reads.
"""

from __future__ import annotations

from idp.errors import IdpError


class CiError(IdpError):
    """The issuer could not be asked, or said no; the description says what to change."""

    code = "ci_error"
    status = 1


class UsageError(CiError):
    """The command line or its input is wrong; the CLI reports it as a usage error (exit 2)."""

    code = "invalid_usage"
