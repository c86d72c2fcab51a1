"""`idp aws credentials`: Vela's aws-credentials plugin, parameter for parameter.

Parameters come from flags, then files (`/vela/parameters/aws-credentials/<name>`, then
`/vela/secrets/aws-credentials/<name>`), then `PARAMETER_<NAME>`, then `AWS_CREDENTIALS_<NAME>`:
files beat the environment, as the plugin documents. The role is assumed with STS
`AssumeRoleWithWebIdentity`; the result is written in the plugin's exact formats, and nothing
secret ever reaches a log line, at any level.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idp.runner import ParameterError, RunnerError

log = logging.getLogger("idp.runner")

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LOG_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

PARAMETER_DIRS = ("/vela/parameters/aws-credentials", "/vela/secrets/aws-credentials")
PARAMETER_DIRS_ENV = "IDP_PARAMETER_DIRS"
ENV_PREFIXES = ("PARAMETER_", "AWS_CREDENTIALS_")

FORMATS = ("shell", "credential_file", "web_identity")
DEFAULT_SCRIPT_PATHS = {
    "shell": "/vela/secrets/aws/setup.sh",
    "credential_file": "/vela/secrets/aws/creds",
    "web_identity": "/vela/secrets/aws/token",
}

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]+$")
TRUE = {"true", "yes", "1", "on"}
FALSE = {"false", "no", "0", "off", ""}


@dataclass(frozen=True)
class Parameter:
    name: str
    help: str
    default: str | None = None


# The plugin's table, in its order; a new parameter added here is covered by the tests.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("role", "AWS IAM role ARN to assume (required)."),
    Parameter("region", "AWS region for STS and the written credentials.", "us-east-1"),
    Parameter("role_duration_seconds", "Session duration, 900 to 43200 seconds.", "3600"),
    Parameter("role_session_name", "Session name shown in CloudTrail.", "vela"),
    Parameter("log_level", "trace, debug, info, warn or error.", "info"),
    Parameter("audience", "Audience of the ID token.", "sts.amazonaws.com"),
    Parameter("verify", "Check the credentials with sts:GetCallerIdentity.", "false"),
    Parameter("script_path", "Where to write (default depends on script_format)."),
    Parameter("script_write", "Write the credentials to script_path.", "false"),
    Parameter("script_format", "shell, credential_file or web_identity.", "shell"),
    Parameter("inline_session_policy", "An IAM policy (JSON) limiting the session."),
    Parameter("managed_session_policies", "Comma list of managed policy ARNs for the session."),
)
NAMES = tuple(p.name for p in PARAMETERS)


@dataclass(frozen=True)
class Settings:
    role: str
    region: str
    duration: int
    session_name: str
    log_level: str
    audience: str
    verify: bool
    script_path: Path
    script_write: bool
    script_format: str
    inline_session_policy: str | None
    managed_session_policies: tuple[str, ...]
    sources: Mapping[str, str] = field(default_factory=dict)  # name -> where it came from


def parameter_dirs(environ: Mapping[str, str]) -> list[Path]:
    raw = environ.get(PARAMETER_DIRS_ENV)
    if raw is None:
        return [Path(d) for d in PARAMETER_DIRS]
    return [Path(d) for d in raw.split(":") if d]


def collect(
    flags: Mapping[str, str | None], environ: Mapping[str, str]
) -> dict[str, tuple[str, str]]:
    """Each parameter's raw value and its source, by precedence: flag, file, environment."""
    found: dict[str, tuple[str, str]] = {}
    dirs = parameter_dirs(environ)
    for name in NAMES:
        value = flags.get(name)
        if value is not None:
            found[name] = (value.strip(), f"--{name.replace('_', '-')}")
            continue
        for folder in dirs:
            path = folder / name
            if path.is_file():
                found[name] = (path.read_text(encoding="utf-8").strip(), str(path))
                break
        else:
            for prefix in ENV_PREFIXES:
                variable = f"{prefix}{name.upper()}"
                if variable in environ:
                    found[name] = (environ[variable].strip(), variable)
                    break
    return found


def _bool(name: str, value: str, source: str) -> bool:
    lowered = value.lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ParameterError(f"{name} from {source} is {value!r}: use true or false")


