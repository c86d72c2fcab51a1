"""The runner side: what a pipeline step runs to turn its request token into an ID token
(`idp token`) and that ID token into AWS credentials (`idp aws credentials`).

`client` speaks the two request protocols (GitHub Actions' and Vela's); `credentials` is Vela's
aws-credentials plugin: its parameters, the STS call, the files it writes, and log masking.
"""

from __future__ import annotations

from idp.errors import IdpError


class RunnerError(IdpError):
    """A step cannot get its token or credentials; the description says what to change."""

    code = "runner_error"
    status = 1


class ParameterError(RunnerError):
    """A parameter is missing or malformed; the CLI reports it as a usage error (exit 2)."""

    code = "invalid_parameter"
