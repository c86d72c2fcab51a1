"""Slow clients cannot starve a directly exposed issuer, and `idp serve` instances on one host
do not share gunicorn's control socket: real `idp serve` processes, real sockets."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from idp.cli.worker import HEADER_READ_TIMEOUT
from tests.support import IssuerProcess

TRICKLE_EVERY = 0.5


class Trickler(threading.Thread):
    """A slowloris connection: a request line, then one header byte every 0.5 s, forever."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
        self.opened = time.monotonic()
        self.closed_after: float | None = None
        self.answer = b""
        self.stop = threading.Event()

    def run(self) -> None:
        header = b"X-Slow: " + b"a" * 10_000
        for byte in header:
            if self.stop.is_set():
                break
            readable, _, _ = select.select([self.sock], [], [], TRICKLE_EVERY)
            try:
                if readable:
                    data = self.sock.recv(65536)
                    self.answer += data
                    if not data:
                        break
                    continue
                self.sock.send(bytes([byte]))
            except OSError:
                break
        else:
            return
        if not self.stop.is_set():
            self.closed_after = time.monotonic() - self.opened
        self.sock.close()


@pytest.mark.parametrize(("workers", "connections"), [(1, 2), (2, 2), (1, 8), (2, 8)])
def test_trickling_headers_neither_starve_jwks_nor_stay_open(
    tmp_path: Path, workers: int, connections: int
) -> None:
    with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path / "keys")}, workers=workers) as issuer:
        jwks = f"{issuer.issuer}/.well-known/jwks"
        path = "/_services/token/.well-known/jwks"
        slow = [Trickler(issuer.port, path) for _ in range(connections)]
        for trickler in slow:
            trickler.start()
        try:
            time.sleep(1.0)  # every slow connection has reached a worker and is mid-header
            deadline = time.monotonic() + HEADER_READ_TIMEOUT - 1.5
            latencies = []
            while time.monotonic() < deadline:
                started = time.monotonic()
                answer = requests.get(jwks, timeout=5, headers={"Connection": "close"})
                latencies.append(time.monotonic() - started)
                assert answer.status_code == 200 and answer.json()["keys"]
                time.sleep(0.2)
            assert latencies and max(latencies) < 1.0, latencies
            # The trickling connections are closed once the header read timeout is over.
            for trickler in slow:
                trickler.join(timeout=HEADER_READ_TIMEOUT + 5)
            for trickler in slow:
                assert trickler.closed_after is not None, "a trickling connection stayed open"
                assert trickler.closed_after < HEADER_READ_TIMEOUT + 2 * TRICKLE_EVERY + 1
                # Answered in the issuer's JSON shape, or closed without an answer.
                if trickler.answer:
                    head, _, body = trickler.answer.partition(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head
                    assert json.loads(body)["error"] == "request_timeout"
        finally:
            for trickler in slow:
                trickler.stop.set()


def test_silent_connections_do_not_hold_the_workers(tmp_path: Path) -> None:
    """Connections that send nothing at all (more of them than threads) cost no thread."""
    with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path / "keys")}, workers=1) as issuer:
        silent = [socket.create_connection(("127.0.0.1", issuer.port)) for _ in range(16)]
        try:
            time.sleep(0.5)
            for _ in range(5):
                started = time.monotonic()
                answer = requests.get(f"{issuer.issuer}/.well-known/jwks", timeout=5)
                assert answer.status_code == 200
                assert time.monotonic() - started < 1.0
        finally:
            for sock in silent:
                sock.close()


def test_a_slow_request_body_is_cut_off_with_a_json_408(tmp_path: Path) -> None:
    from idp.cli.worker import BODY_READ_TIMEOUT
    from tests.support import CI_SECRET

    with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path / "keys")}, workers=1) as issuer:
        sock = socket.create_connection(("127.0.0.1", issuer.port), timeout=5)
        sock.sendall(
            (
                "POST /_services/token/request-tokens HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {CI_SECRET}\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n{"
            ).encode()
        )
        started = time.monotonic()
        answer = b""
        sock.settimeout(BODY_READ_TIMEOUT + 5)
        try:
            while True:
                readable, _, _ = select.select([sock], [], [], TRICKLE_EVERY)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
                else:
                    sock.send(b" ")
        except OSError:
            pass
        elapsed = time.monotonic() - started
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head, head
        assert json.loads(body)["error"] == "request_timeout"
        assert BODY_READ_TIMEOUT - 1 < elapsed < BODY_READ_TIMEOUT + 2 * TRICKLE_EVERY + 1


def test_two_instances_on_one_host_share_no_control_socket(tmp_path: Path) -> None:
    """gunicorn's control socket defaulted to $HOME/.gunicorn/gunicorn.ctl: a second `idp
    serve` took it over and the first one's exit removed it. The issuer runs none."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    first = IssuerProcess({**env, "IDP_KEYS_DIR": str(tmp_path / "a")})
    second = IssuerProcess({**env, "IDP_KEYS_DIR": str(tmp_path / "b")})
    first.env.pop("XDG_RUNTIME_DIR", None)
    second.env.pop("XDG_RUNTIME_DIR", None)
    with first, second:
        for issuer in (first, second):
            assert requests.get(f"{issuer.issuer}/readyz", timeout=5).status_code == 200
        assert not (home / ".gunicorn").exists()
        assert not any(home.rglob("*.ctl"))
        first.stop()
        assert requests.get(f"{second.issuer}/readyz", timeout=5).status_code == 200
    for issuer in (first, second):
        log = issuer.log.decode(errors="replace")
        assert "control socket" not in log.lower(), log
        assert "Traceback" not in log
        assert issuer.returncode == 0, log
    assert os.listdir(home) == []


def test_a_fresh_worker_serves_concurrent_first_requests_without_a_5xx(tmp_path: Path) -> None:
    """Threads of one worker run the app at once: its lazily built parts (the metrics) must
    be built once; two first exchanges at once answered 500 (a duplicate metric)."""
    from concurrent.futures import ThreadPoolExecutor

    for attempt in range(3):
        with IssuerProcess({"IDP_KEYS_DIR": str(tmp_path / f"keys{attempt}")}) as issuer:
            barrier = threading.Barrier(8)
            url = f"{issuer.issuer}/id-token?audience=sts.amazonaws.com"

            def exchange(barrier: threading.Barrier = barrier, url: str = url) -> int:
                barrier.wait()
                bogus = {"Authorization": "Bearer not-a-token"}
                return requests.get(url, headers=bogus, timeout=10).status_code

            with ThreadPoolExecutor(8) as pool:
                statuses = [f.result() for f in [pool.submit(exchange) for _ in range(8)]]
        assert statuses == [401] * 8, (statuses, issuer.log.decode(errors="replace")[-2000:])
