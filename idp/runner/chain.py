"""Where `idp aws credentials` gets its AWS credentials: the Octopus worker's chain.

- `idp` (the default): the step's request token, exchanged for an ID token, then STS
  AssumeRoleWithWebIdentity (Vela's aws-credentials plugin);
- `web-identity`: the token file a platform mounts (`AWS_WEB_IDENTITY_TOKEN_FILE`, EKS's IRSA),
  assumed by botocore's own AssumeRoleWithWebIdentityProvider;
- `instance`: the instance's role through IMDSv2, by botocore's own InstanceMetadataProvider
  (the one boto3's credential resolver uses), then, when the step names a role, STS AssumeRole
  into it;
- `auto`: the first of those three that the step has.

No HTTP is written here: the two AWS sources are botocore's providers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from idp.runner import ParameterError, RunnerError
from idp.runner.client import find_request
from idp.runner.credentials import Credentials, Settings, sts_client

log = logging.getLogger("idp.runner")

SOURCES = ("idp", "auto", "web-identity", "instance")
TOKEN_FILE = "AWS_WEB_IDENTITY_TOKEN_FILE"  # noqa: S105 - a variable name
ROLE_ENV = "AWS_ROLE_ARN"

DESCRIPTIONS = {
    "idp": "the step's request token (idp)",
    "web-identity": f"the web identity token file (${TOKEN_FILE})",
    "instance": "the instance's role (IMDSv2)",
}


def pick(source: str, environ: Mapping[str, str]) -> str:
    """The source `auto` stands for here: request token, then token file, then instance."""
    if source != "auto":
        return source
    try:
        find_request(environ)
    except RunnerError:
        pass
    else:
        return "idp"
    if environ.get(TOKEN_FILE, "").strip():
        return "web-identity"
    return "instance"


def _expiry(credentials: Any) -> str:
    expiry: Any = getattr(credentials, "_expiry_time", None)
    return str(expiry.isoformat()) if hasattr(expiry, "isoformat") else str(expiry or "")


def _frozen(credentials: Any) -> Credentials:
    frozen = credentials.get_frozen_credentials()
    return Credentials(
        access_key_id=frozen.access_key,
        secret_access_key=frozen.secret_key,
        session_token=frozen.token or "",
        expiration=_expiry(credentials),
    )


def web_identity(settings: Settings, environ: Mapping[str, str]) -> tuple[Credentials, str]:
    """Credentials from the token file, and the token (for the web_identity format)."""
    import botocore.session
    from botocore.credentials import AssumeRoleWithWebIdentityProvider
    from botocore.exceptions import BotoCoreError, ClientError

    path = environ.get(TOKEN_FILE, "").strip()
    if not path:
        raise RunnerError(
            f"--source web-identity needs ${TOKEN_FILE}: run where the platform mounts a token "
            "(EKS service account), or use --source idp"
        )
    role = settings.role or environ.get(ROLE_ENV, "").strip()
    if not role:
        raise ParameterError(
            f"no role to assume with the web identity token: set the role parameter or ${ROLE_ENV}"
        )
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise RunnerError(f"${TOKEN_FILE}={path} cannot be read ({exc.strerror})") from None
    profile = {
        "web_identity_token_file": path,
        "role_arn": role,
        "role_session_name": settings.session_name,
    }
    session = botocore.session.Session()
    provider = AssumeRoleWithWebIdentityProvider(
        load_config=lambda: {"profiles": {"idp": profile}},
        client_creator=functools.partial(session.create_client, region_name=settings.region),
        profile_name="idp",
        # The step's parameters win over the AWS_* variables the pod carries.
        disable_env_vars=True,
    )
    log.info("assuming role %s with the web identity token in %s", role, path)
    try:
        credentials = _frozen(provider.load())
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        hint = ""
        if code in ("AccessDenied", "InvalidIdentityToken"):
            hint = f"; `idp aws explain --token {path} --role-arn {role}` says which check fails"
        raise RunnerError(f"STS refused the web identity token: {code}: {message}{hint}") from None
    except BotoCoreError as exc:
        raise RunnerError(f"could not assume {role} with the web identity token: {exc}") from None
    return credentials, token


def instance(settings: Settings) -> Credentials:
    """The instance role's credentials (IMDSv2), then the step's role when it names one."""
    import botocore.session
    from botocore.exceptions import BotoCoreError, ClientError

    provider = botocore.session.Session().get_component("credential_provider")
    try:
        found = provider.get_provider("iam-role").load()
    except BotoCoreError as exc:
        raise RunnerError(f"the instance metadata service failed ({exc})") from None
    if not found:
        raise RunnerError(
            "no credentials: the step has no request token (`id_request: yes`), "
            f"${TOKEN_FILE} is unset, and no instance role answered through IMDSv2 (on EKS, "
            "raise the hop limit with modify-instance-metadata-options)"
        )
    credentials = _frozen(found)
    if not settings.role:
        return credentials
    # The step names a role: chain into it from the instance's role.
    log.info("assuming role %s from the instance's role", settings.role)
    request: dict[str, Any] = {
        "RoleArn": settings.role,
        "RoleSessionName": settings.session_name,
        "DurationSeconds": settings.duration,
    }
    if settings.inline_session_policy:
        request["Policy"] = settings.inline_session_policy
    if settings.managed_session_policies:
        request["PolicyArns"] = [{"arn": a} for a in settings.managed_session_policies]
    try:
        answer = sts_client(settings.region, credentials).assume_role(**request)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise RunnerError(
            f"AWS refused to let the instance's role assume {settings.role}: "
            f"{error.get('Code', '')}: {error.get('Message', '')}: allow it in the role's trust "
            "policy (Principal: the instance role's ARN)"
        ) from None
    except BotoCoreError as exc:
        raise RunnerError(f"could not reach AWS STS: {exc}") from None
    return Credentials.from_sts(answer)
