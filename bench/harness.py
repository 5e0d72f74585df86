"""One measured run: the product's run loop against a simulator process, with wall time,
client CPU and what the ledger recorded.

The loop is launch.run's own (Runner.start, Runner.run) without the pre-flight /key call and the
progress bar, which happen once per run, plus an optional time cap that stops the run the way
Ctrl-C does, so a cell with heavy faults cannot eat the grid's time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from ledger.client import OpenRouterClient
from ledger.db import Ledger
from ledger.launch import dead_runs_here, prices_for
from ledger.runconfig import RunConfig
from ledger.runner import Runner, RunStats
from ledger.store import Store

from bench.simproc import BENCH_KEY


@dataclass(frozen=True)
class RunFigures:
    wall_s: float
    client_cpu_s: float
    reason: str
    stats: RunStats
    run_id: str
    busy_s: float          # sum of request latencies: worker time spent waiting on the API
    events: int            # ledger rows appended during the run
    by_error: dict[str, int]

    @property
    def accepted_per_s(self) -> float:
        return self.stats.accepted / self.wall_s if self.wall_s else 0.0


class TxCounter:
    """Counts the Store's write transactions by wrapping, for the duration of a block, the
    method each of them opens with: `transaction()` (claims, start and stop) and the group
    commits of the run loop's intents and outcomes alike."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def counting(self) -> Iterator[TxCounter]:
        original = Store._transaction_locked
        counter = itertools.count(1)

        def counted(store: Store, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.count = next(counter)
            return original(store, *args, **kwargs)

        Store._transaction_locked = counted  # type: ignore[method-assign]
        try:
            yield self
        finally:
            Store._transaction_locked = original  # type: ignore[method-assign]


def head_seq(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text("SELECT head_seq FROM ledger_totals WHERE id = 1")).scalar()
                   or 0)


def _attempt_figures(ledger: Ledger, run_id: str) -> tuple[float, dict[str, int]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT o.error_class, COUNT(*), SUM(COALESCE(o.latency_ms, 0)) "
            "FROM attempts a JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id "
            "WHERE a.run_id = :r GROUP BY o.error_class"), {"r": run_id}).all()
    return sum(r[2] or 0 for r in rows) / 1000.0, {r[0]: int(r[1]) for r in rows}


def measured_run(ledger: Ledger, config: RunConfig, base_url: str, *,
                 time_cap_s: float | None = None) -> RunFigures:
    prices = prices_for(ledger)
    seq0 = head_seq(ledger)
    with OpenRouterClient(base_url, BENCH_KEY) as client:
        runner = Runner(ledger, client, prices, config)
        runner.start(dead_runs_here(ledger))
        timer = None
        if time_cap_s is not None:
            timer = threading.Timer(time_cap_s, runner.halt.stop,
                                    args=("interrupted", "benchmark time cap"))
            timer.daemon = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        if timer is not None:
            timer.start()
        result = runner.run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if timer is not None:
            timer.cancel()
    if runner.crash is not None:
        raise runner.crash
    busy, by_error = _attempt_figures(ledger, result.run_id)
    return RunFigures(wall_s=wall, client_cpu_s=cpu, reason=result.reason, stats=result.stats,
                      run_id=result.run_id, busy_s=busy, events=head_seq(ledger) - seq0,
                      by_error=by_error)


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The median of repeated runs by `key`, with every run's figure beside it (in the order
    they ran) under runs_<key>: the machine's speed drifts within minutes, so loops compared
    side by side run in turns and each is shown by its median."""
    median = dict(sorted(runs, key=lambda r: r[key])[len(runs) // 2])
    median[f"runs_{key}"] = [r[key] for r in runs]
    return median
