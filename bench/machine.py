"""What the figures were measured on: CPU, cores, RAM, disk fsync latency, versions, commit."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.simproc import ROOT, core_split


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def fsync_ms(directory: Path, n: int = 100) -> float:
    """Median cost of one 4 KiB write + fsync where the ledgers live: with
    synchronous=FULL every commit pays about this."""
    times = []
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(name)
    return sorted(times)[len(times) // 2]


def machine_info() -> dict[str, Any]:
    sim_cores, client_cores = core_split()
    # The harness's own outputs do not make the code measured dirty (a partial run follows a
    # full one before both are committed).
    outputs = {"BENCHMARKS.md", "bench/results.json"}
    dirty = "\n".join(line for line in _git("status", "--porcelain", "--untracked-files=no")
                      .splitlines() if line.split(maxsplit=1)[-1] not in outputs)
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": _cpu_model(), "cores": os.cpu_count(),
        "ram_gib": round(_ram_gib(), 1), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version, "kernel": platform.release(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(dirty and dirty != "unknown"),
        "simulator_cores": sorted(sim_cores) if sim_cores else None,
        "client_cores": sorted(client_cores) if client_cores else None,
        "fsync_ms_median": round(fsync_ms(Path(tempfile.gettempdir())), 2),
    }
