"""The results: a Markdown table (printed and written), a JSON file and a PNG plot."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.ceilings import SigningCeiling
from bench.measure import Run
from bench.servers import RoundTrips
from idp.cli.worker import THREADS

REFERENCE_CONCURRENCY = 32
# A command issued on every request shows as >= 1 per request; the refresher's few commands a
# second, once subtracted, leave noise far below this.
NO_COMMANDS = 0.01
# wrk runs one thread per `--threads`; near a full core per thread it is the bottleneck.
GENERATOR_SATURATED = 0.9
FLOOR_NAMES = {
    "floor": "framework floor (constant-JSON Flask route)",
    "floor-sign": "minting floor (Flask route that only signs)",
}
# Cores kept busy by processes outside the bench above which a run is flagged, and its timing
# targets are not judged (a neighbour's load is not the issuer's regression).
BUSY = 0.25
# The exchange may cost at most this much CPU per request over the minting floor's.
MINT_CPU_OVER_FLOOR = 1.15

# What `idp serve` runs (the bench starts it exactly so), for the report's plan line.
WORKER_MODEL = f"gthread, {THREADS} threads each"


@dataclass(frozen=True)
class Results:
    started: str
    elapsed_s: float
    mode: str
    machine: dict[str, Any]
    plan: dict[str, Any]
    ceiling: SigningCeiling
    redis_background_per_s: dict[str, float]
    redis_round_trips: dict[str, RoundTrips]  # endpoint -> MONITOR probe (Redis store)
    runs: list[Run]

    def floor_rps(self, concurrency: int) -> float | None:
        for run in self.runs:
            if run.endpoint == "floor" and run.concurrency == concurrency:
                return run.load.rps
        return None

    def ceiling_rps(self, run: Run) -> float | None:
        if run.endpoint in ("token", "floor-sign"):
            return self.ceiling.tokens_per_s
        if run.endpoint in ("jwks", "discovery"):
            return self.floor_rps(run.concurrency)
        return None

    def ratio(self, run: Run) -> float | None:
        ceiling = self.ceiling_rps(run)
        return run.load.rps / ceiling if ceiling else None

    def ceiling_cpu_ms(self, run: Run) -> float | None:
        """CPU time per request of the ceiling: one signature, or one floor request."""
        if run.endpoint in ("token", "floor-sign"):
            return self.ceiling.cpu_ms_per_token
        if run.endpoint in ("jwks", "discovery"):
            floor = self.find("-", "floor", run.concurrency)
            return floor.server_cpu_ms_per_request if floor else None
        return None

    def cpu_ratio(self, run: Run) -> float | None:
        """The ceiling's CPU per request over the server's: the throughput ratio the server
        would reach with the machine to itself; other processes cannot skew it."""
        ceiling, spent = self.ceiling_cpu_ms(run), run.server_cpu_ms_per_request
        return ceiling / spent if ceiling and spent else None

    def net_redis_per_request(self, run: Run) -> float | None:
        """Redis commands per request, less the key-ring refresher's background rate."""
        if run.redis_calls is None or not run.load.requests:
            return None
        background = sum(self.redis_background_per_s.values()) * run.load.seconds
        return max(0.0, sum(run.redis_calls.values()) - background) / run.load.requests

    def find(self, store: str, endpoint: str, concurrency: int) -> Run | None:
        for run in self.runs:
            if (run.store, run.endpoint, run.concurrency) == (store, endpoint, concurrency):
                return run
        return None

    def to_json(self) -> dict[str, Any]:
        runs = []
        for run in self.runs:
            data = run.to_json()
            data["ceiling_rps"] = self.ceiling_rps(run)
            data["ratio_to_ceiling"] = self.ratio(run)
            data["cpu_ratio_to_ceiling"] = self.cpu_ratio(run)
            data["redis_commands_per_request_net"] = self.net_redis_per_request(run)
            runs.append(data)
        return {
            "started": self.started,
            "elapsed_s": self.elapsed_s,
            "mode": self.mode,
            "machine": self.machine,
            "plan": self.plan,
            "ceiling": asdict(self.ceiling),
            "redis_background_per_s": self.redis_background_per_s,
            "redis_round_trips": {
                endpoint: {**asdict(probe), "per_request": probe.per_request}
                for endpoint, probe in self.redis_round_trips.items()
            },
            "runs": runs,
            "targets": [asdict(t) for t in targets(self)],
        }


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool | None  # None: not measured in this run
    # False when a run it rests on had `other CPU` above BUSY: reported, not judged.
    judged: bool = True


