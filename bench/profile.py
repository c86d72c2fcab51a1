"""Where a worker's time goes under load: `python -m bench.profile --store redis --endpoint token`.

Starts the issuer as `make bench` does, drives it with wrk, samples every gunicorn worker with
py-spy (`pip install py-spy` into the venv; it is a profiling aid, not a dependency) and splits
the samples of the request-serving thread by what they were doing, the innermost recognised
frame deciding (signing inside the rate limiter's wrapper counts as signing). Background threads
(the key ring refresher, the rate limiter's expiry timers) are reported apart.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.load import SCRIPT, wrk_binary
from bench.servers import ENDPOINTS, Issuer, RedisServer

# (category, substrings of a frame "function (path:line)"), innermost match wins; order
# breaks ties within one frame.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("signing (RS256, joserfc + cryptography)", ("KeyRing.sign ",)),
    ("request token check (HS256 verify, context)", ("request_tokens.py", "(idp/tokens/context")),
    ("claims (idp.tokens.claims)", ("(idp/tokens/claims", "(idp/tokens/images")),
    ("closed-build check (store)", ("is_build_closed",)),
    ("redis-py (network, parsing)", ("(redis/",)),
    ("rate limiter (limits)", ("(limits/", "(idp/ratelimit")),
    ("metrics (prometheus_client files)", ("(prometheus_client/",)),
    ("audit log (logging, JSON)", ("audit (", "(logging/")),
    ("JSON (json module)", ("(json/",)),
    ("Flask + Werkzeug", ("(flask/", "(werkzeug/")),
    ("idp views and other idp code", ("(idp/",)),
    ("gunicorn (accept, parse, send, close)", ("(gunicorn/",)),
]
BACKGROUND = "Thread._bootstrap"


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
    return "other (interpreter, stdlib)"


def summarise(raw_files: list[Path]) -> tuple[Counter[str], int, int]:
    """(samples per category of request threads, their total, background samples)."""
    categories: Counter[str] = Counter()
    background = 0
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue  # a line py-spy cut short
            frames = stack.split(";")
            count = int(count_text)
            # gthread workers serve requests in a thread pool: those threads start in
            # Thread._bootstrap too, but run gunicorn's handler; the rest is background.
            pooled = any("(gunicorn/workers/" in frame for frame in frames)
            if not pooled and any(frame.startswith(BACKGROUND) for frame in frames[:3]):
                background += count
                continue
            categories[classify(frames)] += count
    return categories, sum(categories.values()), background


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--store", choices=("file", "redis"), default="file")
    parser.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="token")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python CPU, not waiting or signing in C)",
    )
    parser.add_argument(
        "--keep", type=Path, help="an existing folder to keep py-spy's raw stacks in"
    )
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    path = ENDPOINTS[args.endpoint]
    with tempfile.TemporaryDirectory(prefix="idp-profile-") as tmp:
        workdir = args.keep or Path(tmp)
        redis = RedisServer(workdir) if args.store == "redis" else None
        if redis is not None:
            redis.start()
        try:
            url = redis.url if redis else None
            with Issuer(args.store, args.workers, workdir, url, extra) as issuer:
                tokens_file = workdir / "tokens.txt"
                tokens_file.write_text("\n".join(issuer.open_request_tokens(16)) + "\n")
                argv_wrk = [wrk_binary(), "-t1", f"-c{args.concurrency}"]
                argv_wrk += [f"-d{args.seconds + 3}s", "-s", str(SCRIPT), issuer.base + path]
                argv_wrk += ["--", path, str(tokens_file)]
                load = subprocess.Popen(argv_wrk, stdout=subprocess.DEVNULL)
                time.sleep(1.5)
                outputs = []
                spies = []
                for i, worker in enumerate(issuer.workers()):
                    out = workdir / f"worker-{i}.txt"
                    outputs.append(out)
                    spy = [py_spy, "record", "-p", str(worker.pid), "-d", str(args.seconds)]
                    spy += ["-r", str(args.rate), "-f", "raw", "-o", str(out), "--nonblocking"]
                    if args.gil:
                        spy.append("--gil")
                    spies.append(
                        subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    )
                for spy_proc in spies:
                    spy_proc.wait()
                load.wait()
                categories, total, background = summarise([p for p in outputs if p.exists()])
        finally:
            if redis is not None:
                redis.stop()
    print(
        f"{args.endpoint} on the {args.store} store, c={args.concurrency}: {total} samples of "
        f"request threads ({background} more in background threads, left out)"
    )
    for category, count in categories.most_common():
        print(f"  {count / total * 100:5.1f}%  {category}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
