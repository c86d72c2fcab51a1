"""Driving load with `wrk` (a separate process) and reading its results back.

The load generator shares the machine with the server, so its own CPU time is measured too
(`os.times()` of reaped children around the run): a generator near one full core per wrk thread
is saturated, and its numbers would describe wrk, not the issuer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int  # connect + read + write + timeout
    socket_detail: dict[str, int]
    wrk_cpu_seconds: float
    wrk_threads: int

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def wrk_cpu_cores(self) -> float:
        """Cores the generator kept busy on average (1.0 = one core all the time)."""
        return self.wrk_cpu_seconds / self.seconds if self.seconds else 0.0


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not on PATH: `make bench` installs it with apt-get")
    return binary


def wrk_version() -> str:
    done = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else "?"


def run_wrk(
    base: str,
    path: str,
    connections: int,
    seconds: int,
    tokens_file: Path | None = None,
    threads: int = 1,
    pin_cpus: str | None = None,
) -> LoadResult:
    """`connections` concurrent connections against base + path for `seconds` (wrk takes whole
    seconds)."""
    threads = max(1, min(threads, connections))
    argv = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    argv += ["-s", str(SCRIPT), base + path, "--", path]
    if tokens_file is not None:
        argv.append(str(tokens_file))
    if pin_cpus:
        argv = ["taskset", "-c", pin_cpus, *argv]
    before = os.times()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (exit {done.returncode}) for {base + path}:\n{done.stdout}\n{done.stderr}"
        )
    raw = json.loads(line[len(MARKER) :])
    duration = raw["duration_us"] / 1e6
    sockets = {key: int(raw[key]) for key in ("connect", "read", "write", "timeout")}
    return LoadResult(
        requests=int(raw["requests"]),
        seconds=duration,
        rps=raw["requests"] / duration if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        non2xx=int(raw["non2xx"]),
        socket_errors=sum(sockets.values()),
        socket_detail=sockets,
        wrk_cpu_seconds=cpu,
        wrk_threads=threads,
    )
