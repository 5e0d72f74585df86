"""Hypothesis drives the ledger through random sequences of planning, partial runs, injected
faults, crashes at a write boundary, a second worker, exports and refilters; after every step the
ledger's invariants hold: at most one acceptance per job, projections equal a replay, costs
reconcile, the hash chain is intact, and the accepted count never goes down."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import make_jobs, run_cli
from ledger.db import open_ledger
from ledger.export import export_dialogues
from ledger.launch import run
from ledger.refilter import refilter
from ledger.runconfig import RunConfig
from ledger.simulator import SimConfig, Simulator
from ledger.store import FAULT_EXIT_CODE, Store
from ledger.verify import check_chain, check_money, check_projections

KEY = "sk-or-v1-stateful-test-key"
FAST = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05, "concurrency": 2}
FAULTS = ["500", "429", "reset", "length", "correction", "error_in_200", "malformed", "ok"]


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.path = self.dir / "ledger.db"
        self.ledger = open_ledger(str(self.path))
        self.sim = Simulator(SimConfig.from_kwargs(latency_ms=1, seed=1, retry_after_s=0.01))
        self.sim.start()
        self.planned = 0
        self.accepted_seen = 0
        self.exports = 0

    def teardown(self) -> None:
        if hasattr(self, "sim"):
            self.sim.stop()
            self.ledger.dispose()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _scalar(self, sql: str) -> int:
        with self.ledger.engine.connect() as conn:
            return int(conn.exec_driver_sql(sql).scalar_one())

    @rule(n=st.integers(1, 6))
    def plan(self, n: int) -> None:
        store = Store(self.ledger)
        try:
            self.planned = max(self.planned, self.planned + store.plan_jobs(
                make_jobs(self.planned + n)))
        finally:
            store.close()
        assert self._scalar("SELECT COUNT(*) FROM jobs") == self.planned

    @rule(k=st.integers(1, 4))
    def run_some(self, k: int) -> None:
        before = self._scalar("SELECT COUNT(*) FROM acceptances")
        result = run(self.ledger, RunConfig(limit=k, **FAST), base_url=self.sim.base_url,
                     quiet=True, api_key=KEY).result
        assert result.exit_code == 0, result
        after = self._scalar("SELECT COUNT(*) FROM acceptances")
        assert after - before <= k + FAST["concurrency"]

    @rule(tokens=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=4))
    def inject_faults(self, tokens: list[str]) -> None:
        self.sim.script(tokens)

    @rule(k=st.integers(1, 6), phase=st.sampled_from(["before", "after"]))
    def crash(self, k: int, phase: str) -> None:
        done = run_cli("run", "--quiet", "--concurrency", "2", "--limit", "3", env={
            "OPENROUTER_API_KEY": KEY, "OPENROUTER_BASE_URL": self.sim.base_url,
            "LEDGER_DB": str(self.path), "LEDGER_FAULT_EXIT_AT": f"{k}:{phase}"})
        assert done.returncode in (0, FAULT_EXIT_CODE), done.stderr

    @rule()
    def second_worker(self) -> None:
        """Two runs at once on the same ledger, as two terminals would."""
        other = open_ledger(str(self.path))
        results = []

        def work(ledger) -> None:  # type: ignore[no-untyped-def]
            results.append(run(ledger, RunConfig(limit=3, **FAST), base_url=self.sim.base_url,
                               quiet=True, api_key=KEY).result)

        try:
            threads = [threading.Thread(target=work, args=(led,)) for led in (self.ledger, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        finally:
            other.dispose()
        assert len(results) == 2 and all(r.exit_code == 0 for r in results), results

    @rule()
    def export(self) -> None:
        self.exports += 1
        result = export_dialogues(self.ledger, self.dir / f"export-{self.exports}.jsonl")
        assert result.count == self._scalar("SELECT COUNT(*) FROM acceptances")

    @rule()
    def refilter_all(self) -> None:
        before = self._scalar("SELECT COUNT(*) FROM acceptances")
        r = refilter(self.ledger)
        assert self._scalar("SELECT COUNT(*) FROM acceptances") == before + r.newly_accepted

    @invariant()
    def one_acceptance_per_job(self) -> None:
        if not hasattr(self, "ledger"):
            return
        assert self._scalar("SELECT COUNT(*) - COUNT(DISTINCT job_id) FROM acceptances") == 0

    @invariant()
    def ledger_checks_hold(self) -> None:
        if not hasattr(self, "ledger"):
            return
        for check in (check_projections, check_money, check_chain):
            c = check(self.ledger)
            assert c.ok, (c.name, c.detail)

    @invariant()
    def accepted_never_decreases(self) -> None:
        if not hasattr(self, "ledger"):
            return
        now = self._scalar("SELECT COUNT(*) FROM acceptances")
        assert now >= self.accepted_seen
        self.accepted_seen = now


LedgerMachine.TestCase.settings = settings(
    max_examples=12, stateful_step_count=8, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_ledger_state_machine = LedgerMachine.TestCase
