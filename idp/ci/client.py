"""The CI server's HTTP client: `POST /request-tokens` and `DELETE /builds/<id>` with the secret.

Built like the runner's client (urllib, no extra dependency, every failure one line naming the
fix), with three differences that the CI secret asks for:

- redirects are never followed: urllib would resend `Authorization` to wherever a `Location`
  points, so a redirect is reported instead;
- TLS is always verified (the system's CAs, `SSL_CERT_FILE`, or `--cafile`); there is no
  `--insecure`, since the secret opens tokens for any repository;
- the secret appears in no message: errors name the issuer and the setting, never the value.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idp.ci import CiError, UsageError
from idp.config import _csv, _raw, validate_issuer
from idp.errors import ConfigError
from idp.httpclient import NoRedirect

log = logging.getLogger("idp.ci")

SECRET_VARIABLE = "IDP_CI_SECRET"  # noqa: S105 - a variable name
DEFAULT_TIMEOUT = 10.0
# Only what a running issuer (or its proxy) says for "not now": a 4xx other than 429 is an
# answer, and retrying it changes nothing.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
ATTEMPTS = 3
BACKOFF_BASE = 0.5  # seconds; doubled after each failure
BACKOFF_CAP = 5.0


@dataclass(frozen=True)
class Issuer:
    """Where to ask and with what: the issuer URL, the CI secret, how to trust its TLS."""

    url: str
    secret: str = field(repr=False)
    cafile: str | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Opened:
    """The issuer's answer to `POST /request-tokens`: the decoded object and its text."""

    answer: dict[str, Any]
    body: str


