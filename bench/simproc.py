"""The simulator in its own process, pinned to its own core, so the client's CPU is the client's.

Every benchmark talks to the simulator over loopback exactly as it would to OpenRouter; the
simulator's CPU (read from /proc) is reported beside the client's, because on a small machine a
saturated simulator, not the client, can be what caps a figure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-local-simulator"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
# Taken once, before anything pins this process: later calls must still see every core.
ALL_CORES: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0))) \
    if hasattr(os, "sched_getaffinity") else ()


def core_split() -> tuple[set[int] | None, set[int] | None]:
    """(simulator cores, client cores): the last core for the simulator, the rest for us.

    None when the machine has a single core (pinning would only serialise both sides)."""
    cores = list(ALL_CORES)
    if len(cores) < 2:
        return None, None
    return {cores[-1]}, set(cores[:-1])


def pin_client() -> set[int] | None:
    """Keep the measuring process off the simulator's core; returns the cores it kept."""
    _sim, client = core_split()
    if client is not None:
        os.sched_setaffinity(0, client)
    return client


def process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of another process, from /proc (no psutil)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    """Ask a child to stop with `sig` (SIGINT lets a CLI or py-spy finish its output); one
    still running after `timeout_s` is killed."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class SimProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    cores: set[int] | None

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/_sim/stats", timeout=10) as reply:
            return json.loads(reply.read())

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM, 10)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(latency_ms: float = 0.0, *, dist: str = "fixed", seed: int = 0,
                    api_key: str = BENCH_KEY, faults: dict[str, float] | None = None,
                    retry_after_s: float | None = None, pin: bool = True,
                    python: str = sys.executable) -> SimProcess:
    """`python -m ledger.simulator` on a free port; returns once it listens."""
    ready = Path(tempfile.mkdtemp(prefix="bench-sim-")) / "url"
    args = [python, "-m", "ledger.simulator", "--port", "0", "--ready-file", str(ready),
            "--latency-ms", str(latency_ms), "--latency-dist", dist, "--seed", str(seed),
            "--api-key", api_key]
    if retry_after_s is not None:
        args += ["--retry-after-s", str(retry_after_s)]
    for name, p in (faults or {}).items():
        args += ["--" + name.replace("_", "-"), str(p)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cores = core_split()[0] if pin else None
    if cores is not None:
        os.sched_setaffinity(proc.pid, cores)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"simulator exited with {proc.returncode}: {err.strip()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("simulator did not start within 30 s")
        time.sleep(0.01)
    url = ready.read_text().strip()
    ready.unlink()
    ready.parent.rmdir()
    return SimProcess(proc, url, cores)