def resolve(
    flags: Mapping[str, str | None], environ: Mapping[str, str], require_role: bool = True
) -> Settings:
    """The validated settings; every error names the parameter, its source and the fix.

    Without `require_role` (credentials from the instance or a web identity token file that
    names its own role) an absent role is "".
    """
    raw = collect(flags, environ)
    defaults = {p.name: p.default for p in PARAMETERS}

    def get(name: str) -> tuple[str | None, str]:
        if name in raw:
            value, source = raw[name]
            if value != "":
                return value, source
        return defaults[name], "default"

    role, role_source = get("role")
    if not role and not require_role:
        role = ""
    elif not role:
        raise ParameterError(
            "no role given: set `role: arn:aws:iam::<account>:role/<name>` in the step's "
            "parameters (or --role, PARAMETER_ROLE)"
        )
    if role and not ROLE_ARN.match(role):
        raise ParameterError(
            f"role from {role_source} is {role!r}, not a role ARN: "
            "use arn:aws:iam::<12-digit account>:role/<name>"
        )
    region, _ = get("region")
    duration_raw, duration_source = get("role_duration_seconds")
    try:
        duration = int(duration_raw or "")
    except ValueError:
        duration = -1
    if not 900 <= duration <= 43200:
        raise ParameterError(
            f"role_duration_seconds from {duration_source} is {duration_raw!r}: "
            "use a whole number of seconds from 900 to 43200 (and at most the role's maximum "
            "session duration)"
        )
    session_name, session_source = get("role_session_name")
    if not SESSION_NAME.match(session_name or ""):
        raise ParameterError(
            f"role_session_name from {session_source} is {session_name!r}: use 2 to 64 of "
            "letters, digits and + = , . @ _ -"
        )
    log_level, level_source = get("log_level")
    if (log_level or "").lower() not in LOG_LEVELS:
        raise ParameterError(
            f"log_level from {level_source} is {log_level!r}: use trace, debug, info, warn or error"
        )
    audience, _ = get("audience")
    script_format, format_source = get("script_format")
    if script_format not in FORMATS:
        raise ParameterError(
            f"script_format from {format_source} is {script_format!r}: use " + ", ".join(FORMATS)
        )
    script_path, _ = get("script_path")
    policy, policy_source = get("inline_session_policy")
    if policy is not None:
        try:
            json.loads(policy)
        except ValueError:
            raise ParameterError(
                f"inline_session_policy from {policy_source} is not valid JSON: "
                "give an IAM policy document"
            ) from None
    managed_raw, managed_source = get("managed_session_policies")
    managed = tuple(a.strip() for a in (managed_raw or "").split(",") if a.strip())
    for arn in managed:
        if not POLICY_ARN.match(arn):
            raise ParameterError(
                f"managed_session_policies from {managed_source} holds {arn!r}, not a policy "
                "ARN: use arn:aws:iam::<account>:policy/<name>, comma separated"
            )
    verify_raw, verify_source = get("verify")
    write_raw, write_source = get("script_write")
    return Settings(
        role=role,
        region=region or "us-east-1",
        duration=duration,
        session_name=session_name or "vela",
        log_level=(log_level or "info").lower(),
        audience=audience or "sts.amazonaws.com",
        verify=_bool("verify", verify_raw or "", verify_source),
        script_path=Path(script_path or DEFAULT_SCRIPT_PATHS[script_format]),
        script_write=_bool("script_write", write_raw or "", write_source),
        script_format=script_format,
        inline_session_policy=policy,
        managed_session_policies=managed,
        sources={name: get(name)[1] for name in NAMES},
    )


# --- masking ---------------------------------------------------------------------------

MASK = "****"
_SECRET_FIELDS = re.compile(
    r"(?P<key>WebIdentityToken|SecretAccessKey|SessionToken|AccessKeyId|X-Amz-Security-Token"
    r"|aws_secret_access_key|aws_session_token|aws_access_key_id|Authorization)"
    r"(?P<sep>['\"]?\s*[:=>]\s*[b]?['\"]?)"
    r"(?P<value>[^'\"<&\s,}]+)",
    re.IGNORECASE,
)
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b")


