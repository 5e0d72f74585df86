"""Benchmark workloads: a large generated catalog built from the bundled catalog's real pairs,
and fresh ledgers planned from it through the product planner.

Real sentences matter: the simulator builds its dialogue from the two quoted lines of the prompt
and the filter judges it against the job's pair, so made-up text would measure a different
filter path from the one users run.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ledger.catalog import DEFAULT_CATALOG_PATH, Catalog, catalog_from_dict
from ledger.db import Ledger, open_ledger
from ledger.planner import plan_ledger


@lru_cache(maxsize=1)
def real_pairs() -> tuple[tuple[str, str], ...]:
    data = json.loads(Path(DEFAULT_CATALOG_PATH).read_text(encoding="utf-8"))
    return tuple((p["erroneous"], p["correct"]) for l1 in data["l1s"]
                 for pattern in l1["patterns"] for p in pattern["pairs"])


def generated_catalog_dict(n_l1: int, n_patterns: int, n_pairs: int) -> dict[str, Any]:
    """n_l1 x n_patterns cells of n_pairs distinct real pairs each (3 levels, 3 topics,
    3 personas: 9 variants per pair and level)."""
    pairs = real_pairs()
    if n_pairs > len(pairs):
        raise ValueError(f"at most {len(pairs)} distinct pairs per pattern")
    l1s = []
    for i in range(n_l1):
        patterns = []
        for j in range(n_patterns):
            start = (i * 7 + j * 13) % len(pairs)
            chosen = [pairs[(start + k) % len(pairs)] for k in range(n_pairs)]
            patterns.append({"id": f"p{j:03d}", "name": f"pattern {j}",
                             "explanation": "generated for benchmarks",
                             "pairs": [{"erroneous": e, "correct": c} for e, c in chosen]})
        l1s.append({"id": f"l{i:03d}", "name": f"Language {i}", "patterns": patterns})
    return {"version": 1, "levels": ["beginner", "intermediate", "advanced"],
            "topics": ["food", "travel", "work"],
            "personas": ["a university student", "a nurse", "a software engineer"], "l1s": l1s}


def generated_catalog(n_l1: int = 10, n_patterns: int = 10, n_pairs: int = 40) -> Catalog:
    return catalog_from_dict(generated_catalog_dict(n_l1, n_patterns, n_pairs), "<bench>")


def planned_ledger(path: Path, n_jobs: int, catalog: Catalog | None = None) -> Ledger:
    """A fresh ledger file holding n_jobs open jobs, planned the way `cli.py plan` plans."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    ledger = open_ledger(str(path))
    plan_ledger(ledger, catalog or generated_catalog(), n_jobs)
    return ledger
