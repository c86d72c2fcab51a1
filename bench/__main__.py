"""`python -m bench` (`make bench`): run the whole benchmark and write the report.

Default: concurrency 1, 8, 32, 128, 6 s per run, under 5 minutes. `--quick` or BENCH_QUICK=1:
concurrency 8 and 32, 2 s per run, under a minute. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import machine, report
from bench.ceilings import SigningCeiling, signing_ceiling, write_signing_spec
from bench.measure import Run, measure
from bench.servers import ENDPOINTS, Floor, Gunicorn, Issuer, RedisServer, RoundTrips
from idp.config import load_settings

RESULTS = Path(__file__).resolve().parent / "results"
# Requests made one by one under MONITOR to count Redis round trips per request.
PROBE_REQUESTS = 50
# Requests made one by one before measuring: imports, first metric files, caches.
WARM_UP_REQUESTS = 40


@dataclass(frozen=True)
class Plan:
    mode: str
    concurrency: tuple[int, ...]
    sign_floor_concurrency: tuple[int, ...]
    seconds: int
    ceiling_seconds: float
    background_window_s: float  # idle window measuring the key ring refresher's Redis traffic
    quiet_budget_s: float  # total time the bench may wait for a busy machine to calm down
    workers: int
    tokens: int
    wrk_threads: int
    pin_wrk: str | None
    stores: tuple[str, ...]
    issuer_env: dict[str, str]


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("give positive integers, e.g. 1,8,32,128")
    return levels


def parse_plan(argv: list[str] | None) -> tuple[Plan, Path]:
    quick_env = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0")
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=quick_env, help="under a minute")
    parser.add_argument("--concurrency", type=_levels, help="comma list of wrk -c levels")
    parser.add_argument("--seconds", type=int, help="seconds per run (whole seconds)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gunicorn workers and signing processes (default: CPU count, as `idp serve`)",
    )
    parser.add_argument("--tokens", type=int, default=16, help="request tokens rotated by wrk")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--pin-wrk", metavar="CPUS", help="run wrk under `taskset -c CPUS`")
    parser.add_argument("--stores", default="file,redis", help="file, redis or file,redis")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra issuer environment, e.g. IDP_RATE_LIMIT_STEP=off to see what it costs",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    if not stores or not set(stores) <= {"file", "redis"}:
        parser.error("--stores takes file, redis or file,redis")
    extra = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(extra) != len(args.env):
        parser.error("--env takes NAME=VALUE")
    levels = args.concurrency or ((8, 32) if quick else (1, 8, 32, 128))
    plan = Plan(
        mode="quick" if quick else "full",
        concurrency=levels,
        sign_floor_concurrency=(32,) if quick and 32 in levels else levels,
        seconds=args.seconds or (2 if quick else 6),
        ceiling_seconds=2.0 if quick else 5.0,
        background_window_s=2.0 if quick else 4.0,
        quiet_budget_s=4.0 if quick else 30.0,
        workers=args.workers,
        tokens=args.tokens,
        wrk_threads=args.wrk_threads,
        pin_wrk=args.pin_wrk,
        stores=stores,
        issuer_env=extra,
    )
    return plan, args.out


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Bench:
    plan: Plan
    workdir: Path
    quiet: machine.Quiet
    runs: list[Run] = field(default_factory=list)
    ceiling: SigningCeiling | None = None
    background: dict[str, float] = field(default_factory=dict)
    round_trips: dict[str, RoundTrips] = field(default_factory=dict)

    def measure(
        self,
        server: Gunicorn,
        store: str,
        endpoint: str,
        path: str,
        tokens_file: Path | None = None,
        redis: RedisServer | None = None,
        levels: tuple[int, ...] | None = None,
    ) -> None:
        for level in levels or self.plan.concurrency:
            self.quiet.wait()
            run = measure(
                server,
                target="floor" if endpoint.startswith("floor") else "issuer",
                store=store,
                endpoint=endpoint,
                path=path,
                concurrency=level,
                seconds=self.plan.seconds,
                tokens_file=tokens_file,
                redis=redis,
                threads=self.plan.wrk_threads,
                pin_cpus=self.plan.pin_wrk,
            )
            self.quiet.saw(run.other_cpu_cores)
            load = run.load
            _say(
                f"  {store:5} {endpoint:9} c={level:<4} {load.rps:8,.0f} req/s  p99 "
                f"{load.p99_ms:7.1f} ms  errors {load.errors}  CPU: server "
                f"{run.server_cpu_cores:.2f} ({run.server_cpu_ms_per_request or 0:.2f} ms/req), "
                f"wrk {load.wrk_cpu_cores:.2f}, other {run.other_cpu_cores:.2f} cores"
            )
            self.runs.append(run)

    def floors(self, signing: Path) -> None:
        _say(
            "floors: a constant-JSON route and a signing-only route, in Flask under idp serve's "
            f"gunicorn, {self.plan.workers} workers"
        )
        with Floor(self.plan.workers, self.workdir, signing) as floor:
            floor.fetch(Floor.PATH, [], WARM_UP_REQUESTS)
            self.measure(floor, "-", "floor", Floor.PATH)
            floor.fetch(Floor.SIGN_PATH, [], WARM_UP_REQUESTS)
            levels = self.plan.sign_floor_concurrency
            self.measure(floor, "-", "floor-sign", Floor.SIGN_PATH, levels=levels)

    def issuer(self, store: str) -> None:
        _say(f"issuer, {store} store: idp serve --workers {self.plan.workers}")
        redis = RedisServer(self.workdir) if store == "redis" else None
        if redis is not None:
            redis.start()
        try:
            url = redis.url if redis else None
            with Issuer(
                store, self.plan.workers, self.workdir, url, self.plan.issuer_env
            ) as issuer:
                if self.ceiling is None:
                    self.measure_ceilings(issuer)
                tokens = issuer.open_request_tokens(self.plan.tokens)
                tokens_file = self.workdir / f"tokens-{store}.txt"
                tokens_file.write_text("\n".join(tokens) + "\n")
                for endpoint, path in ENDPOINTS.items():
                    issuer.fetch(path, tokens if endpoint == "token" else [], WARM_UP_REQUESTS)
                if redis is not None:
                    self.redis_probes(issuer, redis, tokens)
                for endpoint, path in ENDPOINTS.items():
                    rotated = tokens_file if endpoint == "token" else None
                    self.measure(issuer, store, endpoint, path, rotated, redis)
        finally:
            if redis is not None:
                redis.stop()

    def measure_ceilings(self, issuer: Issuer) -> None:
        """With the first issuer idle: the raw signing rate of its key, then the floors."""
        self.quiet.wait()
        settings = load_settings(issuer.env_vars)
        self.ceiling = signing_ceiling(settings, self.plan.workers, self.plan.ceiling_seconds)
        _say(
            f"signing ceiling: {self.ceiling.tokens_per_s:,.0f} tokens/s "
            f"({self.ceiling.processes} processes, {self.ceiling.alg}, "
            f"{self.ceiling.cpu_ms_per_token:.2f} ms CPU each)"
        )
        self.floors(write_signing_spec(settings, self.workdir / "signing.json"))

    def redis_probes(self, issuer: Issuer, redis: RedisServer, tokens: list[str]) -> None:
        """The refresher's background rate while idle; round trips per request under MONITOR."""
        window = self.plan.background_window_s
        before = redis.command_calls()
        time.sleep(window)
        after = redis.command_calls()
        self.background = {
            name: (count - before.get(name, 0)) / window
            for name, count in after.items()
            if count != before.get(name, 0)
        }
        _say(f"  redis background while idle: {self.background} commands/s")
        for endpoint, path in ENDPOINTS.items():
            sent = tokens if endpoint == "token" else []
            probe = redis.round_trips(lambda: issuer.fetch(path, sent, PROBE_REQUESTS))  # noqa: B023
            self.round_trips[endpoint] = probe
            _say(
                f"  redis round trips per {endpoint} request: {probe.per_request:.2f} "
                f"(sent {probe.network}, inside scripts {probe.scripted})"
            )