class Masker(logging.Filter):
    """Rewrites every record so known secrets, JWTs, key ids and secret fields read `****`.

    Known values are registered as soon as they exist; the patterns catch what arrives before
    (botocore logs STS's response before we hold the credentials it contains).
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, *values: str | None) -> None:
        self.secrets.update(v for v in values if v and len(v) >= 4)

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        text = _JWT.sub(MASK, text)
        text = _ACCESS_KEY_ID.sub(MASK, text)
        return _SECRET_FIELDS.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record must not leak its args either
            message = str(record.msg)
        record.msg = self.mask(message)
        record.args = None
        if record.exc_info:
            record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


@contextlib.contextmanager
def masked_logging(level_name: str, masker: Masker) -> Iterator[None]:
    """Our log lines on stderr at `level_name`; at trace, botocore's too. All pass the masker."""
    level = LOG_LEVELS[level_name]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("idp: %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(masker)
    loggers = [logging.getLogger("idp.runner")]
    if level <= TRACE:
        loggers += [logging.getLogger("botocore"), logging.getLogger("boto3")]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.addFilter(masker)
        lg.setLevel(level if lg.name == "idp.runner" else logging.DEBUG)
        # Other handlers (the root's) would see records our filter has not masked.
        lg.propagate = False
    try:
        yield
    finally:
        for lg, old_level, old_propagate in saved:
            lg.removeHandler(handler)
            lg.removeFilter(masker)
            lg.setLevel(old_level)
            lg.propagate = old_propagate
        handler.close()


# --- STS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str

    @classmethod
    def from_sts(cls, answer: dict[str, Any]) -> Credentials:
        """From an STS AssumeRole* answer."""
        raw = answer["Credentials"]
        expiration = raw.get("Expiration")
        return cls(
            access_key_id=raw["AccessKeyId"],
            secret_access_key=raw["SecretAccessKey"],
            session_token=raw["SessionToken"],
            expiration=expiration.isoformat()
            if hasattr(expiration, "isoformat")
            else str(expiration),
        )


# (event name, handler) pairs registered on every STS client this module creates; a seam for
# tests (capturing what is sent) and for operators' instrumentation.
EVENT_HOOKS: list[tuple[str, Callable[..., Any]]] = []


def sts_client(region: str, credentials: Credentials | None = None) -> Any:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=credentials.access_key_id if credentials else None,
        aws_secret_access_key=credentials.secret_access_key if credentials else None,
        aws_session_token=credentials.session_token if credentials else None,
        region_name=region,
    )
    kwargs: dict[str, Any] = {}
    if credentials is None:
        # AssumeRoleWithWebIdentity is unsigned: the step needs no AWS credentials of its own.
        from botocore import UNSIGNED
        from botocore.config import Config

        kwargs["config"] = Config(signature_version=UNSIGNED)
    client = session.client("sts", region_name=region, **kwargs)
    for event, handler in EVENT_HOOKS:
        client.meta.events.register(event, handler)
    return client


def unverified_claims(token: str) -> dict[str, Any]:
    """The token's payload, NOT verified: only to show the user what AWS compared."""
    try:
        payload = token.split(".")[1]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(decoded)
        return claims if isinstance(claims, dict) else {}
    except (IndexError, ValueError):
        return {}


def _claims_summary(token: str) -> str:
    claims = unverified_claims(token)
    tags = claims.get("https://aws.amazon.com/tags", {})
    principal_tags = tags.get("principal_tags", tags) if isinstance(tags, dict) else tags
    return (
        f"sub={claims.get('sub')!r} aud={claims.get('aud')!r} iss={claims.get('iss')!r} "
        f"tags={json.dumps(principal_tags, sort_keys=True)}"
    )


def explain_hint(settings: Settings) -> str:
    """The command that says which of STS's checks refuses the token, for an error line."""
    return (
        f"`idp token --audience {settings.audience} --output token.jwt && idp aws explain "
        f"--token token.jwt --role-arn {settings.role}` says which check fails"
    )


def _sts_error(exc: Exception, settings: Settings, token: str) -> RunnerError:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return RunnerError(f"could not reach AWS STS: {exc}: check the network and region")
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "Unknown"), error.get("Message", "")
    if code == "AccessDenied":
        return RunnerError(
            f"AWS refused to let this token assume {settings.role} ({message}); the token has "
            f"{_claims_summary(token)}: make the role's trust policy conditions match these "
            f"claims, and check the provider's audience; {explain_hint(settings)}"
        )
    if code == "InvalidIdentityToken":
        return RunnerError(
            f"AWS rejected the ID token ({message}): register the issuer with "
            "`idp aws register ISSUER_URL` and check its thumbprint and that AWS can reach its "
            f"JWKS; token {_claims_summary(token)}; {explain_hint(settings)}"
        )
    if code in ("ExpiredToken", "ExpiredTokenException"):
        return RunnerError(
            f"the ID token expired before AWS checked it ({message}): rerun the step, and "
            "check the runner's and issuer's clocks"
        )
    if code == "ValidationError" and "DurationSeconds" in message:
        return RunnerError(
            f"role_duration_seconds={settings.duration} is refused ({message}): lower it to "
            "at most the role's maximum session duration"
        )
    if code == "IDPCommunicationError":
        return RunnerError(f"AWS could not reach the issuer ({message}): retry later")
    return RunnerError(f"STS AssumeRoleWithWebIdentity failed: {code}: {message}")


