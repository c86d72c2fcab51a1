"""Every error leaves as `{"error", "error_description"}` with the right status, never a page
or a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from idp.errors import IdpError, InvalidToken

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: ("invalid_request", "the request is malformed"),
    404: ("not_found", "no such endpoint: see the issuer's discovery document for its paths"),
    405: ("method_not_allowed", "this endpoint does not take that HTTP method"),
    # The body did not arrive in time (idp/cli/worker.py, BODY_READ_TIMEOUT).
    408: ("request_timeout", "the request body did not arrive in time: send it at once"),
    413: ("request_too_large", "the request body is over 64 KiB: send a smaller build context"),
    414: ("request_too_large", "the request URL is too long: send fewer or shorter parameters"),
    415: ("invalid_request", "send the body as application/json"),
    431: ("request_too_large", "the request headers are too large"),
}


def error_response(code: str, description: str, status: int) -> Response:
    response = jsonify(error=code, error_description=description)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        # RFC 6750 §3: tell the client which scheme to use and why it failed.
        # A header value must be printable ASCII without quotes that would end the parameter.
        safe = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
        response.headers["WWW-Authenticate"] = f'Bearer error="{code}", error_description="{safe}"'
    return response


def _idp_error(exc: IdpError) -> Response:
    response = error_response(exc.code, exc.description, exc.status)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:  # RFC 6585: a 429 says when to come back
        response.headers["Retry-After"] = str(retry_after)
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code, description = _HTTP_CODES.get(status, ("invalid_request", exc.description or ""))
    response = error_response(code, description, status)
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        response.headers["Allow"] = ", ".join(valid_methods)
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error")
    return error_response("server_error", "the issuer failed unexpectedly; see its logs", 500)


def init_app(app: Flask) -> None:
    app.register_error_handler(IdpError, _idp_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


__all__ = ["InvalidToken", "error_response", "init_app"]
