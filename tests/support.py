"""Real parts for the tests: a private redis-server and the issuer as a real process.

Nothing here is a mock. The machine may run its own Redis on 6379: these helpers never touch it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
CI_SECRET = "ci-secret-for-tests-0123456789abcdef"
# For tests that load the issuer to test something else: the limiter still runs, never refuses.
NO_RATE_LIMITS = {
    "IDP_RATE_LIMIT_CI": "1000000/second",
    "IDP_RATE_LIMIT_STEP": "1000000/second",
    "IDP_RATE_LIMIT_CLIENT": "1000000/second",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what or predicate}: {last}")


class RedisServer:
    """A private redis-server from the binary on PATH, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: run `make system-deps` (apt)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        wait_for(client.ping, what=f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url)


class IssuerProcess:
    """`idp serve` in a subprocess, exactly as operators run it."""

    def __init__(self, env: Mapping[str, str], workers: int = 1, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workers = workers
        # The public issuer (what `iss` says) may differ from where this process listens,
        # as for replicas behind one load balancer; `issuer` is where to reach this one.
        public = env.get("IDP_ISSUER", f"http://127.0.0.1:{self.port}/_services/token")
        self.issuer = f"http://127.0.0.1:{self.port}{urlsplit(public).path}"
        self.env = {
            **os.environ,
            "IDP_ISSUER": public,
            "IDP_CI_SECRET": CI_SECRET,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = b""
        self.returncode: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> IssuerProcess:
        # Output goes to a file, not a pipe: nobody reads a pipe during a run, and a full
        # one would block the server on its next log line.
        self._logfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "idp",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            cwd=ROOT,
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
        )
        if wait:
            try:
                wait_for(self._ready, timeout=30, what=f"issuer on port {self.port}")
            except TimeoutError:
                self.stop()
                log = self.log.decode(errors="replace")
                raise RuntimeError(f"issuer did not start:\n{log}") from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self.log = self._read_log()
            raise RuntimeError(f"issuer exited:\n{self.log.decode(errors='replace')}")
        return requests.get(f"{self.issuer}/healthz", timeout=1).status_code == 200

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self.log += self._read_log()
        self._logfile.close()
        self.proc = None

    def _read_log(self) -> bytes:
        self._logfile.seek(0)
        return self._logfile.read()

    def __enter__(self) -> IssuerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def issuer_process(env: Mapping[str, str], workers: int = 1) -> Iterator[IssuerProcess]:
    proc = IssuerProcess(env, workers=workers)
    with proc:
        yield proc


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`idp ARGS...` in this process: (exit code, stdout, stderr)."""
    from idp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err
