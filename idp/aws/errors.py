"""Errors of the AWS operator commands; each description says what went wrong, then the fix."""

from __future__ import annotations

from idp.errors import IdpError


class AwsCommandError(IdpError):
    code = "aws_command_failed"


class ThumbprintError(AwsCommandError):
    """The issuer's discovery document or TLS chain could not be read."""

    code = "thumbprint_failed"


class ProviderUrlError(AwsCommandError):
    """A provider URL that AWS would refuse, or that would never match the tokens' `iss`."""

    code = "invalid_provider_url"


class TrustPolicyError(AwsCommandError):
    """The requested conditions cannot be expressed with what AWS evaluates."""

    code = "invalid_trust_policy"


class AwsApiError(AwsCommandError):
    """An AWS API call failed: credentials, permissions, network, or a refusal."""

    code = "aws_api_error"