def assume_role(settings: Settings, token: str) -> Credentials:
    from botocore.exceptions import BotoCoreError, ClientError

    request: dict[str, Any] = {
        "RoleArn": settings.role,
        "RoleSessionName": settings.session_name,
        "WebIdentityToken": token,
        "DurationSeconds": settings.duration,
    }
    if settings.inline_session_policy:
        request["Policy"] = settings.inline_session_policy
    if settings.managed_session_policies:
        request["PolicyArns"] = [{"arn": a} for a in settings.managed_session_policies]
    log.info("assuming role %s as session %s", settings.role, settings.session_name)
    try:
        answer = sts_client(settings.region).assume_role_with_web_identity(**request)
    except (ClientError, BotoCoreError) as exc:
        raise _sts_error(exc, settings, token) from None
    return Credentials.from_sts(answer)


def caller_arn(settings: Settings, credentials: Credentials) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = sts_client(settings.region, credentials).get_caller_identity()
    except (ClientError, BotoCoreError) as exc:
        raise RunnerError(f"the new credentials do not work (GetCallerIdentity: {exc})") from None
    return str(answer["Arn"])


# --- formats ---------------------------------------------------------------------------


def render_shell(credentials: Credentials, region: str) -> str:
    return (
        "#!/bin/sh\n"
        f"export AWS_ACCESS_KEY_ID={credentials.access_key_id}\n"
        f"export AWS_SECRET_ACCESS_KEY={credentials.secret_access_key}\n"
        f"export AWS_SESSION_TOKEN={credentials.session_token}\n"
        f"export AWS_DEFAULT_REGION={region}\n"
    )


def render_credential_file(credentials: Credentials) -> str:
    return (
        "[default]\n"
        f"aws_access_key_id={credentials.access_key_id}\n"
        f"aws_secret_access_key={credentials.secret_access_key}\n"
        f"aws_session_token={credentials.session_token}\n"
    )


def web_identity_environment(settings: Settings) -> list[tuple[str, str]]:
    return [
        ("AWS_ROLE_ARN", settings.role),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", str(settings.script_path)),
        ("AWS_ROLE_SESSION_NAME", settings.session_name),
        ("AWS_DEFAULT_REGION", settings.region),
    ]


def write_private(path: Path, content: str) -> None:
    """Write atomically with mode 0600, creating missing folders with mode 0700."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o700)
        parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    fd, temp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@dataclass
class Outcome:
    credentials: Credentials
    written: Path | None = None
    arn: str | None = None
    exports: list[tuple[str, str]] = field(default_factory=list)


def run(
    settings: Settings,
    token: str | None,
    masker: Masker,
    credentials: Credentials | None = None,
) -> Outcome:
    """Assume the role with `token` (unless `credentials` came from another source),
    optionally verify, and write the chosen format."""
    masker.add(token)
    for name in NAMES:
        log.log(TRACE, "parameter %s from %s", name, settings.sources.get(name, "default"))
    if credentials is None:
        if token is None:
            raise RunnerError("no ID token and no credentials: nothing to assume the role with")
        credentials = assume_role(settings, token)
    masker.add(credentials.access_key_id, credentials.secret_access_key, credentials.session_token)
    log.info("credentials for %s expire at %s", settings.role or "the role", credentials.expiration)
    outcome = Outcome(credentials)
    if settings.verify:
        outcome.arn = caller_arn(settings, credentials)
        log.info("verified: the credentials belong to %s", outcome.arn)
    if settings.script_format == "web_identity":
        if token is None:
            raise ParameterError(
                "script_format web_identity writes an ID token, and this source has none: use "
                "shell or credential_file, or --source idp|web-identity"
            )
        # The SDKs read the token file and assume (and re-assume) the role themselves.
        write_private(settings.script_path, token)
        outcome.written = settings.script_path
        outcome.exports = web_identity_environment(settings)
        log.info("wrote the ID token to %s", settings.script_path)
    elif settings.script_write:
        content = (
            render_shell(credentials, settings.region)
            if settings.script_format == "shell"
            else render_credential_file(credentials)
        )
        write_private(settings.script_path, content)
        outcome.written = settings.script_path
        log.info("wrote %s credentials to %s", settings.script_format, settings.script_path)
    return outcome
