"""The processes under test: the issuer (`idp serve`), the floor app, a private redis-server.

Each one runs exactly as an operator would run it, in its own process group, with its output in
a log file (never a pipe nobody reads). Nothing here touches the machine's own Redis on 6379.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from idp.store.redis_store import CLOSED_SET, RING

ROOT = Path(__file__).resolve().parent.parent
ISSUER_PATH = "/_services/token"
# What is measured, below the issuer's path.
ENDPOINTS = {
    # GitHub's protocol: the client appends "&audience=" to ACTIONS_ID_TOKEN_REQUEST_URL.
    "token": f"{ISSUER_PATH}/id-token?api-version=2.0&audience=sts.amazonaws.com",
    "jwks": f"{ISSUER_PATH}/.well-known/jwks",
    "discovery": f"{ISSUER_PATH}/.well-known/openid-configuration",
}
CI_SECRET = "bench-ci-secret-0123456789abcdef"  # noqa: S105 - a throwaway test secret
# Sealing keys at rest is the production path; it costs nothing per request but is measured.
KEY_ENCRYPTION_KEY = "bench-key-encryption-key-0123456789abcdef"
# The rate limiter runs (its cost is measured) but never refuses.
NO_LIMIT = "1000000/second"
# Redis keys the issuer's background refresher reads on a timer, whatever the load.
BACKGROUND_KEYS = frozenset({RING, CLOSED_SET})
# What redis-py sends when it opens a connection (a worker's first request, or one after a
# reconnect): once per connection, not per request.
CONNECT_COMMANDS = frozenset({"HELLO", "CLIENT", "AUTH", "SELECT"})

# A build context as the README's curl example sends it; `step` and `build_id` vary per token.
BUILD_CONTEXT: dict[str, Any] = {
    "repo": "octo-org/octo-repo",
    "ref": "refs/heads/main",
    "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
    "event": "push",
    "branch": "main",
    "build_id": 1234,
    "build_number": 42,
    "actor": "octocat",
    "actor_scm_id": 583231,
    "pull_fork": False,
    "step": "deploy",
    "image": "golang:1.22",
    "commands": False,
    "request": "yes",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what} ({last})")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Server:
    """A long-running child process with a log file, stopped on exit."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class RoundTrips:
    """Redis commands seen by MONITOR while `requests` requests were made one by one."""

    requests: int
    network: dict[str, int]  # sent by a client: each is a round trip (unless pipelined)
    scripted: dict[str, int]  # run inside a Lua script, no round trip of their own
    background: dict[str, int]  # the key ring refresher's reads, not caused by requests
    # Socket reads Redis processed for the requests (`INFO stats` total_reads_processed, net
    # of the background and of the probe's own INFO): a pipeline is one read, one round trip.
    reads: int = 0

    @property
    def per_request(self) -> float:
        return self.reads / self.requests if self.requests else 0.0

    @property
    def commands_sent_per_request(self) -> float:
        return sum(self.network.values()) / self.requests if self.requests else 0.0


