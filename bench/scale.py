"""(c) Resume at scale, (d) export and reports, and planning: the ledger at a million jobs.

Everything a user types is timed as a user would see it: `python cli.py ...` in a fresh process,
wall clock from spawn to exit. The claim query is also timed alone, in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ledger.db import open_ledger
from ledger.filters import FILTER_VERSION
from ledger.prompts import PROMPT_VERSION
from ledger.store import Store

from bench.simproc import ALL_CORES, BENCH_KEY, ROOT, start_simulator, stop_process
from bench.workload import generated_catalog_dict

CLI = str(ROOT / "cli.py")


def cli_env(db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENROUTER_API_KEY", "OPENROUTER_BASE_URL")}
    env["LEDGER_DB"] = str(db)
    env.update(extra)
    return env


def timed_cli(args: list[str], env: dict[str, str], timeout: float = 600,
              cores: set[int] | None = None) -> dict[str, Any]:
    """Wall seconds of `python cli.py ARGS`, its exit code and its last line of stderr.
    `cores`: run it on these cores instead of the harness's own."""
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, CLI, *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=pin)
    except subprocess.TimeoutExpired:
        return {"args": args, "seconds": timeout, "exit": -1,
                "stderr_tail": f"stopped after {timeout:.0f} s", "stdout": ""}
    wall = time.perf_counter() - t0
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"args": args, "seconds": wall, "exit": proc.returncode,
            "stderr_tail": err[-1] if err else "", "stdout": proc.stdout}


