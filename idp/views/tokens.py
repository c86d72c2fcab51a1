"""The token flow, top to bottom.

1. The CI server opens a request token for a step:      POST   <issuer>/request-tokens
2. The step exchanges it for an ID token, GitHub's way:  GET    <issuer>/id-token?audience=A
   or Vela's way:        GET /api/v1/repos/<org>/<repo>/builds/<number>/id_token?audience=A
   (either with an optional &lifetime=S, seconds, up to IDP_TOKEN_MAX_TTL)
3. The CI server closes the build when it ends:          DELETE <issuer>/builds/<build_id>
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from urllib.parse import parse_qsl

from flask import Blueprint, Flask, Response, jsonify, request

from idp.config import Settings
from idp.errors import Forbidden, IdpError, InvalidAudience, InvalidRequest, InvalidToken
from idp.observability import audience_label, audit, count_id_token, metrics
from idp.ratelimit import rate_limits
from idp.tokens import request_tokens
from idp.tokens.claims import id_token_claims, validate_audiences
from idp.tokens.context import (
    ID_RULE,
    MAX_TTL,
    DuplicateKey,
    is_canonical_id,
    load_json,
    parse_context,
)
from idp.tokens.lifetime import requested_lifetime
from idp.tokens.request_tokens import RequestToken
from idp.views import keyring, store

log = logging.getLogger(__name__)


def _bearer(what: str) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    # RFC 6750: the scheme is case-insensitive; clients send "bearer" and "Bearer".
    if scheme.lower() != "bearer" or not value.strip():
        raise InvalidToken(f"send {what} as 'Authorization: Bearer <token>'")
    return value.strip()


def _require_ci_server(settings: Settings) -> None:
    if not settings.ci_secrets:
        raise Forbidden(
            "the request-token API is closed on this issuer: set IDP_CI_SECRET to the CI "
            "server's bearer secret to open it"
        )
    try:
        presented = _bearer("the CI server's secret (IDP_CI_SECRET)").encode()
    except InvalidToken:
        rate_limits().ci_server(None)
        raise
    # Compare against every configured secret, in constant time, without stopping early.
    matched: str | None = None
    for secret in settings.ci_secrets:
        if hmac.compare_digest(presented, secret.encode()):
            matched = secret
    # Counted either way: a wrong secret spends its address's budget, not a fresh one.
    rate_limits().ci_server(matched)
    if matched is None:
        raise InvalidToken("the CI server secret is wrong: use a value listed in IDP_CI_SECRET")


# Tokens and everything else these views answer must never be kept by a cache (HTTP/1.0's
# Pragma too, for the proxies that know no other).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _no_store(response: Response) -> Response:
    response.headers.update(NO_STORE)
    return response


def _minted(name: str, token: str) -> Response:
    """The exchange's answer, `{name: token}`, with its headers given at once (7 µs, against
    10 for `jsonify` and then `_no_store`: the exchange is the hot path)."""
    return Response(
        json.dumps({name: token}), status=200, mimetype="application/json", headers=NO_STORE
    )


def _open_request_token(settings: Settings) -> RequestToken:
    try:
        token = _bearer("the step's request token")
        now = int(time.time())
        opened = request_tokens.verify(
            token, keyring().request_keys, settings.issuer, now, settings.claim_policy
        )
    except InvalidToken:
        rate_limits().refused_step()  # a forged token spends its address's budget
        raise
    # Whether its build's state is known at all (the store may have been reset since the
    # token was issued): from memory, no round trip.
    store().check_build_state(opened.epoch)
    # The step's budget and the closed-build check: one Redis round trip.
    if rate_limits().step_and_closed(opened.jti, opened.context.build_id, store()):
        raise InvalidToken(
            f"build {opened.context.build_id} is closed: request tokens of a finished build "
            "stop working; run the step in a new build"
        )
    return opened


def _exchange(settings: Settings) -> str:
    """Open the step's request token and mint an ID token; every outcome is audited."""
    started = time.perf_counter()
    requested: list[str] = []
    label = "none"
    opened: RequestToken | None = None
    try:
        query = _query()
        requested = [value for name, value in query if name == "audience"]
        label = audience_label(requested[0], settings.audiences) if requested else "none"
        opened = _open_request_token(settings)
        _check_vela_path(opened)
        audiences = validate_audiences(requested, settings)
        lifetime = requested_lifetime(
            [value for name, value in query if name == "lifetime"], settings
        )
        claims = id_token_claims(
            opened.context, audiences, settings, int(time.time()), lifetime=lifetime
        )
        token, kid = keyring().sign(claims)
    except IdpError as exc:
        count_id_token(label, exc.code)
        ctx = opened.context if opened else None
        audit(
            exc.code,
            aud=requested[:10],
            repo=ctx.repo if ctx else None,
            build=ctx.build_id if ctx else None,
            step=ctx.step if ctx else None,
            client=request.remote_addr,
            reason=exc.description,
        )
        raise
    count_id_token(label, "minted")
    metrics().mint_seconds.observe(time.perf_counter() - started)
    audit(
        "minted",
        jti=claims["jti"],
        sub=claims["sub"],
        aud=claims["aud"],
        kid=kid,
        lifetime=lifetime,
        repo=claims.get("repo"),
        build=claims["build_id"],
        step=claims.get("step"),
        client=request.remote_addr,
    )
    return token


