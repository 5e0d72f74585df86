"""A synthetic ledger of accepted dialogues, built in seconds, for benchmarks and big tests.

Jobs go in through Store.plan_jobs; then one Store transaction appends, for the first n_accepted
jobs, an attempt, its outcome, a passing verdict and the acceptance, all chained like real events;
Store.rebuild_projections then derives job_state and ledger_totals from those events.

    python bench/build_ledger.py /tmp/bench.db --jobs 100000 --accepted 100000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ledger import schema  # noqa: E402
from ledger.catalog import Catalog, load_catalog  # noqa: E402
from ledger.db import open_ledger  # noqa: E402
from ledger.dialogue import Turn, to_messages  # noqa: E402
from ledger.filters import FILTER_VERSION  # noqa: E402
from ledger.planner import job_id_for  # noqa: E402
from ledger.prompts import PROMPT_VERSION  # noqa: E402
from ledger.records import PlannedJob, utc_now  # noqa: E402
from ledger.store import Store  # noqa: E402

MODEL = "google/gemini-2.0-flash-001"
COST_USD = 0.000035  # one typical accepted attempt on the cheap model
RUN_ID = "bench-synthetic-run"


@dataclass(frozen=True)
class BuiltLedger:
    path: Path
    jobs: int
    accepted: int
    seconds: float


def synthetic_jobs(catalog: Catalog, n_jobs: int) -> list[PlannedJob]:
    """n_jobs distinct jobs spread round-robin over the catalog's cells; the variant number
    keeps every job id distinct however many there are."""
    cells = catalog.cells()
    jobs = []
    for i in range(n_jobs):
        l1, pattern = cells[i % len(cells)]
        pair = pattern.pairs[(i // len(cells)) % len(pattern.pairs)]
        level = catalog.levels[i % len(catalog.levels)]
        jobs.append(PlannedJob(
            job_id=job_id_for(l1.id, pattern.id, pair.erroneous, pair.correct, level, i),
            l1=l1.id, pattern=pattern.id, erroneous=pair.erroneous, correct=pair.correct,
            level=level, variant=i, topic=catalog.topics[i % len(catalog.topics)],
            persona=catalog.personas[i % len(catalog.personas)]))
    return jobs


def synthetic_turns(job: PlannedJob) -> list[Turn]:
    return [
        Turn("user", f"Hi! {job.erroneous} Can we talk about {job.topic}?"),
        Turn("assistant", f'Of course! Listen to your sentence again: "{job.erroneous}" '
                          "Which word would you look at first?"),
        Turn("user", "Hmm... maybe the verb?"),
        Turn("assistant", "Good idea. How would you say it if you were writing an email?"),
        Turn("user", f"Oh! {job.correct} Thank you!"),
    ]


def build_accepted_ledger(path: str | os.PathLike[str], n_jobs: int,
                          n_accepted: int) -> BuiltLedger:
    """Create a new ledger at `path` with n_jobs planned jobs, the first n_accepted of them
    accepted."""
    if not 0 <= n_accepted <= n_jobs:
        raise ValueError(f"n_accepted must be between 0 and n_jobs ({n_jobs}), got {n_accepted}")
    if Path(path).exists():
        raise FileExistsError(f"{path} exists; build_accepted_ledger makes a new ledger")
    started = time.perf_counter()
    ledger = open_ledger(str(path))
    store = Store(ledger)
    try:
        jobs = synthetic_jobs(load_catalog(), n_jobs)
        store.plan_jobs(jobs)
        store.start_run(RUN_ID, socket.gethostname(), os.getpid(), PROMPT_VERSION,
                        FILTER_VERSION, {"synthetic": True})
        _accept_all(store, jobs[:n_accepted])
        store.stop_run(RUN_ID, "done", 0, None, "synthetic ledger")
        # job_state and ledger_totals become exactly what the events say, spend included.
        store.rebuild_projections()
    finally:
        store.close()
        ledger.dispose()
    return BuiltLedger(Path(path), n_jobs, n_accepted, time.perf_counter() - started)


def _accept_all(store: Store, jobs: list[PlannedJob]) -> None:
    now = utc_now()
    attempts, outcomes, verdicts, acceptances = [], [], [], []
    with store.transaction() as tx:
        for n, job in enumerate(jobs):
            attempt_id, verdict_id = tx.allocate_id(), tx.allocate_id()
            turns = synthetic_turns(job)
            content = json.dumps([{"role": "student" if t.role == "user" else "tutor",
                                   "text": t.content} for t in turns], ensure_ascii=False)
            metrics = {"turns": len(turns), "tutor_questions": 2, "learner_self_corrected": True}
            attempts.append((attempt_id, job.job_id, 1, RUN_ID, MODEL, 0, PROMPT_VERSION, 200,
                             COST_USD * 4, now))
            outcomes.append((attempt_id, now, 200, "ok", None, None, None, None, None, MODEL,
                             "Google", f"gen-{n:08d}", 180, 150, COST_USD, "response", 420.0,
                             "stop", content))
            verdicts.append((verdict_id, attempt_id, FILTER_VERSION, 1, "[]", len(turns), 2, 1,
                             json.dumps(metrics, sort_keys=True),
                             json.dumps(to_messages(turns), ensure_ascii=False), now))
            acceptances.append((job.job_id, attempt_id, verdict_id, now))
        tx.append_many(schema.attempts, attempts)
        tx.append_many(schema.attempt_outcomes, outcomes)
        tx.append_many(schema.verdicts, verdicts)
        tx.append_many(schema.acceptances, acceptances)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--accepted", type=int, default=None,
                        help="how many of the jobs are accepted (default: all)")
    args = parser.parse_args(argv)
    built = build_accepted_ledger(args.path, args.jobs,
                                  args.jobs if args.accepted is None else args.accepted)
    print(f"{built.path}: {built.jobs:,} jobs, {built.accepted:,} accepted in "
          f"{built.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
