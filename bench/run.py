"""Run the benchmarks and write bench/results.json and BENCHMARKS.md.

    python bench/run.py            # everything: about 22 minutes on 2 cores, plus a one-off
                                   # ~20 minute build of the 1M-job ledger kept in bench/out/
    python bench/run.py --quick    # a reduced grid and a 50k-job ledger: a few minutes
    python bench/run.py --only a,b # some sections; the others keep their last results
Sections: a (efficiency grid), b (ledger overhead), profile, c (resume at scale), d (export,
reports, analyze), plan (plan 1M + status), e (peers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import efficiency, overhead, peers_bench, scale  # noqa: E402
from bench.build_ledger import build_accepted_ledger  # noqa: E402
from bench.hotspots import profile_run  # noqa: E402
from bench.machine import machine_info  # noqa: E402
from bench.report import render  # noqa: E402
from bench.simproc import pin_client  # noqa: E402
from ledger.db import open_ledger  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"
REPORT = ROOT / "BENCHMARKS.md"
OUT = ROOT / "bench" / "out"
SECTIONS = ("a", "b", "profile", "c", "d", "plan", "e")
SIZES = {
    False: {"grid": efficiency.FULL, "overhead_jobs": 3000, "overhead_c": 16,
            "profile_jobs": 12000, "big": (1_000_000, 900_000), "plan": 1_000_000,
            "peers": (2560, 256, 200.0)},
    True: {"grid": efficiency.QUICK, "overhead_jobs": 600, "overhead_c": 16,
           "profile_jobs": 800, "big": (50_000, 45_000), "plan": 50_000,
           "peers": (300, 64, 200.0)},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def big_ledger(n_jobs: int, n_accepted: int) -> dict[str, Any]:
    """The scale ledger, built once and kept in bench/out/ (it takes minutes at 1M)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"big-{n_jobs}-{n_accepted}.db"
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        log(f"building {path.name} ({n_jobs:,} jobs, {n_accepted:,} accepted) ...")
        built = build_accepted_ledger(path, n_jobs, n_accepted)
        meta.write_text(json.dumps({"jobs": n_jobs, "accepted": n_accepted,
                                    "seconds": built.seconds}))
    else:
        # A kept ledger from an older schema is brought to head here, once, so no timed
        # command below pays for the migration (a user's first command after an upgrade does).
        open_ledger(str(path)).dispose()
    info = json.loads(meta.read_text())
    info["path"] = str(path)
    info["size_mib"] = path.stat().st_size / 2**20
    return info


def grid_text(grid: efficiency.Grid) -> str:
    repeats = (f"The fault-free cells a target is judged on (c=64, and c=256 at 1 s) run "
               f"{grid.target_repeats} times each, one after another; the row shown is the "
               "median run by efficiency, and the Targets table lists every run's figure. "
               if grid.target_repeats > 1 else "")
    return (f"Jobs per cell: max(5 x concurrency, ideal rate x {grid.seconds_per_cell:g} s), "
            f"capped at {grid.max_jobs:,}. {repeats}A cell still running after {grid.time_cap_s:g} s is "
            "stopped like Ctrl-C (stop = interrupted) and its rate is taken over the time it "
            "ran. Faults: 429 5% with Retry-After "
            f"{efficiency.RETRY_AFTER_S:g} s; 5xx 2% = 1% 500, 0.5% 502, 0.5% 503. Run "
            "settings are the product defaults (backoff base 0.5 s, 3 tries per model, chain "
            "of 3 models). Lognormal: median = the latency shown, sigma "
            f"{efficiency.LOGNORMAL_SIGMA}; ideal uses the mean (x1.133). 'idle workers' = "
            "1 - (sum of request latencies) / (concurrency x wall): worker time not spent "
            "waiting on a response (ledger writes, filter, store-lock and GIL queueing, the "
            "shared 429 cooldown, and backoffs only when no other job was left to send: a job "
            "waiting out its backoff steps aside for the next one). 'of which waiting for' is "
            "the part the run loop counts itself (RunStats.waited_s, also in `run`'s summary), "
            "as a share of all worker time: the 429/402 pause every worker honours, --rpm "
            "spacing, a backoff with nothing else left to send, budget held by requests in "
            "flight, no job left to start while the other workers finish theirs (the run's "
            "tail), the commit of each attempt's intent before its request leaves (the "
            "ledger's write latency, its queueing behind other commits included); the rest of "
            "the idle time is the loop's own work and queueing for the CPU. 'server busy' is "
            "the simulator's own record of the same run: the request-seconds it held a request "
            "of ours open (integrated over time, on its clock, from reading a request to handing "
            "back its answer) / (concurrency x wall); 1 - idle workers is the client's view of "
            "the same time, larger by the loopback wire and by answers that wait for the "
            "client's CPU before a worker reads them.")


def save(res: dict[str, Any], started: float, partial: bool) -> None:
    """Written after every section, so a late failure keeps what was measured."""
    wall = time.perf_counter() - started
    res["wall_s"] = res.get("previous_wall_s", 0) + wall if partial else wall
    RESULTS.write_text(json.dumps(res, indent=1, default=str) + "\n")
    REPORT.write_text(render(res), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced grid and sizes")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections out of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    sizes = SIZES[args.quick]
    partial = set(only) != set(SECTIONS)
    res: dict[str, Any] = json.loads(RESULTS.read_text()) if partial and RESULTS.exists() \
        else {}
    res["previous_wall_s"] = res.get("wall_s", 0) if partial else 0
    started = time.perf_counter()
    pin_client()
    res["machine"] = machine_info()
    res["mode"] = "quick" if args.quick else "full"
    if "a" in only:
        log("(a) efficiency grid")
        res["efficiency"], res["efficiency_rpm"] = efficiency.run_grid(sizes["grid"], log)
        res["efficiency_grid"] = {**asdict(sizes["grid"]), "text": grid_text(sizes["grid"])}
        save(res, started, partial)
    if "b" in only:
        log("(b) ledger overhead")
        res["overhead"] = overhead.run_overhead(sizes["overhead_jobs"], sizes["overhead_c"],
                                                log)
        save(res, started, partial)
    if "profile" in only:
        log("profile (py-spy)")
        res["hotspots"] = profile_run(sizes["profile_jobs"])
        save(res, started, partial)
    if "e" in only:
        log("(e) peers")
        res["peers"] = peers_bench.run_peers(*sizes["peers"], log=log)
        save(res, started, partial)
    if {"c", "d", "plan"} & set(only):
        sc = res.setdefault("scale", {})
        OUT.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=OUT) as tmp:
            work = Path(tmp)
            if "plan" in only:
                log(f"plan {sizes['plan']:,} jobs")
                n_l1 = 100 if sizes["plan"] >= 1_000_000 else 20
                sc["plan"] = scale.plan_million(work, sizes["plan"], n_l1=n_l1)
                save(res, started, partial)
            if {"c", "d"} & set(only):
                big = big_ledger(*sizes["big"])
                sc["big"] = big
                path = Path(big["path"])
                if "c" in only:
                    log("(c) resume at scale")
                    sc["resume"] = scale.resume(path, work)
                    save(res, started, partial)
                if "d" in only:
                    log("(d) export, reports, analyze, status")
                    sc["exports"] = scale.exports_and_reports(path, work, big["accepted"])
                    sc["big_status"] = scale.big_status(path)
                    sc["cli_baseline"] = scale.cli_baseline(work)
                    save(res, started, partial)
    save(res, started, partial)
    log(f"wrote {RESULTS.relative_to(ROOT)} and {REPORT.relative_to(ROOT)} "
        f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
