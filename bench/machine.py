"""What the results were measured on: CPU, memory, kernel, Python, library and tool versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from typing import Any

import psutil

from bench.load import wrk_version

LIBRARIES = (
    "joserfc",
    "cryptography",
    "flask",
    "werkzeug",
    "gunicorn",
    "redis",
    "prometheus-client",
    "limits",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "absent"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    for word in done.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return done.stdout.strip() or "?"


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the machine keeps busy right now, before the bench adds anything."""
    return psutil.cpu_percent(interval=seconds) / 100 * (psutil.cpu_count() or 1)


class Quiet:
    """Waits, within a total time budget, for other processes to leave the CPUs alone.

    The machine may be shared (CI jobs, other people's tests): a run made while something
    else keeps a core busy measures that something too. Before each run, if the previous one
    saw more than `threshold` cores busy outside the bench, wait for the load to pass.
    """

    def __init__(self, budget_s: float, threshold_cores: float = 0.25) -> None:
        self.budget_s = budget_s
        self.threshold = threshold_cores
        self.last_other = 0.0
        self.waited_s = 0.0

    def wait(self) -> None:
        if self.last_other <= self.threshold:
            return
        while self.budget_s > 0:
            started = time.monotonic()
            busy = busy_cores(0.5)
            spent = time.monotonic() - started
            self.budget_s -= spent
            self.waited_s += spent
            if busy <= self.threshold:
                self.last_other = busy
                return

    def saw(self, other_cores: float) -> None:
        self.last_other = other_cores


def describe() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "cpu_affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "kernel": f"{platform.system()} {platform.release()}",
        "hostname": platform.node(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "wrk": wrk_version(),
        "redis_server": redis_server_version(),
        "busy_cores_before": round(busy_cores(), 2),
    }