def _quiet(*runs: Run | None) -> bool:
    return all(run is None or run.other_cpu_cores <= BUSY for run in runs)


def missed(results: Results) -> list[Target]:
    """The judged targets this run missed: `python -m bench` exits non-zero when any is."""
    return [t for t in targets(results) if t.judged and t.met is False]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _busy_note(run: Run) -> str:
    if run.other_cpu_cores <= BUSY:
        return ""
    return f"; machine busy: other processes used {run.other_cpu_cores:.2f} cores"


def _ratio_text(results: Results, run: Run) -> str:
    cpu = results.cpu_ratio(run)
    text = f"{_pct(results.ratio(run))} (by CPU time: {_pct(cpu)})"
    if run.endpoint == "token":
        floor = results.find("-", "floor-sign", run.concurrency)
        if floor is not None:
            text += f"; a Flask route that only signs: {_pct(results.ratio(floor))}"
    return text + _busy_note(run)


def targets(results: Results) -> list[Target]:
    c = REFERENCE_CONCURRENCY
    found: list[Target] = []
    stores = sorted({r.store for r in results.runs if r.target == "issuer"})
    for store in stores:
        token = results.find(store, "token", c)
        if token is None:
            found.append(Target(f"token exchange ({store}) at c={c}", "not run", None))
        else:
            floor = results.find("-", "floor-sign", c)
            spent = token.server_cpu_ms_per_request
            floor_cpu = floor.server_cpu_ms_per_request if floor else None
            over = spent / floor_cpu if spent and floor_cpu else None
            found += [
                Target(
                    f"token exchange ({store}), c={c}: CPU per request <= "
                    f"{MINT_CPU_OVER_FLOOR:.2f}x the minting floor's",
                    (
                        f"{over:.2f}x ({spent:.2f} vs {floor_cpu:.2f} ms/req); "
                        if over is not None and spent and floor_cpu
                        else "no minting floor at this level; "
                    )
                    + _ratio_text(results, token)
                    + (_busy_note(floor) if floor else ""),
                    None if over is None else over <= MINT_CPU_OVER_FLOOR,
                    _quiet(token, floor),
                ),
                Target(
                    f"token exchange ({store}), c={c}: p99 < 50 ms",
                    f"{token.load.p99_ms:.1f} ms{_busy_note(token)}",
                    token.load.p99_ms < 50,
                    _quiet(token),
                ),
                Target(
                    f"token exchange ({store}), c={c}: zero errors",
                    str(token.load.errors),
                    token.load.errors == 0,
                ),
            ]
        for endpoint in ("jwks", "discovery"):
            run = results.find(store, endpoint, c)
            ratio = results.ratio(run) if run else None
            floor = results.find("-", "floor", c)
            found.append(
                Target(
                    f"{endpoint} ({store}), c={c}: >= 90% of the framework floor",
                    (_ratio_text(results, run) + (_busy_note(floor) if floor else ""))
                    if run
                    else "not run",
                    None if ratio is None else ratio >= 0.90,
                    _quiet(run, floor),
                )
            )
    redis_runs = [r for r in results.runs if r.store == "redis"]
    if redis_runs:
        published = [
            results.net_redis_per_request(r) or 0.0
            for r in redis_runs
            if r.endpoint in ("jwks", "discovery")
        ]
        tokens = [
            results.net_redis_per_request(r) or 0.0 for r in redis_runs if r.endpoint == "token"
        ]
        if published:
            worst = max(published)
            found.append(
                Target(
                    "jwks and discovery (redis): zero Redis commands per request",
                    f"max {worst:.3f}",
                    worst < NO_COMMANDS,
                )
            )
        probe = results.redis_round_trips.get("token")
        if probe is not None:
            sent = ", ".join(f"{n} {name}" for name, n in sorted(probe.network.items()))
            found.append(
                Target(
                    "token exchange (redis): at most one Redis round trip per request",
                    f"{probe.per_request:.2f} ({sent} for {probe.requests} requests; "
                    f"{max(tokens, default=0):.1f} commands/request counting those in scripts)",
                    probe.per_request <= 1.0,
                )
            )
    generator = max((r.load.wrk_cpu_cores / r.load.wrk_threads for r in results.runs), default=0)
    found.append(
        Target(
            "load generator not saturated (wrk CPU per thread < 0.9 core)",
            f"max {generator:.2f} core",
            generator < GENERATOR_SATURATED,
        )
    )
    return found


