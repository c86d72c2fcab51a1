"""Where an exchange's CPU goes beyond the minting floor's, step by step, in one process.

`python -m bench.breakdown [--store file|redis] [--calls N]`

The load runs (`make bench`) say *how much* more CPU a token exchange costs than a Flask route
that only signs; on a shared 2-core machine their ratio moves by ±20 % from run to run, far
more than any one step of the exchange weighs. This measures each step on its own instead,
with `time.process_time()` (CPU, not wall time), without HTTP or gunicorn, so the numbers are
steady enough to compare before and after a change:

- the exchange and both floors called through their WSGI applications (the very apps
  `idp serve` and `bench.floor` serve), with the environment a request under wrk would bring;
- then each step the exchange adds to the minting floor, called directly with the inputs one
  exchange gives it (cycling through the request tokens, as wrk does).

The steps measured alone do not add up to what the exchange adds in place: alone, a step runs
with warm caches; inside a request it does not, and the RSA signature after it is slower too
(its key and tables were evicted). So the exchange is also measured with its signature replaced
by a constant, which splits the in-place cost into the exchange's own work and its signature.
Each number is the best of five rounds (a neighbour's burst only ever adds).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.ceilings import write_signing_spec
from bench.floor import PATH as FLOOR_PATH
from bench.floor import SIGN_PATH, create_floor_app
from bench.servers import BUILD_CONTEXT, CI_SECRET, ENDPOINTS, RedisServer, issuer_env

ROUNDS = 5


def _environ(path_and_query: str, token: str | None = None) -> dict[str, Any]:
    """A WSGI environ as gunicorn builds it for wrk's request."""
    path, _, query = path_and_query.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return environ


