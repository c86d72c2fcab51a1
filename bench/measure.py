"""One measured run: a wrk load plus what the server, Redis and the machine spent meanwhile."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.load import LoadResult, run_wrk
from bench.servers import Gunicorn, RedisServer


@dataclass(frozen=True)
class Run:
    target: str  # "issuer" or "floor"
    store: str  # "file", "redis", or "-" for the floor app
    endpoint: str  # "token", "jwks", "discovery", "floor"
    concurrency: int
    load: LoadResult
    server_cpu_cores: float  # gunicorn master + workers
    redis_cpu_cores: float
    other_cpu_cores: float  # the rest of the machine: other processes, kernel threads
    worker_rss_mib: list[float]
    wall_seconds: float
    redis_calls: dict[str, int] | None = field(default=None)  # per command, during the run

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        """Server CPU time per answered request: robust to what else the machine runs."""
        if not self.load.requests:
            return None
        return self.server_cpu_cores * self.wall_seconds / self.load.requests * 1000

    @property
    def redis_commands_per_request(self) -> float | None:
        if self.redis_calls is None or not self.load.requests:
            return None
        return sum(self.redis_calls.values()) / self.load.requests

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["load"]["errors"] = self.load.errors
        data["load"]["wrk_cpu_cores"] = self.load.wrk_cpu_cores
        data["redis_commands_per_request"] = self.redis_commands_per_request
        data["server_cpu_ms_per_request"] = self.server_cpu_ms_per_request
        return data


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _proc_cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        times = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def measure(
    server: Gunicorn,
    *,
    target: str,
    store: str,
    endpoint: str,
    path: str,
    concurrency: int,
    seconds: int,
    tokens_file: Path | None = None,
    redis: RedisServer | None = None,
    threads: int = 1,
    pin_cpus: str | None = None,
) -> Run:
    server.wait_idle()
    redis_proc = psutil.Process(redis.proc.pid) if redis and redis.proc else None
    calls_before = redis.command_calls() if redis else None
    server_before = server.cpu_seconds()
    redis_before = _proc_cpu(redis_proc)
    busy_before = _busy_seconds()
    wall_before = time.monotonic()

    load = run_wrk(server.base, path, concurrency, seconds, tokens_file, threads, pin_cpus)

    wall = time.monotonic() - wall_before
    busy = _busy_seconds() - busy_before
    server_cpu = server.cpu_seconds() - server_before
    redis_cpu = _proc_cpu(redis_proc) - redis_before
    calls = None
    if redis and calls_before is not None:
        after = redis.command_calls()
        calls = {
            name: count - calls_before.get(name, 0)
            for name, count in after.items()
            if count != calls_before.get(name, 0)
        }
    other = busy - server_cpu - redis_cpu - load.wrk_cpu_seconds
    return Run(
        target=target,
        store=store,
        endpoint=endpoint,
        concurrency=concurrency,
        load=load,
        server_cpu_cores=server_cpu / wall,
        redis_cpu_cores=redis_cpu / wall,
        other_cpu_cores=max(0.0, other / wall),
        worker_rss_mib=[round(size, 1) for size in server.worker_rss_mib()],
        wall_seconds=wall,
        redis_calls=calls,
    )
