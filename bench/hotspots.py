"""Where the run loop's CPU goes: py-spy (from bench/.peers-venv) sampling only threads that
hold the GIL during a zero-latency run, folded into the loop's stages."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from ledger.db import open_ledger
from ledger.runconfig import RunConfig

from bench.harness import measured_run
from bench.peers_bench import PEERS_VENV, ensure_venv
from bench.simproc import start_simulator, stop_process
from bench.workload import planned_ledger

PY_SPY = PEERS_VENV / "bin" / "py-spy"
# A sample goes to the first stage in this list whose function is anywhere on its stack.
STAGES = (("filter (ledger/filters.py judge)", "judge ("),
          ("store transactions (ledger/store.py)", "Store."),
          ("HTTP client (ledger/client.py, transport.py)", "OpenRouterClient.chat"),
          ("verdict record / dialogue JSON", "verdict_record"),
          ("prompt rendering", "render_messages"))


def fold(raw: str) -> dict[str, Any]:
    stages: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf[stack.split(";")[-1]] += n
        stage = next((name for name, key in STAGES if key in stack), "other")
        stages[stage] += n
    share = {k: v / total for k, v in stages.most_common()} if total else {}
    top = [(k, v / total) for k, v in leaf.most_common(15)] if total else []
    return {"samples": total, "stages": share, "top_functions": top}


def profile_run(n_jobs: int, concurrency: int = 16, seconds: int = 120) -> dict[str, Any]:
    """`seconds` caps py-spy's recording; it is stopped (SIGINT, so it writes its samples) as
    soon as the run ends, so idle time after the run adds no empty samples."""
    if not PY_SPY.exists():
        ensure_venv()
        r = subprocess.run([str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                            "py-spy"], capture_output=True, text=True)
        if r.returncode != 0 or not PY_SPY.exists():
            return {"error": "py-spy could not be installed: " + r.stderr.strip()[-200:]}
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        workdir = Path(tmp)
        template = workdir / "t.db"
        planned_ledger(template, n_jobs).dispose()
        db = workdir / "p.db"
        shutil.copyfile(template, db)
        ledger = open_ledger(str(db))
        out = workdir / "profile.txt"
        try:
            with start_simulator(0.0) as sim:
                spy = subprocess.Popen(
                    [str(PY_SPY), "record", "-p", str(os.getpid()), "-d", str(seconds), "-r",
                     "200", "--gil", "--nonblocking", "-f", "raw", "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    threading.Event().wait(1.0)  # py-spy attaches before the run starts
                    fig = measured_run(ledger, RunConfig(concurrency=concurrency),
                                       sim.base_url)
                finally:
                    # SIGINT makes py-spy write what it sampled; stopped at once, it samples
                    # neither idle time nor the sections after this one.
                    stop_process(spy, signal.SIGINT, 30)
        finally:
            ledger.dispose()
        if not out.exists():
            err = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
            return {"error": "py-spy wrote no profile: " + err.strip()[-200:]}
        result = fold(out.read_text())
    result.update({"jobs": fig.stats.accepted, "wall_s": fig.wall_s,
                   "cpu_ms_per_job": 1000 * fig.client_cpu_s / max(fig.stats.accepted, 1)})
    return result
