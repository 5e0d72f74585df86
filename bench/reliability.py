"""Crash torture: `python cli.py run` killed at random and at every write boundary, then audited
against the simulator's own billing log.

The promise under test is "nothing paid for is ever lost, nothing is generated twice". A run
against the simulator (latency and a few faults, concurrency 4) is SIGKILLed at random moments
and restarted until done; separately, a one-job run is made to `os._exit` at each of its write
transactions, just before and just after the commit (LEDGER_FAULT_EXIT_AT). Afterwards every
figure is reconciled: jobs accepted once each, the same job set as a crash-free run, every billed
generation either recorded or in flight at a kill (an open attempt), spend equal to the bill
minus exactly those, and `verify` clean.

Usage: python bench/reliability.py [--kills 50] [--jobs 1000] [--no-tests]
(writes bench/reliability.json; RELIABILITY.md quotes its figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ledger.catalog import load_catalog  # noqa: E402
from ledger.db import open_ledger  # noqa: E402
from ledger.export import accepted_rows  # noqa: E402
from ledger.export_lines import export_line, row_messages  # noqa: E402
from ledger.planner import plan_ledger  # noqa: E402
from ledger.simulator import SimConfig, Simulator  # noqa: E402
from ledger.store import FAULT_ENV, FAULT_EXIT_CODE  # noqa: E402
from ledger.verify import verify  # noqa: E402

KEY = "sk-or-v1-torture-local-simulator-key"
CONCURRENCY = 4
# Faults whose cost the ledger knows exactly (no missing-usage estimates), so spend can be held
# to the bill at 1e-9.
TORTURE_FAULTS: dict[str, float] = {"p_429": 0.02, "p_500": 0.03, "p_reset": 0.02,
                                    "p_length": 0.02, "p_correction": 0.05}
ENV_DROP = ("LEDGER_DB", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL", FAULT_ENV)


@dataclass(frozen=True)
class TortureConfig:
    jobs: int = 1000
    kills: int = 50
    latency_ms: float = 80.0
    seed: int = 7
    max_after_start_s: float = 0.8   # a kill lands this long (at most) after requests begin
    p_startup_kill: float = 0.15     # share of kills aimed at process start-up instead
    fork_children: bool = False      # boundary runs as forks of this process (fast, for CI)


@dataclass
class KillRecord:
    at_s: float
    in_flight: int        # simulator's requests in flight just before the kill
    new_unknown: int      # open attempts the kill left behind
    during_startup: bool


@dataclass
class Audit:
    """What a finished ledger shows against the simulator's bill."""

    planned: int
    accepted: int
    acceptances: int
    late_attempts: int          # attempts started after their job was accepted
    open_attempts: int          # outcome unknown
    billed_generations: int
    billed_usd: float
    missing_generations: int    # billed but not in the ledger
    missing_usd: float
    unbilled_in_ledger: int     # in the ledger but never billed (must be 0)
    ledger_spend_usd: float
    spend_gap_usd: float        # ledger spend - (bill - missing)
    verify_ok: bool
    verify_detail: list[str] = field(default_factory=list)


# --- processes and reads ----------------------------------------------------------------------

def cli_env(base_url: str, ledger_path: Path, fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env.update({"OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": base_url,
                "LEDGER_DB": str(ledger_path)})
    if fault:
        env[FAULT_ENV] = fault
    return env


def start_run(base_url: str, ledger_path: Path, *extra: str,
              fault: str | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "run", "--quiet", *extra],
        env=cli_env(base_url, ledger_path, fault), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, cwd=ROOT)