class RedisServer(Server):
    """A private redis-server from the binary on PATH, on a free loopback port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: run `make system-deps` (apt)")
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(workdir)]
        super().__init__("redis", argv, os.environ, workdir)
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        super().start()
        self._client = redis.Redis.from_url(self.url)
        wait_until(self._ping, f"redis-server on port {self.port}")

    def _ping(self) -> bool:
        import redis

        self.check_alive()
        try:
            return bool(self._client.ping())
        except redis.ConnectionError:
            return False

    def command_calls(self) -> dict[str, int]:
        """Calls per command since start (`INFO commandstats`), without INFO itself."""
        stats: dict[str, Any] = self._client.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()
        }
        calls.pop("info", None)
        return calls

    def round_trips(self, action: Callable[[], int]) -> RoundTrips:
        """Watch `MONITOR` while `action` makes requests (it returns how many).

        `INFO commandstats` also counts the commands a Lua script runs inside Redis; MONITOR
        tells them apart (`lua` clients), so this counts what crossed the network. Commands on
        the key ring refresher's keys, and redis-py's health-check PING on a connection idle
        for 10 s, are time-driven, not request-driven: kept apart, as is the handshake of a
        connection opened meanwhile (HELLO and the like: once per connection).
        """
        import redis

        seen: list[dict[str, Any]] = []
        start, end = f"bench-start-{time.time_ns()}", f"bench-end-{time.time_ns()}"
        monitor_client = redis.Redis.from_url(self.url)

        def watch() -> None:
            with monitor_client.monitor() as monitor:
                begun = False
                for command in monitor.listen():
                    text = str(command["command"])
                    if text == f"ECHO {start}":
                        begun = True
                    elif text == f"ECHO {end}":
                        return
                    elif begun:
                        seen.append(command)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        time.sleep(0.2)  # MONITOR is on before the start marker
        self._client.echo(start)
        before = int(self._client.info("stats")["total_reads_processed"])
        requests = action()
        after = int(self._client.info("stats")["total_reads_processed"])
        self._client.echo(end)
        thread.join(timeout=10)
        monitor_client.close()
        network: dict[str, int] = {}
        scripted: dict[str, int] = {}
        background: dict[str, int] = {}
        for command in seen:
            words = str(command["command"]).split()
            name = words[0].upper() if words else "?"
            if (
                name == "PING"
                or name in CONNECT_COMMANDS
                or (len(words) > 1 and words[1] in BACKGROUND_KEYS)
            ):
                background[name] = background.get(name, 0) + 1
            elif command["client_type"] == "lua":
                scripted[name] = scripted.get(name, 0) + 1
            else:
                network[name] = network.get(name, 0) + 1
        # The second INFO is a read of its own; each background command was sent alone.
        reads = max(0, after - before - 1 - sum(background.values()))
        return RoundTrips(requests, network, scripted, background, reads)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().stop()


class Gunicorn(Server):
    """A gunicorn master and its workers; ready when `ready_url` answers 200."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        workdir: Path,
        port: int,
        ready_path: str,
    ) -> None:
        super().__init__(name, argv, env, workdir)
        self.port = port
        self.ready_url = self.base + ready_path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        try:
            wait_until(self._ready, f"{self.name} at {self.ready_url}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}") from None

    def _ready(self) -> bool:
        self.check_alive()
        return http_status(self.ready_url) == 200

    def fetch(self, path: str, tokens: list[str], count: int) -> int:
        """`count` requests one after the other (rotating `tokens` if any); returns `count`."""
        for i in range(count):
            headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"} if tokens else {}
            request = urllib.request.Request(self.base + path, headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                response.read()
        return count

    def processes(self) -> list[psutil.Process]:
        """The master and its workers."""
        assert self.proc is not None
        master = psutil.Process(self.proc.pid)
        return [master, *master.children(recursive=False)]

    def workers(self) -> list[psutil.Process]:
        return self.processes()[1:]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the master and its live workers have used so far."""
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def wait_idle(self, timeout: float = 3.0) -> None:
        """Until the workers stop spending CPU: when wrk stops, requests it left in the listen
        queue are still served, and their CPU and Redis commands must not count in the next
        run."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.cpu_seconds()
            if now - last < 0.005:
                return
            last = now

    def worker_rss_mib(self) -> list[float]:
        sizes = []
        for proc in self.workers():
            try:
                sizes.append(proc.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                continue
        return sizes


def issuer_env(port: int, workdir: Path, redis_url: str | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("IDP_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "IDP_ISSUER": f"http://127.0.0.1:{port}{ISSUER_PATH}",
            "IDP_CI_SECRET": CI_SECRET,
            "IDP_KEY_ENCRYPTION_KEY": KEY_ENCRYPTION_KEY,
            "IDP_RATE_LIMIT_CI": NO_LIMIT,
            "IDP_RATE_LIMIT_STEP": NO_LIMIT,
            "IDP_RATE_LIMIT_CLIENT": NO_LIMIT,
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        }
    )
    if redis_url:
        env["IDP_REDIS_URL"] = redis_url
    else:
        env["IDP_KEYS_DIR"] = str(workdir / "keys")
    return env


class Issuer(Gunicorn):
    """`idp serve --workers N`, exactly as operators run it."""

    def __init__(
        self,
        store: str,
        workers: int,
        workdir: Path,
        redis_url: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        port = free_port()
        self.store = store
        self.workdir = workdir / f"issuer-{store}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env_vars = {**issuer_env(port, self.workdir, redis_url), **(extra_env or {})}
        argv = [sys.executable, "-m", "idp", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", str(workers)]
        name = f"issuer-{store}"
        super().__init__(name, argv, self.env_vars, self.workdir, port, f"{ISSUER_PATH}/readyz")

    @property
    def issuer(self) -> str:
        return f"{self.base}{ISSUER_PATH}"

    def open_request_tokens(self, count: int) -> list[str]:
        """Request tokens for `count` steps of `count` builds, as the CI server opens them."""
        tokens = []
        for i in range(count):
            context = {**BUILD_CONTEXT, "build_id": 5000 + i, "step": f"deploy-{i}"}
            request = urllib.request.Request(  # noqa: S310 - loopback URL
                f"{self.issuer}/request-tokens",
                data=json.dumps(context).encode(),
                method="POST",
                headers={
                    "Authorization": f"Bearer {CI_SECRET}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                tokens.append(str(json.load(response)["token"]))
        return tokens


class Floor(Gunicorn):
    """The framework's floors under `idp serve`'s gunicorn: a constant-JSON route, and with
    `signing` (a JSON file: jwk, header, claims) a route that only signs."""

    PATH = "/floor"
    SIGN_PATH = "/floor/sign"

    def __init__(self, workers: int, workdir: Path, signing: Path | None = None) -> None:
        port = free_port()
        argv = [sys.executable, "-m", "bench.floor", "--port", str(port)]
        argv += ["--workers", str(workers)]
        if signing is not None:
            argv += ["--signing", str(signing)]
        super().__init__("floor", argv, os.environ, workdir, port, self.PATH)