# Far above any real query (api-version and up to 10 audiences), far below a parsing cost.
MAX_QUERY_FIELDS = 32


# A '%' that does not start an escape of two hex digits: parse_qsl keeps it verbatim.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _query() -> list[tuple[str, str]]:
    # Parsed strictly from the raw query: werkzeug would keep an undecodable "%FF" as the
    # three characters "%FF" and mint a token for an audience nobody asked for; urllib keeps
    # a malformed escape ("%ZZ", "%4") as it is, so that is refused first.
    if _BAD_ESCAPE.search(request.query_string):
        raise InvalidAudience(
            "the query string has a '%' that is not a percent-escape (% and two hex digits): "
            "encode each audience with urllib.parse.quote or encodeURIComponent ('%' is %25)"
        )
    try:
        fields = parse_qsl(
            request.query_string.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeDecodeError:
        raise InvalidAudience(
            "the query string is not percent-encoded UTF-8: encode each audience with "
            "urllib.parse.quote or encodeURIComponent"
        ) from None
    except ValueError:
        raise InvalidAudience(
            f"the query string has more than {MAX_QUERY_FIELDS} parameters: ask for at most "
            "10 audiences"
        ) from None
    return fields


def _check_vela_path(opened: RequestToken) -> None:
    # Vela's route names the repo and build: a step's token is good for its own only.
    args = request.view_args or {}
    if "build_number" not in args:
        return
    ctx = opened.context
    if ctx.repo is None or ctx.build_number is None:
        raise Forbidden(
            "this request token's build has no repo or build_number, so it has no Vela URL: "
            "use the step's ACTIONS_ID_TOKEN_REQUEST_URL"
        )
    if f"{args['org']}/{args['repo']}" != ctx.repo or args["build_number"] != ctx.build_number:
        raise Forbidden(
            f"this request token belongs to {ctx.repo} build {ctx.build_number}, not "
            f"{args['org']}/{args['repo']} build {args['build_number']}: use the step's own "
            "VELA_ID_TOKEN_REQUEST_URL"
        )


def _open(settings: Settings) -> Response:
    """Open a step's request token for the build context in the body."""
    _require_ci_server(settings)
    if not request.is_json:
        raise InvalidRequest("send the build context as JSON (Content-Type: application/json)")
    try:
        body = load_json(request.get_data(cache=False))
    except DuplicateKey as exc:
        raise InvalidRequest(
            f"the build context names {str(exc)[:40]!r} twice: send each field once"
        ) from None
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise InvalidRequest(
            "the body is not valid JSON: send the build context as an object"
        ) from None
    ctx = parse_context(body, settings.claim_policy)
    epoch = store().epoch
    store().check_build_state(epoch)  # 503 while a reset store is being restored
    if store().is_build_closed(ctx.build_id):
        raise InvalidRequest(f"build {ctx.build_id} is already closed: it cannot get new steps")
    issued = request_tokens.issue(
        ctx,
        keyring().request_signing_key(),
        settings.issuer,
        int(time.time()),
        settings.request_token_ttl,
        epoch,
    )
    env: dict[str, str] = {}
    # Vela's URL names the repo and the build number: a context without them (a claims file
    # made them optional) has none, and its step uses the GitHub-style variables alone.
    if ctx.repo is not None and ctx.build_number is not None:
        env["VELA_ID_TOKEN_REQUEST_URL"] = (
            f"{settings.origin}/api/v1/repos/{ctx.org}/{ctx.name}/builds/"
            f"{ctx.build_number}/id_token"
        )
        env["VELA_ID_TOKEN_REQUEST_TOKEN"] = issued.token
    # Clients append "&audience=...", so the URL already carries a query string.
    env["ACTIONS_ID_TOKEN_REQUEST_URL"] = f"{settings.issuer}/id-token?api-version=2.0"
    env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = issued.token
    response = jsonify(token=issued.token, expires_at=issued.expires_at, env=env)
    return _no_store(response)


def init_app(app: Flask, settings: Settings) -> None:
    bp = Blueprint("tokens", __name__, url_prefix=settings.issuer_path or None)

    @bp.post("/request-tokens")
    def open_request_token() -> Response:
        try:
            response = _open(settings)
        except IdpError as exc:
            metrics().request_tokens.labels(exc.code).inc()
            raise
        metrics().request_tokens.labels("opened").inc()
        return response

    @bp.delete("/builds/<build_id>")
    def close_build(build_id: str) -> Response:
        _require_ci_server(settings)
        # As the build context has it: "05003" would close another build than 5003.
        if not is_canonical_id(build_id):
            raise InvalidRequest(f"the build id must be the build's number id, {ID_RULE}")
        # Kept closed past the longest life a request token can have: its context's `ttl` and
        # IDP_REQUEST_TOKEN_TTL are both at most MAX_TTL (config checks the latter). The ID
        # tokens a build already has are not revoked by closing it (as with GitHub), so the
        # `lifetime` they were asked for (IDP_TOKEN_MAX_TTL) plays no part here: that is the
        # key ring's to honour, which keeps each key published for its longest token.
        store().close_build(build_id, int(time.time()) + MAX_TTL + settings.clock_skew)
        return _no_store(jsonify(build_id=build_id, closed=True))

    # The exchanges answer GET only: no automatic OPTIONS, and no HEAD (below), since a HEAD
    # ran the view and minted (and audited) a token whose body was then thrown away.
    @bp.route("/id-token", methods=["GET"], provide_automatic_options=False)
    def github_exchange() -> Response:
        return _minted("value", _exchange(settings))

    app.register_blueprint(bp)

    vela = Blueprint("vela", __name__)

    @vela.route(
        "/api/v1/repos/<org>/<repo>/builds/<build_number>/id_token",
        methods=["GET"],
        provide_automatic_options=False,
    )
    def vela_exchange(org: str, repo: str, build_number: str) -> Response:
        return _minted("token", _exchange(settings))

    app.register_blueprint(vela)
    _get_only(app, "tokens.github_exchange", "vela.vela_exchange")


def _get_only(app: Flask, *endpoints: str) -> None:
    """Take HEAD off these routes: werkzeug adds it to every GET rule, and Flask then runs the
    GET view for it. Without it, HEAD and OPTIONS are refused by routing itself, before any
    view runs: 405 JSON with `Allow: GET`. The matcher reads each rule's methods per request."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in endpoints and rule.methods is not None:
            rule.methods.discard("HEAD")