def _cpu_us(action: Callable[[int], object], calls: int) -> float:
    """CPU microseconds per call of `action(i)`, best of ROUNDS rounds."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for i in range(calls):
            action(i)
        best = min(best, time.process_time() - started)
    return best / calls * 1e6


def _serve(app: Any, environs: list[dict[str, Any]]) -> Callable[[int], object]:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        statuses.append(status)

    def call(i: int) -> object:
        environ = dict(environs[i % len(environs)])
        environ["wsgi.input"] = io.BytesIO(b"")
        body: Iterable[bytes] = app(environ, start_response)
        b"".join(body)
        if statuses.pop() != "200 OK":
            raise RuntimeError(f"{environ['PATH_INFO']} did not answer 200")
        return body

    return call


def breakdown(store: str, calls: int, workdir: Path) -> list[tuple[str, float]]:
    redis_server = RedisServer(workdir) if store == "redis" else None
    if redis_server is not None:
        redis_server.start()
    try:
        env = issuer_env(8000, workdir, redis_server.url if redis_server else None)
        os.environ.clear()
        os.environ.update(env)
        (workdir / "metrics").mkdir(exist_ok=True)
        return _measure(calls, workdir)
    finally:
        if redis_server is not None:
            redis_server.stop()


def _measure(calls: int, workdir: Path) -> list[tuple[str, float]]:
    from idp.app import create_app
    from idp.config import load_settings
    from idp.observability import audit, configure_logging
    from idp.tokens import request_tokens
    from idp.tokens.claims import id_token_claims
    from idp.tokens.context import parse_context

    settings = load_settings()
    # As `idp serve` logs (the audit line is part of every exchange), into a file.
    configure_logging(settings.log_format)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(workdir / "issuer.log", "a"))  # noqa: SIM115 - closed at exit
    app = create_app(settings, start_refresh=False)
    client = app.test_client()
    tokens: list[str] = []
    for i in range(16):
        context = dict(BUILD_CONTEXT, build_id=1000 + i, step=f"step-{i}")
        answer = client.post(
            f"{settings.issuer_path}/request-tokens",
            json=context,
            headers={"Authorization": f"Bearer {CI_SECRET}"},
        )
        if answer.status_code != 200:
            raise RuntimeError(f"opening a request token failed: {answer.get_data(as_text=True)}")
        tokens.append(answer.get_json()["token"])
    floor = create_floor_app(write_signing_spec(settings, workdir / "signing.json"))

    keyring = app.extensions["idp.keyring"]
    limits = app.extensions["idp.ratelimits"]
    store = app.extensions["idp.store"]
    now = int(time.time())
    opened = [
        request_tokens.verify(t, keyring.request_keys, settings.issuer, now, settings.claim_policy)
        for t in tokens
    ]
    audiences = ["sts.amazonaws.com"]
    claims = [id_token_claims(o.context, audiences, settings, now) for o in opened]
    raw_contexts = [o.context.to_json() for o in opened]

    def verify(i: int) -> object:
        token = tokens[i % 16]
        return request_tokens.verify(
            token, keyring.request_keys, settings.issuer, now, settings.claim_policy
        )

    def count(i: int) -> object:
        o = opened[i % 16]
        return limits.step_and_closed(o.jti, o.context.build_id, store)

    def audit_line(i: int) -> None:
        c = claims[i % 16]
        audit(
            "minted",
            jti=c["jti"],
            sub=c["sub"],
            aud=c["aud"],
            kid="kid",
            lifetime=settings.token_ttl,
            repo=c.get("repo"),
            build=c["build_id"],
            step=c.get("step"),
            client="127.0.0.1",
        )

    exchange = [_environ(ENDPOINTS["token"], token) for token in tokens]
    rows = [
        (EXCHANGE, _cpu_us(_serve(app, exchange), calls)),
        (MINTING_FLOOR, _cpu_us(_serve(floor, [_environ(SIGN_PATH)]), calls)),
        (FRAMEWORK_FLOOR, _cpu_us(_serve(floor, [_environ(FLOOR_PATH)]), calls)),
    ]
    # The same exchange with the signature replaced by a constant (an ablation: this
    # process's key ring only), so that what the exchange adds is measured in place.
    signed = keyring.sign
    keyring.sign = lambda claims: ("e30.e30.c2ln", "kid")
    try:
        rows.append((UNSIGNED, _cpu_us(_serve(app, exchange), calls)))
    finally:
        keyring.sign = signed
    rows += [
        (SIGNING, _cpu_us(lambda i: keyring.sign(claims[i % 16]), calls)),
        (VERIFY, _cpu_us(verify, calls)),
        (
            REVALIDATE,
            _cpu_us(lambda i: parse_context(raw_contexts[i % 16], settings.claim_policy), calls),
        ),
        (
            CLAIMS,
            _cpu_us(
                lambda i: id_token_claims(opened[i % 16].context, audiences, settings, now), calls
            ),
        ),
        (COUNT, _cpu_us(count, calls)),
        (AUDIT, _cpu_us(audit_line, calls)),
    ]
    return rows


EXCHANGE = "exchange, through the issuer's WSGI app"
MINTING_FLOOR = "minting floor (a route that only signs)"
FRAMEWORK_FLOOR = "framework floor (a constant-JSON route)"
UNSIGNED = "exchange with a constant instead of the signature"
SIGNING = "signing an ID token, alone"
VERIFY = "request token verification, alone"
REVALIDATE = "of which the context's re-validation"
CLAIMS = "claims, subject and session tags, alone"
COUNT = "step budget and closed-build check, alone"
AUDIT = "audit line (logging to a file), alone"
# The exchange may cost this much over the minting floor (bench/report.py).
BUDGET = 0.15


def render(store: str, rows: list[tuple[str, float]]) -> str:
    v = dict(rows)
    own = v[UNSIGNED] - v[FRAMEWORK_FLOOR]
    alone = v[VERIFY] + v[CLAIMS] + v[COUNT] + v[AUDIT]
    derived = [
        ("exchange over the minting floor", v[EXCHANGE] - v[MINTING_FLOOR]),
        (f"budget: {BUDGET:.0%} of the minting floor", BUDGET * v[MINTING_FLOOR]),
        ("the exchange's own work, in place (no signature)", own),
        ("  of it, the steps above measured alone", alone),
        ("  of it, the rest (query, bearer, metrics, answer; caches)", own - alone),
        ("its signature, in place", v[EXCHANGE] - v[UNSIGNED]),
        ("the minting floor's signature, in place", v[MINTING_FLOOR] - v[FRAMEWORK_FLOOR]),
    ]
    lines = [
        f"Exchange CPU, {store} store, one process, no HTTP (µs per call, best of {ROUNDS})",
        "",
        "| measured | µs |",
        "| --- | ---: |",
    ]
    for name, value in rows + [("", 0.0)] + derived:
        if not name:
            lines.append("| **derived** | |")
            continue
        label = f"↳ {name.strip()}" if name.startswith("  ") or name == REVALIDATE else name
        lines.append(f"| {label} | {value:.1f} |")
    lines.append(f"\nexchange / minting floor: {v[EXCHANGE] / v[MINTING_FLOOR]:.2f}×")
    return "\n".join(lines)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number, e.g. 2000")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--store", choices=("file", "redis"), default="file")
    parser.add_argument(
        "--calls", type=_positive, default=2000, help="calls per round (default 2000)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idp-breakdown-") as workdir:
        try:
            rows = breakdown(args.store, args.calls, Path(workdir))
        except RuntimeError as exc:  # no redis-server, an issuer that would not open tokens
            sys.exit(f"bench.breakdown: {exc}")
    print(render(args.store, rows))
    print(json.dumps({name: round(value, 1) for name, value in rows}))


if __name__ == "__main__":
    main()
