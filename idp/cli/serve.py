"""`idp serve`: the issuer under gunicorn.

Settings chosen for this workload (see README "Deploying" and bench/README.md "Worker model"):
- gthread workers, one process per CPU by default, each with a few threads (THREADS): signing
  is CPU-bound and short, so more threads would only contend for the GIL, but one thread per
  process let a single slow client hold the whole process. Connections that are idle, or still
  sending their request head, wait in the worker's event loop and cost no thread (below).
- no `--preload`: each worker builds the app after the fork, so it opens its own Redis
  connections and starts its own refresher (connections and threads do not survive a fork).
  The master loads the ring once before forking, so a bad setting or a wrong encryption key
  stops the start with one line, and an empty store gets its first key exactly once.
- timeout 30 s, graceful shutdown 20 s (Kubernetes' default grace period is 30 s).
- no gunicorn control socket: it defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl),
  so two instances on a host took it from each other, and the issuer has no use for it.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from typing import Any

import click
from gunicorn.app.base import BaseApplication

from idp.cli.worker import (
    KEEPALIVE,
    LIMIT_REQUEST_FIELD_SIZE,
    LIMIT_REQUEST_FIELDS,
    LIMIT_REQUEST_LINE,
    THREADS,
    WORKER_CONNECTIONS,
)
from idp.config import Settings, load_settings
from idp.keys.keyring import KeyRing
from idp.observability import configure_logging
from idp.store import create_store


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
        "worker_class": "idp.cli.worker.JsonErrorWorker",
        "threads": THREADS,
        "worker_connections": WORKER_CONNECTIONS,
        "preload_app": False,
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": KEEPALIVE,
        # One default path per user, so two instances on a host shared it; nothing uses it.
        "control_socket_disable": True,
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


def _check_bind(host: str, port: int) -> None:
    """Fail in one line when the address cannot be bound, before gunicorn retries it for
    seconds and logs a line per attempt."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.UsageError(
            f"--host {host!r} is not an address to listen on ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As gunicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is not taken for busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(
                    f"port {port} on {host} is already in use: stop the process listening "
                    "there, or pass another --port (IDP_PORT)"
                ) from None
            raise click.ClickException(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick another --host or "
                "--port (ports below 1024 need privileges)"
            ) from None


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
    _check_bind(host, port)
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
