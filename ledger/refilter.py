"""Re-judge every stored response under the current filter, with no API call and no spend.

New verdicts are appended (old ones stay: the ledger shows how each filter version judged), and a
job whose response now passes becomes accepted. Paged in transactions of PAGE responses, each
complete on its own, so an interrupted refilter resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import queries
from .db import Ledger
from .filters import FILTER_VERSION, FilterConfig, judge
from .outcomes import verdict_record
from .store import Store

PAGE = 2000


@dataclass(frozen=True)
class RefilterResult:
    judged: int
    passed: int
    newly_accepted: int


def refilter(ledger: Ledger, config: FilterConfig = FilterConfig()) -> RefilterResult:
    store = Store(ledger)
    judged = passed = accepted = 0
    after = 0
    try:
        while True:
            page = queries.unjudged_responses(ledger, FILTER_VERSION, after, PAGE)
            if not page:
                break
            items = []
            for r in page:
                v = judge(r.content, r.finish_reason, r.erroneous, r.correct, config)
                items.append((r.job_id, r.attempt_id, verdict_record(v), v.passed))
                passed += int(v.passed)
            accepted += store.record_verdicts(items)
            judged += len(page)
            after = page[-1].attempt_id
    finally:
        store.close()
    return RefilterResult(judged, passed, accepted)