def query(ledger_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read-only; WAL readers never block the writer of another process."""
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def scalar(ledger_path: Path, sql: str, *params: Any) -> Any:
    return query(ledger_path, sql, *params)[0][0]


def plan_file(path: Path, jobs: int) -> None:
    ledger = open_ledger(str(path))
    try:
        plan_ledger(ledger, load_catalog(None), jobs)
    finally:
        ledger.dispose()


def make_sim(billing_log: Path, cfg: TortureConfig, faults: dict[str, float]) -> Simulator:
    sim = Simulator(SimConfig.from_kwargs(
        latency_ms=cfg.latency_ms, latency_dist="lognormal", seed=cfg.seed,
        billing_log=str(billing_log), retry_after_s=0.2, **faults))
    sim.start()
    return sim


def read_bill(billing_log: Path) -> dict[str, float]:
    bill: dict[str, float] = {}
    for line in billing_log.read_text().splitlines():
        rec = json.loads(line)
        bill[rec["generation_id"]] = float(rec["cost_usd"])
    return bill


def audit(ledgers: list[Path], billing_log: Path) -> Audit:
    """Reconcile one or more ledgers that shared a simulator against its billing log."""
    bill = read_bill(billing_log)
    recorded: set[str] = set()
    planned = accepted = acceptances = late = unknown = 0
    spend = 0.0
    ok, detail = True, []
    for path in ledgers:
        recorded |= {r[0] for r in query(path, "SELECT generation_id FROM attempt_outcomes "
                                               "WHERE generation_id IS NOT NULL")}
        planned += scalar(path, "SELECT COUNT(*) FROM jobs")
        accepted += scalar(path, "SELECT COUNT(DISTINCT job_id) FROM acceptances")
        acceptances += scalar(path, "SELECT COUNT(*) FROM acceptances")
        late += scalar(path, "SELECT COUNT(*) FROM attempts a JOIN acceptances acc "
                             "ON acc.job_id = a.job_id WHERE a.seq > acc.seq")
        unknown += scalar(path, "SELECT COUNT(*) FROM open_attempts")
        spend += scalar(path, "SELECT spend_usd FROM ledger_totals")
        ledger = open_ledger(str(path), readonly=True)
        try:
            for check in verify(ledger):
                if not check.ok:
                    ok = False
                    detail.append(f"{path.name}: {check.name}: {check.detail}")
        finally:
            ledger.dispose()
    missing = set(bill) - recorded
    missing_usd = sum(bill[g] for g in missing)
    billed_usd = sum(bill.values())
    return Audit(planned=planned, accepted=accepted, acceptances=acceptances, late_attempts=late,
                 open_attempts=unknown, billed_generations=len(bill), billed_usd=billed_usd,
                 missing_generations=len(missing), missing_usd=missing_usd,
                 unbilled_in_ledger=len(recorded - set(bill)), ledger_spend_usd=spend,
                 spend_gap_usd=spend - (billed_usd - missing_usd), verify_ok=ok,
                 verify_detail=detail)


def comparable_export(ledger_path: Path) -> list[str]:
    """The `messages` export with what differs by construction neutralised: the attempt id (a
    crashed ledger holds more attempts), the model that served (a fault draw can move a job down
    the chain in one run and not the other) and every simulated turn (the simulator words each
    reply from its request counter, so one job gets different words in two runs). What stays
    byte for byte: the job set and order, each job's metadata, prompt and filter versions and
    the system prompt."""
    ledger = open_ledger(str(ledger_path), readonly=True)
    lines = []
    try:
        with accepted_rows(ledger) as (_pos, batches):
            for batch in batches:
                for row in batch:
                    head = json.dumps(row_messages(row)[:1], ensure_ascii=False)
                    lines.append(export_line("messages", (row[0], 0, *row[2:5], "-",
                                                          *row[6:9], head)))
    finally:
        ledger.dispose()
    return lines


def accepted_valid(ledger_path: Path) -> int:
    """Accepted jobs whose accepting verdict passed and holds a tutor/learner dialogue."""
    rows = query(ledger_path, """
        SELECT v.passed, v.messages_json FROM acceptances acc
        JOIN verdicts v ON v.verdict_id = acc.verdict_id""")
    valid = 0
    for passed, raw in rows:
        roles = [m["role"] for m in json.loads(raw)]
        valid += bool(passed) and roles[:1] == ["system"] and "assistant" in roles
    return valid


# --- the three runs -------------------------------------------------------------------------

def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def random_kills(ledger_path: Path, sim: Simulator, cfg: TortureConfig,
                 rng: random.Random) -> tuple[list[KillRecord], int]:
    """SIGKILL `run` cfg.kills times at random moments, then run it to the end. Returns the kills
    and how many restarts it took to finish."""
    kills: list[KillRecord] = []
    started = time.monotonic()
    while len(kills) < cfg.kills:
        before_unknown = scalar(ledger_path, "SELECT COUNT(*) FROM open_attempts")
        before_requests = sim.stats()["requests"]
        proc = start_run(sim.base_url, ledger_path, "--concurrency", str(CONCURRENCY))
        startup = rng.random() < cfg.p_startup_kill
        if startup:
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            wait_until(lambda: proc.poll() is not None
                       or sim.stats()["requests"] > before_requests, 60)
            time.sleep(rng.uniform(0.0, cfg.max_after_start_s))
        if proc.poll() is not None:
            raise RuntimeError(f"run ended before its kill (exit {proc.returncode}); plan more "
                               f"jobs: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
        in_flight = sim.stats()["in_flight"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()
        after_unknown = scalar(ledger_path, "SELECT COUNT(*) FROM open_attempts")
        kills.append(KillRecord(round(time.monotonic() - started, 3), in_flight,
                                after_unknown - before_unknown, startup))
    restarts = 0
    while scalar(ledger_path, "SELECT COUNT(*) FROM job_state WHERE state = 'open'"):
        restarts += 1
        proc = start_run(sim.base_url, ledger_path, "--concurrency", str(CONCURRENCY))
        _out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"final run exited {proc.returncode}: {err.decode()[-500:]}")
    return kills, restarts


def crash_free(ledger_path: Path, sim: Simulator) -> None:
    proc = start_run(sim.base_url, ledger_path, "--concurrency", str(CONCURRENCY))
    _out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"crash-free run exited {proc.returncode}: {err.decode()[-500:]}")


def forked_run(ledger_path: Path, base_url: str, fault: str | None) -> int:
    """The library's run in a forked child (modules already imported, so it starts in
    milliseconds); returns its exit status. The crash hook's os._exit ends the child exactly
    as it ends the CLI."""
    pid = os.fork()
    if pid == 0:  # the child never returns into the caller
        code = 1
        try:
            from ledger.launch import run
            from ledger.runconfig import RunConfig

            if fault:
                os.environ[FAULT_ENV] = fault
            ledger = open_ledger(str(ledger_path))
            code = run(ledger, RunConfig(concurrency=1, backoff_base_s=0.01, backoff_cap_s=0.1),
                       base_url=base_url, quiet=True, api_key=KEY).result.exit_code
            ledger.dispose()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def one_job_run(path: Path, base_url: str, fault: str | None, fork: bool) -> tuple[int, str]:
    if fork:
        return forked_run(path, base_url, fault), ""
    proc = start_run(base_url, path, "--concurrency", "1", fault=fault)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode()[-500:]


def boundary_crashes(workdir: Path, template: Path, sim: Simulator,
                     cfg: TortureConfig) -> dict[str, Any]:
    """For each phase, exit at write K = 1, 2, ... of a one-job run until a run gets through
    without reaching K; resume each crashed ledger. Returns per-phase counts and the ledgers."""
    ledgers: list[Path] = []
    per_phase: dict[str, int] = {}
    for phase in ("before", "after"):
        k = 0
        while True:
            k += 1
            path = workdir / f"boundary-{phase}-{k}.db"
            shutil.copy(template, path)
            ledgers.append(path)
            code, err = one_job_run(path, sim.base_url, f"{k}:{phase}", cfg.fork_children)
            if code == 0:
                per_phase[phase] = k - 1   # write transactions one job's run makes
                break
            if code != FAULT_EXIT_CODE:
                raise RuntimeError(f"{k}:{phase} exited {code}: {err}")
            code, err = one_job_run(path, sim.base_url, None, cfg.fork_children)
            if code != 0:
                raise RuntimeError(f"resume after {k}:{phase} exited {code}: {err}")
            if k > 50:
                raise RuntimeError("a one-job run made over 50 write transactions")
    return {"writes_per_job_run": per_phase, "ledgers": ledgers,
            "crashes": sum(per_phase.values())}


def kill_torture(workdir: Path, cfg: TortureConfig) -> dict[str, Any]:
    """Random SIGKILLs until done, a crash-free run of the same plan, and both audits."""
    rng = random.Random(cfg.seed)
    t0 = time.monotonic()
    template = workdir / "template.db"
    plan_file(template, cfg.jobs)
    crashed, reference = workdir / "crashed.db", workdir / "reference.db"
    shutil.copy(template, crashed)
    shutil.copy(template, reference)
    sim = make_sim(workdir / "bill-crashed.jsonl", cfg, TORTURE_FAULTS)
    try:
        kills, restarts = random_kills(crashed, sim, cfg, rng)
        sim_stats = sim.stats()
    finally:
        sim.stop()
    sim = make_sim(workdir / "bill-reference.jsonl", cfg, TORTURE_FAULTS)
    try:
        crash_free(reference, sim)
    finally:
        sim.stop()
    verify_cli = subprocess.run([sys.executable, str(ROOT / "cli.py"), "verify"],
                                env=cli_env("http://127.0.0.1:9", crashed), capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
    crashed_export, reference_export = comparable_export(crashed), comparable_export(reference)
    crashed_jobs = {r[0] for r in query(crashed, "SELECT job_id FROM acceptances")}
    reference_jobs = {r[0] for r in query(reference, "SELECT job_id FROM acceptances")}
    return {
        "config": asdict(cfg), "concurrency": CONCURRENCY, "faults": TORTURE_FAULTS,
        "kills": [asdict(k) for k in kills], "final_restarts": restarts,
        "simulator": {k: sim_stats[k] for k in ("requests", "delivered", "by_status")},
        "crashed": asdict(audit([crashed], workdir / "bill-crashed.jsonl")),
        "reference": asdict(audit([reference], workdir / "bill-reference.jsonl")),
        "verify_cli": {"exit": verify_cli.returncode, "output": verify_cli.stdout.strip()},
        "same_accepted_jobs": crashed_jobs == reference_jobs,
        "export_lines": len(crashed_export),
        "export_equal": crashed_export == reference_export,
        "valid_accepted": {"crashed": accepted_valid(crashed),
                           "reference": accepted_valid(reference)},
        "wall_s": round(time.monotonic() - t0, 1),
    }


def boundary_torture(workdir: Path, cfg: TortureConfig) -> dict[str, Any]:
    """A one-job run made to exit at each of its write transactions, both phases, resumed."""
    t0 = time.monotonic()
    one_job = workdir / "one-job.db"
    plan_file(one_job, 1)
    sim = make_sim(workdir / "bill-boundary.jsonl", cfg, {})
    try:
        boundary = boundary_crashes(workdir, one_job, sim, cfg)
    finally:
        sim.stop()
    return {"writes_per_job_run": boundary["writes_per_job_run"],
            "crashes": boundary["crashes"],
            **asdict(audit(boundary["ledgers"], workdir / "bill-boundary.jsonl")),
            "wall_s": round(time.monotonic() - t0, 1)}


# --- report ---------------------------------------------------------------------------------

def run_reliability_tests() -> dict[str, Any]:
    """The CI-sized reliability tests, with their pass counts and durations as measured."""
    files = ["tests/test_crash_torture.py", "tests/test_write_boundaries.py",
             "tests/test_secrets.py", "tests/test_bad_environment.py", "tests/test_stateful.py",
             "tests/test_run_crash.py"]
    files = [f for f in files if (ROOT / f).exists()]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report}", *files], cwd=ROOT, capture_output=True,
                              text=True, timeout=1200)
        wall = time.monotonic() - t0
        import xml.etree.ElementTree as ET

        cases = []
        for case in ET.parse(report).getroot().iter("testcase"):
            failed = any(child.tag in ("failure", "error", "skipped") for child in case)
            cases.append({"file": case.get("classname", ""), "name": case.get("name", ""),
                          "seconds": float(case.get("time", 0)), "passed": not failed})
    return {"exit": done.returncode, "wall_s": round(wall, 1), "cases": cases,
            "summary": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-tests", action="store_true", help="skip the CI-sized tests")
    parser.add_argument("--out", default=str(ROOT / "bench" / "reliability.json"))
    args = parser.parse_args(argv)
    cfg = TortureConfig(jobs=args.jobs, kills=args.kills, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="torture-") as tmp:
        result = kill_torture(Path(tmp), cfg)
        result["boundary"] = boundary_torture(Path(tmp), cfg)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["machine"] = machine()
    if not args.no_tests:
        result["tests"] = run_reliability_tests()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("crashed", "boundary", "export_equal",
                                             "same_accepted_jobs", "wall_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
