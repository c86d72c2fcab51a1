"""The framework's floors, served by the very gunicorn application class and options
`idp serve` uses (`python -m bench.floor --port P --workers N [--signing FILE]`):

- `GET /floor`: one constant JSON body. Whatever the issuer adds on top of this (blueprints,
  hooks, error handlers, ETag checks) is what JWKS and discovery cost beyond Flask + gunicorn +
  TCP on this machine.
- `GET /floor/sign` (with `--signing`): signs the exchange's claims with the issuer's key and
  returns `{"value": token}`, and nothing else: the best any Flask route under these gunicorn
  settings can mint, which tells the framework's share of the gap to the raw signing ceiling
  from the issuer's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flask import Flask, Response

from idp.cli.serve import _Gunicorn, gunicorn_options
from idp.config import Settings

PATH = "/floor"
SIGN_PATH = "/floor/sign"
BODY = b'{"status":"ok"}'
HEADERS = {"Content-Type": "application/json", "Cache-Control": "public, max-age=300"}
NO_STORE = {"Content-Type": "application/json", "Cache-Control": "no-store"}


def create_floor_app(signing: Path | None = None) -> Flask:
    app = Flask(__name__)

    @app.get(PATH)
    def floor() -> Response:
        return Response(BODY, status=200, headers=HEADERS)

    if signing is not None:
        from joserfc import jwt
        from joserfc.jwk import JWKRegistry

        spec = json.loads(signing.read_text())
        key = JWKRegistry.import_key(spec["jwk"])
        header, claims = spec["header"], spec["claims"]

        @app.get(SIGN_PATH)
        def sign() -> Response:
            body = json.dumps({"value": jwt.encode(header, claims, key)})
            return Response(body, status=200, headers=NO_STORE)

    return app


class FloorGunicorn(_Gunicorn):
    """`idp serve`'s gunicorn application, loading the floor app instead of the issuer."""

    def __init__(self, options: dict[str, Any], signing: Path | None) -> None:
        self.signing = signing
        super().__init__(Settings(), options)

    def load(self) -> Any:
        return create_floor_app(self.signing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--signing", type=Path, help="JSON file: jwk, header, claims")
    args = parser.parse_args()
    options = gunicorn_options("127.0.0.1", args.port, args.workers)
    options["proc_name"] = "idp-bench-floor"
    FloorGunicorn(options, args.signing).run()


if __name__ == "__main__":
    main()
