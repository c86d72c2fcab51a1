"""The IAM client and the translation of botocore's failures into one line that says the fix.

The client is built by boto3 from its usual configuration (profiles, `AWS_*` variables,
instance roles), `AWS_ENDPOINT_URL` included, so operators and tests point it anywhere the
same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.parsers import ResponseParserError

from idp.aws.errors import AwsApiError


def iam_client() -> Any:
    # IAM is global: any region reaches it, so a machine without a configured region still works.
    session = boto3.session.Session()
    return session.client("iam", region_name=session.region_name or "us-east-1")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def aws_errors(action: str, permissions: str) -> Iterator[None]:
    """Turn botocore exceptions raised while doing `action` into an `AwsApiError`.

    `permissions` names the IAM actions the caller needs, for the access-denied case.
    """
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise AwsApiError(
            f"no AWS credentials to {action}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run where an IAM role is attached"
        ) from None
    except NoRegionError:
        raise AwsApiError(f"no AWS region to {action}: set AWS_REGION, e.g. us-east-1") from None
    except ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            raise AwsApiError(
                f"AWS denied the request to {action} ({message}): the caller needs {permissions}"
            ) from None
        if code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"):
            raise AwsApiError(
                f"AWS rejected the credentials used to {action} ({code}): refresh them "
                "(e.g. `aws sso login`) or check AWS_PROFILE"
            ) from None
        raise AwsApiError(f"AWS refused to {action}: {code}: {message}") from None
    except ResponseParserError:
        # Not a BotoCoreError: an endpoint (a proxy, a fake, an outage page) that answered
        # something that is not AWS's XML.
        raise AwsApiError(
            f"AWS answered the request to {action} with something that is not an AWS reply: "
            "check AWS_ENDPOINT_URL and any proxy (HTTPS_PROXY) between here and AWS"
        ) from None
    except BotoCoreError as exc:
        raise AwsApiError(
            f"could not reach AWS to {action} ({exc}): check the network, a proxy "
            "(HTTPS_PROXY) or AWS_ENDPOINT_URL"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # botocore reading a reply that is not AWS's shape (a 200 page from a proxy) fails
        # with whatever its parser trips on; the block holds one AWS call and nothing else.
        raise AwsApiError(
            f"AWS answered the request to {action} with something that is not an AWS reply "
            f"({type(exc).__name__}): check AWS_ENDPOINT_URL and any proxy (HTTPS_PROXY)"
        ) from None
