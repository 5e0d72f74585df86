"""`python cli.py demo`: the whole loop on this machine, no key, no spend.

Plans a small balanced set in DIR/ledger.db, starts the bundled simulator on a free loopback
port with a few faults switched on (rate limits, server errors, truncations, dialogues that
correct the learner outright), runs the real client against it, then prints the status.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .catalog import load_catalog
from .db import open_ledger
from .errors import UsageError
from .launch import run
from .planner import plan_ledger
from .queries import status
from .render import plan_text, status_text
from .runconfig import RunConfig
from .simulator import SimConfig, Simulator

DEMO_KEY = "sk-demo-local-simulator"


def run_demo(jobs: int, directory: str, concurrency: int, latency_ms: float, quiet: bool,
             catalog_path: str | None = None) -> int:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a read-only parent
        raise UsageError(f"cannot use {directory} as the demo's directory: "
                         f"{exc.strerror or exc}; pass --dir another path") from None
    ledger = open_ledger(str(Path(directory) / "ledger.db"))
    catalog = load_catalog(catalog_path)
    sim = Simulator(SimConfig.from_kwargs(
        latency_ms=latency_ms, seed=7, api_key=DEMO_KEY, p_429=0.04, retry_after_s=0.2,
        p_500=0.03, p_length=0.03, p_correction=0.12, p_error_in_200=0.02))
    try:
        plan = plan_ledger(ledger, catalog, jobs)
        print(plan_text(plan, dry_run=False))
        base_url = sim.start()
        print(f"simulator listening on {base_url}", file=sys.stderr)
        launch = run(ledger, RunConfig(concurrency=concurrency, backoff_base_s=0.05,
                                       backoff_cap_s=1.0),
                     base_url=base_url, quiet=quiet, api_key=DEMO_KEY)
        print(launch.summary)
        print(status_text(status(ledger)))
        print(f"ledger: {Path(directory) / 'ledger.db'} (try: sqlite3 {directory}/ledger.db "
              "'SELECT * FROM job_state LIMIT 5')")
        return launch.result.exit_code
    finally:
        sim.stop()
        ledger.dispose()