def read_secret(secret_file: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The CI secret: from `secret_file` when given, else IDP_CI_SECRET or IDP_CI_SECRET_FILE
    (as `idp serve` reads them); of several comma-separated secrets, the first."""
    env = dict(os.environ if environ is None else environ)
    if secret_file is not None:
        # An explicit --secret-file wins over the environment, as flags do everywhere.
        env.pop(SECRET_VARIABLE, None)
        env[f"{SECRET_VARIABLE}_FILE"] = secret_file
    try:
        # The issuer's own readers: both sides then agree on a file's trailing newline, on
        # "both set", and on how a comma list splits.
        secrets = _csv(_raw(env, SECRET_VARIABLE))
    except ConfigError as exc:
        message = exc.description
        if secret_file is not None:
            message = message.replace(f"{SECRET_VARIABLE}_FILE=", "--secret-file ")
        raise UsageError(message) from None
    if not secrets:
        raise UsageError(
            f"no CI secret: set {SECRET_VARIABLE} (or {SECRET_VARIABLE}_FILE, or --secret-file) "
            "to a secret the issuer lists in its own IDP_CI_SECRET"
        )
    secret = secrets[0]
    # http.client refuses such a header with a message of its own; say it without the value.
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in secret):
        raise UsageError(
            f"the CI secret ({SECRET_VARIABLE}) holds a space, a control or a non-ASCII "
            "character, which an Authorization header cannot carry: check how it was stored"
        )
    return secret


def check_issuer(url: str) -> str:
    """The issuer URL without a trailing slash, or a usage error saying what one looks like."""
    url = url.strip().rstrip("/")
    try:
        validate_issuer(url, "--issuer")
    except ConfigError as exc:
        raise UsageError(exc.description) from None
    return url


def open_request_token(issuer: Issuer, context: Mapping[str, Any]) -> Opened:
    """Open a step's request token for `context`; the answer carries the step's `env`."""
    body = json.dumps(context).encode()
    status, text = _call(issuer, "POST", "/request-tokens", body, "open a request token")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("env"), dict):
        raise CiError(_not_the_issuer(issuer, "/request-tokens", status, "a request token"))
    return Opened(answer, text)


def close_build(issuer: Issuer, build_id: str) -> None:
    """Close `build_id`: every request token of that build stops working at once."""
    path = f"/builds/{urllib.parse.quote(build_id, safe='')}"
    status, text = _call(issuer, "DELETE", path, None, f"close build {build_id}")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("closed") is not True:
        raise CiError(_not_the_issuer(issuer, path, status, "the closed build"))


def _opener(issuer: Issuer) -> urllib.request.OpenerDirector:
    try:
        context = ssl.create_default_context(cafile=issuer.cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(
            f"--cafile {issuer.cafile} cannot be loaded ({reason}): point it at a PEM file of "
            "CA certificates"
        ) from None
    return urllib.request.build_opener(NoRedirect(), urllib.request.HTTPSHandler(context=context))


class _Transient(Exception):
    """A "not now" from the issuer: retried, and reported as it is if it lasts."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def _call(
    issuer: Issuer,
    method: str,
    path: str,
    body: bytes | None,
    what: str,
) -> tuple[int, str]:
    """(status, text) of a 2xx answer, retrying what says "not now"; else one-line errors."""
    opener = _opener(issuer)
    delay = BACKOFF_BASE
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _call_once(opener, issuer, method, path, body, what)
        except _Transient as exc:
            if attempt == ATTEMPTS:
                raise CiError(exc.message) from None
            wait = min(delay if exc.retry_after is None else exc.retry_after, BACKOFF_CAP)
            log.warning("%s; retry %d in %.1fs", exc.message, attempt, wait)
            time.sleep(wait)
            delay = min(delay * 2, BACKOFF_CAP)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _call_once(
    opener: urllib.request.OpenerDirector,
    issuer: Issuer,
    method: str,
    path: str,
    body: bytes | None,
    what: str,
) -> tuple[int, str]:
    url = issuer.url + path
    headers = {"Authorization": f"Bearer {issuer.secret}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with opener.open(request, timeout=issuer.timeout) as response:
            return response.status, _text(response.read())
    except urllib.error.HTTPError as exc:
        status, text, headers_in = exc.code, _text(exc.read()), exc.headers
        exc.close()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _connection_error(issuer, exc) from None
    if 300 <= status < 400:
        raise CiError(
            f"{url} answered {status}, a redirect to {headers_in.get('Location', 'nowhere')!r}, "
            "which is not followed (it would carry the CI secret there): set --issuer "
            "(IDP_ISSUER) to the issuer URL exactly as the issuer's own IDP_ISSUER says"
        )
    refusal = _refusal(issuer, path, status, text, what)
    if status in RETRY_STATUSES:
        retry_after = headers_in.get("Retry-After", "")
        raise _Transient(refusal, float(retry_after) if retry_after.isdigit() else None)
    raise CiError(refusal)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _refusal(issuer: Issuer, path: str, status: int, text: str, what: str) -> str:
    try:
        answer = json.loads(text)
        code, description = str(answer["error"]), str(answer.get("error_description", ""))
    except (ValueError, KeyError, TypeError):
        return _not_the_issuer(issuer, path, status, "an answer")
    description = " ".join(description.split())  # one line, whatever the server wrote
    hint = ""
    if status == 401:
        hint = (
            f" (this command sends the first secret of {SECRET_VARIABLE}, "
            f"{SECRET_VARIABLE}_FILE or --secret-file)"
        )
    elif status == 404:
        hint = f" (is --issuer {issuer.url} the issuer URL, path included?)"
    return f"the issuer refused to {what}: {status} {code}: {description}{hint}"


def _not_the_issuer(issuer: Issuer, path: str, status: int, wanted: str) -> str:
    return (
        f"{issuer.url}{path} answered HTTP {status} without {wanted} in the issuer's JSON: "
        "set --issuer (IDP_ISSUER) to the issuer URL, e.g. "
        "https://ci.example.com/_services/token, not another service or a proxy's page"
    )


def _connection_error(issuer: Issuer, exc: BaseException) -> CiError:
    reason = getattr(exc, "reason", exc)
    where = issuer.url
    if isinstance(reason, ssl.SSLCertVerificationError):
        return CiError(
            f"the TLS certificate of {where} does not verify ({reason.verify_message}): give "
            "the issuer's CA bundle with --cafile (IDP_CAFILE) or SSL_CERT_FILE"
        )
    if isinstance(reason, ssl.SSLError):
        return CiError(
            f"the TLS handshake with {where} failed ({reason.reason or reason}): check that "
            "the URL's scheme and port match the issuer (https for a TLS listener)"
        )
    if isinstance(reason, TimeoutError):
        # Not retried: the issuer had the whole --timeout already.
        return CiError(
            f"{where} did not answer within {issuer.timeout:g}s: check that the issuer is up "
            "and reachable from here, or raise --timeout (IDP_TIMEOUT)"
        )
    if isinstance(reason, socket.gaierror):
        return CiError(
            f"the host of {where} is unknown ({reason.strerror}): check --issuer (IDP_ISSUER)"
        )
    detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    # Not retried either: a refused or reset connection is an issuer that is down or a wrong
    # URL far more often than a blip, and a CI step should learn that at once.
    return CiError(
        f"no answer from {where} ({detail}): check that the issuer runs and that --issuer "
        "(IDP_ISSUER) names it"
    )
