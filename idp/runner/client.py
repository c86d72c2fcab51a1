"""Fetching an ID token from inside a step, through whichever request variables it was given.

Both protocols are a GET with the request token as Bearer: GitHub's URL already carries a query
string (`&audience=` is appended), Vela's does not (`?audience=`). The URL is used exactly as
given: unlike Vela's own plugin we neither force https nor drop the port, so an issuer behind a
non-standard port or plain http in a lab keeps working.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from idp.httpclient import NoRedirect
from idp.runner import RunnerError

log = logging.getLogger("idp.runner")

VELA_URL = "VELA_ID_TOKEN_REQUEST_URL"
VELA_TOKEN = "VELA_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 - a variable name
ACTIONS_URL = "ACTIONS_ID_TOKEN_REQUEST_URL"
ACTIONS_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 - a variable name

# Transient failures are retried; a 4xx is an answer (bad token, bad audience) and is not.
ATTEMPTS = 5
BACKOFF_BASE = 0.5  # seconds; doubled after each failure
BACKOFF_CAP = 8.0
TIMEOUT = 10.0
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))

NO_REQUEST_TOKEN = (
    "this step has no ID token request variables "
    f"({VELA_URL}/{VELA_TOKEN} or {ACTIONS_URL}/{ACTIONS_TOKEN}): "
    "set `id_request: yes` on the step"
)


@dataclass(frozen=True)
class TokenRequest:
    """Where and how to ask: the protocol decides the query separator and the answer's field."""

    protocol: str  # "vela" or "github"
    url: str
    request_token: str

    def url_for(self, audience: str, lifetime: int | None = None) -> str:
        fields: dict[str, str | int] = {"audience": audience}
        if lifetime is not None:
            fields["lifetime"] = lifetime
        query = urllib.parse.urlencode(fields)
        if self.protocol == "github":
            # GitHub's variable always carries a query string of its own.
            return f"{self.url}&{query}"
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}{query}"

    @property
    def answer_field(self) -> str:
        return "value" if self.protocol == "github" else "token"


def find_request(environ: Mapping[str, str] | None = None) -> TokenRequest:
    """The step's request variables, Vela's first; a half-set pair names the missing one."""
    env = os.environ if environ is None else environ
    for protocol, url_name, token_name in (
        ("vela", VELA_URL, VELA_TOKEN),
        ("github", ACTIONS_URL, ACTIONS_TOKEN),
    ):
        url, token = env.get(url_name, "").strip(), env.get(token_name, "").strip()
        if url and token:
            return TokenRequest(protocol, url, token)
        if url or token:
            missing = token_name if url else url_name
            raise RunnerError(f"{missing} is empty or unset: {NO_REQUEST_TOKEN}")
    raise RunnerError(NO_REQUEST_TOKEN)


class _Transient(Exception):
    pass


def _describe_refusal(status: int, body: bytes) -> str:
    try:
        answer = json.loads(body)
        detail = f"{answer.get('error', 'error')}: {answer.get('error_description', '')}".strip()
    except (ValueError, AttributeError):
        detail = body[:200].decode("utf-8", "replace").strip() or "no details"
    hint = ""
    if status == 401:
        hint = " (the request token expired or the build ended: rerun the step)"
    elif status == 403:
        hint = " (the request token belongs to another repo or build)"
    return f"the issuer refused the ID token request with {status} {detail}{hint}"


def fetch_id_token(
    audience: str,
    environ: Mapping[str, str] | None = None,
    *,
    lifetime: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """An ID token for `audience`, retrying connection errors, 5xx and 429 with backoff.

    `lifetime`: the seconds the token should live (`&lifetime=`); None leaves it to the
    issuer's IDP_TOKEN_TTL. The issuer checks it against its IDP_TOKEN_MAX_TTL.
    """
    if not audience.strip():
        raise RunnerError("the audience is empty: pass --audience, e.g. sts.amazonaws.com")
    request = find_request(environ)
    url = request.url_for(audience, lifetime)
    log.debug("requesting an ID token for audience %r (%s protocol)", audience, request.protocol)
    delay = BACKOFF_BASE
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _fetch_once(request, url)
        except _Transient as exc:
            last = str(exc)
            if attempt == ATTEMPTS:
                break
            log.warning("ID token request failed (%s); retry %d in %.1fs", last, attempt, delay)
            sleep(delay)
            delay = min(delay * 2, BACKOFF_CAP)
    raise RunnerError(
        f"the issuer could not be reached after {ATTEMPTS} attempts ({last}): "
        "check that the issuer is up and reachable from the step"
    )


# Never follows a redirect: the request token would be sent along (idp.httpclient).
_OPENER = urllib.request.build_opener(NoRedirect())


def _fetch_once(request: TokenRequest, url: str) -> str:
    http_request = urllib.request.Request(  # noqa: S310 - the URL is the CI server's, http(s)
        url,
        headers={"Authorization": f"Bearer {request.request_token}", "Accept": "application/json"},
    )
    try:
        with _OPENER.open(http_request, timeout=TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        if 300 <= exc.code < 400:
            raise RunnerError(
                f"the issuer answered HTTP {exc.code}, a redirect to "
                f"{exc.headers.get('Location') or 'another address'}, which is not followed "
                "(the request token would go along): set the request URL to the issuer itself"
            ) from None
        if exc.code in RETRY_STATUSES:
            raise _Transient(f"HTTP {exc.code}") from exc
        raise RunnerError(_describe_refusal(exc.code, body)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(f"connection error: {reason}") from exc
    try:
        token = json.loads(body)[request.answer_field]
    except (ValueError, KeyError, TypeError):
        raise RunnerError(
            f"the issuer's answer has no {request.answer_field!r} field: "
            f"check that {VELA_URL if request.protocol == 'vela' else ACTIONS_URL} "
            "points at the issuer"
        ) from None
    if not isinstance(token, str) or token.count(".") != 2:
        raise RunnerError("the issuer answered something that is not a JWT")
    return token