def main(argv: list[str] | None = None) -> int:
    plan, out = parse_plan(argv)
    started = datetime.now(UTC).replace(microsecond=0)
    clock = time.monotonic()
    about = machine.describe()
    _say(
        f"idp bench ({plan.mode}): {about['cpu_model']}, {about['cpu_count']} CPUs, "
        f"{plan.workers} workers, c={','.join(map(str, plan.concurrency))}, {plan.seconds} s/run"
    )
    quiet = machine.Quiet(plan.quiet_budget_s)
    quiet.saw(about["busy_cores_before"])
    if about["busy_cores_before"] > quiet.threshold:
        _say(
            f"warning: other processes keep {about['busy_cores_before']:.2f} cores busy; the "
            "bench waits a little for them, then measures anyway (see the `other CPU` column)"
        )
    with tempfile.TemporaryDirectory(prefix="idp-bench-") as tmp:
        bench = Bench(plan, Path(tmp), quiet)
        for store in plan.stores:
            bench.issuer(store)
    assert bench.ceiling is not None
    about["waited_for_quiet_s"] = round(quiet.waited_s, 1)
    results = report.Results(
        started=started.isoformat().replace("+00:00", "Z"),
        elapsed_s=time.monotonic() - clock,
        mode=plan.mode,
        machine=about,
        plan={**asdict(plan), "concurrency": list(plan.concurrency)},
        ceiling=bench.ceiling,
        redis_background_per_s=bench.background,
        redis_round_trips=bench.round_trips,
        runs=bench.runs,
    )
    paths = report.write(results, out)
    print(report.markdown(results))
    _say("written: " + ", ".join(str(p) for p in paths.values()))
    missed = report.missed(results)
    unjudged = [t for t in report.targets(results) if not t.judged and t.met is not None]
    if unjudged:
        _say(
            f"busy machine, not judged: {len(unjudged)} timing targets rest on runs whose "
            f"`other CPU` was above {report.BUSY} cores"
        )
    if missed:
        # A regression on a quiet machine must be visible to whoever runs `make bench`.
        _say("targets missed on a quiet run: " + "; ".join(t.name for t in missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
