"""(b) The price of the books: CPU per job, jobs per second, events and transactions per job
against a zero-latency simulator, beside the same loop writing only a JSONL file.

A what-if row runs the ledger with `PRAGMA synchronous=NORMAL` set by the harness on its own
connections (the product sets FULL), to show how much of the cost is the fsync per commit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import event

from ledger.db import Ledger, open_ledger
from ledger.runconfig import RunConfig

from bench.harness import TxCounter, measured_run, median_run
from bench.jsonl_loop import load_jobs, run_jsonl
from bench.simproc import start_simulator
from bench.workload import planned_ledger


def _with_synchronous(ledger: Ledger, mode: str) -> None:
    ledger.engine.dispose()  # pooled connections predate the listener

    @event.listens_for(ledger.engine, "connect")
    def _set(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.execute(f"PRAGMA synchronous={mode}")


def ledger_row(template: Path, workdir: Path, n_jobs: int, concurrency: int,
               synchronous: str | None = None) -> dict[str, Any]:
    db = workdir / "overhead.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.copyfile(template, db)
    ledger = open_ledger(str(db))
    if synchronous:
        _with_synchronous(ledger, synchronous)
    try:
        with start_simulator(0.0) as sim, TxCounter().counting() as tx:
            sim_cpu0 = sim.cpu_s()
            fig = measured_run(ledger, RunConfig(concurrency=concurrency), sim.base_url)
            sim_cpu = sim.cpu_s() - sim_cpu0
            max_in_flight = sim.stats()["max_in_flight"]
    finally:
        ledger.dispose()
    done = fig.stats.accepted + fig.stats.failed_jobs
    return {"loop": "ledger" + (f" (what-if synchronous={synchronous})" if synchronous else ""),
            "jobs": done, "accepted": fig.stats.accepted, "wall_s": fig.wall_s,
            "jobs_per_s": done / fig.wall_s, "cpu_s": fig.client_cpu_s,
            "cpu_ms_per_job": 1000 * fig.client_cpu_s / done, "events_per_job": fig.events / done,
            "transactions_per_job": tx.count / done, "sim_cpu_share": sim_cpu / fig.wall_s,
            "sim_max_in_flight": max_in_flight}


def jsonl_row(template: Path, workdir: Path, n_jobs: int, concurrency: int) -> dict[str, Any]:
    ledger = open_ledger(str(template), create=False, readonly=True)
    try:
        jobs = load_jobs(ledger, n_jobs)
    finally:
        ledger.dispose()
    out = workdir / "dialogues.jsonl"
    out.unlink(missing_ok=True)
    with start_simulator(0.0) as sim:
        sim_cpu0 = sim.cpu_s()
        fig = run_jsonl(jobs, sim.base_url, out, concurrency)
        sim_cpu = sim.cpu_s() - sim_cpu0
        max_in_flight = sim.stats()["max_in_flight"]
    return {"loop": "JSONL file", "jobs": len(jobs), "accepted": fig.accepted,
            "wall_s": fig.wall_s, "jobs_per_s": len(jobs) / fig.wall_s, "cpu_s": fig.cpu_s,
            "cpu_ms_per_job": 1000 * fig.cpu_s / len(jobs), "events_per_job": 0.0,
            "transactions_per_job": 0.0, "sim_cpu_share": sim_cpu / fig.wall_s,
            "sim_max_in_flight": max_in_flight}


def run_overhead(n_jobs: int, concurrency: int, log: Any = print,
                 repeats: int = 3) -> dict[str, Any]:
    """The ledger and JSONL loops run `repeats` times each, taking turns, and each is shown by
    its median run (by CPU per job): the machine's speed drifts within minutes, and one run of
    a few seconds per loop can land the two on different speeds."""
    with tempfile.TemporaryDirectory(prefix="bench-overhead-", dir=_disk_tmp()) as tmp:
        workdir = Path(tmp)
        template = workdir / "template.db"
        planned_ledger(template, n_jobs).dispose()
        runs: dict[str, list[dict[str, Any]]] = {"ledger": [], "jsonl": []}
        for _ in range(repeats):
            runs["ledger"].append(ledger_row(template, workdir, n_jobs, concurrency))
            runs["jsonl"].append(jsonl_row(template, workdir, n_jobs, concurrency))
        what_if = ledger_row(template, workdir, n_jobs, concurrency, synchronous="NORMAL")
    rows = [median_run(each, "cpu_ms_per_job") for each in (runs["ledger"], runs["jsonl"],
                                                             [what_if])]
    for r in rows:
        each = ", ".join(f"{x:.2f}" for x in r["runs_cpu_ms_per_job"])
        log(f"  {r['loop']}: {r['jobs_per_s']:.0f} jobs/s, {r['cpu_ms_per_job']:.2f} ms CPU/job"
            f" (runs: {each})")
    books, plain = rows[0], rows[1]
    return {"concurrency": concurrency, "jobs": n_jobs, "repeats": repeats, "rows": rows,
            "cpu_ratio": books["cpu_ms_per_job"] / plain["cpu_ms_per_job"],
            "throughput_ratio": books["jobs_per_s"] / plain["jobs_per_s"]}


def _disk_tmp() -> str:
    """Ledgers are measured on the project's disk, where a user's ledger would live: a /tmp in
    memory would make every fsync free."""
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    return str(out)
