"""(e) Peers: the same jobs, simulator and concurrency through the openai SDK, Bespoke Curator
and a LiteLLM Router, each in bench/.peers-venv so none of them touches requirements.txt."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

from ledger.db import open_ledger
from ledger.runconfig import DEFAULT_MODELS, RunConfig

from bench.harness import measured_run, median_run
from bench.jsonl_loop import _messages, load_jobs
from bench.simproc import BENCH_KEY, ROOT, start_simulator
from bench.workload import planned_ledger

PEERS_VENV = ROOT / "bench" / ".peers-venv"
PEERS_DIR = ROOT / "bench" / "peers"
PEERS = {
    "openai SDK + threads": ("openai", "openai_loop.py"),
    "Bespoke Curator": ("bespokelabs-curator", "curator_run.py"),
    "LiteLLM Router": ("litellm", "litellm_router.py"),
}


def peers_python() -> Path:
    return PEERS_VENV / "bin" / "python"


def ensure_venv() -> None:
    """bench/.peers-venv itself, created on first use (a fresh clone has none)."""
    if not peers_python().exists():
        venv.EnvBuilder(with_pip=True).create(PEERS_VENV)


def ensure_peers_venv(log: Any = print) -> dict[str, str]:
    """Create the venv and install each peer; returns peer -> install error (if any)."""
    errors: dict[str, str] = {}
    ensure_venv()
    for name, (package, _script) in PEERS.items():
        probe = subprocess.run([str(peers_python()), "-m", "pip", "show", "-q", package],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            continue
        log(f"  installing {package} into {PEERS_VENV.relative_to(ROOT)}")
        r = subprocess.run([str(peers_python()), "-m", "pip", "install", "-q", package],
                           capture_output=True, text=True)
        if r.returncode != 0:
            lines = [x for x in r.stderr.splitlines() if x.startswith("ERROR")] or \
                r.stderr.splitlines()[-1:]
            errors[name] = lines[-1] if lines else f"pip exited {r.returncode}"
    return errors


def _peer_row(name: str, script: str, spec_path: Path, latency_ms: float) -> dict[str, Any]:
    spec = json.loads(spec_path.read_text())
    with start_simulator(latency_ms) as sim:
        spec["base_url"] = sim.base_url
        spec_path.write_text(json.dumps(spec))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([str(peers_python()), str(PEERS_DIR / script), str(spec_path)],
                           capture_output=True, text=True, timeout=900, cwd=spec_path.parent)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        max_in_flight = sim.stats()["max_in_flight"]
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if r.returncode != 0 or not lines:
        err = [x for x in r.stderr.splitlines() if x.strip()]
        return {"peer": name, "error": (err[-1] if err else f"exit {r.returncode}")[:300]}
    fig = json.loads(lines[-1])
    return {"peer": name, "jobs": len(spec["jobs"]), "done": fig["done"],
            "errors": fig["errors"], "wall_s": fig["wall_s"],
            "jobs_per_s": fig["done"] / fig["wall_s"],
            "cpu_s_per_1000": 1000 * fig["cpu_s"] / max(fig["done"], 1),
            "process_cpu_s": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime),
            "sim_max_in_flight": max_in_flight}


def _ours(template: Path, workdir: Path, concurrency: int, latency_ms: float) -> dict[str, Any]:
    db = workdir / "ours.db"
    shutil.copyfile(template, db)
    ledger = open_ledger(str(db))
    try:
        with start_simulator(latency_ms) as sim:
            fig = measured_run(ledger, RunConfig(concurrency=concurrency), sim.base_url)
            max_in_flight = sim.stats()["max_in_flight"]
    finally:
        ledger.dispose()
    done = fig.stats.accepted
    return {"peer": "scaffold-ledger (ours)", "jobs": done + fig.stats.failed_jobs,
            "done": done, "errors": fig.stats.failed_attempts, "wall_s": fig.wall_s,
            "jobs_per_s": done / fig.wall_s, "cpu_s_per_1000": 1000 * fig.client_cpu_s / done,
            "sim_max_in_flight": max_in_flight}


def run_peers(n_jobs: int, concurrency: int, latency_ms: float,
              log: Any = print, repeats: int = 3) -> dict[str, Any]:
    """Ours and every peer run `repeats` times, taking turns, and each is shown by its median
    run (by jobs/s): the machine's speed drifts within minutes, so one run each can land ours
    and a peer on different speeds."""
    install_errors = ensure_peers_venv(log)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        workdir = Path(tmp)
        template = workdir / "template.db"
        planned_ledger(template, n_jobs).dispose()
        ledger = open_ledger(str(template), create=False, readonly=True)
        try:
            jobs = [{"job_id": j["job_id"], "messages": _messages(j)}
                    for j in load_jobs(ledger, n_jobs)]
        finally:
            ledger.dispose()
        specs = {}
        for name, (_package, script) in PEERS.items():
            spec_path = workdir / f"spec-{script}.json"
            spec_path.write_text(json.dumps({
                "api_key": BENCH_KEY, "concurrency": concurrency, "models": list(DEFAULT_MODELS),
                "max_tokens": 200, "out": str(workdir / f"out-{script}.jsonl"), "jobs": jobs}))
            specs[name] = (script, spec_path)
        ours_runs: list[dict[str, Any]] = []
        runs: dict[str, list[dict[str, Any]]] = {}
        failed: dict[str, dict[str, Any]] = {
            name: {"peer": name, "error": "install failed: " + err}
            for name, err in install_errors.items() if name in PEERS}
        for _ in range(repeats):
            row = _ours(template, workdir, concurrency, latency_ms)
            ours_runs.append(row)
            log(f"  ours: {row['jobs_per_s']:.1f} jobs/s")
            for name, (script, spec_path) in specs.items():
                if name in failed:
                    continue
                row = _peer_row(name, script, spec_path, latency_ms)
                log(f"  {name}: " + (f"{row['jobs_per_s']:.1f} jobs/s" if "error" not in row
                                     else "failed: " + row["error"]))
                if "error" in row:
                    failed[name] = row  # a peer that cannot run here is not retried
                else:
                    runs.setdefault(name, []).append(row)
    rows = [median_run(ours_runs, "jobs_per_s")] + [
        median_run(runs[name], "jobs_per_s") if name in runs else failed[name]
        for name in PEERS if name in runs or name in failed]
    ours = rows[0]
    for row in rows[1:]:
        if "error" not in row and row["done"]:
            row["ours_over_peer_jobs_per_s"] = ours["jobs_per_s"] / row["jobs_per_s"]
            row["ours_over_peer_cpu"] = ours["cpu_s_per_1000"] / row["cpu_s_per_1000"]
    return {"jobs": n_jobs, "concurrency": concurrency, "latency_ms": latency_ms, "rows": rows,
            "repeats": repeats, "python": sys.version.split()[0]}
