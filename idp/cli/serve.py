"""`idp serve`: the issuer under gunicorn.

Settings chosen for this workload (see README "Running it well"):
- sync workers, one per CPU by default: signing is CPU-bound and short, so threads would only
  contend for the GIL; the background key-ring refresher is one daemon thread per worker.
- no `--preload`: each worker builds the app after the fork, so it opens its own Redis
  connections and starts its own refresher (connections and threads do not survive a fork).
  The master loads the ring once before forking, so a bad setting or a wrong encryption key
  stops the start with one line, and an empty store gets its first key exactly once.
- timeout 30 s, graceful shutdown 20 s (Kubernetes' default grace period is 30 s).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import click
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.sync import SyncWorker

from idp.config import Settings, load_settings
from idp.keys.keyring import KeyRing
from idp.observability import configure_logging
from idp.store import create_store

# Header limits: a request token is about 1-2 KiB; nothing legitimate is larger.
LIMIT_REQUEST_LINE = 8190
LIMIT_REQUEST_FIELDS = 50
LIMIT_REQUEST_FIELD_SIZE = 8190


# What gunicorn refuses itself, before the app sees the request (a malformed request line,
# headers over the limits below), answered in the issuer's JSON error shape instead of
# gunicorn's HTML page. Fixed descriptions: the offending input is never echoed back.
_PROTOCOL_ERRORS = {
    400: ("invalid_request", "the HTTP request is malformed: send a well-formed HTTP/1.1 request"),
    403: ("access_denied", "the request is forbidden"),
    414: (
        "request_too_large",
        f"the request line is over {LIMIT_REQUEST_LINE} bytes: send fewer or shorter parameters",
    ),
    417: ("invalid_request", "the Expect header is not supported: send the request without it"),
    431: (
        "request_too_large",
        f"the request headers are too large (at most {LIMIT_REQUEST_FIELDS} headers of "
        f"{LIMIT_REQUEST_FIELD_SIZE} bytes): send a shorter token",
    ),
    501: ("invalid_request", "that transfer coding is not supported: send a plain body"),
}


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from idp.views.headers import SECURITY_HEADERS

    code, description = _PROTOCOL_ERRORS.get(
        status_int, ("server_error", "the issuer failed unexpectedly; see its logs")
    )
    body = json.dumps({"error": code, "error_description": description}).encode()
    head = [
        f"HTTP/1.1 {status_int} {reason}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    gunicorn_util.write_nonblock(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class JsonErrorWorker(SyncWorker):
    """gunicorn's sync worker, answering protocol errors in the issuer's JSON shape.

    gunicorn writes those answers with `gunicorn.util.write_error`, which the worker calls by
    module attribute; it is replaced in the worker process only, once, after the fork.
    """

    def init_process(self) -> None:
        gunicorn_util.write_error = _write_json_error
        super().init_process()


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from idp.app import create_app

        return create_app(self.settings)


def gunicorn_options(host: str, port: int, workers: int) -> dict[str, Any]:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "idp.cli.serve.JsonErrorWorker",
        "preload_app": False,
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "accesslog": "-" if os.environ.get("IDP_ACCESS_LOG") else None,
        "errorlog": "-",
        "proc_name": "idp",
    }


def _prepare_metrics_dir() -> None:
    # Workers write their samples to files here and /metrics adds them up; stale files of a
    # previous run would be added too, so the folder starts empty.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="idp-metrics-")


@click.command()
@click.option("--host", envvar="IDP_HOST", default="127.0.0.1", help="Address to listen on.")
@click.option(
    "--port",
    envvar="IDP_PORT",
    default=8080,
    type=click.IntRange(1, 65535),
    help="Port to listen on.",
)
@click.option(
    "--workers",
    envvar="IDP_WORKERS",
    default=lambda: os.cpu_count() or 1,
    type=click.IntRange(1, 256),
    show_default="CPU count",
    help="gunicorn worker processes.",
)
def serve(host: str, port: int, workers: int) -> None:
    """Run the issuer (gunicorn) with the settings from the IDP_* environment."""
    settings = load_settings()
    _prepare_metrics_dir()
    configure_logging(settings.log_format)
    ring = KeyRing(settings, create_store(settings))
    ring.refresh()
    click.echo(
        f"idp: issuer {settings.issuer} on http://{host}:{port} "
        f"({workers} workers, keys in {ring.store.describe()})",
        err=True,
    )
    _Gunicorn(settings, gunicorn_options(host, port, workers)).run()