# --- Markdown ----------------------------------------------------------------------------


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: Results) -> str:
    m, plan, ceiling = results.machine, results.plan, results.ceiling
    lines = [
        f"# idp benchmark, {results.started} ({results.mode} mode, {results.elapsed_s:.0f} s)",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['memory_gib']:.1f} GiB, "
        f"{m['kernel']}; Python {m['python']}; {m['wrk']}; redis-server {m['redis_server']}.",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + ".",
        f"Plan: {plan['workers']} gunicorn workers ({WORKER_MODEL}) and {plan['workers']} signing "
        f"processes; {plan['seconds']} s per run; wrk {plan['wrk_threads']} thread(s)"
        + (f" pinned to CPU {plan['pin_wrk']}" if plan.get("pin_wrk") else ", not pinned")
        + f"; {plan['tokens']} request tokens rotated"
        + (
            "; issuer env overrides: "
            + ", ".join(f"`{k}={v}`" for k, v in plan["issuer_env"].items())
            if plan.get("issuer_env")
            else ""
        )
        + ".",
        "",
        "## Ceilings",
        "",
    ]
    lines += _table(
        ["ceiling", "value"],
        [
            [
                f"raw signing, {ceiling.alg}, {ceiling.processes} processes, "
                f"{ceiling.claims_bytes} B of claims",
                f"{ceiling.tokens_per_s:,.0f} tokens/s ({ceiling.cpu_ms_per_token:.3f} ms of CPU "
                "per token)",
            ],
            *[
                [
                    f"{FLOOR_NAMES[r.endpoint]}, c={r.concurrency}",
                    f"{r.load.rps:,.0f} req/s ({r.server_cpu_ms_per_request or 0:.3f} ms of "
                    "server CPU per request)"
                    + (
                        f", {_pct(results.ratio(r))} of the signing ceiling"
                        if r.endpoint == "floor-sign"
                        else ""
                    ),
                ]
                for r in results.runs
                if r.endpoint in FLOOR_NAMES
            ],
        ],
    )
    background = sum(results.redis_background_per_s.values())
    lines += [
        "",
        "## Runs",
        "",
        "`vs ceiling`: req/s of token exchange over the signing ceiling, of JWKS and discovery "
        "over the floor at the same concurrency. `CPU vs ceiling`: the same ratio by CPU time "
        "per request (the ceiling's over the server's), which other processes on the machine "
        "cannot skew. `Redis cmd/req`: `INFO commandstats`, net of the key-ring refresher's "
        f"background ({background:.1f} commands/s measured idle). `server CPU`, `wrk CPU`, "
        "`other CPU` (everything else: Redis, other processes, kernel threads): cores kept "
        "busy, 1.00 = one core for the whole run; `CPU ms/req`: server CPU time per request.",
        "",
    ]
    rows = []
    for run in results.runs:
        rss = max(run.worker_rss_mib, default=0.0)
        rows.append(
            [
                run.store,
                run.endpoint,
                str(run.concurrency),
                _num(run.load.rps),
                _num(run.load.p50_ms, 1),
                _num(run.load.p95_ms, 1),
                _num(run.load.p99_ms, 1),
                str(run.load.errors),
                _num(results.ceiling_rps(run)),
                _pct(results.ratio(run)),
                _pct(results.cpu_ratio(run)),
                _num(results.net_redis_per_request(run), 3),
                _num(rss, 0),
                _num(run.server_cpu_cores, 2),
                _num(run.server_cpu_ms_per_request, 2),
                _num(run.load.wrk_cpu_cores, 2),
                _num(run.other_cpu_cores + run.redis_cpu_cores, 2),
            ]
        )
    lines += _table(
        [
            "store",
            "endpoint",
            "c",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "ceiling req/s",
            "vs ceiling",
            "CPU vs ceiling",
            "Redis cmd/req",
            "RSS/worker MiB",
            "server CPU",
            "CPU ms/req",
            "wrk CPU",
            "other CPU",
        ],
        rows,
    )
    if results.redis_round_trips:
        lines += [
            "",
            "## Redis traffic per request (Redis store)",
            "",
            "Over requests made one by one: round trips are the socket reads Redis processed "
            "(`INFO stats` total_reads_processed, net of the key ring refresher; a pipeline is "
            "one read); `MONITOR` tells what was sent and what a Lua script ran inside Redis "
            "(which `INFO commandstats`, hence `Redis cmd/req` above, counts too).",
            "",
        ]

        def _counts(counts: dict[str, int], requests: int) -> str:
            return ", ".join(f"{name} {n / requests:g}" for name, n in sorted(counts.items()))

        lines += _table(
            ["endpoint", "round trips/request", "sent, per request", "inside scripts, per request"],
            [
                [
                    endpoint,
                    f"{probe.per_request:.2f}",
                    _counts(probe.network, probe.requests) or "none",
                    _counts(probe.scripted, probe.requests) or "none",
                ]
                for endpoint, probe in results.redis_round_trips.items()
            ],
        )
    lines += ["", "## Targets", ""]
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    lines += _table(
        ["target", "measured", ""],
        [
            [
                t.name,
                t.measured,
                verdict[t.met] if t.judged or t.met is None else "busy machine, not judged",
            ]
            for t in targets(results)
        ],
    )
    return "\n".join(lines) + "\n"