def timed_twice(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """timed_cli, then the same command once more when it succeeded ('again_s', else None).
    The first run is the figure: a user's command after a run may find the ledger's pages out
    of the OS cache. The second shows what a warm cache gives, so a slow first figure can be
    told apart from a slow query."""
    r = timed_cli(args, env)
    r["again_s"] = timed_cli(args, env)["seconds"] if r["exit"] == 0 else None
    return r


def command_exists(name: str) -> bool:
    """Whether `cli.py NAME` is wired (fire answers an unknown command with an error)."""
    proc = subprocess.run([sys.executable, CLI, name, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PAGER": "cat"})
    return proc.returncode == 0 and "could not consume" not in (proc.stdout + proc.stderr)


# --- planning a million -----------------------------------------------------------------------

def plan_million(workdir: Path, target: int = 1_000_000, n_l1: int = 100,
                 n_patterns: int = 100, n_pairs: int = 40) -> dict[str, Any]:
    catalog_path = workdir / "catalog-big.json"
    catalog_path.write_text(json.dumps(generated_catalog_dict(n_l1, n_patterns, n_pairs)),
                            encoding="utf-8")
    db = workdir / "plan-1m.db"
    env = cli_env(db)
    plan = timed_cli(["--catalog", str(catalog_path), "plan", "--target", str(target)], env)
    status = timed_cli(["status"], env) if plan["exit"] == 0 else None
    return {"catalog": f"{n_l1} L1 x {n_patterns} patterns x {n_pairs} pairs",
            "target": target, "plan_s": plan["seconds"], "plan_exit": plan["exit"],
            "plan_error": plan["stderr_tail"] if plan["exit"] else "",
            "status_s": status["seconds"] if status else None,
            "status_exit": status["exit"] if status else None}


# --- resume -----------------------------------------------------------------------------------

def first_request_s(db: Path, concurrency: int = 64, repeats: int = 3) -> list[float]:
    """Seconds from spawning `cli.py run` to the simulator's first chat request; the run is
    then stopped with Ctrl-C (SIGINT), as a user would."""
    out = []
    with start_simulator(200.0) as sim:
        env = cli_env(db, OPENROUTER_API_KEY=BENCH_KEY, OPENROUTER_BASE_URL=sim.base_url)
        for _ in range(repeats):
            before = sim.stats()["requests"]
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, CLI, "run", "--concurrency",
                                     str(concurrency), "--quiet"], env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            seen = None
            while proc.poll() is None and time.perf_counter() - t0 < 120:
                if sim.stats()["requests"] > before:
                    seen = time.perf_counter() - t0
                    break
                time.sleep(0.002)
            if proc.poll() is None:
                stop_process(proc, signal.SIGINT, 60)
            if seen is None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"`cli.py run` made no request (exit {proc.returncode}): "
                                   f"{err.strip().splitlines()[-1:] }")
            out.append(seen)
    return out


def claim_ms(db: Path, batch: int, repeats: int = 100) -> dict[str, float]:
    """Store.claim alone (select the next open jobs by plan order, lease them, fetch them):
    each call leases a fresh batch, as successive claims of a run do."""
    ledger = open_ledger(str(db))
    store = Store(ledger)
    run_id = f"bench-claim-{os.getpid()}-{batch}"
    times = []
    try:
        store.start_run(run_id, socket.gethostname(), os.getpid(), PROMPT_VERSION,
                        FILTER_VERSION, {"benchmark": "claim"})
        for _ in range(repeats):
            t0 = time.perf_counter()
            store.claim(run_id, batch, time.time(), 900.0)
            times.append((time.perf_counter() - t0) * 1000)
        store.stop_run(run_id, "done", 0, None, "claim benchmark")
    finally:
        store.close()
        ledger.dispose()
    return {"batch": batch, "median_ms": statistics.median(times), "p90_ms":
            sorted(times)[int(len(times) * 0.9)], "max_ms": max(times)}


def resume(big: Path, workdir: Path) -> dict[str, Any]:
    """On a copy: the original stays untouched for the export and report timings."""
    copy = workdir / "resume.db"
    shutil.copyfile(big, copy)
    firsts = first_request_s(copy)
    claims = [claim_ms(copy, 1), claim_ms(copy, 64)]
    return {"first_request_s": firsts, "first_request_median_s": statistics.median(firsts),
            "claims": claims}


# --- export and reports -----------------------------------------------------------------------

def exports_and_reports(big: Path, workdir: Path, accepted: int) -> dict[str, Any]:
    env = cli_env(big)
    out: dict[str, Any] = {"export": [], "reports": [], "analyze": None}
    if command_exists("export"):
        from ledger.export import FORMATS

        for fmt in FORMATS:
            target = workdir / f"export-{fmt}.jsonl"
            args = ["export", "--out", str(target), "--format", fmt, "--force"]
            # No simulator runs in this section, so the export gets the machine's cores as a
            # user's would (it hashes and writes on a second thread); the figure on the
            # harness's one core is kept beside it.
            one = timed_cli(args, env)
            r = timed_cli(args, env, cores=set(ALL_CORES) or None)
            lines = _count_lines(target) if r["exit"] == 0 else 0
            out["export"].append({"format": fmt, "seconds": r["seconds"], "exit": r["exit"],
                                  "lines": lines, "dialogues_per_s": lines / r["seconds"],
                                  "one_core_s": one["seconds"],
                                  "cores": len(ALL_CORES),
                                  "error": r["stderr_tail"] if r["exit"] else ""})
            target.unlink(missing_ok=True)
    else:
        out["export"] = "not yet measured: `cli.py export` is not wired"
    names = report_names()
    if names is None:
        out["reports"] = "not yet measured: `cli.py report` is not wired"
    for name in names or []:
        r = timed_twice(["report", name], env)
        out["reports"].append({"name": name, "seconds": r["seconds"], "exit": r["exit"],
                               "again_s": r["again_s"],
                               "error": r["stderr_tail"] if r["exit"] else ""})
    out["page_cache_mib"] = _page_cache_mib()
    if command_exists("analyze"):
        r = timed_cli(["analyze"], env)
        out["analyze"] = {"seconds": r["seconds"], "exit": r["exit"],
                          "error": r["stderr_tail"] if r["exit"] else ""}
    else:
        out["analyze"] = "not yet measured: `cli.py analyze` is not wired"
    out["accepted"] = accepted
    return out


def _page_cache_mib() -> int | None:
    """The OS page cache's size (MiB, /proc/meminfo 'Cached'): smaller than the ledger file, a
    query that reads much of it goes to the disk."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Cached:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def report_names() -> list[str] | None:
    """The report names `cli.py report` knows, or None while the command is not wired."""
    if not command_exists("report"):
        return None
    try:
        import ledger.reports as reports  # type: ignore[import-not-found]
    except ImportError:
        return []
    names = getattr(reports, "REPORT_NAMES", None)
    return [str(n) for n in names] if names else []


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def big_status(big: Path) -> dict[str, Any]:
    r = timed_twice(["status"], cli_env(big))
    return {"seconds": r["seconds"], "again_s": r["again_s"], "exit": r["exit"],
            "error": r["stderr_tail"]}


def cli_baseline(workdir: Path) -> dict[str, Any]:
    """The fixed price of any command: `plan --target 0` creating an empty ledger (interpreter
    start, imports, creating and migrating the file), then `status` on it (the same, with the
    file found at the current schema)."""
    env = cli_env(workdir / "empty.db")
    runs = [timed_cli(["plan", "--target", "0"], env), timed_cli(["status"], env)]
    return {"first_s": runs[0]["seconds"], "second_s": runs[1]["seconds"],
            "exit": max(r["exit"] for r in runs)}