# --- plot --------------------------------------------------------------------------------


# One colour per endpoint, one line style per store.
COLOURS = {
    "token": "tab:green",
    "jwks": "tab:blue",
    "discovery": "tab:purple",
    "floor": "tab:gray",
    "floor-sign": "tab:olive",
}
STYLES = {"file": "-", "redis": "--", "-": ":"}


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    fig, (rps_ax, p99_ax) = plt.subplots(1, 2, figsize=(13, 5.8))
    series: dict[tuple[str, str], list[Run]] = {}
    for run in results.runs:
        series.setdefault((run.endpoint, run.store), []).append(run)
    for (endpoint, store), runs in series.items():
        runs.sort(key=lambda r: r.concurrency)
        label = FLOOR_NAMES.get(endpoint, f"{endpoint} ({store} store)")
        xs = [r.concurrency for r in runs]
        style = {"color": COLOURS.get(endpoint), "linestyle": STYLES.get(store, "-")}
        rps_ax.plot(xs, [r.load.rps for r in runs], marker="o", label=label, **style)
        p99_ax.plot(xs, [r.load.p99_ms for r in runs], marker="o", **style)
    rps_ax.axhline(
        results.ceiling.tokens_per_s,
        color="black",
        linewidth=1.2,
        label=f"raw signing ceiling ({results.ceiling.processes} processes)",
    )
    p99_ax.axhline(50, color="red", linewidth=1.2, label="token p99 target (50 ms)")
    levels = sorted({r.concurrency for r in results.runs})
    for ax in (rps_ax, p99_ax):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(levels))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.grid(True, which="both", alpha=0.3)
    rps_ax.set_ylabel("requests/s")
    rps_ax.set_ylim(bottom=0)
    rps_ax.set_title("Throughput")
    p99_ax.set_yscale("log")
    p99_ax.yaxis.set_major_formatter(ScalarFormatter())
    p99_ax.yaxis.set_minor_formatter(NullFormatter())
    p99_ax.set_ylabel("p99 latency (ms, log scale)")
    p99_ax.set_title("p99 latency")
    handles, labels = rps_ax.get_legend_handles_labels()
    more_handles, more_labels = p99_ax.get_legend_handles_labels()
    fig.legend(
        handles + more_handles,
        labels + more_labels,
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    m = results.machine
    fig.suptitle(
        f"idp bench {results.started} ({results.mode}): {m['cpu_model']}, {m['cpu_count']} CPUs, "
        f"{results.plan['workers']} gunicorn workers"
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: Results, folder: Path) -> dict[str, Path]:
    """Write `bench-<stamp>.md/.json/.png` and `latest.*` copies; return the stamped paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = results.started.replace(":", "").replace("-", "")
    text = markdown(results)
    data = json.dumps(results.to_json(), indent=2) + "\n"
    paths: dict[str, Path] = {}
    for suffix in ("md", "json", "png"):
        paths[suffix] = folder / f"bench-{stamp}.{suffix}"
    paths["md"].write_text(text)
    paths["json"].write_text(data)
    plot(results, paths["png"])
    for suffix, path in list(paths.items()):
        shutil.copyfile(path, folder / f"latest.{suffix}")
    return paths
